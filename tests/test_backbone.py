"""The shared backbone: building, tokenizing offline, and the visual-tower hand-off."""
from __future__ import annotations

import pytest
import torch

from perceptlab.core.backbone import CLIPBackbone, extract_visual_state, list_models

TINY = "perceptlab-vit-tiny-64"


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_project_configs_are_registered_with_open_clip():
    assert {TINY, "perceptlab-vit-small-64", "ViT-B-32", "RN50"} <= set(list_models())


def test_tiny_config_size_and_embeddings(images):
    torch.manual_seed(0)
    b = CLIPBackbone(TINY).eval()
    n_visual = sum(p.numel() for p in b.visual.parameters())
    assert 1_000_000 <= n_visual <= 4_000_000
    assert b.image_size == 64 and b.embed_dim == 64
    with torch.no_grad():
        img = b.encode_image(b.normalize(images))
        txt = b.encode_text(b.tokenize(["a red airplane on grass", "a blue cat"]))
    assert img.shape == (3, 64) and txt.shape == (2, 64)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))


def test_tokenizer_is_offline_and_uses_config_context_length():
    b = CLIPBackbone(TINY)
    tokens = b.tokenize(["a large red airplane", "x"])
    assert tokens.shape == (2, 32)
    # start-of-text / end-of-text ids of open_clip's BPE vocabulary bracket every caption
    assert int(tokens[0, 0]) == 49406 and 49407 in tokens[0].tolist()


def test_named_open_clip_architecture_builds_without_weights():
    torch.manual_seed(0)
    b = CLIPBackbone("ViT-B-32", vision_only=True).eval()
    assert b.image_size == 224 and b.embed_dim == 512 and b.num_visual_layers == 12
    with torch.no_grad():
        out = b.encode_image(torch.rand(1, 3, 224, 224))
        cls6 = b.encode_image(torch.rand(1, 3, 224, 224), layer=5)
    assert out.shape == (1, 512) and cls6.shape == (1, 768)


def test_layer_embedding_is_the_cls_token_of_that_block(images):
    b = CLIPBackbone(TINY, vision_only=True).eval()
    captured = {}
    block = b.visual.transformer.resblocks[2]
    handle = block.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    with torch.no_grad():
        got = b.encode_image(images, normalize=False, layer=2)
    handle.remove()
    torch.testing.assert_close(got, captured["out"][:, 0])
    with torch.no_grad():
        torch.testing.assert_close(b.encode_image(images, layer=-1), b.encode_image(images, layer=5))


def test_vision_only_has_no_text_tower():
    b = CLIPBackbone(TINY, vision_only=True)
    assert not b.has_text
    assert not any(k.startswith(("token_embedding", "transformer.", "ln_final")) for k in b.model.state_dict())
    with pytest.raises(RuntimeError, match="vision_only"):
        b.tokenize("a cat")


def test_visual_round_trip_gives_identical_embeddings_and_leaves_text_untouched(tmp_path, images):
    torch.manual_seed(1)
    src = CLIPBackbone(TINY).eval()
    path = src.save_visual(tmp_path / "visual.pt")

    torch.manual_seed(2)
    dst = CLIPBackbone(TINY).eval()
    text_before = {k: v.clone() for k, v in dst.model.state_dict().items() if not k.startswith("visual.")}
    scale_before = dst.logit_scale.detach().clone()
    with torch.no_grad():
        assert not torch.allclose(dst.encode_image(images), src.encode_image(images))
    report = dst.load_visual(path)
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(src.visual.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(dst.encode_image(images), src.encode_image(images), rtol=0, atol=0)
    for k, v in dst.model.state_dict().items():
        if not k.startswith("visual."):
            assert torch.equal(v, text_before[k]), k
    assert torch.equal(dst.logit_scale.detach(), scale_before)


def test_load_visual_from_a_lightning_style_checkpoint_reports_keys_by_name(tmp_path, images):
    torch.manual_seed(3)
    src = CLIPBackbone(TINY).eval()
    state = {f"backbone.model.{k}": v for k, v in src.model.state_dict().items()}
    state.pop("backbone.model.visual.ln_post.bias")
    state["backbone.model.visual.extra_head.weight"] = torch.zeros(2)
    torch.save({"state_dict": state, "epoch": 0}, tmp_path / "last.ckpt")
    dst = CLIPBackbone(TINY, vision_only=True)
    report = dst.load_visual(tmp_path / "last.ckpt")
    assert report.missing == ["ln_post.bias"]
    assert report.unexpected == ["extra_head.weight"]
    assert "ln_post.bias" in str(report) and "extra_head.weight" in str(report)
    torch.testing.assert_close(dst.visual.conv1.weight, src.visual.conv1.weight)
    with pytest.raises(ValueError, match="strict"):
        dst.load_visual(tmp_path / "last.ckpt", strict=True)


def test_mismatched_checkpoint_names_the_tensor(tmp_path):
    CLIPBackbone(TINY, vision_only=True).save_visual(tmp_path / "tiny.pt")
    other = CLIPBackbone("perceptlab-vit-small-64", vision_only=True)
    with pytest.raises(ValueError, match=r"visual\.conv1\.weight: checkpoint \(128, 3, 8, 8\) vs model \(192, 3, 8, 8\)"):
        other.load_visual(tmp_path / "tiny.pt")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        CLIPBackbone(TINY).load_visual(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="weights.bin"):
        CLIPBackbone(TINY, pretrained=str(tmp_path / "weights.bin"))
    with pytest.raises(ValueError, match="unknown model_name 'ViT-Q-99'"):
        CLIPBackbone("ViT-Q-99")


def test_pretrained_local_file_loads_full_clip_weights(tmp_path, images):
    torch.manual_seed(4)
    src = CLIPBackbone(TINY).eval()
    torch.save(src.model.state_dict(), tmp_path / "tiny_weights.pt")
    dst = CLIPBackbone(TINY, pretrained=str(tmp_path / "tiny_weights.pt")).eval()
    with torch.no_grad():
        torch.testing.assert_close(dst.encode_image(images), src.encode_image(images))
        tokens = src.tokenize(["a cat"])
        torch.testing.assert_close(dst.encode_text(tokens), src.encode_text(tokens))


def test_extract_visual_state_cuts_at_the_visual_segment():
    t = torch.zeros(1)
    state = {"module.visual.proj": t, "backbone.model.visual.conv1.weight": t, "visual_head.w": t, "text.visual": t}
    assert sorted(extract_visual_state(state)) == ["conv1.weight", "proj"]


def test_load_visual_merges_a_lora_adapted_checkpoint(tmp_path, images):
    from perceptlab.core.lora import apply_lora

    torch.manual_seed(5)
    src = CLIPBackbone(TINY, vision_only=True).eval()
    apply_lora(src.model.visual, rank=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, p in src.model.visual.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # trained adapters are non-zero; fresh ones are zero
        adapted = src.encode_image(images)
    torch.save({"state_dict": {f"backbone.model.{k}": v for k, v in src.model.state_dict().items()}}, tmp_path / "lora.ckpt")
    dst = CLIPBackbone(TINY, vision_only=True).eval()
    report = dst.load_visual(tmp_path / "lora.ckpt", strict=True)
    assert report.missing == [] and report.unexpected == []
    with torch.no_grad():
        torch.testing.assert_close(dst.encode_image(images), adapted, rtol=1e-4, atol=1e-5)
