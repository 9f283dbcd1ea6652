"""Captioned image-text pairs: webdataset shards, an open_clip CSV, a Hugging Face parquet file."""
from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np

from perceptlab.datamodules.toyworld.common import (
    _canonical,
    _jpg_bytes,
    _Progress,
    _rng,
    _save,
    _seed,
    _size,
    _write_csv,
    ToySet,
)
from perceptlab.datamodules.toyworld.render import Scene, render
from perceptlab.datamodules.toyworld.rules import _TEMPLATES, caption
from perceptlab.datamodules.toyworld.world import _CLASS, BACKGROUNDS, CLASSES, COLOURS

# --- image-text ------------------------------------------------------------------------------


def _image_text_sample(rng: np.random.Generator, size: int) -> tuple[bytes, str, dict]:
    cls = CLASSES[int(rng.integers(16))]
    colour = _CLASS[cls]["colour"] if rng.random() < 0.7 else list(COLOURS)[int(rng.integers(16))]
    size_name, radius = _size(rng)
    bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    scene = Scene(background=bg, objects=[_canonical(cls, rng, radius, colour=colour)], seed=_seed(rng))
    text = caption(cls, colour, size_name, bg, template=int(rng.integers(len(_TEMPLATES))))
    meta = {"class": cls, "colour": colour, "size": size_name, "background": bg}
    return _jpg_bytes(render(scene, size)), text, meta


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _write_shard(tar_path: Path, shard: int, samples: list[tuple[bytes, str, dict]], size: int,
                 split: str) -> list[str]:
    import hashlib

    import pandas as pd

    tar_path.parent.mkdir(parents=True, exist_ok=True)
    keys, records = [], []
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (jpg, text, meta) in enumerate(samples):
            key = f"{shard * 10000 + i:09d}"
            sha = hashlib.sha256(jpg).hexdigest()
            rec = {"url": f"toyworld://image_text/{split}/{key}.jpg", "caption": text, "key": key,
                   "status": "success", "error_message": None, "width": size, "height": size,
                   "original_width": size, "original_height": size, "exif": None, "sha256": sha}
            js = dict(rec, toyworld=meta)
            _tar_add(tar, f"{key}.jpg", jpg)
            _tar_add(tar, f"{key}.txt", text.encode("utf-8"))
            _tar_add(tar, f"{key}.json", json.dumps(js, sort_keys=True).encode("utf-8"))
            keys.append(key)
            records.append(rec)
    stem = tar_path.with_suffix("")
    stats = {"count": len(samples), "successes": len(samples), "failed_to_download": 0,
             "failed_to_resize": 0, "duration": 0.0, "bytes_downloaded": 0, "start_time": 0.0,
             "end_time": 0.0, "status_dict": {"success": len(samples)}}
    Path(f"{stem}_stats.json").write_text(json.dumps(stats, indent=4, sort_keys=True) + "\n")
    pd.DataFrame.from_records(records).to_parquet(f"{stem}.parquet", index=False)
    return keys


def _write_image_text(root: Path, seed: int, cfg: dict, size: int, progress: _Progress) -> dict:
    rng = _rng(seed, "image_text")
    out = root / "image_text"
    n_train, n_shards, n_val = cfg["train"], cfg["shards"], cfg["val"]
    advance = progress.task("image_text", n_train + n_val)
    train = []
    for _ in range(n_train):
        train.append(_image_text_sample(rng, size))
        advance()
    val = []
    for _ in range(n_val):
        val.append(_image_text_sample(rng, size))
        advance()
    per = math.ceil(n_train / n_shards)
    pairs, hf_images, hf_captions = [], [], []
    for s in range(n_shards):
        chunk = train[s * per:(s + 1) * per]
        keys = _write_shard(out / "shards" / f"{s:05d}.tar", s, chunk, size, "train")
        for key, (jpg, text, _) in zip(keys, chunk):
            rel = f"images/train/{key}.jpg"
            _save(out / rel, jpg)
            pairs.append([rel, text])
            hf_images.append({"bytes": jpg, "path": f"{key}.jpg"})
            hf_captions.append(text)
    _write_csv(out / "pairs.csv", ["filepath", "title"], pairs, delimiter="\t")
    val_keys = _write_shard(out / "val_shards" / "00000.tar", 0, val, size, "val")
    vpairs = []
    for key, (jpg, text, _) in zip(val_keys, val):
        rel = f"images/val/{key}.jpg"
        _save(out / rel, jpg)
        vpairs.append([rel, text])
    _write_csv(out / "val_pairs.csv", ["filepath", "title"], vpairs, delimiter="\t")
    _write_hf_parquet(out / "hf" / "train.parquet", hf_images, hf_captions)
    _write_litdata_pairs(out / "litdata" / "train", train, per)
    _write_litdata_pairs(out / "litdata" / "val", val, len(val))
    return {"train": n_train, "val": n_val, "shards": n_shards, "per_shard": per}


def _write_litdata_pairs(folder: Path, samples: list[tuple[bytes, str, dict]], per_chunk: int) -> None:
    """The same pairs, in shard order, as a litdata-optimised dataset (one chunk per shard's worth)."""
    from perceptlab.datamodules.image_text.litdata_pairs import write_litdata

    write_litdata(({"image": jpg, "caption": text} for jpg, text, _ in samples), folder, chunk_size=per_chunk)


def _write_hf_parquet(path: Path, images: list[dict], captions: list[str]) -> None:
    from datasets import Dataset
    from datasets import Image as HFImage
    from datasets.utils import logging as hf_logging

    path.parent.mkdir(parents=True, exist_ok=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        ds = Dataset.from_dict({"image": images, "caption": captions}).cast_column("image", HFImage())
        ds.to_parquet(str(path))
    finally:
        if bars:
            hf_logging.enable_progress_bar()


TOY_SET = ToySet("image_text", _write_image_text, scales={"tiny": {"train": 256, "shards": 2, "val": 64},
                                                 "small": {"train": 48000, "shards": 48, "val": 512}},
                 paths={"image_text_shards": "image_text/shards", "image_text_csv": "image_text/pairs.csv",
           "image_text_hf": "image_text/hf/train.parquet", "image_text_val_shards": "image_text/val_shards/00000.tar",
           "image_text_val_csv": "image_text/val_pairs.csv", "image_text_litdata": "image_text/litdata/train",
           "image_text_val_litdata": "image_text/litdata/val"})
