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
    python benchmarks/bench_flops.py --device cuda --batch 256 --precision bf16-mixed --variants eager,fused,tf32,compile,all

``--variants`` times the stage-2 speed settings in the same run, each on a fresh model: torch's
fused AdamW, TF32 for float32 matmuls, ``torch.compile`` of every transformer block, and all
three; ``speedup`` is each one's images/s over the first's. Attention is already
``scaled_dot_product_attention`` (flash / memory-efficient kernels on a GPU): open_clip's
``nn.MultiheadAttention`` calls it whenever no attention weights are asked for, as in training.
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


VARIANTS = {  # what each stage-2 speed setting buys, one at a time and together
    "eager": {},
    "fused": {"fused": True},            # model.fused_adamw: torch's fused AdamW kernel
    "tf32": {"tf32": True},              # model.matmul_precision: high (TF32 for float32 matmuls)
    "compile": {"compile": True},        # model.compile: torch.compile of every transformer block
    "all": {"fused": True, "tf32": True, "compile": True},
}


def measure(args, fused: bool = False, tf32: bool = False, compile: bool = False) -> dict:
    """One variant: a fresh model (same seed), its step timed, interleaved with the matmul peak."""
    device, bf16 = args.device, args.precision == "bf16-mixed"
    precision_before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        torch.manual_seed(0)
        backbone = CLIPBackbone(args.model).to(device)
        model = backbone.model
        optimizer = torch.optim.AdamW(param_groups(model.named_parameters(), 0.1), lr=1e-4, fused=fused or None)
        if compile:  # as ContrastivePretrainModule(compile=True) does: each block, in place
            for block in [*model.visual.transformer.resblocks, *model.transformer.resblocks]:
                block.compile()
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

        step_flops = None
        if not compile:  # FLOPs are the model's, whatever runs them: counted on the eager graph
            counter = FlopCounterMode(display=False)
            with counter:
                with autocast:
                    loss = loss_fn(*model(images, tokens))
                loss.backward()
            step_flops = counter.get_total_flops()
            optimizer.zero_grad(set_to_none=True)

        n = args.matmul_size or (8192 if device.startswith("cuda") else 2048)
        dtype = torch.bfloat16 if bf16 else torch.float32
        started = time.perf_counter()
        step()  # warm-up (and compilation)
        sync(device)
        warmup_s = time.perf_counter() - started
        step_times, peaks = [], []
        for _ in range(args.steps):  # interleaved: the peak and the step see the same machine state
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            step_times.append(time.perf_counter() - start)
            peaks.append(matmul_flops_per_s(n, dtype, device, repeats=3 if device == "cpu" else 20))
        return {"step_s": statistics.median(step_times), "peak": max(peaks), "flops": step_flops,
                "warmup_s": warmup_s}
    finally:
        torch.set_float32_matmul_precision(precision_before)


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
    parser.add_argument("--variants", default="eager",
                        help=f"comma-separated, among {', '.join(VARIANTS)}: each timed in this run, the "
                             "first is the headline; a JSON line is printed after each")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        parser.error(f"--variants: unknown {unknown}; expected some of {', '.join(VARIANTS)}")
    out: dict = {"model": args.model, "batch": args.batch, "device": args.device, "precision": args.precision,
                 "threads": torch.get_num_threads()}
    flops = None
    for name in names:
        m = measure(args, **VARIANTS[name])
        flops = m["flops"] or flops
        row = {"step_s": round(m["step_s"], 4), "images_per_s": round(args.batch / m["step_s"], 2),
               "warmup_s": round(m["warmup_s"], 2)}
        if flops:
            achieved = flops / m["step_s"]
            row.update(achieved_gflops=round(achieved / 1e9, 2), matmul_peak_gflops=round(m["peak"] / 1e9, 2),
                       share_of_matmul_peak=round(achieved / m["peak"], 4))
            if args.nominal_tflops:
                row["mfu"] = round(achieved / (args.nominal_tflops * 1e12), 4)
        if name == names[0]:
            out.update(step_gflop=round(flops / 1e9, 2) if flops else None, **row)
        if len(names) > 1:
            out.setdefault("variants", {})[name] = row
            first = out["variants"][names[0]]["images_per_s"]
            out["variants"][name]["speedup"] = round(row["images_per_s"] / first, 3)
            best = max(out["variants"], key=lambda k: out["variants"][k]["images_per_s"])
            out["fastest_variant"], out["fastest_speedup"] = best, out["variants"][best]["speedup"]
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
