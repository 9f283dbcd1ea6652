"""Stage-2 training throughput: ``perceptlab fit`` side by side with open_clip's own trainer.

Both train the same architecture from scratch on the same webdataset shards with the same
settings: batch, loader workers, precision, AdamW (lr 1e-3, betas 0.9/0.98, eps 1e-6, no weight
decay), 50 warm-up steps, gradient clipping at 3, FLIP patch dropout 0.5, open_clip's train
transform (``augmentation: clip`` on our side), no validation. The reference is
``open_clip_train`` run through ``benchmarks/open_clip_train_run.py`` (our model configs
registered, webdataset's end-of-shard fix). Each side runs in its own process, alternating which
goes first, ``--repeats`` times.

Throughput is steady state: the time from the end of one optimiser step to the end of the next
(data wait included; open_clip_train's ``batch_time``), median over the steps after ``--warmup``,
as samples/s. The JSON gives each side per repeat, the median ratio perceptlab / open_clip_train
and its spread, and each side's mean training loss over the same steps (the two runs draw different
initial weights and sample orders, so losses agree only on average).

    python benchmarks/bench_vs_open_clip.py                       # tiny ViT at 64 px, CPU, toy shards
    python benchmarks/bench_vs_open_clip.py --model ViT-B-32 --device cuda --precision bf16 \\
        --batch 256 --workers 8 --shards '/data/yfcc15m/{00000..00099}.tar' --steps 300
    python benchmarks/bench_vs_open_clip.py ... --compile    # both sides with their speed flags

``--compile``: each side with its best flags: open_clip_train ``--torchcompile``; perceptlab
``model.compile: true`` (every transformer block). On a GPU both use TF32 for float32 matmuls
(open_clip_train always sets it; here ``model.matmul_precision: high``) and perceptlab's AdamW is
torch's fused kernel (its default on CUDA).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TOY_CONFIG = REPO / "experiments" / "toy" / "pretrain_random.yaml"
LINE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/.*?Batch \(t\): [\d.]+, ([\d.e+]+)/s.*?Contrastive_loss: ([\d.e+-]+)")


class StepTimer(pl.Callback):
    """Records the end time and loss of every training batch; writes them to ``out`` at the end."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.ends: list[float] = []
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.ends.append(time.perf_counter())
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out).write_text(json.dumps({"ends": self.ends, "losses": self.losses}))


def steady(per_step: list[float], warmup: int) -> float:
    return statistics.median(per_step[warmup:])


def run_perceptlab(ns, shards: list[str], work: Path, tag: str) -> dict:
    out = work / f"perceptlab-{tag}.json"
    precision = {"fp32": "32-true", "bf16": "bf16-mixed"}[ns.precision]
    timer = json.dumps({"class_path": "bench_vs_open_clip.StepTimer", "init_args": {"out": str(out)}})
    cmd = [sys.executable, "-m", "perceptlab", "fit", "--config", str(TOY_CONFIG),
           "--runs_dir", str(work / "runs"), "--experiment", f"perceptlab-{tag}",
           f"--model.init_args.model_name={ns.model}", f"--trainer.accelerator={ns.device}",
           f"--trainer.precision={precision}", f"--trainer.max_steps={ns.steps}", "--trainer.max_epochs=-1",
           "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
           f"--trainer.callbacks+={timer}",
           f"--data.init_args.pairs.init_args.train={'::'.join(shards)}", "--data.init_args.pairs.init_args.val=null",
           "--data.init_args.zeroshot_data=null", f"--data.init_args.loader.batch_size={ns.batch}",
           f"--data.init_args.loader.num_workers={ns.workers}", "--data.init_args.augmentation=clip",
           f"--data.init_args.pairs.init_args.samples_per_epoch={ns.steps * ns.batch}"]
    if ns.device != "cpu":
        cmd.append("--model.init_args.matmul_precision=high")
    if ns.compile:
        cmd.append("--model.init_args.compile=true")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"perceptlab fit failed:\n{proc.stderr[-4000:]}")
    record = json.loads(out.read_text())
    ends = record["ends"]
    per_step = [ns.batch / (b - a) for a, b in zip(ends, ends[1:])]  # step i: end of i-1 to end of i
    return {"samples_per_s": steady(per_step, ns.warmup), "losses": record["losses"]}


def run_open_clip_train(ns, shards: list[str], work: Path, tag: str) -> dict:
    precision = {"fp32": "fp32", "bf16": "amp_bf16"}[ns.precision]
    cmd = [sys.executable, str(HERE / "open_clip_train_run.py"), "--model", ns.model, "--device", ns.device,
           "--train-data", "::".join(shards), "--dataset-type", "webdataset",
           "--train-num-samples", str(ns.steps * ns.batch), "--batch-size", str(ns.batch),
           "--workers", str(ns.workers), "--epochs", "1", "--precision", precision,
           "--lr", "1e-3", "--wd", "0", "--warmup", "50", "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6",
           "--grad-clip-norm", "3", "--force-patch-dropout", "0.5", "--seed", "0",
           "--logs", str(work / "open_clip_logs"), "--name", f"open_clip-{tag}", "--save-frequency", "0",
           "--zeroshot-frequency", "0", "--val-frequency", "0", "--log-every-n-steps", "1"]
    if ns.compile:
        cmd.append("--torchcompile")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"open_clip_train failed:\n{proc.stderr[-4000:]}")
    rows = [(int(m.group(1)), float(m.group(2)), float(m.group(3))) for m in LINE.finditer(proc.stdout + proc.stderr)]
    if len(rows) < ns.warmup + 2:
        raise RuntimeError(f"open_clip_train logged {len(rows)} steps:\n{(proc.stdout + proc.stderr)[-3000:]}")
    # the first line is step 0, whose time includes start-up; each later line is one step
    return {"samples_per_s": steady([r[1] for r in rows[1:]], ns.warmup), "losses": [r[2] for r in rows]}


def toy_shards(work: Path) -> list[str]:
    """The small toy world's training shards (8,000 pairs), written here if needed."""
    world = REPO / "data" / "toyworld"
    found = sorted(glob.glob(str(world / "image_text" / "shards" / "*.tar")))
    if len(found) >= 4:
        return found
    subprocess.run([sys.executable, "-m", "perceptlab", "synth", "--out", str(work / "toyworld"), "--scale", "small"],
                   cwd=REPO, check=True, capture_output=True)
    return sorted(glob.glob(str(work / "toyworld" / "image_text" / "shards" / "*.tar")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="perceptlab-vit-tiny-64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the steady state")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards", default=None, help="webdataset shards (brace pattern or glob); default: toy world")
    parser.add_argument("--compile", action="store_true",
                        help="both sides compiled: open_clip_train --torchcompile, perceptlab model.compile")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if ns.shards:
            from perceptlab.datamodules.image_text import expand_shards

            shards = expand_shards(ns.shards)
        else:
            shards = toy_shards(work)
        runs = []
        for r in range(ns.repeats):
            sides = [("perceptlab", run_perceptlab), ("open_clip_train", run_open_clip_train)]
            if r % 2:
                sides.reverse()  # alternate which side goes first
            result = {name: fn(ns, shards, work, str(r)) for name, fn in sides}
            runs.append(result)
            print(f"repeat {r}: perceptlab {result['perceptlab']['samples_per_s']:.1f}/s, "
                  f"open_clip_train {result['open_clip_train']['samples_per_s']:.1f}/s", file=sys.stderr, flush=True)
    ratios = [r["perceptlab"]["samples_per_s"] / r["open_clip_train"]["samples_per_s"] for r in runs]

    def mean_loss(side: str) -> float:
        return statistics.fmean(statistics.fmean(r[side]["losses"][ns.warmup:ns.steps]) for r in runs)

    print(json.dumps({
        "benchmark": "bench_vs_open_clip",
        "model": ns.model, "device": ns.device, "precision": ns.precision, "batch": ns.batch,
        "workers": ns.workers, "steps": ns.steps, "warmup": ns.warmup, "repeats": ns.repeats,
        "compile": ns.compile,
        "perceptlab_samples_per_s": [round(r["perceptlab"]["samples_per_s"], 2) for r in runs],
        "open_clip_train_samples_per_s": [round(r["open_clip_train"]["samples_per_s"], 2) for r in runs],
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "mean_train_loss": {"perceptlab": mean_loss("perceptlab"), "open_clip_train": mean_loss("open_clip_train")},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }))


if __name__ == "__main__":
    main()
