"""Zero-shot classification throughput: perceptlab's benchmark probe against CLIP_benchmark's loop.

Both sides classify the same webdataset set with the same weights, templates, batch size and
loader workers, in one process, alternating runs:

* ``clip_benchmark`` -- its ``eval`` command's path: ``build_dataset`` with open_clip's eval
  preprocessing, a DataLoader over ``dataset.batched(batch)``, then
  ``zeroshot_classification.evaluate`` (class embeddings, then every batch decoded, normalised and
  encoded under ``torch.no_grad``);
* ``perceptlab`` -- ``CLIPBenchmarkProbe``: ``prepare`` streams the set once into a ``uint8``
  cache (*cold*), ``evaluate`` encodes the cached images under ``torch.inference_mode`` and hands
  the features to CLIP_benchmark's metrics. During training only ``evaluate`` repeats (*warm*).

Prints one JSON object: images/s of each (fastest of ``--repeats``; the medians too), the ratios
perceptlab / clip_benchmark cold (set-up plus one evaluation, the like-for-like comparison) and
warm, and whether the top-1 accuracies agree.

    python benchmarks/bench_zeroshot.py                        # 1024 toy images, tiny ViT at 64 px, CPU
    python benchmarks/bench_zeroshot.py --per_class 256 --workers 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

MODEL = "perceptlab-vit-tiny-64"


def write_set(root: Path, per_class: int, seed: int = 0) -> Path:
    """A toy classification set of ``16 x per_class`` images in CLIP_benchmark's layout."""
    from perceptlab.datamodules.toyworld.benchmark import _write_objects_task
    from perceptlab.datamodules.toyworld.classification import _write_classification
    from perceptlab.datamodules.toyworld.common import _Progress

    with _Progress(False) as progress:
        _write_classification(root, seed, {"per_class": per_class}, 64, progress)
        _write_objects_task(root, root / "benchmark" / "toy_objects", progress)
    return root / "benchmark"


def clip_benchmark_pass(model, preprocess, tokenizer, root: Path, batch: int, workers: int) -> tuple[float, float]:
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics import zeroshot_classification

    from perceptlab.core.benchmark_metrics import clip_benchmark_engine

    start = time.perf_counter()
    dataset = build_dataset("wds/toy_objects", root=str(root / "toy_objects"), transform=preprocess, split="test")
    loader = torch.utils.data.DataLoader(dataset.batched(batch), batch_size=None, shuffle=False, num_workers=workers)
    with clip_benchmark_engine():
        metrics = zeroshot_classification.evaluate(model, loader, tokenizer, dataset.classes, dataset.templates,
                                                   device="cpu", amp=False)
    return time.perf_counter() - start, metrics["acc1"]


def perceptlab_pass(backbone, root: Path, batch: int, workers: int) -> tuple[float, float, float]:
    from perceptlab.callbacks.probes.base import ProbeContext
    from perceptlab.callbacks.probes.benchmark import CLIPBenchmarkProbe

    probe = CLIPBenchmarkProbe(root=str(root), tasks=["wds/toy_objects"])
    probe.num_workers = workers
    start = time.perf_counter()
    probe.prepare(backbone)
    prepared = time.perf_counter()
    with torch.inference_mode():
        metrics = probe.evaluate(ProbeContext(backbone=backbone, batch_size=batch))
    end = time.perf_counter()
    return end - start, end - prepared, metrics["zeroshot/toy_objects/acc1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per_class", type=int, default=64, help="images per class (16 classes)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers on both sides")
    parser.add_argument("--repeats", type=int, default=3)
    ns = parser.parse_args()

    import logging

    import open_clip

    from perceptlab.core.backbone import CLIPBackbone

    logging.getLogger().setLevel(logging.ERROR)
    torch.manual_seed(0)
    backbone = CLIPBackbone(MODEL).eval()
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL)
    model.load_state_dict(backbone.model.state_dict())
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_set(Path(tmp), ns.per_class)
        n = 16 * ns.per_class
        times: dict[str, list[float]] = {"clip_benchmark": [], "perceptlab_cold": [], "perceptlab_warm": []}
        acc = {}
        for _ in range(ns.repeats):  # alternating, so both sides see the same machine state
            seconds, acc["clip_benchmark"] = clip_benchmark_pass(model, preprocess, tokenizer, root, ns.batch, ns.workers)
            times["clip_benchmark"].append(seconds)
            cold, warm, acc["perceptlab"] = perceptlab_pass(backbone, root, ns.batch, ns.workers)
            times["perceptlab_cold"].append(cold)
            times["perceptlab_warm"].append(warm)
    best = {k: n / min(v) for k, v in times.items()}
    median = {k: n / statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "benchmark": "bench_zeroshot",
        "images": n, "model": MODEL, "batch": ns.batch, "workers": ns.workers, "repeats": ns.repeats,
        "images_per_s": {k: round(v, 1) for k, v in best.items()},
        "images_per_s_median": {k: round(v, 1) for k, v in median.items()},
        "speedup_ratio_cold": round(best["perceptlab_cold"] / best["clip_benchmark"], 3),
        "speedup_ratio_warm": round(best["perceptlab_warm"] / best["clip_benchmark"], 3),
        "speedup_ratio_cold_median": round(median["perceptlab_cold"] / median["clip_benchmark"], 3),
        "same_acc1": abs(acc["clip_benchmark"] - acc["perceptlab"]) < 1e-6,
        "acc1": acc,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
