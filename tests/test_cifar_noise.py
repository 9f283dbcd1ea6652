"""CIFAR-100 under noise, the texture-bias paper's Figure 1 set: the official python pickles and the
Hugging Face ``cifar100`` layout read to the same images and labels, ``preset: cifar100`` brings
CLIP_benchmark's templates, and the noise goes in at 32 px (``native``) or after the resize
(``input``). The sets here are the toy world's classification images stored in both layouts."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from perceptlab.callbacks.probes.base import ProbeContext
from perceptlab.callbacks.probes.noise import NoiseRobustnessProbe
from perceptlab.core.backbone import CLIPBackbone
from perceptlab.datamodules.labelled_images import clip_benchmark_templates, read_labelled_images


def cifar_layouts(tiny_world: Path, out: Path) -> tuple[Path, Path, list[str], np.ndarray, list[int]]:
    """The toy classification set at 32 px as ``cifar-100-python`` pickles and as a parquet file with
    Hugging Face cifar100's columns (``img`` bytes, ``fine_label`` ClassLabel)."""
    import datasets

    root = Path(tiny_world) / "classification"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    pixels, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            with Image.open(path) as im:
                pixels.append(np.asarray(im.convert("RGB").resize((32, 32), Image.BICUBIC)))
            labels.append(label)
    pixels = np.stack(pixels)
    folder = out / "cifar-100-python"
    folder.mkdir(parents=True)
    planes = pixels.transpose(0, 3, 1, 2).reshape(len(pixels), -1)  # CIFAR's rows: R, G, B planes
    with open(folder / "test", "wb") as f:
        pickle.dump({b"data": planes, b"fine_labels": labels, b"filenames": [b"x"] * len(labels)}, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [c.encode() for c in classes]}, f, protocol=2)

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=classes)})
    hf = datasets.Dataset.from_dict({"img": [png(a) for a in pixels], "fine_label": labels}, features=features)
    parquet = out / "cifar100" / "test.parquet"
    parquet.parent.mkdir()
    hf.to_parquet(str(parquet))
    return folder, parquet, classes, pixels, labels


def test_cifar_pickles_and_the_hugging_face_layout_read_to_the_same_images(tiny_world, tmp_path):
    folder, parquet, classes, pixels, labels = cifar_layouts(tiny_world, tmp_path)
    pickles = read_labelled_images(folder, "cifar")
    hf = read_labelled_images(str(parquet), "hf", "train", "img", "fine_label", cache_dir=str(tmp_path / "cache"))
    assert pickles.classes == hf.classes == classes and pickles.labels == hf.labels == labels
    rows = list(range(0, len(labels), 7))
    for a, b, i in zip(pickles.images(rows), hf.images(rows), rows):
        b = b if isinstance(b, Image.Image) else Image.open(io.BytesIO(b["bytes"]))
        assert np.array_equal(np.asarray(a), pixels[i]) and np.array_equal(np.asarray(b.convert("RGB")), pixels[i])
    # a pickle that would run code is refused, not run
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"a"]}))
    (tmp_path / "evil" / "test").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(ValueError, match="reading it would run code"):
        read_labelled_images(tmp_path / "evil", "cifar")


def test_the_cifar100_preset_scores_both_layouts_alike_with_noise_at_32px_or_after_the_resize(tiny_world, tmp_path):
    folder, parquet, classes, _, labels = cifar_layouts(tiny_world, tmp_path)
    assert clip_benchmark_templates("cifar100")[:2] == ["a photo of a {}.", "a blurry photo of a {}."]
    torch.manual_seed(0)
    tower = CLIPBackbone("perceptlab-vit-tiny-64").eval()
    ctx = ProbeContext(tower)
    out = {}
    for key, kwargs in {"pickles": dict(root=str(folder)),
                        "hf": dict(hf_dataset=str(parquet), hf_split="train"),
                        "input": dict(root=str(folder), noise_at="input")}.items():
        probe = NoiseRobustnessProbe(preset="cifar100", sigmas=[0.1, 0.4], max_items=None,
                                     noise_at=kwargs.pop("noise_at", "native"), **kwargs)
        assert len(probe.templates) == 18 and probe.dataset == "cifar100"
        probe.prepare(tower)
        assert probe.classes == classes and probe.n_items == len(labels)
        with torch.inference_mode():
            out[key] = probe.evaluate(ctx)
    assert out["pickles"] == out["hf"]  # the same images, labels, noise and resize
    name = "noise/cifar100"
    assert set(out["pickles"]) == {f"{name}/acc@sigma={s}" for s in ("0", "0.1", "0.4")} | \
        {f"{name}/drop@sigma={s}" for s in ("0.1", "0.4")} | {f"{name}/drop"}
    acc = out["pickles"]
    assert acc[f"{name}/drop@sigma=0.4"] == pytest.approx(1 - acc[f"{name}/acc@sigma=0.4"] / acc[f"{name}/acc@sigma=0"])
    # where the noise goes changes what the model sees: 32-px noise is upsampled with the image
    assert out["input"] != out["pickles"]
