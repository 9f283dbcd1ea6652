"""Zero-shot classification and retrieval benchmarks (CLIP_benchmark's suite) as one probe.

The tables CLIP papers report: zero-shot top-1/top-5 on classification sets and image-text
retrieval recall@k, on CLIP_benchmark's webdataset layout (``perceptlab.datamodules.benchmark_sets``)
with CLIP_benchmark's class names, templates and metric definitions
(``perceptlab.core.benchmark_metrics``). What this probe adds is the model side: images are decoded
once into a ``uint8`` cache, each process encodes its share of the images and texts, the features
are gathered, and every process computes the same numbers one process would.

Metrics (in [0, 1], higher is better)
    * ``zeroshot/<dataset>/acc1``, ``acc5`` (NaN under 5 classes) and ``mean_per_class_recall``;
    * ``retrieval/<dataset>/image_retrieval_recall@k`` (text query, find its image),
      ``text_retrieval_recall@k`` (image query, find one of its captions) for each ``recall_k``,
      and ``mean_recall@1`` (their mean at k = 1, DataComp's retrieval score);
    * ``zeroshot/average/acc1`` (and ``acc5`` over the sets that have it, ``mean_per_class_recall``)
      over the classification sets, ``retrieval/average/mean_recall@1`` over the retrieval sets;
    * ``<name>/average`` (``benchmark/average``): DataComp's average over all tasks of each task's
      main metric (top-1, mean per-class recall on Caltech-101, FGVC-Aircraft, Flowers and Pets,
      ``mean_recall@1`` for retrieval).

``<dataset>`` is the task name without ``wds/`` (``imagenet1k``, ``vtab/cifar100``).

Cost
    Set-up streams every set once per process (webdataset has no random access) and keeps that
    process's share of the images (``3 S^2`` bytes each: 150 kB at 224 px, so ImageNet's 50,000
    images take 7.5 GB on one process, 0.9 GB each on eight). An evaluation encodes those images
    and the prompts/captions once.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from perceptlab.callbacks.probes.base import (
    Items,
    Probe,
    ProbeContext,
    select_items,
    shard_indices,
)
from perceptlab.callbacks.probes.metric_info import MetricInfo, benchmark_info
from perceptlab.core.benchmark_metrics import (
    prompts_for,
    zeroshot_classification_items,
    zeroshot_retrieval_items,
)
from perceptlab.core.images import to_rgb
from perceptlab.datamodules.benchmark_sets import (
    LoadedTask,
    check_tasks,
    load_task,
    resolve_tasks,
)


class _ToUint8:
    """PIL image -> RGB -> the backbone's eval transform up to a ``uint8`` tensor (the same pixels
    ``ToTensor`` would give, times 255). A class, not a lambda, so DataLoader workers can receive
    it under any start method."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image) -> torch.Tensor:
        return self.transform(to_rgb(image))


class CLIPBenchmarkProbe(Probe):
    """Zero-shot classification and retrieval on CLIP_benchmark webdataset sets.

    Args:
        root: the ``benchmark_root``, holding one folder per task (relative: under the suite's
            ``data_root``).
        tasks: task names (``wds/imagenet1k``, ``wds/vtab/cifar100``, ``wds/mscoco_captions``) and
            presets: ``paper`` (the perceptual-initialisation paper's 31 tasks), ``toy`` (the toy
            world's two). Every missing file of every task is named at set-up, before any decoding.
        locations: a task's folder where it is not ``root/<dataset>`` (absolute or under ``root``).
        recall_k: the k of retrieval recall@k.
        max_items: evaluate a fixed random subset of this many items per task (``None``: all, the
            published protocol).
        text_batch_size: prompts/captions per text forward pass (default: the image batch size).
        **common: ``name``, ``batch_size``, ``seed`` of :class:`Probe` (``name`` only names the overall
            average; ``layer`` must stay null).
    """

    family = "benchmark"
    needs_text = True

    def __init__(
        self,
        root: str = "benchmark",
        tasks: str | Sequence[str] = "paper",
        locations: dict[str, str] | None = None,
        recall_k: Sequence[int] = (1, 5, 10),
        max_items: int | None = None,
        text_batch_size: int | None = None,
        **common: Any,
    ) -> None:
        super().__init__(root, max_items=max_items, **common)  # name, batch_size, seed: see Probe
        if self.layer is not None:
            raise ValueError("CLIPBenchmarkProbe measures the projected embeddings (CLIP_benchmark's protocol): "
                             f"layer must be null, got {self.layer}")
        if not recall_k or any(int(k) < 1 for k in recall_k):
            raise ValueError(f"recall_k must be positive integers, got {recall_k}")
        self.tasks = tasks
        self.locations = dict(locations or {})
        self.recall_k = sorted({int(k) for k in recall_k})
        self.text_batch_size = text_batch_size
        resolve_tasks(tasks, ".", self.locations)  # unknown preset or malformed name: fail at construction
        self.loaded: dict[str, LoadedTask] = {}
        self.texts: dict[str, list[str]] = {}
        self.local_tokens: dict[str, torch.Tensor] = {}

    @property
    def name(self) -> str:
        return self._name or self.family

    @property
    def headline(self) -> str:
        """The metric the console line shows for this probe."""
        if any(lt.labels is not None for lt in self.loaded.values()):  # a classification set was read
            return "zeroshot/average/acc1"
        return f"{self.name}/average"

    # -- data -------------------------------------------------------------------------------
    def prepare(self, backbone, rank: int = 0, world_size: int = 1) -> None:
        key = (str(self.path), backbone.image_size, rank, world_size)
        if self._prepared_for == key:
            return
        tasks = resolve_tasks(self.tasks, self.path, self.locations)
        check_tasks(tasks)
        transform = _ToUint8(backbone.transform(train=False, uint8=True))
        self.rank, self.world_size = rank, world_size
        self.loaded, self.texts, self.local_tokens = {}, {}, {}
        for task in tasks:
            start = time.perf_counter()
            loaded = load_task(task, transform,
                               keep=lambda n: select_items(n, self.max_items, self.seed),
                               local=lambda m: shard_indices(m, rank, world_size),
                               num_workers=self.num_workers)
            self.loaded[task.name] = loaded
            if loaded.captions is not None:
                texts = list(dict.fromkeys(c for caps in loaded.captions for c in caps))
            else:
                texts = list(dict.fromkeys(prompts_for(loaded.classnames, loaded.templates)))
            self.texts[task.name] = texts
            mine = [texts[i] for i in shard_indices(len(texts), rank, world_size)]
            self.local_tokens[task.name] = backbone.tokenize(mine) if mine else torch.zeros(0, 1, dtype=torch.long)
            if rank == 0:
                rank_zero_info(f"  {task.name}: {loaded.n_items} items, {len(texts)} texts, read in "
                               f"{time.perf_counter() - start:.1f} s")
        self.n_items = sum(lt.n_items for lt in self.loaded.values())
        self._prepared_for = key

    # -- scoring ----------------------------------------------------------------------------
    def encode_texts(self, ctx: ProbeContext, tokens: torch.Tensor) -> torch.Tensor:
        bs = self.text_batch_size or self.batch_size or ctx.batch_size
        out = []
        with ctx.autocast():
            for start in range(0, tokens.shape[0], bs):
                out.append(ctx.backbone.encode_text(tokens[start:start + bs].to(ctx.device), normalize=False).float())
        return torch.cat(out) if out else torch.empty(0, ctx.backbone.embed_dim, device=ctx.device)

    def measure(self, ctx: ProbeContext) -> Items:
        """Per task (group ``zeroshot/<dataset>`` or ``retrieval/<dataset>``), per image: the label,
        the predicted class and whether the label is in the top 5; or the number of captions, the
        text hit and the image hits at each k (``perceptlab.core.benchmark_metrics``)."""
        items: Items = {}
        for name, loaded in self.loaded.items():
            start = time.perf_counter()
            images = self.gather_items(ctx, self.features(ctx, loaded.images), loaded.n_items)
            texts = self.texts[name]
            text_features = self.gather_items(ctx, self.encode_texts(ctx, self.local_tokens[name]), len(texts))
            if loaded.captions is not None:
                items[self.group_of(name)] = zeroshot_retrieval_items(images, loaded.captions, texts, text_features,
                                                                      self.recall_k)
            else:
                items[self.group_of(name)] = zeroshot_classification_items(
                    images, loaded.labels, loaded.classnames, loaded.templates, texts, text_features)
            if ctx.rank == 0 and len(self.loaded) > 2:
                rank_zero_info(f"    {name}: {time.perf_counter() - start:.1f} s")
        return items

    def group_of(self, task_name: str) -> str:
        loaded = self.loaded[task_name]
        return f"{'retrieval' if loaded.captions is not None else 'zeroshot'}/{loaded.task.dataset}"

    def describe(self, metric: str) -> MetricInfo:
        """CLIP_benchmark's numbers, tabled by task and metric as its result tables
        (``metric_info.benchmark_info``); the top-1 accuracies and recalls@1 are plotted."""
        return benchmark_info(metric, self.name, self.headline)

    def score(self, items: Items) -> dict[str, float]:
        return {k: float(v) for k, v in self._metrics(items, None).items()}

    def resampled(self, items: Items, idx: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._metrics(items, idx)

    def _metrics(self, items: Items, idx: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Every task's metrics, the averages and DataComp's average: on all items (``idx=None``:
        0-d tensors) or on each bootstrap resample (``(B,)``)."""
        metrics: dict[str, torch.Tensor] = {}
        main: list[torch.Tensor] = []
        main_metric = {self.group_of(n): lt.task.main_metric for n, lt in self.loaded.items()}
        for group, t in items.items():
            i = None if idx is None else idx[group]

            def total(v: torch.Tensor) -> torch.Tensor:
                v = v.double()
                return v.sum() if i is None else v[i].sum(dim=-1)

            def mean(v: torch.Tensor) -> torch.Tensor:
                return total(v) / (v.shape[0] if i is None else i.shape[1])

            if group.startswith("retrieval/"):
                values = {}
                for k in self.recall_k:
                    values[f"image_retrieval_recall@{k}"] = total(t[f"image_hits@{k}"]) / total(t["captions"])
                    values[f"text_retrieval_recall@{k}"] = mean(t[f"text_hit@{k}"])
                if 1 in self.recall_k:
                    values["mean_recall@1"] = (values["image_retrieval_recall@1"] + values["text_retrieval_recall@1"]) / 2
            else:
                nan = torch.tensor(float("nan"), dtype=torch.float64)
                values = {"acc1": mean(t["predicted"] == t["label"]),
                          "acc5": mean(t["hit5"]) if "hit5" in t else (nan if i is None else nan.expand(i.shape[0])),
                          "mean_per_class_recall": _balanced_accuracy(t["label"], t["predicted"], i)}
            metrics.update({f"{group}/{k}": v for k, v in values.items()})
            main.append(values.get(main_metric.get(group, ""), torch.tensor(float("nan"), dtype=torch.float64)))
        metrics.update(self.averages(metrics))
        if main:
            metrics[f"{self.name}/average"] = _nanmean(main)
        return metrics

    @staticmethod
    def averages(metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Means over the classification sets (``zeroshot/average/*``) and retrieval sets."""
        out = {}
        for family, keys in (("zeroshot", ("acc1", "acc5", "mean_per_class_recall")), ("retrieval", ("mean_recall@1",))):
            for key in keys:
                values = [v for k, v in metrics.items()
                          if k.startswith(f"{family}/") and k.endswith(f"/{key}") and not k.startswith(f"{family}/average/")]
                if values:
                    out[f"{family}/average/{key}"] = _nanmean(values)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(Path(self.path))!r}, tasks={self.tasks!r}, max_items={self.max_items})"


def _nanmean(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over the sets with a finite value (a set under 5 classes has no top-5); NaN when none has."""
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values]).nanmean(dim=0)


def _balanced_accuracy(label: torch.Tensor, predicted: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """Mean per-class recall over the classes present (sklearn's ``balanced_accuracy_score``, which
    CLIP_benchmark reports), on all items or on each resample ``idx`` ``(B, n)``."""
    if idx is None:
        from sklearn.metrics import balanced_accuracy_score

        return torch.tensor(balanced_accuracy_score(label.numpy(), predicted.numpy()), dtype=torch.float64)
    classes = int(max(label.max(), predicted.max())) + 1 if label.numel() else 1
    labels = label[idx]
    counts = torch.zeros(idx.shape[0], classes, dtype=torch.float64).scatter_add_(
        1, labels, torch.ones(labels.shape, dtype=torch.float64))
    hits = torch.zeros_like(counts).scatter_add_(1, labels, (predicted == label).double()[idx])
    return (hits / counts).nanmean(dim=1)  # classes absent from a resample: 0 / 0, left out
