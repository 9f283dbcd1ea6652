"""Zero-shot classification and retrieval test sets in CLIP_benchmark's webdataset layout.

One folder per task under a ``benchmark_root``, as ``clip_benchmark_export_wds`` writes them and
as DataComp distributes them::

    <benchmark_root>/<dataset>/test/0.tar ... test/<n-1>.tar, test/nshards.txt
    <benchmark_root>/<dataset>/classnames.txt, zeroshot_classification_templates.txt   (classification)
    <benchmark_root>/<dataset>/dataset_type.txt  ("retrieval" for caption sets)

Task names are CLIP_benchmark's (``wds/imagenet1k``, ``wds/vtab/cifar100``, ``wds/mscoco_captions``);
``<dataset>`` is the name without ``wds/``. A classification sample is ``KEY.{jpg,png,webp}`` +
``KEY.cls``; a retrieval sample ``KEY.{jpg,...}`` + ``KEY.txt`` with one caption per line.

Reading is CLIP_benchmark's own ``build_dataset`` (its webdataset pipeline, class names and
templates); this module adds the paper preset, a check that names every missing file of every
task before anything is decoded, and the decode into the ``uint8`` cache the probes keep.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: The perceptual-initialisation paper's 31 tasks: 29 zero-shot classification sets and 2 retrieval
#: sets, in CLIP_benchmark / DataComp names. The paper names the families (ImageNet-1k and its
#: distribution shifts, VTAB, the fine-grained and OCR-like sets) but not one list; DataComp's classic
#: list has 30 classification sets, of which SUN397 (108,754 test images, about a third of the suite's
#: images) is left out here. Add it with ``tasks: [paper, wds/sun397]``.
PAPER_TASKS: tuple[str, ...] = (
    # ImageNet and its distribution shifts
    "wds/imagenet1k", "wds/imagenetv2", "wds/imagenet-a", "wds/imagenet-o", "wds/imagenet-r",
    "wds/imagenet_sketch", "wds/objectnet",
    # VTAB (natural, specialized, structured)
    "wds/vtab/caltech101", "wds/vtab/cifar100", "wds/vtab/dtd", "wds/vtab/flowers", "wds/vtab/pets",
    "wds/vtab/svhn", "wds/vtab/eurosat", "wds/vtab/resisc45", "wds/vtab/pcam",
    "wds/vtab/clevr_count_all", "wds/vtab/clevr_closest_object_distance",
    "wds/vtab/kitti_closest_vehicle_distance",
    # the rest of DataComp's classic classification sets
    "wds/cars", "wds/fgvc_aircraft", "wds/food101", "wds/gtsrb", "wds/country211", "wds/mnist",
    "wds/renderedsst2", "wds/stl10", "wds/voc2007", "wds/cifar10",
    # retrieval
    "wds/flickr30k", "wds/mscoco_captions",
)

#: The toy world's mini suite (written by ``perceptlab synth`` under ``<world>/benchmark``).
TOY_TASKS: tuple[str, ...] = ("wds/toy_objects", "wds/toy_captions")

PRESETS: dict[str, tuple[str, ...]] = {"paper": PAPER_TASKS, "toy": TOY_TASKS}

#: DataComp's main metric where it is not top-1 accuracy (its tasklist.yml); retrieval: mean_recall@1.
MAIN_METRIC_OVERRIDES = {"vtab/caltech101": "mean_per_class_recall", "fgvc_aircraft": "mean_per_class_recall",
                         "vtab/flowers": "mean_per_class_recall", "vtab/pets": "mean_per_class_recall"}

IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")
READ_BATCH = 64  # samples per transfer from a reading worker


@dataclass(frozen=True)
class BenchmarkTask:
    """One test set: its CLIP_benchmark name, folder and kind (``zeroshot`` or ``retrieval``)."""

    name: str  # wds/vtab/cifar100
    location: Path

    @property
    def dataset(self) -> str:
        """The name without ``wds/`` (``vtab/cifar100``): the ``<dataset>`` of metric names."""
        return self.name.split("/", 1)[1]

    @property
    def kind(self) -> str:
        type_file = self.location / "dataset_type.txt"
        if type_file.is_file() and type_file.read_text().strip().lower() == "retrieval":
            return "retrieval"
        return "zeroshot"

    @property
    def main_metric(self) -> str:
        """DataComp's main metric of this task (what its average is over)."""
        if self.kind == "retrieval":
            return "mean_recall@1"
        return MAIN_METRIC_OVERRIDES.get(self.dataset, "acc1")

    def nshards(self) -> int:
        return int((self.location / "test" / "nshards.txt").read_text().strip())

    def missing(self) -> list[str]:
        """What this task lacks on disk (paths, with what each should hold); empty when complete."""
        root, test = self.location, self.location / "test"
        if not root.is_dir():
            return [(f"{root}/ (the task folder: test/{{0..n-1}}.tar, test/nshards.txt, classnames.txt, "
                    "zeroshot_classification_templates.txt, or dataset_type.txt = retrieval)")]
        out = []
        count = test / "nshards.txt"
        if not count.is_file():
            out.append(f"{count} (the number of shards n)")
        else:
            try:
                n = self.nshards()
            except ValueError:
                out.append(f"{count} (holds {count.read_text().strip()!r}, not a number of shards)")
            else:
                out += [f"{test / f'{i}.tar'} (shard {i} of {n})" for i in range(n) if not (test / f"{i}.tar").is_file()]
        if self.kind == "zeroshot":
            for name, what in (("classnames.txt", "one class name per line, in label order"),
                               ("zeroshot_classification_templates.txt", "one prompt per line, with {c}")):
                if not (root / name).is_file():
                    out.append(f"{root / name} ({what})")
        return out


def expand_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Preset names (``paper``, ``toy``) and task names -> task names, in order, without repeats."""
    items = [tasks] if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for item in items:
        names = PRESETS.get(item)
        if names is None:
            if not item.startswith("wds/"):
                raise ValueError(f"benchmark task {item!r}: expected a preset ({', '.join(PRESETS)}) or a "
                                 "CLIP_benchmark webdataset name such as wds/imagenet1k or wds/vtab/cifar100")
            names = (item,)
        out += [n for n in names if n not in out]
    if not out:
        raise ValueError("no benchmark tasks given")
    return out


def resolve_tasks(tasks: str | Sequence[str], benchmark_root: str | os.PathLike,
                  locations: dict[str, str] | None = None) -> list[BenchmarkTask]:
    """The tasks with their folders: ``benchmark_root / <dataset>``, unless ``locations`` names a
    folder for a task (absolute, or relative to ``benchmark_root``)."""
    root = Path(benchmark_root).expanduser()
    locations = locations or {}
    out = []
    for name in expand_tasks(tasks):
        where = Path(locations.get(name, name.split("/", 1)[1])).expanduser()
        out.append(BenchmarkTask(name, where if where.is_absolute() else root / where))
    return out


def check_tasks(tasks: Sequence[BenchmarkTask]) -> None:
    """Raise one ``FileNotFoundError`` naming every missing file of every task, or return."""
    problems = {t.name: t.missing() for t in tasks}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        lines = [(f"{len(problems)} of {len(tasks)} benchmark task(s) are incomplete on disk "
                 "(CLIP_benchmark's webdataset layout; `clip_benchmark_export_wds` writes it):")]
        for name, missing in problems.items():
            lines.append(f"  {name}:")
            lines += [f"    missing {m}" for m in missing]
        raise FileNotFoundError("\n".join(lines))


@dataclass
class LoadedTask:
    """A task's items in reading order: ``uint8`` images of the kept items this process holds,
    and for all kept items the labels (classification) or caption lists (retrieval)."""

    task: BenchmarkTask
    n_items: int
    images: torch.Tensor
    labels: torch.Tensor | None = None
    captions: list[list[str]] | None = None
    classnames: list[str] | None = None
    templates: list[str] | None = None


def count_samples(task: BenchmarkTask) -> int:
    """Samples in the task's shards, from the tar headers alone (``datamodules.base.tar_sample_count``)."""
    from perceptlab.datamodules.base import tar_sample_count

    return sum(tar_sample_count(task.location / "test" / f"{shard}.tar", IMAGE_EXTENSIONS) for shard in range(task.nshards()))


def load_task(task: BenchmarkTask, transform: Callable, keep: Callable[[int], list[int]],
              local: Callable[[int], list[int]], num_workers: int = 0) -> LoadedTask:
    """Read a task through CLIP_benchmark's ``build_dataset`` and decode it once.

    ``transform`` maps a PIL image to a ``uint8`` tensor. ``keep(n)`` picks the items to evaluate
    among the ``n`` on disk (positions, sorted); ``local(m)`` the positions among those ``m`` that
    this process caches. Every process streams the whole set (webdataset has no random access) but
    keeps only its own images, so memory is its share. Reading order is the same on every process:
    shard order, or with ``num_workers`` > 1 the DataLoader's round robin over workers, which
    depends only on the shard count and ``num_workers``.
    """
    from clip_benchmark.datasets.builder import build_dataset

    kind = task.kind
    kept = keep(count_samples(task))
    wanted: dict[int, list[int]] = {}  # position on disk -> slots in this process's cache
    for slot, i in enumerate(local(len(kept))):
        wanted.setdefault(kept[i], []).append(slot)
    with warnings.catch_warnings():  # CLIP_benchmark leaves webdataset's shardshuffle unset (it reads in order)
        warnings.filterwarnings("ignore", message=r"WebDataset\(shardshuffle=\.\.\.\) is None")
        dataset = build_dataset(task.name, root=str(task.location), transform=transform, split="test",
                                task="zeroshot_retrieval" if kind == "retrieval" else "zeroshot_classification")
    workers = min(num_workers, task.nshards()) if num_workers > 1 else 0
    # Batches from the workers (as CLIP_benchmark's eval does), not single samples: one transfer each.
    loader = torch.utils.data.DataLoader(dataset.batched(READ_BATCH), batch_size=None, shuffle=False,
                                         num_workers=workers)
    slots: list[torch.Tensor | None] = [None] * sum(map(len, wanted.values()))
    targets: list = []
    for images, batch_targets in loader:
        for image, target in zip(images, batch_targets):
            for slot in wanted.get(len(targets), ()):
                slots[slot] = image
            targets.append(target)
    missing = [s for s, im in enumerate(slots) if im is None]
    if missing or (kept and kept[-1] >= len(targets)):
        raise ValueError(f"{task.name}: read {len(targets)} samples from {task.location / 'test'}, fewer than its "
                         "tar files hold; are some samples missing an image or a label/caption?")
    stacked = torch.stack(slots) if slots else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    out = LoadedTask(task, len(kept), stacked)
    if kind == "retrieval":
        out.captions = [[c for c in targets[i] if c.strip()] for i in kept]
        empty = sum(1 for c in out.captions if not c)
        if empty:
            raise ValueError(f"{task.name}: {empty} image(s) without a caption in {task.location / 'test'}")
    else:
        out.labels = torch.tensor([int(targets[i]) for i in kept], dtype=torch.long)
        out.classnames = list(dataset.classes)
        out.templates = list(dataset.templates)
        bad = out.labels[(out.labels < 0) | (out.labels >= len(out.classnames))]
        if len(bad):
            raise ValueError(f"{task.name}: label {int(bad[0])} outside the {len(out.classnames)} classes of "
                             f"{task.location / 'classnames.txt'}")
    log.info("%s: %d items (%d on this process)", task.name, len(kept), len(slots))
    return out

