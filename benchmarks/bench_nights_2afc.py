"""NIGHTS 2AFC evaluation throughput: perceptlab's evaluation against a DreamSim-style loop.

Both sides score the same triplets with the same model, batch size, number of loader workers and
device, in one process, alternating runs:

* ``dreamsim_style`` -- DreamSim's evaluation: its ``TwoAFCDataset`` (workers resize and
  ``ToTensor``: float images in [0, 1]) and its ``evaluation/score.py`` loop, which under
  ``torch.no_grad`` calls ``model(ref, left)`` and ``model(ref, right)``, where ``model(a, b)``
  normalises and embeds both images and returns ``1 - cos``: four encoder passes per triplet, in
  batches of ``n``.
* ``perceptlab`` -- ``NightsDataModule`` (workers resize and send ``uint8`` images, which the
  backbone normalises on the device) and ``PerceptualInitModule.distances`` under
  ``torch.inference_mode``: three encoder passes per triplet (ref, left and right as one batch of
  ``3n`` on a GPU, as three batches of ``n`` on CPU, where that is faster per image).

Prints one JSON object, triplets per second from the fastest of ``--repeats`` alternating timings
of ``--passes`` whole evaluations (the least disturbed by other load on the machine; ratios of
the medians are reported too):

* ``speedup_ratio``: perceptlab / dreamsim_style end to end, each with its own loader;
* ``speedup_ratio_same_loader``: both loops fed by perceptlab's ``uint8`` loader, so only the
  loop differs (encode count, batching, inference mode);
* ``speedup_ratio_compute_only``: the loops over batches already decoded into memory, the model's
  share of the gain (4/3 from the encode count, a little more from inference mode and smaller
  batches on CPU);

and whether all gave the same 2AFC. On a machine whose cores are all busy with the model (a
2-core CPU), the loader's decoding takes CPU from the encoder in both loops and pulls the end to
end ratios towards 1. With a model whose encodes dominate they reach the compute-only one (ViT-B/32
on 2 cores: 1.39-1.48 end to end, 1.39-1.41 compute only); with spare cores for the workers (a
GPU node) they should too.

    python benchmarks/bench_nights_2afc.py                     # tiny toy world, tiny ViT, CPU
    python benchmarks/bench_nights_2afc.py --model ViT-B-32 --root /data/nights --split test_imagenet
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader


from perceptlab.core.scores import two_afc
from perceptlab.datamodules.nights import NightsDataModule
from perceptlab.lightning_modules.perceptual_init import PerceptualInitModule
from perceptlab.datamodules.loader import Loader


def dreamsim_style(model: PerceptualInitModule, loader, device) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
    """DreamSim's loop: two pairwise calls per batch, each normalising and embedding both images.

    Returns (seconds, d0, d1, p) over the whole loader, as :func:`perceptlab` does."""
    mean, std = model.backbone._mean.float(), model.backbone._std.float()

    def pair_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.is_floating_point():  # DreamSim's loader: [0, 1] floats, normalised by the model
            a, b = (a - mean) / std, (b - mean) / std
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
    return time.perf_counter() - start, d0, d1, p


def perceptlab(model: PerceptualInitModule, loader, device) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
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
    return time.perf_counter() - start, d0, d1, p


def dreamsim_loader(dm: NightsDataModule, split: str) -> DataLoader:
    """DreamSim's ``TwoAFCDataset`` transport: the same triplets and PIL steps, then ``ToTensor``
    (float32 in [0, 1], four times the bytes of ``uint8``) in the workers."""
    u8 = dm.datasets[split].transform
    dataset = copy.copy(dm.datasets[split])
    dataset.transform = T.Compose([*u8.transforms[:-1], T.ToTensor()])  # PILToTensor -> ToTensor
    return DataLoader(dataset, batch_size=dm.loader.batch_size, shuffle=False,
                      **dm.loader_kwargs())


def _timed(fns, model, source, device, repeats, passes) -> tuple[dict[str, list[float]], dict[str, tuple], int]:
    """Per side, ``repeats`` timings of ``passes`` whole evaluations of the split each, and the
    side's last ``(d0, d1, p)``."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    outputs: dict[str, tuple] = {}
    n = 0
    for _ in range(repeats):
        for name, (fn, src) in fns.items():  # alternate, so slow phases of the machine hit all sides
            total = 0.0
            for _ in range(passes):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds, *out = fn(model, source if src is None else src, device)
                n = len(out[2])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                total += seconds
            times[name].append(total)
            outputs[name] = tuple(out)
    return times, outputs, n * passes


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
        from perceptlab.datamodules.toyworld import synthesize

        tmp = tempfile.TemporaryDirectory()
        synthesize(tmp.name, seed=0, scale="tiny", progress=False)
        root = str(Path(tmp.name) / "nights")

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = PerceptualInitModule(model_name=args.model).to(device).eval()
    dm = NightsDataModule(root, model_name=args.model,
                          val_split=args.split, loader=Loader(batch_size=args.batch_size, num_workers=args.workers))
    dm.setup("validate")
    loader = dm.val_dataloader()  # persistent workers, reused by every pass
    ds_loader = dreamsim_loader(dm, args.split)

    # Warm-up: worker start, allocator, kernel selection; not timed.
    dreamsim_style(model, ds_loader, device)
    dreamsim_style(model, loader, device)
    perceptlab(model, loader, device)

    fns = {
        "dreamsim_style": (dreamsim_style, ds_loader),
        "dreamsim_style_uint8_loader": (dreamsim_style, None),
        "perceptlab": (perceptlab, None),
    }
    times, outputs, n = _timed(fns, model, loader, device, args.repeats, args.passes)
    scores = {name: two_afc(*out) for name, out in outputs.items()}
    ours = outputs["perceptlab"]
    distance_gap = max((a - b).abs().max().item() for out in outputs.values() for a, b in zip(out[:2], ours[:2]))
    decoded = list(loader)
    mem_fns = {"dreamsim_style": (dreamsim_style, None), "perceptlab": (perceptlab, None)}
    times_mem, _, _ = _timed(mem_fns, model, decoded, device, args.repeats, args.passes)
    rate = {name: n / min(ts) for name, ts in times.items()}
    rate_median = {name: n / statistics.median(ts) for name, ts in times.items()}
    rate_mem = {name: n / min(ts) for name, ts in times_mem.items()}

    def ratio(rates: dict[str, float], baseline: str = "dreamsim_style") -> float:
        return round(rates["perceptlab"] / rates[baseline], 3)

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
        "loaders": {"dreamsim_style": "float32 in [0, 1], normalised by the model", "perceptlab": "uint8"},
        "triplets_per_s": {name: round(r, 2) for name, r in rate.items()},
        "triplets_per_s_compute_only": {name: round(r, 2) for name, r in rate_mem.items()},
        "speedup_ratio": ratio(rate),
        "speedup_ratio_median": ratio(rate_median),
        "speedup_ratio_same_loader": ratio(rate, "dreamsim_style_uint8_loader"),
        "speedup_ratio_same_loader_median": ratio(rate_median, "dreamsim_style_uint8_loader"),
        "speedup_ratio_compute_only": ratio(rate_mem),
        "two_afc": {k: round(v, 6) for k, v in scores.items()},
        "same_2afc": max(scores.values()) - min(scores.values()) < 1e-6,
        "max_distance_difference": distance_gap,
        "machine": platform.processor() or platform.machine(),
    }))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
