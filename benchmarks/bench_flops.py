"""Achieved FLOP/s of a contrastive training step as a share of this machine's measured matmul peak.

The step is ContrastivePretrainModule's: open_clip model forward on images and captions, ClipLoss,
backward, AdamW. Its FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
convolutions and attention, forward and backward; the optimiser's elementwise work is not
counted, as in MFU conventions). The peak is measured, not quoted: the best FLOP/s of large square
matmuls in the step's dtype on the same device, interleaved with the step timings. On a GPU the
nominal dense bf16 peak can be given with ``--nominal-tflops`` to report MFU as well
(H100 SXM: 989).

    python benchmarks/bench_flops.py                                 # ViT-B/32, batch 8, CPU
    python benchmarks/bench_flops.py --device cuda --batch 256 --precision bf16-mixed --nominal-tflops 989
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


import torch
from open_clip import ClipLoss
from torch.utils.flop_counter import FlopCounterMode

from perceptlab.core.backbone import CLIPBackbone
from perceptlab.core.optim import param_groups


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_flops_per_s(n: int, dtype: torch.dtype, device: str, repeats: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up step)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed"))
    parser.add_argument("--matmul-size", type=int, default=None, help="side of the peak matmuls (default 2048 CPU, 8192 GPU)")
    parser.add_argument("--nominal-tflops", type=float, default=None, help="datasheet dense peak, for MFU")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, bf16 = args.device, args.precision == "bf16-mixed"
    torch.manual_seed(0)

    backbone = CLIPBackbone(args.model).to(device)
    model = backbone.model
    optimizer = torch.optim.AdamW(param_groups(model.named_parameters(), 0.1), lr=1e-4)
    loss_fn = ClipLoss()
    size = backbone.image_size
    images = torch.randn(args.batch, 3, size, size, device=device)
    tokens = backbone.tokenize(["a photo of a large red car on grass"] * args.batch).to(device)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(*model(images, tokens))
        loss.backward()
        optimizer.step()

    counter = FlopCounterMode(display=False)
    with counter:
        with autocast:
            loss = loss_fn(*model(images, tokens))
        loss.backward()
    step_flops = counter.get_total_flops()
    optimizer.zero_grad(set_to_none=True)

    n = args.matmul_size or (8192 if device.startswith("cuda") else 2048)
    dtype = torch.bfloat16 if bf16 else torch.float32
    step()  # warm-up
    step_times, peaks = [], []
    for _ in range(args.steps):  # interleaved: the peak and the step see the same machine state
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        step_times.append(time.perf_counter() - start)
        peaks.append(matmul_flops_per_s(n, dtype, device, repeats=3 if device == "cpu" else 20))
    step_s = statistics.median(step_times)
    achieved = step_flops / step_s
    peak = max(peaks)
    out = {
        "model": args.model, "batch": args.batch, "device": device, "precision": args.precision,
        "threads": torch.get_num_threads(),
        "step_gflop": round(step_flops / 1e9, 2), "step_s": round(step_s, 4),
        "images_per_s": round(args.batch / step_s, 2),
        "achieved_gflops": round(achieved / 1e9, 2), "matmul_peak_gflops": round(peak / 1e9, 2),
        "share_of_matmul_peak": round(achieved / peak, 4),
    }
    if args.nominal_tflops:
        out["mfu"] = round(achieved / (args.nominal_tflops * 1e12), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
