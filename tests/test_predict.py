"""``perceptlab predict``: one row per readable image, unreadable ones named and skipped, scores
equal to the model's own on the same images."""
from __future__ import annotations

import shutil

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from PIL import Image

from perceptlab.commands.cli import main as perceptlab
from perceptlab.datamodules.perceptual_tasks import EMOTIONS
from perceptlab.lightning_modules.perceptual_tasks import PerceptualTaskModule

TINY = "perceptlab-vit-tiny-64"


def checkpoint(tmp_path, **kwargs):
    torch.manual_seed(0)
    module = PerceptualTaskModule(TINY, lora_rank=4, **kwargs)
    path = tmp_path / "task.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    return module.eval(), path


def test_a_folder_with_a_corrupt_image_is_scored_and_the_bad_file_named(tiny_world, tmp_path):
    folder = tmp_path / "photos"
    images = sorted((tiny_world / "lamem" / "images").iterdir())[:7]
    (folder / "sub").mkdir(parents=True)
    for i, p in enumerate(images):  # a nested folder too
        shutil.copy(p, (folder / "sub" if i % 2 else folder) / p.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    module, ckpt = checkpoint(tmp_path)
    out = tmp_path / "predictions.csv"
    perceptlab(["predict", str(ckpt), "--images", str(folder), "--out", str(out), "--batch_size", "3",
                "--num_workers", "0", "--accelerator", "cpu", "--devices", "1"])
    table = pd.read_csv(out)
    assert list(table.columns) == ["path", "score"] and len(table) == 7
    bad = pd.read_csv(tmp_path / "predictions.unreadable.csv")
    assert bad["path"].tolist() == [str(folder / "broken.jpg")] and "UnidentifiedImageError" in bad["error"][0]
    tf = module.backbone.transform(train=False)
    with torch.no_grad():
        direct = module(torch.stack([tf(Image.open(p).convert("RGB")) for p in table["path"]]))
    torch.testing.assert_close(torch.tensor(table["score"].to_numpy(), dtype=torch.float32), direct,
                               atol=1e-5, rtol=0)


def test_an_emotion_model_on_a_csv_writes_class_probabilities(tiny_world, tmp_path):
    images = sorted((tiny_world / "lamem" / "images").iterdir())[:5]
    pd.DataFrame({"filepath": [str(p) for p in images] + ["missing.png"], "note": "x"}).to_csv(
        tmp_path / "list.csv", index=False)
    _, ckpt = checkpoint(tmp_path, task="classification", num_classes=8)
    out = tmp_path / "emotions.csv"
    perceptlab(["predict", str(ckpt), "--images", str(tmp_path / "list.csv"), "--column", "filepath",
                "--out", str(out), "--crops", "5", "--num_workers", "0", "--accelerator", "cpu", "--devices", "1"])
    table = pd.read_csv(out)
    assert list(table.columns) == ["path", "label", *(f"p_{e}" for e in EMOTIONS)] and len(table) == 5
    probs = table[[f"p_{e}" for e in EMOTIONS]].to_numpy()
    assert probs.sum(1) == pytest.approx(1.0, abs=1e-5)
    assert table["label"].tolist() == [EMOTIONS[i] for i in probs.argmax(1)]
    assert pd.read_csv(tmp_path / "emotions.unreadable.csv")["path"].tolist() == [str(tmp_path / "missing.png")]


def test_a_bad_images_argument_is_named_before_any_model_is_loaded(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        perceptlab(["predict", str(tmp_path / "no-model.ckpt"), "--images", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "nowhere" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(FileNotFoundError, match="nowhere"):  # --debug shows the exception itself
        perceptlab(["predict", str(tmp_path / "no-model.ckpt"), "--images", str(tmp_path / "nowhere"), "--debug"])
