"""NIGHTS loading: columns by name, vote filter, the five splits, named errors, DreamSim transform."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from perceptlab.datamodules.nights import NightsDataModule, NightsTriplets, load_nights_table
from perceptlab.core.backbone import CLIPBackbone
from perceptlab.datamodules.loader import Loader

TINY = "perceptlab-vit-tiny-64"

# Header order deliberately differs from the real file, with an extra column: columns go by name.
HEADER = ["prompt", "extra", "split", "id", "right_vote", "left_vote", "votes", "ref_path", "left_path",
          "right_path", "is_imagenet"]


def write_image(path: Path, seed: int, size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def write_nights(root: Path, rows: list[dict], is_imagenet_format=lambda b: "True" if b else "False") -> Path:
    """A NIGHTS folder. Each row: ``split``, ``p`` (right_vote), ``votes``, ``same`` ("left": ref and
    left are one file, "right": ref and right are one file, "all": all three, None: three images),
    optional ``imagenet``. Every image is distinct random noise unless shared as said."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HEADER)
        writer.writeheader()
        for i, row in enumerate(rows):
            ref = f"ref/{i // 100:03d}/{i % 100:03d}.png"
            left = f"distort/{i // 100:03d}/{i % 100:03d}_0.png"
            right = f"distort/{i // 100:03d}/{i % 100:03d}_1.png"
            same = row.get("same")
            write_image(root / ref, seed=3 * i)
            if same in ("left", "all"):
                left = ref
            else:
                write_image(root / left, seed=3 * i + 1)
            if same in ("right", "all"):
                right = ref
            else:
                write_image(root / right, seed=3 * i + 2)
            writer.writerow({
                "prompt": "a photo", "extra": "x", "split": row["split"], "id": i,
                "right_vote": f"{row['p']:.6f}", "left_vote": f"{1 - row['p']:.6f}", "votes": row["votes"],
                "ref_path": ref, "left_path": left, "right_path": right,
                "is_imagenet": is_imagenet_format(row.get("imagenet", False)),
            })
    return root


# A split of every kind, with the 2AFC any model must score on it (see test_perceptual_init).
ROWS = [
    {"split": "train", "p": 1.0, "votes": 6},
    {"split": "train", "p": 0.0, "votes": 9},
    {"split": "train", "p": 1.0, "votes": 4},                    # dropped: < 6 votes
    {"split": "val", "p": 0.0, "votes": 6, "same": "left"},      # model picks left, people too: 1
    {"split": "val", "p": 1.0, "votes": 7, "same": "left"},      # model picks left, people right: 0
    {"split": "val", "p": 1.0, "votes": 10, "same": "right"},    # both pick right: 1
    {"split": "val", "p": 1.0, "votes": 6, "same": "right"},     # 1
    {"split": "val", "p": 1.0, "votes": 8, "same": "all"},       # tie: 0.5
    {"split": "val", "p": 1.0, "votes": 5, "same": "left"},      # dropped; would score 0
    {"split": "val", "p": 1.0, "votes": 3, "same": "left"},      # dropped; would score 0
    {"split": "test", "p": 0.0, "votes": 6, "same": "left", "imagenet": True},     # 1
    {"split": "test", "p": 0.0, "votes": 6, "same": "right", "imagenet": True},    # 0
    {"split": "test", "p": 1.0, "votes": 6, "same": "right", "imagenet": True},    # 1
    {"split": "test", "p": 1.0, "votes": 6, "same": "left", "imagenet": False},    # 0
    {"split": "test", "p": 0.0, "votes": 2, "same": "left", "imagenet": False},    # dropped
]
EXPECTED_2AFC = {"val": (1 + 0 + 1 + 1 + 0.5) / 5, "test_imagenet": 2 / 3, "test_no_imagenet": 0.0, "test": 2 / 4}
EXPECTED_ROWS = {"train": 2, "val": 5, "test": 4, "test_imagenet": 3, "test_no_imagenet": 1}


@pytest.fixture(scope="module")
def nights_root(tmp_path_factory) -> Path:
    return write_nights(tmp_path_factory.mktemp("nights"), ROWS)


@pytest.mark.parametrize("split", list(EXPECTED_ROWS))
def test_splits_and_vote_filter(nights_root, split):
    table = load_nights_table(nights_root, split)
    assert len(table) == EXPECTED_ROWS[split]
    assert (table["votes"] >= 6).all()
    base = "test" if split.startswith("test") else split
    assert set(table["split"]) == {base}
    if split == "test_imagenet":
        assert table["is_imagenet"].all()
    if split == "test_no_imagenet":
        assert not table["is_imagenet"].any()
    assert list(table.index) == list(range(len(table)))


def test_min_votes_is_a_parameter(nights_root):
    assert len(load_nights_table(nights_root, "val", min_votes=0)) == 7
    assert len(load_nights_table(nights_root, "val", min_votes=7)) == 3


@pytest.mark.parametrize("fmt", [lambda b: int(b), lambda b: "TRUE" if b else "false", lambda b: b])
def test_is_imagenet_formats(tmp_path, fmt):
    root = write_nights(tmp_path, ROWS[10:15], is_imagenet_format=fmt)
    assert len(load_nights_table(root, "test_imagenet")) == 3
    assert len(load_nights_table(root, "test_no_imagenet")) == 1


def test_right_vote_is_the_target_read_by_name(nights_root):
    ds = NightsTriplets(nights_root, "val", transform=lambda im: torch.zeros(1))
    # Swapped header order: a positional reader would pick up "left_vote" or "votes" here.
    assert [ds[i]["p"] for i in range(len(ds))] == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert [ds[i]["id"] for i in range(len(ds))] == [3, 4, 5, 6, 7]


def test_dataset_item_is_dreamsim_preprocessed(nights_root):
    backbone = CLIPBackbone(TINY, vision_only=True)
    ds = NightsTriplets(nights_root, "train", transform=backbone.transform(train=False))
    item = ds[0]
    assert set(item) == {"ref", "left", "right", "p", "id"}
    for key in ("ref", "left", "right"):
        assert item[key].shape == (3, 64, 64) and item[key].dtype == torch.float32
    raw = torch.from_numpy(np.array(Image.open(nights_root / "ref/000/000.png").convert("RGB"))).permute(2, 0, 1) / 255
    mean, std = torch.tensor(backbone.image_mean)[:, None, None], torch.tensor(backbone.image_std)[:, None, None]
    torch.testing.assert_close(item["ref"], (raw - mean) / std)  # 64 px in, 64 px model: no resampling
    assert isinstance(item["p"], float)


def test_standalone_transform_equals_the_backbones(nights_root, tmp_path):
    big = tmp_path / "big.png"
    write_image(big, seed=7, size=100)  # not square-equal to the model: resize + crop really act
    image = Image.open(big).convert("RGB")
    backbone = CLIPBackbone(TINY, vision_only=True)
    _, eval_tf = NightsDataModule(str(nights_root), model_name=TINY, uint8_images=False).transforms()
    assert torch.equal(eval_tf(image), backbone.transform(train=False)(image))
    _, eval_u8 = NightsDataModule(str(nights_root), model_name=TINY).transforms()
    assert torch.equal(eval_u8(image), backbone.transform(train=False, uint8=True)(image))
    _, eval_96 = NightsDataModule(str(nights_root), model_name=TINY, image_size=96).transforms()
    assert eval_96(image).shape == (3, 96, 96)


def test_datamodule_loaders(nights_root):
    dm = NightsDataModule(str(nights_root), model_name=TINY,
                          test_splits=["test_imagenet", "test_no_imagenet"], loader=Loader(batch_size=2, num_workers=0))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["ref"].shape == (2, 3, 64, 64) and batch["p"].shape == (2,)
    assert len(dm.val_dataloader().dataset) == 5
    dm.setup("test")
    assert [len(dl.dataset) for dl in dm.test_dataloader()] == [3, 1]


# ------------------------------------------------------------------------------- named errors
def test_missing_table(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.csv"):
        load_nights_table(tmp_path, "train")


def test_unknown_split(nights_root):
    with pytest.raises(ValueError, match="'validation'.*test_no_imagenet"):
        load_nights_table(nights_root, "validation")
    with pytest.raises(ValueError, match="'dev'"):
        NightsDataModule(str(nights_root), test_splits=["dev"])


def test_missing_column_is_named(nights_root, tmp_path):
    lines = (nights_root / "data.csv").read_text().splitlines()
    (tmp_path / "data.csv").write_text("\n".join([lines[0].replace("right_vote", "rightvote"), *lines[1:]]))
    with pytest.raises(ValueError, match="missing column.*'right_vote'"):
        load_nights_table(tmp_path, "train")


def test_split_empty_after_vote_filter(tmp_path):
    root = write_nights(tmp_path, [{"split": "train", "p": 1.0, "votes": 6}, {"split": "val", "p": 1.0, "votes": 5}])
    with pytest.raises(ValueError, match=r"split 'val' has no rows with votes >= 6 \(1 rows before"):
        load_nights_table(root, "val")


def test_vote_share_out_of_range(tmp_path):
    root = write_nights(tmp_path, [{"split": "train", "p": 6.0, "votes": 6}])
    with pytest.raises(ValueError, match=r"right_vote.*\[0, 1\].*id=0 \(6\.0\)"):
        load_nights_table(root, "train")


def test_missing_files_named_with_count(nights_root, tmp_path):
    rows = [{"split": "train", "p": 1.0, "votes": 6} for _ in range(8)]
    root = write_nights(tmp_path / "n", rows)
    for i in range(8):
        (root / f"distort/000/{i:03d}_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"8 referenced image file\(s\) missing: distort/000/000_1\.png "
                                                r"\(id=0, right_path\).*\(and 3 more\)"):
        load_nights_table(root, "train")
    # Only the requested split's files are needed.
    assert len(load_nights_table(nights_root, "val")) == 5


def test_unreadable_image_stops_setup(tmp_path):
    root = write_nights(tmp_path, [{"split": "train", "p": 1.0, "votes": 6}, {"split": "train", "p": 0.0, "votes": 6}])
    (root / "distort/000/001_0.png").write_bytes(b"not a png")
    dm = NightsDataModule(str(root), model_name=TINY, loader=Loader(num_workers=0))
    with pytest.raises(ValueError, match=r"1 unreadable NIGHTS image.*distort/000/001_0\.png"):
        dm.setup("fit")
    # Without the set-up check, the loader still names the file when it fails to decode it.
    ds = NightsTriplets(root, "train", transform=lambda im: im, verify_images=False)
    with pytest.raises(OSError, match=r"distort/000/001_0\.png"):
        ds[1]


def test_uint8_batches_give_the_embeddings_of_the_float_transform(nights_root):
    """The default loader sends uint8 images and the backbone normalises them: same numbers."""
    backbone = CLIPBackbone(TINY, vision_only=True).eval()
    floats = NightsTriplets(nights_root, "train", transform=backbone.transform(train=False))
    u8 = NightsDataModule(str(nights_root), model_name=TINY, val_split="train", loader=Loader(batch_size=4, num_workers=0))
    u8.setup("validate")
    batch = next(iter(u8.val_dataloader()))
    n = len(batch["p"])
    assert batch["ref"].dtype == torch.uint8 and batch["ref"].shape == (n, 3, 64, 64) and n > 1
    reference = torch.stack([floats[i]["ref"] for i in range(n)])
    torch.testing.assert_close(backbone.prepare_images(batch["ref"]), reference, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_image(batch["ref"]), backbone.encode_image(reference), rtol=0, atol=0)


def test_uint8_transform_refuses_float_tensor_steps():
    from torchvision import transforms as T

    from perceptlab.core.backbone import uint8_transform

    with pytest.raises(ValueError, match="RandomErasing"):
        uint8_transform(T.Compose([T.CenterCrop(8), T.ToTensor(), T.RandomErasing(), T.Normalize([0.5] * 3, [0.5] * 3)]))
    kept = uint8_transform(T.Compose([T.CenterCrop(8), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]))
    assert [type(t).__name__ for t in kept.transforms] == ["CenterCrop", "PILToTensor"]
