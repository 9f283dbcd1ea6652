"""Every GPU figure in one run: ``make gpu-check`` (at most ``--budget`` seconds, 8 minutes by default).

Each step runs in its own process with its own time box (so one slow step cannot eat the rest;
a step past its box is killed and marked ``timed_out``), prints progress as it goes, and the
results land in one JSON and one Markdown file (``--out``, default ``runs/gpu_check``):

  flops          step time and MFU of ViT-B/32 at the paper's per-GPU batch, bf16, and what fused
                 AdamW, TF32 and torch.compile buy, each and together (bench_flops.py --variants)
  vs_open_clip   stage 2 vs open_clip_train side by side, 2 repeats (bench_vs_open_clip.py)
  loader         the loader workers with 256-px JPEGs vs the step; litdata beside webdataset
                 (bench_loader.py)
  nights_2afc    NIGHTS 2AFC evaluation against DreamSim's loop (bench_nights_2afc.py)
  alignment_cost the alignment suite's cost per evaluation against a training epoch (bench_alignment_cost.py)
  evaluate       ``perceptlab evaluate`` on two models with the toy suite: models per hour, and the
                 benchmark probe's cost per image -> models per hour for the paper preset's images
  fsdp2          stage 2 under FSDP2 on one GPU, 30 steps, writes open_clip_model.pt
  cuda_tests     the test suite's GPU tests (pytest -m gpu)

``--dry-run`` runs the same steps on the CPU at toy sizes (the test suite runs parts of it): the
figures are meaningless there, the plumbing is not.

    make gpu-check                               # on a GPU node, after make setup (or WHEELHOUSE=...)
    python benchmarks/gpu_check.py --workers 12 --nominal-tflops 989 --out runs/gpu_check
    python benchmarks/gpu_check.py --dry-run --only flops evaluate
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable


@dataclass
class Step:
    name: str
    what: str
    argv: list[str]
    box: float  # seconds
    kind: str = "json"  # json: the last JSON line of stdout; pytest: the summary line; run: exit status only
    cwd: Path = REPO
    headline: tuple[str, ...] = ()
    after: object = None  # callable(result: dict, work: Path) -> dict of derived figures
    env: dict = field(default_factory=dict)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_step(step: Step, box: float) -> dict:
    """Run one step within ``box`` seconds; its process group is killed when the box is over."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(HERE), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **step.env}
    proc = subprocess.Popen(step.argv, cwd=step.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=box)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        row = {"status": "timed_out", "seconds": round(time.perf_counter() - start, 1), "box": round(box),
               "error": f"killed after its {box:.0f} s box", "tail": (err or out)[-1500:]}
        lines = [ln for ln in (out or "").strip().splitlines() if ln.strip().startswith("{")]
        if step.kind == "json" and lines:  # a step that prints as it goes keeps what it measured
            row.update(status="partial", result=json.loads(lines[-1]))
        return row
    seconds = round(time.perf_counter() - start, 1)
    row: dict = {"status": "ok" if proc.returncode == 0 else "failed", "seconds": seconds, "box": round(box)}
    if step.kind == "pytest":  # which tests failed and why (pytest -rfE), kept whether or not all passed
        summary = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected)", ln)]
        row["result"] = {"summary": summary[-1].strip("= ") if summary else out[-300:],
                         "failures": [ln[:600] for ln in out.splitlines() if ln.startswith(("FAILED ", "ERROR "))]}
        if proc.returncode != 0:
            row["error"] = "; ".join(row["result"]["failures"])[-1500:] or (err or out).strip()[-1500:]
        return row
    if proc.returncode != 0:
        row["error"] = (err or out).strip()[-1500:]
        return row
    if step.kind == "json":
        lines = [ln for ln in out.strip().splitlines() if ln.strip().startswith("{")]
        if not lines:
            return {**row, "status": "failed", "error": "printed no JSON line: " + (err or out)[-800:]}
        row["result"] = json.loads(lines[-1])
    return row


def headline(step: Step, row: dict) -> str:
    if row["status"] not in ("ok", "partial"):
        return f"**{row['status']}**: {row.get('error', '').splitlines()[-1] if row.get('error') else ''}"
    result = row.get("result", {})
    keys = step.headline or tuple(result)[:4]
    return ", ".join(f"{k} = {result[k]:.4g}" if isinstance(result.get(k), float) else f"{k} = {result.get(k)}"
                     for k in keys if k in result)


def evaluate_figures(work: Path, model: str, preset_images: int | None):
    """The evaluate step's derived figures, from the run record it wrote."""
    def after(row: dict, _work: Path) -> dict:
        from perceptlab.callbacks.run_record import read_evaluations
        from perceptlab.datamodules.benchmark_sets import count_samples, resolve_tasks

        records = [r for r in read_evaluations(work / "eval_run") if "model" in r]
        if len(records) < 2:
            return {"error": f"{len(records)} of 2 models measured"}
        per_model = [sum(r["seconds"].values()) for r in records]
        world = work / "data" / "toyworld"
        images = sum(count_samples(t) for t in resolve_tasks(["toy"], world / "benchmark"))
        bench_seconds = [v for r in records for k, v in r["seconds"].items() if "benchmark" in k.lower()]
        per_image = (sum(bench_seconds) / len(bench_seconds)) / images if bench_seconds else None
        out = {"model": model, "models": len(records), "seconds_per_model": round(min(per_model), 3),
               "command_seconds_two_models": row["seconds"],
               "toy_suite_models_per_hour": round(3600 / min(per_model), 1),
               "benchmark_images_per_s": round(1 / per_image, 1) if per_image else None}
        if per_image and preset_images:
            out["paper_preset_images"] = preset_images
            out["paper_preset_models_per_hour"] = round(3600 / (per_image * preset_images), 2)
        return out
    return after


def fsdp2_figures(work: Path):
    """What the FSDP2 run wrote: its logged steps and last loss, and the open_clip export."""
    def after(_row: dict, _work: Path) -> dict:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        run = work / "runs" / "fsdp2" / "version_0"
        acc = EventAccumulator(str(run))
        acc.Reload()
        losses = [e.value for e in acc.Scalars("train/loss")] if "train/loss" in acc.Tags()["scalars"] else []
        return {"steps": len(losses), "final_loss": round(losses[-1], 4) if losses else None,
                "open_clip_model_pt": (run / "checkpoints" / "open_clip_model.pt").is_file()}
    return after


def plan(args, work: Path) -> list[Step]:
    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    model = "perceptlab-vit-tiny-64" if dry else "ViT-B-32"
    batch = 8 if dry else args.batch
    workers = 2 if dry else args.workers
    steps = [
        Step("flops", "step time and MFU (ViT-B/32, paper per-GPU batch, bf16); what fused AdamW, TF32 and "
             "torch.compile buy, each and together",
             [PY, str(HERE / "bench_flops.py"), "--model", model, "--device", device, "--batch", str(batch),
              "--steps", "2" if dry else "10", "--precision", "32-true" if dry else "bf16-mixed",
              "--variants", "eager,fused" if dry else "eager,fused,tf32,compile,all",
              *(["--matmul-size", "256"] if dry else []),
              *(["--nominal-tflops", str(args.nominal_tflops)] if args.nominal_tflops else [])],
             120 if dry else 80, headline=("step_s", "images_per_s", "share_of_matmul_peak", "mfu",
                                          "fastest_variant", "fastest_speedup")),
        Step("vs_open_clip", "stage 2 vs open_clip_train, same shards and settings, 2 repeats",
             [PY, str(HERE / "bench_vs_open_clip.py"), "--model", model, "--device", device,
              "--precision", "fp32" if dry else "bf16", "--batch", str(batch), "--workers", str(workers),
              "--steps", "6" if dry else "60", "--warmup", "2" if dry else "10", "--repeats", "2",
              *(["--shards", args.shards] if args.shards else [])],
             300 if dry else 120, headline=("ratio", "ratio_min", "ratio_max")),
        Step("loader", "the loader with 256-px JPEGs (img2dataset's size) vs the step; litdata beside webdataset",
             [PY, str(HERE / "bench_loader.py"), "--model", model, "--device", device, "--batch", str(batch),
              "--workers", str(workers), "--image-size", "256", "--batches", "2" if dry else "8",
              "--steps", "1" if dry else "5", "--seconds", "2" if dry else "6"],
             120 if dry else 55, headline=("ratio", "keeps_up", "workers_needed", f"litdata_ratio_{workers}_workers")),
        Step("nights_2afc", "NIGHTS 2AFC evaluation vs DreamSim's loop",
             [PY, str(HERE / "bench_nights_2afc.py"), "--device", device, "--repeats", "1" if dry else "3",
              "--passes", "1" if dry else "3", *([] if dry else ["--model", model, "--batch-size", "256"])],
             120 if dry else 35, headline=("speedup_ratio_median", "speedup_ratio_compute_only", "same_2afc")),
        Step("alignment_cost", "the alignment suite's cost per evaluation",
             [PY, str(HERE / "bench_alignment_cost.py"), "--repeats", "1" if dry else "2"], 180 if dry else 35,
             headline=("toy_share_per_evaluation", "vitb32_share_per_evaluation", "vitb32_meets_5pct_target")),
        Step("evaluate", "`perceptlab evaluate` on two models, toy suite",
             [PY, "-m", "perceptlab", "evaluate", str(work / "model_a.pt"), str(work / "model_b.pt"),
              "--model_name", model, "--config", str(REPO / "experiments" / "toy" / "alignment_suite.yaml"),
              "--out", str(work / "eval_run"), f"--trainer.accelerator={'cpu' if dry else 'gpu'}",
              "--trainer.devices=1", "--trainer.enable_progress_bar=false"],
             240 if dry else 50, kind="run", cwd=work,
             after=evaluate_figures(work, model, args.preset_images),
             headline=("seconds_per_model", "toy_suite_models_per_hour", "benchmark_images_per_s",
                       "paper_preset_models_per_hour")),
        Step("fsdp2", "stage 2 under FSDP2 on one GPU, 30 steps",
             [PY, "-m", "perceptlab", "fit", "--config", str(REPO / "experiments/strategies/fsdp2.yaml"),
              "--config", str(REPO / "experiments/toy/pretrain_random.yaml"), "--runs_dir", str(work / "runs"),
              "--experiment", "fsdp2", f"--trainer.accelerator={'cpu' if dry else 'gpu'}", "--trainer.devices=1",
              "--trainer.strategy.init_args.data_parallel_size=1", f"--trainer.max_steps={3 if dry else 30}",
              "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
              "--trainer.log_every_n_steps=1", *([] if dry else ["--trainer.precision=bf16-mixed"])],
             150 if dry else 45, kind="run", cwd=work, after=fsdp2_figures(work),
             headline=("steps", "final_loss", "open_clip_model_pt")),
        Step("cuda_tests", "the GPU tests (pytest -m gpu)",
             [PY, "-P", "-m", "pytest", "-q", "-rfE", "-m", "gpu", "-p", "no:cacheprovider", str(REPO / "tests")],
             120 if dry else 60, kind="pytest", env={"COLUMNS": "1000"}),  # wide: -rfE keeps each reason
    ]
    return [s for s in steps if not args.only or s.name in args.only]


def prepare(work: Path, model: str, dry: bool) -> None:
    """What the evaluate and fsdp2 steps read: a tiny toy world in ``work/data/toyworld`` and two
    random open_clip state dicts of ``model``."""
    import torch

    from perceptlab.core.backbone import CLIPBackbone

    subprocess.run([PY, "-m", "perceptlab", "synth", "--out", str(work / "data" / "toyworld"), "--scale", "tiny",
                    "--no_progress"], cwd=work, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    for seed, name in ((0, "model_a.pt"), (1, "model_b.pt")):
        torch.manual_seed(seed)
        torch.save(CLIPBackbone(model).model.state_dict(), work / name)


def markdown(results: dict, steps: list[Step]) -> str:
    by_name = {s.name: s for s in steps}
    m = results["machine"]
    lines = [f"# GPU check, {results['date']}", "",
             f"{m['device']}; torch {m['torch']}, CUDA {m['cuda']}; Python {m['python']}; {m['cpus']} CPUs"
             + (" — **dry run on the CPU: figures meaningless**" if results["dry_run"] else ""), "",
             f"Total {results['seconds']:.0f} s of a {results['budget']:.0f} s budget.", "",
             "| step | what | status | seconds (box) | headline |", "|---|---|---|---:|---|"]
    for name, row in results["steps"].items():
        lines.append(f"| {name} | {by_name[name].what} | {row['status']} | {row['seconds']} ({row['box']}) | "
                     f"{headline(by_name[name], row)} |")
    lines += ["", "Full figures: `gpu_check.json` beside this file."]
    return "\n".join(lines) + "\n"


def machine() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name(0) if cuda else "CPU only", "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None, "python": platform.python_version(),
            "cpus": os.cpu_count(), "platform": platform.platform()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_check")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole check (default 480; a dry run on a CPU: 1800)")
    parser.add_argument("--batch", type=int, default=256, help="per-GPU batch (the paper config's)")
    parser.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--nominal-tflops", type=float, default=None, help="datasheet dense bf16 peak, e.g. 989 (H100/H200)")
    parser.add_argument("--shards", default=None, help="real training shards for vs_open_clip (default: the toy world's)")
    parser.add_argument("--preset-images", type=int, default=None,
                        help="test images of the paper benchmark preset, for its models per hour")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at toy sizes")
    parser.add_argument("--only", nargs="*", default=None, help="run only these steps")
    args = parser.parse_args(argv)
    args.budget = args.budget or (1800.0 if args.dry_run else 480.0)

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); "
                         "--dry-run runs the steps on the CPU")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    deadline = started + args.budget
    results = {"date": time.strftime("%Y-%m-%d"), "dry_run": args.dry_run, "budget": args.budget,
               "machine": machine(), "steps": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        steps = plan(args, work)
        if any(s.name in ("evaluate", "fsdp2") for s in steps):  # both read the toy world written here
            print("[gpu_check] writing a tiny toy world and two random models ...", file=sys.stderr, flush=True)
            prepare(work, "perceptlab-vit-tiny-64" if args.dry_run else "ViT-B-32", args.dry_run)
        for i, step in enumerate(steps, 1):
            left = deadline - time.perf_counter()
            box = min(step.box, left)
            if box < 10:
                results["steps"][step.name] = {"status": "skipped", "seconds": 0, "box": round(box),
                                               "error": "the check's budget was spent"}
                continue
            print(f"[gpu_check {i}/{len(steps)}] {step.name}: {step.what} (box {box:.0f} s) ...", file=sys.stderr, flush=True)
            row = run_step(step, box)
            if row["status"] == "ok" and step.after is not None:
                row["result"] = {**row.get("result", {}), **step.after(row, work)}
            results["steps"][step.name] = row
            print(f"[gpu_check {i}/{len(steps)}] {step.name}: {row['status']} in {row['seconds']} s; "
                  f"{headline(step, row)}", file=sys.stderr, flush=True)
            results["seconds"] = round(time.perf_counter() - started, 1)
            (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))  # partial results survive a kill
        results["seconds"] = round(time.perf_counter() - started, 1)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
        (args.out / "gpu_check.md").write_text(markdown(results, steps))
    print(f"[gpu_check] done in {results['seconds']:.0f} s: {args.out / 'gpu_check.md'}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
