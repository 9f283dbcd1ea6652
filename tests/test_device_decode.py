"""decode_on_device: training images travel encoded and are decoded where the model runs.

On this CPU the device is the CPU, so the test runs the same code a GPU run does, with the CPU
decoder in place of nvJPEG (``torchvision.io.decode_jpeg``'s device argument).
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image

from perceptlab.core.transforms import tensor_geometry
from perceptlab.datamodules.image_text import ImageTextDataModule
from perceptlab.datamodules.image_text.device_decode import decode_batch, pack

MODEL = "perceptlab-vit-tiny-64"


def _module(shards: str, **kwargs) -> ImageTextDataModule:
    args = dict(train_data=shards, val_data=shards, model_name=MODEL, batch_size=16, num_workers=0, shuffle=False)
    return ImageTextDataModule(**{**args, **kwargs})


def test_device_decoded_batches_equal_worker_decoded_bitwise(tiny_world):
    """At the model's input size (the toy world's 64 px) resize and crop change nothing, so the
    device path must give the loader workers' pixels exactly: the two JPEG decoders agree."""
    shards = str(Path(tiny_world) / "image_text" / "shards" / "*.tar")
    batches = {}
    for on_device in (False, True):
        dm = _module(shards, augmentation="none", decode_on_device=on_device)
        dm.setup("fit")
        batches[on_device] = next(iter(dm.train_dataloader()))
    encoded = batches[True]
    assert "image" not in encoded and encoded["image_bytes"].dtype == torch.uint8
    assert encoded["image_offsets"].shape == (17,)
    decoded = dm.on_before_batch_transfer(dict(encoded), 0)
    assert decoded["image"].dtype == torch.uint8 and decoded["image"].shape == (16, 3, 64, 64)
    assert torch.equal(decoded["image"], batches[False]["image"])
    assert torch.equal(decoded["text"], batches[False]["text"])
    assert int(decoded["skipped"]) == int(batches[False]["skipped"]) == 0


def test_tensor_geometry_matches_the_pil_steps_within_rounding(tiny_world):
    """Upscaling 64 px JPEGs to ViT-B/32's 224 px: torchvision's antialiased tensor bicubic against
    PIL's, on the same decoded pixels."""
    from torchvision.io import decode_jpeg

    from perceptlab.core.transforms import preprocess_cfg_for
    from open_clip.transform import image_transform_v2

    eval_pil = image_transform_v2(preprocess_cfg_for("ViT-B-32"), is_train=False)
    geometry = tensor_geometry(eval_pil)
    files = sorted((Path(tiny_world) / "image_text" / "images" / "train").glob("*.jpg"))[:8]
    diffs = []
    for f in files:
        data = f.read_bytes()
        tensor = geometry(decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)))
        pil = (eval_pil(Image.open(io.BytesIO(data)).convert("RGB")) * 255)  # ToTensor + Normalize undone below
        mean = torch.tensor(eval_pil.transforms[-1].mean).view(3, 1, 1)
        std = torch.tensor(eval_pil.transforms[-1].std).view(3, 1, 1)
        pil = (pil / 255 * std + mean) * 255
        assert tensor.shape == pil.shape == (3, 224, 224)
        diffs.append((tensor.float() - pil).abs())
    diffs = torch.stack(diffs)
    assert diffs.mean() < 0.5 and diffs.max() <= 2.0, (float(diffs.mean()), float(diffs.max()))

    train = tensor_geometry(image_transform_v2(preprocess_cfg_for("ViT-B-32"), is_train=True))
    image = decode_jpeg(torch.frombuffer(bytearray(files[0].read_bytes()), dtype=torch.uint8))
    torch.manual_seed(0)
    crops = [train(image) for _ in range(4)]
    assert all(c.shape == (3, 224, 224) and c.dtype == torch.uint8 for c in crops)
    assert not all(torch.equal(crops[0], c) for c in crops[1:])  # random resized crops


def test_undecodable_image_is_replaced_by_the_previous_pair_and_counted():
    def jpeg(level: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (level, level, level)).save(buf, format="JPEG", quality=95)
        return buf.getvalue()

    images = [jpeg(10), b"\xff\xd8\xff" + b"not a jpeg" * 10, jpeg(200), b"garbage"]
    flat, offsets = pack(images)
    text = torch.arange(4).view(4, 1).repeat(1, 3)
    batch = {"image_bytes": flat, "image_offsets": offsets, "text": text.clone(), "skipped": torch.tensor(1)}
    out = decode_batch(batch, tensor_geometry(_module("unused").processing()[0]), torch.device("cpu"))
    assert out["image"].shape == (4, 3, 64, 64)
    levels = out["image"][:, 0, 32, 32].tolist()
    assert abs(levels[0] - 10) <= 2 and abs(levels[2] - 200) <= 2
    assert levels[1] == levels[0] and levels[3] == levels[2]  # replaced by the previous readable pair
    assert out["text"][:, 0].tolist() == [0, 0, 2, 2]
    assert int(out["skipped"]) == 1 + 2
    with pytest.raises(RuntimeError, match="none of the 1 images"):
        f, o = pack([b"garbage"])
        decode_batch({"image_bytes": f, "image_offsets": o, "text": text[:1], "skipped": torch.tensor(0)},
                     lambda x: x, torch.device("cpu"))


def test_refused_settings_are_named_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="decode_on_device needs format: webdataset"):
        ImageTextDataModule(format="csv", train_data="x.csv", model_name=MODEL, decode_on_device=True)
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w"):
        pass
    dm = _module(str(shard), augmentation="mocov2", decode_on_device=True)
    with pytest.raises(ValueError, match="ColorJitter"):
        dm.setup("fit")


def test_training_decodes_on_the_device(tiny_world, tmp_path):
    from perceptlab.lightning_modules.contrastive import ContrastivePretrainModule

    shards = str(Path(tiny_world) / "image_text" / "shards" / "*.tar")
    torch.manual_seed(0)
    module = ContrastivePretrainModule(MODEL, lr=1e-3, warmup_steps=1)
    dm = _module(shards, decode_on_device=True, augmentation="clip")
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    before = [p.detach().clone() for p in module.parameters()]
    trainer.fit(module, dm)
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))
