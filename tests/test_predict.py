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
from perceptlab.datamodules.task_sets import EMOTIONS
from perceptlab.lightning_modules.perceptual_tasks import PerceptualTaskModule
from perceptlab.datamodules.loader import Loader

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


# ------------------------------------------------------------------ PerceptCLIP's card protocols
def _release(tmp_path, name: str, out: int):
    """A release-format file of a small model that takes the cards' 224-px crops, named as PerceptCLIP names theirs."""
    from test_hf_clip import PerceptCLIPReference

    torch.manual_seed(4)
    reference = PerceptCLIPReference(out, image_size=224, patch_size=32).eval()
    with torch.no_grad():
        for n, p in reference.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    torch.save(reference.state_dict(), tmp_path / name)
    return reference, tmp_path / name


def _photos(tmp_path):
    """Three photos of different shapes (none already 512x384), with texture for the crops to see."""
    folder = tmp_path / "photos"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i, (w, h) in enumerate([(640, 480), (300, 420), (500, 500)]):
        low = (torch.rand(3, 12, 12, generator=g) * 255).to(torch.uint8)
        image = torch.nn.functional.interpolate(low[None].float(), size=(h, w), mode="bicubic")[0]
        Image.fromarray(image.clamp(0, 255).byte().permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return sorted(folder.iterdir())


def _card_loop(reference, photos, card: str, seed: int = 0):
    """The model card's loop as the card describes it (torchvision's RandomCrop drawing from torch's
    generator, seeded per image with the protocol's crop seed: the card's `random.seed` fixes nothing)."""
    from torchvision import transforms as T

    from perceptlab.datamodules.protocols import crop_seed

    normalize = [T.ToTensor(), T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))]
    rows = []
    for path in photos:
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            if card == "iqa":
                torch.manual_seed(crop_seed(T.Resize((512, 384))(image), seed))
                tf = T.Compose([T.Resize((512, 384)), T.RandomCrop(size=(224, 224))] + normalize)
                raw = reference(torch.stack([tf(image) for _ in range(15)])).mean().item()
                rows.append(((raw - (-6.52)) / (3.11 - (-6.52)), raw))
            else:
                out = reference(T.Compose([T.Resize(224), T.CenterCrop(size=(224, 224))] + normalize)(image)[None])
                rows.append(out[0, 0].item() if card == "memorability" else out.softmax(-1)[0].tolist())
    return rows


def test_an_iqa_release_is_scored_with_its_cards_protocol_and_the_same_crops_every_run(tmp_path, capsys):
    reference, release = _release(tmp_path, "perceptCLIP_IQA.pth", 1)
    photos = _photos(tmp_path)
    args = [str(release), "--images", str(tmp_path / "photos"), "--accelerator", "cpu", "--devices", "1",
            "--num_workers", "0", "--batch_size", "2"]
    perceptlab(["predict", *args, "--out", str(tmp_path / "a.csv")])
    assert "scoring with perceptclip_iqa: 15 random 224-px crop(s)" in capsys.readouterr().out
    first = pd.read_csv(tmp_path / "a.csv")
    expected = _card_loop(reference, photos, "iqa")
    assert first["path"].tolist() == [str(p) for p in photos]
    torch.testing.assert_close(torch.tensor(first["raw_score"].tolist()), torch.tensor([r for _, r in expected]),
                               atol=2e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(first["score"].tolist()), torch.tensor([m for m, _ in expected]),
                               atol=2e-6, rtol=0)
    perceptlab(["predict", *args, "--out", str(tmp_path / "a2.csv")])
    assert pd.read_csv(tmp_path / "a2.csv").equals(first)  # another run: the same crops, the same scores exactly
    perceptlab(["predict", *args, "--out", str(tmp_path / "b.csv"), "--batch_size", "3"])
    second = pd.read_csv(tmp_path / "b.csv")  # another batching: the same crops; the floats may differ in the
    assert second["path"].equals(first["path"])  # last bits (a CPU's matmul kernel depends on the batch size)
    torch.testing.assert_close(torch.tensor(second["raw_score"].tolist()), torch.tensor(first["raw_score"].tolist()),
                               atol=1e-6, rtol=0)
    perceptlab(["predict", *args, "--out", str(tmp_path / "c.csv"), "--seed", "1"])
    assert not pd.read_csv(tmp_path / "c.csv")["raw_score"].equals(first["raw_score"])  # the seed draws the crops
    perceptlab(["predict", *args, "--out", str(tmp_path / "d.csv"), "--protocol", "none"])
    assert "raw_score" not in pd.read_csv(tmp_path / "d.csv").columns


@pytest.mark.parametrize(("name", "out", "card"), [("perceptCLIP_Memorability.pth", 1, "memorability"),
                                                   ("perceptCLIP_Emotions.pth", 8, "emotions")])
def test_memorability_and_emotion_releases_resize_and_centre_crop_as_their_cards_do(tmp_path, name, out, card):
    reference, release = _release(tmp_path, name, out)
    photos = _photos(tmp_path)
    perceptlab(["predict", str(release), "--images", str(tmp_path / "photos"), "--out", str(tmp_path / "p.csv"),
                "--accelerator", "cpu", "--devices", "1", "--num_workers", "0"])
    table = pd.read_csv(tmp_path / "p.csv")
    expected = torch.tensor(_card_loop(reference, photos, card))
    got = torch.tensor(table["score"].tolist() if card == "memorability"
                       else table[[f"p_{e}" for e in EMOTIONS]].values.tolist())
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


def test_a_protocol_for_the_wrong_task_or_with_crops_is_refused_before_scoring(tmp_path, capsys):
    _, release = _release(tmp_path, "perceptCLIP_Emotions.pth", 8)
    _photos(tmp_path)
    base = ["predict", str(release), "--images", str(tmp_path / "photos"), "--accelerator", "cpu"]
    with pytest.raises(SystemExit):
        perceptlab([*base, "--protocol", "perceptclip_iqa"])
    assert "perceptclip_iqa is for a regression model; this one is classification" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        perceptlab([*base, "--protocol", "perceptclip_emotions", "--crops", "5"])
    assert "the protocol sets its crops" in capsys.readouterr().err


def test_the_task_test_step_applies_a_cards_protocol(tiny_world):
    from perceptlab.datamodules.perceptual_tasks import LaMemDataModule

    dm = LaMemDataModule(root=str(tiny_world / "lamem"), model_name=TINY, test_protocol="perceptclip_iqa", loader=Loader(num_workers=0))
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["image"].shape[1:] == (15, 3, 224, 224)
    with pytest.raises(ValueError, match="perceptclip_emotions is for classification; LaMemDataModule serves regression"):
        LaMemDataModule(root=str(tiny_world / "lamem"), model_name=TINY, test_protocol="perceptclip_emotions")


def test_a_task_checkpoint_of_an_earlier_version_with_flat_optimiser_arguments_is_scored_alike(tiny_world, tmp_path):
    """Task checkpoints written before the optimiser group kept lr, weight_decay, betas, eps and
    warmup_steps among their hyper-parameters; predict reads them as the group and scores the same."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted((tiny_world / "lamem" / "images").iterdir())[:4]:
        shutil.copy(p, folder / p.name)
    _, ckpt = checkpoint(tmp_path)
    raw = torch.load(ckpt, weights_only=True)
    hparams = dict(raw["hyper_parameters"])
    assert hparams["optim"] == {"lr": 5e-5, "weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8, "warmup_steps": 0}
    old = {**{k: v for k, v in hparams.items() if k != "optim"}, **hparams["optim"]}
    torch.save({**raw, "hyper_parameters": old}, tmp_path / "old.ckpt")
    args = ["--images", str(folder), "--num_workers", "0", "--accelerator", "cpu", "--devices", "1"]
    perceptlab(["predict", str(ckpt), *args, "--out", str(tmp_path / "new.csv")])
    perceptlab(["predict", str(tmp_path / "old.ckpt"), *args, "--out", str(tmp_path / "old.csv")])
    assert pd.read_csv(tmp_path / "old.csv").equals(pd.read_csv(tmp_path / "new.csv"))
