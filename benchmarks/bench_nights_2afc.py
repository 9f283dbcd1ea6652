"""NIGHTS 2AFC evaluation throughput: perceptlab's evaluation against a DreamSim-style loop.

Both sides score the same triplets with the same model, the same DataLoader (``NightsDataModule``:
batch size, workers doing all decoding and sending ``uint8`` images that the backbone normalises
on the device) and the same device, in one process, alternating runs:

* ``dreamsim_style`` -- DreamSim's ``evaluation/score.py`` loop: under ``torch.no_grad`` it calls
  ``model(ref, left)`` and ``model(ref, right)``, where ``model(a, b)`` embeds both images and
  returns ``1 - cos``: four encoder passes per triplet, in batches of ``n``.
* ``perceptlab`` -- ``PerceptualInitModule.distances`` under ``torch.inference_mode``: three
  encoder passes per triplet (ref, left and right as one batch of ``3n`` on a GPU, as three
  batches of ``n`` on CPU, where that is faster per image).

Prints one JSON object: triplets per second of each from the fastest of ``--repeats`` alternating
timings of ``--passes`` whole evaluations (the least disturbed by other load on the machine; the
ratio of the medians is reported too),
``speedup_ratio`` = perceptlab / dreamsim_style end to end (loader included), and whether both
gave the same 2AFC. ``speedup_ratio_compute_only`` repeats the comparison over batches already
decoded into memory: the model's share of the gain (4/3 from the encode count, a little more
from inference mode and smaller batches on CPU).
On a machine whose cores are all busy with the model (a 2-core CPU), the loader's decoding takes
CPU from the encoder in both loops and pulls the end-to-end ratio towards 1; with spare cores for
the workers (a GPU node) the end-to-end ratio approaches the compute-only one.

    python benchmarks/bench_nights_2afc.py                     # tiny toy world, tiny ViT, CPU
    python benchmarks/bench_nights_2afc.py --model ViT-B-32 --root /data/nights --split test_imagenet
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbacks.scores import two_afc
from datamodules.nights import NightsDataModule
from lightning_modules.perceptual_init import PerceptualInitModule


def dreamsim_style(model: PerceptualInitModule, loader, device) -> tuple[float, float, int]:
    """DreamSim's loop: two pairwise calls per batch, each embedding both of its images."""

    def pair_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 1 - torch.nn.functional.cosine_similarity(model.embed(a), model.embed(b), dim=-1)

    d0s, d1s, ps = [], [], []
    start = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            ref, left, right = (batch[k].to(device, non_blocking=True) for k in ("ref", "left", "right"))
            d0s.append(pair_distance(ref, left))
            d1s.append(pair_distance(ref, right))
            ps.append(batch["p"])
    d0, d1, p = torch.cat(d0s).cpu(), torch.cat(d1s).cpu(), torch.cat(ps)
    return time.perf_counter() - start, two_afc(d0, d1, p), len(p)


def perceptlab(model: PerceptualInitModule, loader, device) -> tuple[float, float, int]:
    """The module's evaluation: three encodes per triplet, batched, inference mode."""
    d0s, d1s, ps = [], [], []
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            d0, d1 = model.distances(*(batch[k].to(device, non_blocking=True) for k in ("ref", "left", "right")))
            d0s.append(d0)
            d1s.append(d1)
            ps.append(batch["p"])
    d0, d1, p = torch.cat(d0s).cpu(), torch.cat(d1s).cpu(), torch.cat(ps)
    return time.perf_counter() - start, two_afc(d0, d1, p), len(p)


def _timed(fns, model, source, device, repeats, passes) -> tuple[dict[str, list[float]], dict[str, float], int]:
    """Per side, ``repeats`` timings of ``passes`` whole evaluations of the split each."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    scores: dict[str, float] = {}
    n = 0
    for _ in range(repeats):
        for name, fn in fns.items():  # alternate, so slow phases of the machine hit both sides
            total = 0.0
            for _ in range(passes):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds, score, n = fn(model, source, device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                total += seconds
            times[name].append(total)
            scores[name] = score
    return times, scores, n * passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="NIGHTS folder (default: a freshly written tiny toy world)")
    parser.add_argument("--split", default="train", help="split to score (the tiny world's train: 113 triplets)")
    parser.add_argument("--model", default="perceptlab-vit-tiny-64")
    parser.add_argument("--batch-size", type=int, default=32)
    # Half the cores decode, half stay with the model (a 2-core machine: one worker).
    parser.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--passes", type=int, default=5,
                        help="whole evaluations of the split per timing (a few seconds each on a CPU, so noise averages out)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    tmp = None
    root = args.root
    if root is None:
        from datamodules.toyworld import synthesize

        tmp = tempfile.TemporaryDirectory()
        synthesize(tmp.name, seed=0, scale="tiny", progress=False)
        root = str(Path(tmp.name) / "nights")

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = PerceptualInitModule(model_name=args.model).to(device).eval()
    dm = NightsDataModule(root, batch_size=args.batch_size, num_workers=args.workers, model_name=args.model,
                          val_split=args.split)
    dm.setup("validate")
    loader = dm.val_dataloader()  # persistent workers: both loops reuse the same decoding processes

    # Warm-up: worker start, allocator, kernel selection; not timed.
    dreamsim_style(model, loader, device)
    perceptlab(model, loader, device)

    fns = {"dreamsim_style": dreamsim_style, "perceptlab": perceptlab}
    times, scores, n = _timed(fns, model, loader, device, args.repeats, args.passes)
    decoded = list(loader)
    times_mem, _, _ = _timed(fns, model, decoded, device, args.repeats, args.passes)
    rate = {name: n / min(ts) for name, ts in times.items()}
    rate_median = {name: n / statistics.median(ts) for name, ts in times.items()}
    rate_mem = {name: n / min(ts) for name, ts in times_mem.items()}
    print(json.dumps({
        "benchmark": "bench_nights_2afc",
        "model": args.model,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "split": args.split,
        "triplets": n // args.passes,
        "passes": args.passes,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "repeats": args.repeats,
        "encodes_per_triplet": {"dreamsim_style": 4, "perceptlab": 3},
        "dreamsim_style_triplets_per_s": round(rate["dreamsim_style"], 2),
        "perceptlab_triplets_per_s": round(rate["perceptlab"], 2),
        "speedup_ratio": round(rate["perceptlab"] / rate["dreamsim_style"], 3),
        "speedup_ratio_median": round(rate_median["perceptlab"] / rate_median["dreamsim_style"], 3),
        "speedup_ratio_compute_only": round(rate_mem["perceptlab"] / rate_mem["dreamsim_style"], 3),
        "two_afc": {k: round(v, 6) for k, v in scores.items()},
        "same_2afc": abs(scores["perceptlab"] - scores["dreamsim_style"]) < 1e-6,
        "machine": platform.processor() or platform.machine(),
    }))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
