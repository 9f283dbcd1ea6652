"""The toy world writes every real format, readable by the real readers, and follows its rules."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import itertools

from perceptlab.core.scores import cue_conflict_labels
from perceptlab.datamodules import toyworld as tw
from perceptlab.datamodules.toyworld.cue_conflict import _cue_image

NIGHTS_HEADER = ["id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "split",
                 "is_imagenet", "prompt"]
CUE_RE = re.compile(r"^([a-z]+)(\d+)-([a-z]+)(\d+)\.png$")


def _open_ok(path: Path, size: int = 64) -> None:
    assert path.is_file(), path
    with Image.open(path) as im:
        im.load()
        assert im.size == (size, size), path
        assert im.mode == "RGB", path


# ----------------------------------------------------------------------------------------------
# constants and manifest
# ----------------------------------------------------------------------------------------------


def test_public_constants():
    assert tw.CLASSES == ["airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat",
                          "chair", "clock", "dog", "elephant", "keyboard", "knife", "oven", "truck"]
    assert tw.EMOTIONS == ["amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"]
    table = tw.CLASS_TABLE
    assert [r["name"] for r in table] == tw.CLASSES
    for key in ("shape", "texture", "colour"):  # every class has its own shape, texture and colour
        assert len({r[key] for r in table}) == 16, key


def test_manifest(tiny_world):
    m = json.loads((tiny_world / "world.json").read_text())
    assert m["seed"] == 0 and m["scale"] == "tiny" and m["image_size"] == 64
    assert [c["name"] for c in m["classes"]] == tw.CLASSES
    assert m["rules"]["nights"]["weights"] == tw.NIGHTS_WEIGHTS
    assert m["rules"]["iqa"]["higher_is_better"] is True
    for rel in m["paths"].values():
        assert (tiny_world / rel).exists(), rel
    # counts match what is on disk
    assert m["counts"]["classification"]["images"] == len(list((tiny_world / "classification").rglob("*.png")))
    assert m["counts"]["cue_conflict"]["images"] == len(list((tiny_world / "cue_conflict").rglob("*.png")))
    assert m["counts"]["lamem"]["images"] == len(list((tiny_world / "lamem" / "images").glob("*.jpg")))


# ----------------------------------------------------------------------------------------------
# NIGHTS
# ----------------------------------------------------------------------------------------------


def test_nights_format(tiny_world):
    root = tiny_world / "nights"
    df = pd.read_csv(root / "data.csv")
    assert list(df.columns) == NIGHTS_HEADER
    assert df["id"].is_unique
    assert set(df["split"]) == {"train", "val", "test"}
    assert (df["split"] == "train").sum() == 120 and (df["split"] == "val").sum() == 40
    test = df[df["split"] == "test"]
    assert df["is_imagenet"].dtype == bool
    assert test["is_imagenet"].any() and (~test["is_imagenet"]).any()  # test_imagenet / test_no_imagenet
    np.testing.assert_allclose(df["left_vote"] + df["right_vote"], 1.0, atol=1e-6)
    assert ((df["right_vote"] >= 0) & (df["right_vote"] <= 1)).all()
    # shares are counts over `votes`
    np.testing.assert_allclose(df["right_vote"] * df["votes"], np.round(df["right_vote"] * df["votes"]), atol=1e-4)
    assert df["votes"].between(6, 10).mean() > 0.8
    assert (df["votes"] < 6).any()
    assert ((df["right_vote"] > 0) & (df["right_vote"] < 1)).any()  # some rows are not unanimous
    assert df["prompt"].str.startswith("a photo of").all()
    for _, r in df.iterrows():
        g, j = f"{r['id'] // 100:03d}", f"{r['id'] % 100:03d}"
        assert r["ref_path"] == f"ref/{g}/{j}.png"
        assert (r["left_path"], r["right_path"]) == (f"distort/{g}/{j}_0.png", f"distort/{g}/{j}_1.png")
    for rel in df[["ref_path", "left_path", "right_path"]].to_numpy().ravel()[::7]:
        _open_ok(root / rel)


def test_nights_images_differ_as_annotated(tiny_world):
    root = tiny_world / "nights"
    df = pd.read_csv(root / "data.csv")
    ann = pd.read_csv(root / "toy_annotations.csv")
    for (_, r), (_, a) in list(zip(df.iterrows(), ann.iterrows()))[:40]:
        ref = np.asarray(Image.open(root / r["ref_path"]), np.int16)
        for side, rel in (("left", r["left_path"]), ("right", r["right_path"])):
            img = np.asarray(Image.open(root / rel), np.int16)
            changed = any(a[f"{side}_{c}"] > 0 for c in tw.NIGHTS_CUES)
            assert changed
            assert np.abs(img - ref).mean() > 0.5, (r["id"], side)


def _majority_closer(df: pd.DataFrame) -> pd.Series:
    """+1 when most people found right closer, -1 when left, 0 on a tie."""
    return np.sign(df["right_vote"] - 0.5)


def test_nights_human_rule(tiny_world):
    root = tiny_world / "nights"
    df = pd.read_csv(root / "data.csv")
    ann = pd.read_csv(root / "toy_annotations.csv")
    assert (ann["id"] == df["id"]).all()
    # the stored distances are the documented weighted sums, and p the documented sigmoid
    for side in ("left", "right"):
        d = sum(tw.NIGHTS_WEIGHTS[c] * ann[f"{side}_{c}"] for c in tw.NIGHTS_CUES)
        np.testing.assert_allclose(d, ann[f"d_{side}"], atol=2e-3)
    p = 1 / (1 + np.exp(-(ann["d_left"] - ann["d_right"]) / tw.NIGHTS_TEMPERATURE))
    np.testing.assert_allclose(p, ann["p_right"], atol=1e-4)

    # single-cue rows: one side changed shape or colour, the other only texture/position/noise;
    # the majority must find the weakly weighted change closer.
    single = ann["mode"] == "single"
    strong, weak = ("shape", "colour"), ("texture", "position", "noise")

    def only(side, cues):
        return ann[[f"{side}_{c}" for c in cues]].gt(0).any(axis=1)

    right_weak = single & only("left", strong) & only("right", weak)
    left_weak = single & only("right", strong) & only("left", weak)
    maj = _majority_closer(df)
    decided = maj != 0
    assert (right_weak & decided).sum() + (left_weak & decided).sum() >= 20
    agree = (maj[right_weak & decided] > 0).tolist() + (maj[left_weak & decided] < 0).tolist()
    assert np.mean(agree) >= 0.85
    # and specifically texture-only versus shape-only changes
    tex_vs_shape = (single & only("left", ["shape"]) & only("right", ["texture"])) | (
        single & only("right", ["shape"]) & only("left", ["texture"]))
    rows = np.flatnonzero(tex_vs_shape & decided)
    assert len(rows) >= 3
    texture_closer = [(maj[i] > 0) == (ann.loc[i, "right_texture"] > 0) for i in rows]
    assert np.mean(texture_closer) >= 0.8

    # an observer with the human weights reaches a high 2AFC; a texture-only observer does not.
    def two_afc(d0, d1, pr):
        return float(np.mean((d0 < d1) * (1 - pr) + (d1 < d0) * pr + 0.5 * (d0 == d1)))

    pr = df["right_vote"].to_numpy()
    human = two_afc(ann["d_left"].to_numpy(), ann["d_right"].to_numpy(), pr)
    texture = two_afc(ann["left_texture"].to_numpy(), ann["right_texture"].to_numpy(), pr)
    assert human > 0.8
    assert human - texture > 0.2


def test_share_and_distance_functions():
    assert tw.share_right(1.0, 1.0) == pytest.approx(0.5)
    assert tw.share_right(3.0, 0.0) > 0.99  # left far away: people pick right
    shape_only = tw.perceived_distance({"shape": 0.5})
    tex_only = tw.perceived_distance({"texture": 1.0})
    assert shape_only > tex_only
    assert tw.perceived_distance({"colour": 0.5}) > tw.perceived_distance({"noise": 1.0, "position": 1.0})


# ----------------------------------------------------------------------------------------------
# image-text
# ----------------------------------------------------------------------------------------------


def test_image_text_webdataset(tiny_world):
    import webdataset as wds

    root = tiny_world / "image_text"
    tars = sorted((root / "shards").glob("*.tar"))
    assert [t.name for t in tars] == ["00000.tar", "00001.tar"]
    for t in tars:
        assert (root / "shards" / f"{t.stem}_stats.json").is_file()
        meta = pd.read_parquet(root / "shards" / f"{t.stem}.parquet")
        assert {"key", "caption", "status", "width", "height"} <= set(meta.columns)
        assert (meta["status"] == "success").all()
    url = str(root / "shards" / "{00000..00001}.tar")
    samples = list(wds.WebDataset(url, shardshuffle=False).decode("pil"))
    assert len(samples) == 256
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == 256
    assert all(re.fullmatch(r"\d{9}", k) for k in keys)
    assert "000010000" in keys  # shard 1, sample 0 (img2dataset numbering)
    for s in samples:
        assert isinstance(s["jpg"], Image.Image) and s["jpg"].size == (64, 64)
        assert isinstance(s["txt"], str) and s["txt"]
        j = s["json"]
        assert j["key"] == s["__key__"] and j["caption"] == s["txt"] and j["status"] == "success"
        assert (j["width"], j["height"]) == (64, 64)
        tm = j["toyworld"]  # captions name class, colour, size and background
        assert tm["class"] in s["txt"] and tm["colour"] in s["txt"] and tm["size"] in s["txt"]
    val = list(wds.WebDataset(str(root / "val_shards" / "00000.tar"), shardshuffle=False).decode("pil"))
    assert len(val) == 64


def test_image_text_csv_and_hf(tiny_world):
    import datasets
    import webdataset as wds

    root = tiny_world / "image_text"
    df = pd.read_csv(root / "pairs.csv", sep="\t")
    assert list(df.columns) == ["filepath", "title"]
    assert len(df) == 256
    for rel in df["filepath"]:
        assert rel.startswith("images/")
    for rel in df["filepath"][::16]:
        _open_ok(root / rel)
    vdf = pd.read_csv(root / "val_pairs.csv", sep="\t")
    assert list(vdf.columns) == ["filepath", "title"] and len(vdf) == 64
    assert not set(vdf["filepath"]) & set(df["filepath"])

    hf = datasets.load_dataset("parquet", data_files=str(root / "hf" / "train.parquet"), split="train",
                               cache_dir=str(tiny_world / ".hf_cache"))
    assert hf.column_names == ["image", "caption"]
    assert isinstance(hf.features["image"], datasets.Image)
    assert len(hf) == 256
    assert hf[0]["image"].size == (64, 64)

    # the three formats carry the same training set, in the same order
    samples = list(wds.WebDataset(str(root / "shards" / "{00000..00001}.tar"), shardshuffle=False))
    assert [s["txt"].decode() for s in samples] == df["title"].tolist() == hf["caption"]
    first_csv = (root / df["filepath"][0]).read_bytes()
    assert samples[0]["jpg"] == first_csv
    assert hf.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"] == first_csv


# ----------------------------------------------------------------------------------------------
# IQA
# ----------------------------------------------------------------------------------------------

IQA_SETS = {
    "koniq": ("meta_info_KonIQ10kDataset.csv", ["img_name", "mos", "std", "split"]),
    "livec": ("meta_info_LIVEChallengeDataset.csv", ["img_name", "mos", "std"]),
    "spaq": ("meta_info_SPAQDataset.csv",
             ["img_name", "mos", "brightness", "colorfulness", "contrast", "noisiness", "sharpness"]),
}


@pytest.mark.parametrize("name", sorted(IQA_SETS))
def test_iqa_nr_format(tiny_world, name):
    fname, header = IQA_SETS[name]
    root = tiny_world / "iqa" / name
    df = pd.read_csv(root / fname)
    assert list(df.columns) == header
    assert len(df) == 64 and df["img_name"].is_unique
    lo, hi = tw.IQA_RANGES[name]
    assert df["mos"].between(lo, hi).all()
    assert df["mos"].std() > 0.1 * (hi - lo)
    for n in df["img_name"]:
        _open_ok(root / "images" / n)
    if name == "koniq":
        assert set(df["split"]) == {"train", "val", "test"}


@pytest.mark.parametrize("name,fname,score,ref_dir,dist_dir", [
    ("tid2013", "meta_info_TID2013Dataset.csv", "mos", "reference_images", "distorted_images"),
    ("kadid10k", "meta_info_KADID10kDataset.csv", "dmos", "images", "images"),
])
def test_iqa_fr_format_and_mos_rule(tiny_world, name, fname, score, ref_dir, dist_dir):
    root = tiny_world / "iqa" / name
    df = pd.read_csv(root / fname)
    assert list(df.columns) == ["ref_name", "dist_name", score, "std"]
    n_types = len(tw.DISTORTIONS)
    assert len(df) == df["ref_name"].nunique() * n_types * 5
    for r in df["ref_name"].unique():
        _open_ok(root / ref_dir / r)
    for d in df["dist_name"]:
        _open_ok(root / dist_dir / d)
    assert (df["std"] > 0).all()
    parts = df["dist_name"].str.extract(r"^[iI](\d+)_(\d+)_(\d+)\.")
    df["type"], df["level"] = parts[1].astype(int), parts[2].astype(int)
    table = df.groupby(["type", "level"])[score].mean().unstack()
    assert table.shape == (n_types, 5)
    # MOS (higher is better) falls with the distortion level, for every type
    assert (np.diff(table.to_numpy(), axis=1) < 0).all(), table
    # and the MOS follows the psychometric rule (up to rater noise and clipping)
    lo, hi = tw.IQA_RANGES[name]
    expected = np.array([[lo + (tw.quality(k, L) - 1) * (hi - lo) / 4 for L in range(1, 6)]
                         for k, _, _ in tw.DISTORTIONS])
    assert np.abs(table.to_numpy() - expected).max() < 0.1 * (hi - lo)


def test_iqa_images_are_distorted(tiny_world):
    root = tiny_world / "iqa" / "kadid10k" / "images"
    ref = np.asarray(Image.open(root / "I01.png"), np.float32)
    errs = [[np.abs(np.asarray(Image.open(root / f"I01_{t:02d}_{L:02d}.png"), np.float32) - ref).mean()
             for L in range(1, 6)] for t in range(1, len(tw.DISTORTIONS) + 1)]
    errs = np.array(errs)
    assert (errs[:, -1] > errs[:, 0]).all()  # level 5 departs more from the reference than level 1


def test_quality_rule():
    for kind, _, _ in tw.DISTORTIONS:
        qs = [tw.quality(kind, L) for L in range(6)]
        assert all(a > b for a, b in itertools.pairwise(qs))
        assert 1 <= qs[-1] < qs[0] <= 5


# ----------------------------------------------------------------------------------------------
# cue conflict, classification
# ----------------------------------------------------------------------------------------------


def test_cue_conflict(tiny_world):
    root = tiny_world / "cue_conflict"
    assert sorted(p.name for p in root.iterdir()) == sorted(tw.CLASSES)
    files = sorted(root.rglob("*.png"))
    assert 90 <= len(files) <= 120
    pairs = []
    for f in files:
        m = CUE_RE.match(f.name)
        assert m, f.name
        shape, texture = m.group(1), m.group(3)
        assert shape == f.parent.name
        assert shape in tw.CLASSES and texture in tw.CLASSES
        assert cue_conflict_labels(f.name) == (shape, texture)  # the probes' parser reads it
        pairs.append((shape, texture))
    same = sum(s == t for s, t in pairs)
    assert 1 <= same < len(pairs) // 4
    _open_ok(files[0])


def test_cue_conflict_images_combine_cues():
    """The cue-conflict image keeps the silhouette of the shape class and the colour of the texture class."""
    a = _cue_image("car", "bird", 1, 1, 64, seed=0)
    b = _cue_image("car", "boat", 1, 1, 64, seed=0)
    c = _cue_image("bear", "bird", 1, 1, 64, seed=0)
    def mask(img):
        bg = img[0, 0].astype(np.float32)  # the plain light background
        return np.abs(img.astype(np.float32) - bg).sum(-1) > 40

    iou = lambda m1, m2: (m1 & m2).sum() / (m1 | m2).sum()
    assert iou(mask(a), mask(b)) > 0.9  # same shape instance, different texture
    assert iou(mask(a), mask(c)) < 0.8  # different shape
    yellow = np.array(tw.COLOURS["yellow"], np.float32)
    blue = np.array(tw.COLOURS["blue"], np.float32)
    ma = a[mask(a)].astype(np.float32).mean(0)
    assert np.linalg.norm(ma - yellow) < np.linalg.norm(ma - blue)


def test_classification(tiny_world):
    root = tiny_world / "classification"
    assert sorted(p.name for p in root.iterdir()) == sorted(tw.CLASSES)
    for cls in tw.CLASSES:
        files = sorted((root / cls).glob("*.png"))
        assert len(files) == 8
        _open_ok(files[0])


# ----------------------------------------------------------------------------------------------
# LaMem, EmoSet
# ----------------------------------------------------------------------------------------------


def test_lamem(tiny_world):
    root = tiny_world / "lamem"
    names = {p.name for p in (root / "images").glob("*.jpg")}
    assert len(names) == 200
    for k in range(1, 6):
        seen = {}
        for split in ("train", "val", "test"):
            lines = (root / "splits" / f"{split}_{k}.txt").read_text().splitlines()
            assert lines
            for line in lines:
                fname, score = line.split(" ")
                assert fname in names and 0.0 <= float(score) <= 1.0
                assert fname not in seen
                seen[fname] = float(score)
        assert set(seen) == names
    for n in sorted(names)[:10]:
        _open_ok(root / "images" / n)
    scores = np.array(list(seen.values()))
    assert scores.std() > 0.1


def test_memorability_rule():
    base = {"size": 0.25, "contrast": 0.3, "saturation": 0.5, "clutter": 1, "noise": 0.02}
    m0 = tw.memorability(**base)
    assert tw.memorability(**{**base, "size": 0.35}) > m0
    assert tw.memorability(**{**base, "contrast": 0.6}) > m0
    assert tw.memorability(**{**base, "saturation": 0.9}) > m0
    assert tw.memorability(**{**base, "clutter": 3}) < m0
    assert tw.memorability(**{**base, "noise": 0.08}) < m0


def _stats(path: Path) -> np.ndarray:
    a = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
    return np.concatenate([a.mean((0, 1)), a.std((0, 1)), a[:16].mean((0, 1)), a[-16:].mean((0, 1))])


def test_emoset(tiny_world):
    root = tiny_world / "emoset"
    lists = {s: json.loads((root / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    assert sum(len(v) for v in lists.values()) == 8 * 20
    for split, items in lists.items():
        assert items, split
        for emo, img, ann in items:
            assert emo in tw.EMOTIONS
            assert re.fullmatch(rf"image/{emo}/{emo}_\d{{5}}\.jpg", img)
            assert re.fullmatch(rf"annotation/{emo}/{emo}_\d{{5}}\.json", ann)
            _open_ok(root / img)
            a = json.loads((root / ann).read_text())
            assert a["emotion"] == emo
            assert 0 <= a["brightness"] <= 1 and 0 <= a["colorfulness"] <= 1
            assert set(a["object"]) <= set(tw.CLASSES)
    assert {e for e, _, _ in lists["train"]} == set(tw.EMOTIONS)

    # the emotion is learnable from simple colour statistics: nearest centroid beats chance clearly
    tr, te = lists["train"], lists["test"] + lists["val"]
    x = np.stack([_stats(root / p) for _, p, _ in tr])
    y = np.array([tw.EMOTIONS.index(e) for e, _, _ in tr])
    xt = np.stack([_stats(root / p) for _, p, _ in te])
    yt = np.array([tw.EMOTIONS.index(e) for e, _, _ in te])
    centroids = np.stack([x[y == k].mean(0) for k in range(8)])
    pred = ((xt[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (pred == yt).mean() > 0.4  # chance is 0.125


# ----------------------------------------------------------------------------------------------
# determinism
# ----------------------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".hf_cache" not in p.parts}


def test_determinism(tiny_world, tmp_path):
    again = tmp_path / "again"
    other = tmp_path / "other"
    tw.synthesize(again, seed=0, scale="tiny", progress=False)
    a, b = _files(tiny_world), _files(again)
    assert a.keys() == b.keys()
    different = [k for k in a if a[k] != b[k]]
    assert not different, different[:10]

    tw.synthesize(other, seed=1, scale="tiny", progress=False)
    c = _files(other)
    for rel in ("nights/data.csv", "nights/ref/000/000.png", "image_text/pairs.csv",
                "image_text/shards/00000.tar", "iqa/kadid10k/meta_info_KADID10kDataset.csv",
                "lamem/splits/train_1.txt", "emoset/train.json"):
        assert a[rel] != c[rel], rel


def test_render_is_pure():
    obj = tw.ObjectSpec(shape="star5", texture="speckle", colour=(200, 30, 30), radius=0.3)
    s = tw.Scene("grass", [obj], seed=5, noise=0.05)
    img = tw.render(s, 64)
    assert img.dtype == np.uint8 and img.shape == (64, 64, 3)
    np.testing.assert_array_equal(img, tw.render(s, 64))
    assert not np.array_equal(img, tw.render(tw.Scene("grass", [obj], seed=6, noise=0.05), 64))
    assert tw.render(s, 96).shape == (96, 96, 3)
