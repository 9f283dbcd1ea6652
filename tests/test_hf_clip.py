"""Models in and out: transformers CLIP weights load here with their own embeddings, and a model
trained here leaves as open_clip or transformers weights with ours. Both reference libraries run
in the tests on the same random weights (small configs built here; nothing is downloaded)."""
from __future__ import annotations

import lightning.pytorch as pl
import open_clip
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection

from perceptlab.core.optim import AdamWCosine
from perceptlab.commands.export import export
from perceptlab.core.backbone import CLIPBackbone
from perceptlab.core.lora import apply_lora
from perceptlab.lightning_modules.contrastive import OPEN_CLIP_FILENAME, ContrastivePretrainModule

TINY = "perceptlab-vit-tiny-64"
VOCAB = 99


def hf_config(act: str = "quick_gelu") -> CLIPConfig:
    return CLIPConfig(
        projection_dim=16,
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=12, eos_token_id=VOCAB - 1,
                         bos_token_id=VOCAB - 2, pad_token_id=0, hidden_act=act),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
                           image_size=32, patch_size=8, hidden_act=act, projection_dim=16),
    )


def features(output) -> torch.Tensor:
    return getattr(output, "pooler_output", output)  # transformers 5 returns an output object


TOKENS = torch.tensor([[VOCAB - 2, 5, 6, VOCAB - 1, 0, 0, 0, 0, 0, 0, 0, 0],
                       [VOCAB - 2, 7, 8, 9, 10, VOCAB - 1, 0, 0, 0, 0, 0, 0]])


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_a_transformers_clip_folder_gives_its_own_embeddings(tmp_path, act):
    torch.manual_seed(0)
    hf = CLIPModel(hf_config(act)).eval()
    hf.save_pretrained(tmp_path / "clip")
    ours = CLIPBackbone(None, pretrained=str(tmp_path / "clip")).eval()  # architecture from config.json
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images, normalize=False),
                                   features(hf.get_image_features(pixel_values=images)), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encode_text(TOKENS, normalize=False),
                                   features(hf.get_text_features(input_ids=TOKENS)), atol=1e-5, rtol=0)
    assert ours.logit_scale.item() == pytest.approx(hf.logit_scale.item())


def test_a_vision_model_file_initialises_the_tower_and_a_wrong_name_is_refused(tmp_path):
    torch.manual_seed(1)
    vision = CLIPVisionModelWithProjection(hf_config().vision_config).eval()
    save_file({k: v.contiguous() for k, v in vision.state_dict().items()}, tmp_path / "vision.safetensors")
    full = CLIPModel(hf_config()).eval()
    full.save_pretrained(tmp_path / "clip")
    # init_visual_from a CLIPVisionModelWithProjection file, into the architecture of the folder
    ours = CLIPBackbone(None, pretrained=str(tmp_path / "clip")).eval()
    report = ours.load_visual(tmp_path / "vision.safetensors", strict=True)
    assert not report.missing
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images, normalize=False), vision(pixel_values=images).image_embeds,
                                   atol=1e-5, rtol=0)
    # a CLIPVisionModel folder (no projection; transformers 5 writes its keys without vision_model.)
    from transformers import CLIPVisionModel

    plain = CLIPVisionModel(hf_config().vision_config)
    plain.save_pretrained(tmp_path / "vision-folder")
    report = ours.load_visual(tmp_path / "vision-folder")
    assert report.missing == ["proj"] and len(report.loaded) == len(ours.model.visual.state_dict()) - 1
    assert torch.equal(ours.model.visual.conv1.weight, plain.state_dict()[
        next(k for k in plain.state_dict() if k.endswith("patch_embedding.weight"))])
    # open_clip's ViT-B-32 is GELU with another shape: named, not loaded wrongly
    with pytest.raises(ValueError, match="quick_gelu, width, layers, patch"):
        CLIPBackbone("ViT-B-32", pretrained=str(tmp_path / "clip"))


def _toy_stage2_checkpoint(tmp_path):
    """A toy stage-2 run: one real training step, its Lightning checkpoint and open_clip file."""
    pl.seed_everything(0)
    module = ContrastivePretrainModule(TINY, optim=AdamWCosine(warmup_steps=1))
    texts = open_clip.get_tokenizer(TINY)(["a red car on grass", "a blue cat", "a dog in the sky", "a large boat"])
    batch = {"image": torch.randn(4, 3, 64, 64), "text": texts, "skipped": torch.tensor(0)}
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=TensorBoardLogger(tmp_path, name="run", version=0),
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader([batch], batch_size=None))
    ckpt = tmp_path / "stage2.ckpt"
    trainer.save_checkpoint(ckpt)
    return module.eval(), ckpt, batch, tmp_path / "run" / "version_0" / "checkpoints" / OPEN_CLIP_FILENAME


def test_a_stage2_model_leaves_as_open_clip_and_transformers_weights(tmp_path):
    module, ckpt, batch, written = _toy_stage2_checkpoint(tmp_path)
    with torch.no_grad():
        image = module.backbone.encode_image(batch["image"], normalize=False)
        text = module.backbone.encode_text(batch["text"], normalize=False)
    # stage 2 wrote open_clip weights at the end of fit; export writes the same from the checkpoint
    exported = export(str(ckpt), "open_clip", str(tmp_path / "model.pt"))
    for path in (written, exported):
        model, _, _ = open_clip.create_model_and_transforms(TINY, pretrained=str(path))  # strict load
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(model.encode_image(batch["image"]), image, atol=1e-5, rtol=0)
            torch.testing.assert_close(model.encode_text(batch["text"]), text, atol=1e-5, rtol=0)
        assert model.logit_scale.exp().item() == pytest.approx(module.backbone.logit_scale.exp().item())
    hf = CLIPModel.from_pretrained(export(str(ckpt), "hf", str(tmp_path / "hf")), local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(features(hf.get_image_features(pixel_values=batch["image"])), image,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(features(hf.get_text_features(input_ids=batch["text"])), text, atol=1e-5, rtol=0)


def test_a_lora_tower_exports_merged_with_a_fresh_text_tower(tmp_path):
    """A vision-only checkpoint with LoRA adapters (stage 1's lora variant, a task model)."""
    torch.manual_seed(2)
    backbone = CLIPBackbone(TINY, vision_only=True)
    apply_lora(backbone.model.visual, rank=4, alpha=8)
    with torch.no_grad():
        for name, p in backbone.model.visual.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in backbone.state_dict().items()},
                "hyper_parameters": {"model_name": TINY}}, tmp_path / "lora.ckpt")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        adapted = backbone.eval().encode_image(images, normalize=False)
    model, _, _ = open_clip.create_model_and_transforms(TINY, pretrained=str(export(str(tmp_path / "lora.ckpt"),
                                                                                       "open_clip", str(tmp_path / "m.pt"))))
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode_image(images), adapted, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="does not record its architecture"):
        torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
        export(str(tmp_path / "bare.ckpt"), "hf", str(tmp_path / "x"))


# ------------------------------------------------------------------------ PerceptCLIP releases
class PerceptCLIPReference(torch.nn.Module):
    """PerceptCLIP's module as its release describes it: a transformers CLIP vision model under
    peft LoRA on q/k/v, the frozen visual projection as ``proj``, the head ``mlp.fc1/fc2/fc3``."""

    def __init__(self, out: int, image_size: int = 32, patch_size: int = 8) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import CLIPVisionConfig, CLIPVisionModel

        super().__init__()
        # CLIP's shape conventions (64-wide heads, quick GELU), small
        config = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=image_size, patch_size=patch_size, hidden_act="quick_gelu")
        self.model = get_peft_model(CLIPVisionModel(config), LoraConfig(r=16, lora_alpha=8, lora_dropout=0.0,
                                                                        target_modules=["q_proj", "k_proj", "v_proj"]))
        self.proj = torch.nn.Linear(128, 48, bias=False)
        self.mlp = torch.nn.Module()
        self.mlp.fc1, self.mlp.fc2, self.mlp.fc3 = torch.nn.Linear(48, 32), torch.nn.Linear(32, 24), torch.nn.Linear(24, out)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.model(pixel_values=pixel_values).pooler_output)
        x = torch.relu(self.mlp.fc1(x))  # dropout 0.5 after each ReLU: a no-op in eval mode
        return self.mlp.fc3(torch.relu(self.mlp.fc2(x)))


@pytest.mark.parametrize("out", [1, 8])
def test_a_perceptclip_release_predicts_what_the_reference_module_does(tmp_path, out):
    from perceptlab.lightning_modules.perceptual_tasks import PerceptualTaskModule

    torch.manual_seed(3)
    reference = PerceptCLIPReference(out)
    with torch.no_grad():  # trained adapters (peft starts B at 0)
        for name, p in reference.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    torch.save(reference.state_dict(), tmp_path / "release.pth")
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = reference.eval()(images)
    for merge in (False, True):
        ours = PerceptualTaskModule(release=str(tmp_path / "release.pth"), release_merge_lora=merge).eval()
        assert ours.hparams.task == ("regression" if out == 1 else "classification")
        with torch.no_grad():
            got = ours(images)
        torch.testing.assert_close(got.reshape(expected.shape), expected, atol=1e-5, rtol=0)
        trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
        assert any(".lora_" in n for n in trainable) != merge  # kept adapters stay trainable
