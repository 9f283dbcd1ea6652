"""A two-task zero-shot benchmark in CLIP_benchmark's webdataset layout, from sets already written.

``benchmark/toy_objects`` holds the classification folder's images (16 classes) as a classification
task; ``benchmark/toy_captions`` the held-out image-text pairs (``image_text/val_shards``) as a
retrieval task with five captions per image: the pair's own caption first, then the same scene in
the other four caption templates (no new random draws, so the rest of the world is unchanged).
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

from perceptlab.datamodules.toyworld.common import _Progress, ToySet
from perceptlab.datamodules.toyworld.image_text import _tar_add
from perceptlab.datamodules.toyworld.rules import _TEMPLATES, caption
from perceptlab.datamodules.toyworld.world import CLASSES

SHARDS = 2  # per task, so readers meet more than one shard


def _templates() -> list[str]:
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    return [t("{c}") for t in SIMPLE_IMAGENET_TEMPLATES]


def _write_shards(test: Path, samples: list[list[tuple[str, bytes]]]) -> None:
    test.mkdir(parents=True, exist_ok=True)
    per = -(-len(samples) // SHARDS)
    for shard in range(SHARDS):
        with tarfile.open(test / f"{shard}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for members in samples[shard * per:(shard + 1) * per]:
                for name, data in members:
                    _tar_add(tar, name, data)
    (test / "nshards.txt").write_text(f"{SHARDS}\n")


def _write_objects_task(root: Path, task: Path, progress: _Progress) -> int:
    """``root/classification/<class>/*.png`` -> a classification task at ``task``; returns its size."""
    files = [(label, path) for label, cls in enumerate(CLASSES) for path in sorted((root / "classification" / cls).glob("*.png"))]
    advance = progress.task(task.name, len(files))
    samples = []
    for i, (label, path) in enumerate(files):
        samples.append([(f"{i:06d}.png", path.read_bytes()), (f"{i:06d}.cls", f"{label}".encode())])
        advance()
    _write_shards(task / "test", samples)
    (task / "classnames.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    (task / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in _templates()))
    return len(samples)


def _write_captions_task(root: Path, task: Path) -> int:
    """``root/image_text/val_shards/00000.tar`` -> a retrieval task at ``task``; returns its size."""
    pairs: dict[str, dict[str, bytes]] = {}
    with tarfile.open(root / "image_text" / "val_shards" / "00000.tar") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            pairs.setdefault(key, {})[ext] = tar.extractfile(member).read()
    samples = []
    for i, (key, members) in enumerate(sorted(pairs.items())):
        own = members["txt"].decode("utf-8")
        meta = json.loads(members["json"])["toyworld"]
        others = [caption(meta["class"], meta["colour"], meta["size"], meta["background"], template=t)
                  for t in range(len(_TEMPLATES))]
        texts = [own] + [c for c in others if c != own]
        samples.append([(f"{i:06d}.jpg", members["jpg"]), (f"{i:06d}.txt", "\n".join(texts).encode("utf-8"))])
    _write_shards(task / "test", samples)
    (task / "dataset_type.txt").write_text("retrieval\n")
    return len(samples)


def _write_benchmark(root: Path, progress: _Progress) -> dict:
    out = root / "benchmark"
    return {"toy_objects": _write_objects_task(root, out / "toy_objects", progress),
            "toy_captions": _write_captions_task(root, out / "toy_captions"),
            "classes": len(CLASSES), "captions_per_image": len(_TEMPLATES)}


def _write_benchmark_set(root: Path, seed: int, counts: dict, size: int, progress: _Progress) -> dict:
    return _write_benchmark(root, progress)  # from the classification and held-out caption sets, written before


TOY_SET = ToySet("benchmark", _write_benchmark_set, paths={"benchmark": "benchmark"})
