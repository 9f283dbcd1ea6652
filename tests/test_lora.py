"""LoRA through peft on open_clip towers: what is adapted, what is frozen, merging back."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from perceptlab.core.backbone import MODEL_CONFIG_DIR, CLIPBackbone
from perceptlab.core.lora import (
    QKVSplitAttention,
    apply_lora,
    has_lora,
    lora_parameter_count,
    lora_parameters,
    merge_lora,
    merge_lora_state_dict,
)

TINY = "perceptlab-vit-tiny-64"


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def tiny(vision_only: bool = True) -> CLIPBackbone:
    torch.manual_seed(0)
    return CLIPBackbone(TINY, vision_only=vision_only).eval()


def randomize_lora(module: nn.Module, std: float = 0.05, only: str | None = None) -> None:
    """peft initialises B = 0 (a no-op adapter); give the adapters a visible effect."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lora_parameters(module):
            if "lora_B" in name and (only is None or f".{only}." in name):
                p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("batch_first", [True, False])
def test_split_attention_reproduces_multihead_attention(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    split = QKVSplitAttention.from_mha(mha).eval()
    x = torch.randn(2, 5, 32) if batch_first else torch.randn(5, 2, 32)
    causal = torch.full((5, 5), float("-inf")).triu(1)
    bool_mask = torch.rand(5, 5, generator=torch.Generator().manual_seed(2)) > 0.7
    bool_mask.fill_diagonal_(False)
    padding = torch.tensor([[False] * 4 + [True], [False] * 5])
    for kwargs in ({}, {"attn_mask": causal}, {"attn_mask": bool_mask}, {"key_padding_mask": padding}):
        want, want_w = mha(x, x, x, need_weights=True, **kwargs)
        got, got_w = split(x, x, x, need_weights=True, **kwargs)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=1e-5)
        fast, none = split(x, x, x, need_weights=False, **kwargs)
        assert none is None
        torch.testing.assert_close(fast, want, atol=1e-5, rtol=1e-5)
    back = split.to_mha()
    torch.testing.assert_close(back(x, x, x)[0], mha(x, x, x)[0])


def test_only_qkv_adapters_are_trainable_and_counted_from_the_architecture():
    cfg = json.loads((MODEL_CONFIG_DIR / f"{TINY}.json").read_text())["vision_cfg"]
    width, layers, rank = cfg["width"], cfg["layers"], 16
    # per block: q, k and v are Linear(width, width); each gains A (rank x width) + B (width x rank)
    expected = layers * 3 * (rank * width + width * rank)
    b = tiny()
    n_before = sum(p.numel() for p in b.visual.parameters())
    apply_lora(b.model.visual, rank=rank, alpha=8, dropout=0.1)
    trainable = {n: p for n, p in b.visual.named_parameters() if p.requires_grad}
    assert lora_parameter_count(b.visual) == expected == sum(p.numel() for p in trainable.values())
    assert sum(p.numel() for p in b.visual.parameters()) == n_before + expected
    # 2 tensors (A, B) x 3 projections x every block, and nothing else (visual projection frozen)
    assert len(trainable) == 2 * 3 * layers
    for i in range(layers):
        for proj in ("q_proj", "k_proj", "v_proj"):
            prefix = f"transformer.resblocks.{i}.attn.{proj}"
            assert trainable[f"{prefix}.lora_A.default.weight"].shape == (rank, width)
            assert trainable[f"{prefix}.lora_B.default.weight"].shape == (width, rank)
    assert not b.visual.proj.requires_grad and not b.visual.conv1.weight.requires_grad
    attn = b.visual.transformer.resblocks[0].attn
    assert attn.q_proj.lora_dropout["default"].p == pytest.approx(0.1)
    assert not attn.q_proj.lora_dropout["default"].training, "adapters must follow the tower's eval mode"
    assert attn.q_proj.scaling["default"] == pytest.approx(8 / 16)


def test_vit_b32_adapter_count():
    torch.manual_seed(0)
    b = CLIPBackbone("ViT-B-32", vision_only=True)
    apply_lora(b.model.visual)
    assert lora_parameter_count(b.visual) == 12 * 3 * 2 * 16 * 768 == 884_736


def test_wrapped_tower_keeps_its_class_and_both_encode_paths(images):
    b = tiny()
    visual_class = type(b.visual)
    with torch.no_grad():
        ref, ref_layer = b.encode_image(images), b.encode_image(images, layer=2)
    apply_lora(b.model.visual)
    assert type(b.visual) is visual_class and has_lora(b.visual)
    with torch.no_grad():  # B = 0 at init: the adapted tower computes what the plain one did
        torch.testing.assert_close(b.encode_image(images), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.encode_image(images, layer=2), ref_layer, atol=1e-5, rtol=1e-5)
    randomize_lora(b.visual)
    with torch.no_grad():
        assert (b.encode_image(images) - ref).abs().max() > 1e-3
        assert (b.encode_image(images, layer=2) - ref_layer).abs().max() > 1e-3


@pytest.mark.parametrize("proj", ["q_proj", "k_proj", "v_proj"])
def test_each_of_q_k_v_adapters_changes_attention_and_receives_gradient(images, proj):
    b = tiny()
    apply_lora(b.model.visual, dropout=0.0)
    block = b.visual.transformer.resblocks[1]
    captured = []
    block.attn.register_forward_hook(lambda m, i, o: captured.append(o[0]))
    with torch.no_grad():
        b.encode_image(images)
    before = captured[-1]
    randomize_lora(b.visual, only=proj)
    out = b.encode_image(images)
    assert (captured[-1] - before).abs().max() > 1e-4, f"{proj} adapter has no effect on attention output"
    out.pow(2).sum().backward()
    layer = getattr(block.attn, proj)
    for key in ("lora_A", "lora_B"):
        grad = getattr(layer, key)["default"].weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, f"{proj}.{key}"
    assert layer.base_layer.weight.grad is None


def test_merge_gives_plain_open_clip_weights_that_load_visual_reads(images, tmp_path):
    b = tiny()
    plain_keys = set(b.visual.state_dict())
    apply_lora(b.model.visual)
    randomize_lora(b.visual)
    with torch.no_grad():
        adapted = b.encode_image(images)
    merged = merge_lora(b.visual)
    assert has_lora(b.visual), "inplace=False must leave the training module adapted"
    assert not has_lora(merged) and set(merged.state_dict()) == plain_keys
    assert isinstance(merged.transformer.resblocks[0].attn, nn.MultiheadAttention)
    with torch.no_grad():
        torch.testing.assert_close(nn.functional.normalize(merged(images), dim=-1), adapted, atol=1e-5, rtol=1e-5)

    exporter = tiny()
    exporter.model.visual = merged
    path = exporter.save_visual(tmp_path / "visual.pt")
    fresh = CLIPBackbone(TINY, vision_only=True).eval()
    report = fresh.load_visual(path, strict=True)
    assert not report.missing and not report.unexpected
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode_image(images), adapted, atol=1e-5, rtol=1e-5)

    # the same result from the adapted state dict alone (a LoRA run's checkpoint)
    from_state = merge_lora_state_dict(b.visual.state_dict(), like=CLIPBackbone(TINY, vision_only=True).visual)
    assert set(from_state) == plain_keys
    for k, v in merged.state_dict().items():
        torch.testing.assert_close(from_state[k], v)


def test_adapting_the_text_tower_keeps_its_causal_mask():
    b = tiny(vision_only=False)
    tokens = b.tokenize(["a red airplane", "a blue cat on grass"])
    with torch.no_grad():
        ref = b.encode_text(tokens)
    apply_lora(b.model.transformer)
    with torch.no_grad():
        torch.testing.assert_close(b.encode_text(tokens), ref, atol=1e-5, rtol=1e-5)


def test_errors_name_the_problem():
    b = tiny()
    with pytest.raises(ValueError, match="no LoRA target.*not_a_layer"):
        apply_lora(b.model.visual, target_modules=["not_a_layer"])
    assert isinstance(b.visual.transformer.resblocks[0].attn, nn.MultiheadAttention)
    apply_lora(b.model.visual)
    with pytest.raises(ValueError, match="already carries LoRA"):
        apply_lora(b.model.visual)


def test_a_plain_tower_loads_exactly_into_an_adapted_one():
    """``CLIPBackbone.load_visual`` into a tower that already carries (fresh) adapters: the base
    weights become the file's, bit for bit, and the adapters keep their initialisation."""
    torch.manual_seed(0)
    source = CLIPBackbone("perceptlab-vit-tiny-64", vision_only=True)
    torch.manual_seed(1)
    target = CLIPBackbone("perceptlab-vit-tiny-64", vision_only=True)
    apply_lora(target.model.visual, rank=4, alpha=8)
    adapters = {n: p.detach().clone() for n, p in lora_parameters(target.model.visual)}
    rng = torch.get_rng_state()
    report = target.load_visual({f"visual.{k}": v for k, v in source.model.visual.state_dict().items()}, strict=True)
    # loading draws no random numbers (re-expressing the attention builds layers, under a forked generator)
    assert torch.equal(torch.get_rng_state(), rng)
    assert not report.missing and not report.unexpected
    merged = merge_lora(target.model.visual).state_dict()  # B = 0: merging adds nothing
    for k, v in source.model.visual.state_dict().items():
        assert torch.equal(merged[k], v), k
    for n, p in lora_parameters(target.model.visual):
        assert torch.equal(p, adapters[n]), n
