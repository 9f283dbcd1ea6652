"""``perceptlab demo``: the whole toy-world study, end to end, on a CPU.

1. write the toy world (``perceptlab synth``) unless it is already there at that scale and seed;
2. stage 1: perceptual initialisation on the toy NIGHTS (``experiments/toy/pi_nights.yaml``);
3. stage 2 twice, same seed and data: from the stage-1 vision tower and from random, with the
   alignment suite every epoch and every N steps early on;
4. a perceptual-task transfer (toy IQA) from each stage-2 run, then its test set;
5. ``perceptlab report`` over the runs.

``--seeds N`` runs stages 2-4 (and stage 1, which the perceptual arm starts from) with the training
seeds ``seed, seed + 1, ...`` on the same toy world, and the report gives every number as mean and
95 % interval over the seeds, with differences paired by seed (``make study`` is ``--seeds 3``).

Every stage is the ``perceptlab`` command a user would type, with the shipped configs (run in
this process to pay the imports once); the commands are printed as they run, so each stage can
be repeated by hand.
The configs read the toy world from ``data/toyworld`` relative to the working directory.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # commands/ is a top-level folder of the checkout
EXPERIMENTS = REPO / "experiments"


@dataclass
class DemoPlan:
    """What each stage runs for. ``quick`` shrinks everything to seconds (used by the tests)."""

    scale: str = "small"
    seed: int = 0
    seeds: int = 1  # training seeds per arm: seed, seed + 1, ...
    pi_args: list[str] = field(default_factory=list)
    pretrain_args: list[str] = field(default_factory=list)
    task_args: list[str] = field(default_factory=list)
    any_scale: bool = False  # reuse an existing toy world whatever its scale

    @property
    def training_seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    @classmethod
    def quick(cls, seed: int = 0, seeds: int = 1) -> "DemoPlan":
        few = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
               "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false"]
        suite = ["--trainer.callbacks.init_args.every_n_steps=null"]  # baseline + epoch ends only
        return cls(scale="tiny", seed=seed, seeds=seeds, pi_args=few + suite, pretrain_args=few + suite,
                   task_args=few, any_scale=True)


def latest_version(runs_dir: Path, experiment: str) -> Path:
    """The newest ``version_<n>`` directory of an experiment."""
    root = runs_dir / experiment
    versions = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[-1]))
    if not versions:
        raise FileNotFoundError(f"no run was written under {root}")
    return versions[-1]


class Demo:
    def __init__(self, out: Path, data: Path, plan: DemoPlan) -> None:
        self.out, self.data, self.plan = out, data, plan
        self.log: list[dict] = []

    def perceptlab(self, *args: str) -> None:
        """Run one ``perceptlab`` command in this process (imports are paid once, not per stage)."""
        from perceptlab.commands.cli import main as perceptlab_main

        shown = "perceptlab " + " ".join(shlex.quote(a) for a in args)
        print(f"\n$ {shown}", flush=True)
        start = time.perf_counter()
        argv = sys.argv
        try:
            perceptlab_main(list(args))
        except SystemExit as exc:  # LightningCLI exits on bad arguments
            if exc.code not in (0, None):
                raise RuntimeError(f"demo stage failed (exit {exc.code}): {shown}") from exc
        finally:
            sys.argv = argv
        self.log.append({"command": shown, "seconds": round(time.perf_counter() - start, 1)})

    def synth(self) -> None:
        manifest = self.data / "world.json"
        if manifest.is_file():
            world = json.loads(manifest.read_text())
            same_scale = self.plan.any_scale or world.get("scale") == self.plan.scale
            from perceptlab.datamodules.toyworld.synthesize import PATHS

            # every set this version writes: a world written before a set was added lacks it
            complete = all((self.data / rel).exists() for rel in PATHS.values())
            if same_scale and world.get("seed") == self.plan.seed and complete:
                print(f"toy world already at {self.data} (scale {world.get('scale')}, seed {self.plan.seed})")
                return
        self.perceptlab("synth", "--out", str(self.data), "--seed", str(self.plan.seed), "--scale", self.plan.scale)

    def fit(self, experiment: str, configs: list[str], extra: list[str], seed: int | None = None) -> Path:
        args = ["fit"]
        for c in configs:
            args += ["--config", str(EXPERIMENTS / c)]
        seed = self.plan.seed if seed is None else seed
        args += ["--runs_dir", str(self.out), "--experiment", experiment, f"--seed_everything={seed}", *extra]
        self.perceptlab(*args)
        return latest_version(self.out, experiment)

    def test(self, experiment: str, config: str, ckpt: Path, extra: list[str]) -> Path:
        self.perceptlab("test", "--config", str(EXPERIMENTS / config), "--runs_dir", str(self.out),
                        "--experiment", experiment, f"--ckpt_path={ckpt}", *extra)
        return latest_version(self.out, experiment)

    def run(self) -> Path:
        if not EXPERIMENTS.is_dir():
            raise FileNotFoundError(f"the demo runs the shipped configs of a source checkout; {EXPERIMENTS} not found "
                                    "(clone the repository and run `make demo` there)")
        t0 = time.perf_counter()
        self.synth()
        plan = self.plan
        stage1: list[Path] = []
        pretrain: dict[str, list[Path]] = {"perceptual_init": [], "random_init": []}
        tasks: dict[str, list[Path]] = {"perceptual_init": [], "random_init": []}
        for seed in plan.training_seeds:
            if plan.seeds > 1:
                print(f"\n=== seed {seed} ({plan.training_seeds.index(seed) + 1} of {plan.seeds}) ===", flush=True)
            pi_run = self.fit("pi_nights", ["toy/pi_nights.yaml", "toy/alignment_suite.yaml"], plan.pi_args, seed)
            visual = pi_run / "visual.pt"
            if not visual.is_file():
                raise FileNotFoundError(f"stage 1 did not export {visual}")
            stage1.append(pi_run)
            pretrain["perceptual_init"].append(
                self.fit("pretrain_pi", ["toy/pretrain_pi.yaml", "toy/alignment_suite.yaml"],
                         [f"--model.init_args.init_visual_from={visual}", *plan.pretrain_args], seed))
            pretrain["random_init"].append(
                self.fit("pretrain_random", ["toy/pretrain_random.yaml", "toy/alignment_suite.yaml"],
                         plan.pretrain_args, seed))
            for name, runs in pretrain.items():
                exp = f"iqa_from_{name}"
                fit_run = self.fit(exp, ["toy/perceptual_iqa.yaml"],
                                   [f"--model.init_args.init_visual_from={runs[-1] / 'checkpoints' / 'last.ckpt'}",
                                    *plan.task_args], seed)
                tasks[name].append(self.test(f"{exp}_test", "toy/perceptual_iqa.yaml", fit_run / "checkpoints" / "last.ckpt",
                                             [a for a in plan.task_args if "limit_test" in a or "progress" in a]))
        report_dir = self.out / "report"

        def paths(runs: list[Path]) -> str:
            return ",".join(str(p) for p in runs)

        seeds = f" ({plan.seeds} seeds per arm)" if plan.seeds > 1 else ""
        args = ["report", *(f"{n}={paths(p)}" for n, p in pretrain.items()), f"stage1={paths(stage1)}",
                *(f"iqa_from_{n}={paths(p)}" for n, p in tasks.items()),
                "--out", str(report_dir), "--reference", "random_init",
                "--title", f"perceptlab toy-world study: perceptual vs random initialisation{seeds}"]
        self.perceptlab(*args)
        total = time.perf_counter() - t0
        (self.out / "demo_timings.json").write_text(json.dumps({"total_seconds": round(total, 1), "steps": self.log}, indent=2))
        print(f"\nDone in {total / 60:.1f} min.")
        print(f"  report:      {report_dir / 'report.md'}")
        print(f"  tensorboard: make tensorboard   (or: tensorboard --logdir {self.out})")
        return report_dir


def demo(out: str = "runs/demo", seed: int = 0, seeds: int = 1, quick: bool = False) -> Path:
    """The whole toy-world study, end to end, on a CPU: synth, stage 1, stage 2 twice, task transfer, report.

    Args:
        out: where the runs and the report go.
        seed: the toy world's seed and the first training seed.
        seeds: training seeds per arm (seed, seed + 1, ...); the report gives intervals over them.
        quick: tiny world, two batches per stage: a smoke test in seconds.
    """
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    plan = DemoPlan.quick(seed, seeds) if quick else DemoPlan(seed=seed, seeds=seeds)
    # The toy configs read data/toyworld relative to the working directory.
    return Demo(Path(out), Path("data/toyworld"), plan).run()


def main(argv: list[str] | None = None) -> Path:
    from perceptlab.commands.cli import run_function

    return run_function(demo, argv, prog="perceptlab demo")
