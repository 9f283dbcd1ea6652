"""Stage 2 under distribution: `perceptlab fit` with the strategy configs, as users run it.

DDP and FSDP2 run as 2 CPU processes over gloo; the GPU paths (FSDP1, bf16-mixed, torch.compile)
run only where CUDA is present.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from perceptlab.datamodules.image_text import CsvPairs
from perceptlab.lightning_modules.contrastive import ContrastivePretrainModule
from perceptlab.datamodules.loader import Loader

REPO = Path(__file__).resolve().parents[1]
TOY = "experiments/toy/pretrain_random.yaml"


# `python -m perceptlab`, not the console script: it is what a node running the project from source
# has, and Lightning's DDP launcher must start the other ranks the same way (`-m`, not a script path).
PERCEPTLAB = [sys.executable, "-m", "perceptlab"]
# One intra-op thread per rank: two ranks share the machine's cores. The source tree first on the
# path, so that a node without an installed package runs it from here.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def perceptlab(args: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([*PERCEPTLAB, "fit", *args, "--runs_dir", str(tmp_path / "runs")], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def toy_data(world: Path, fmt: str = "webdataset", train=None, val="default", **overrides) -> list[str]:
    from conftest import pairs_override

    root = world / "image_text"
    data = {"zeroshot_data": str(world / "classification"), "loader.batch_size": 8, "loader.num_workers": 0,
            **{("loader." + k if k in ("batch_size", "num_workers") else k): v for k, v in overrides.items()}}
    pairs = pairs_override(fmt, train or root / "shards" / "*.tar",
                           root / "val_shards" / "00000.tar" if val == "default" else val, key="--data.pairs")
    return [pairs] + [f"--data.{k}={'null' if v is None else v}" for k, v in data.items()]


@pytest.mark.slow
def test_ddp_two_cpu_processes_loss_on_the_global_batch_equals_one_process(tiny_world, tmp_path):
    csv = Path(tiny_world) / "image_text" / "pairs.csv"
    perceptlab(["--config", "experiments/strategies/ddp.yaml", "--config", TOY, "--experiment", "ddp",
                "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.max_steps=2",
                "--trainer.log_every_n_steps=1", "--trainer.limit_val_batches=0", "--model.patch_dropout=null",
                *toy_data(Path(tiny_world), fmt="csv", train=csv, val=None, zeroshot_data=None,
                          shuffle=False, augmentation="none")], tmp_path)
    losses = scalars(tmp_path / "runs" / "ddp" / "version_0", "train/loss")
    assert len(losses) == 2
    ddp_first = min(losses)[1]  # mean over the ranks of each rank's local loss, first step

    # Rank r of 2 reads rows r, r + 2, ... (DistributedSampler, no shuffle): together rows 0-15.
    pl.seed_everything(0)  # the CLI seeds 0 before building the model: the same initial weights
    init_args = yaml.safe_load((REPO / TOY).read_text())["model"]["init_args"] | {"patch_dropout": None}
    module = ContrastivePretrainModule(**init_args)
    tf = module.backbone.transform(train=False)
    pairs = CsvPairs(csv, tf)
    rows = [pairs[i] for i in range(16)]
    images = torch.stack([r[0] for r in rows])
    tokens = module.backbone.tokenize([r[1] for r in rows])
    with torch.no_grad():
        one_process = module.contrastive_loss(*module(images, tokens)).item()
    assert ddp_first == pytest.approx(one_process, rel=1e-4), (ddp_first, one_process)
    assert 1.0 < one_process < 20.0


@pytest.mark.slow
def test_fsdp2_on_two_cpu_ranks_trains_validates_and_checkpoints(tiny_world, tmp_path):
    perceptlab(["--config", "experiments/strategies/fsdp2.yaml", "--config", TOY, "--experiment", "fsdp2",
                "--trainer.accelerator=cpu", "--trainer.devices=2",
                "--trainer.strategy.init_args.data_parallel_size=2", "--trainer.max_steps=3",
                "--trainer.log_every_n_steps=1", "--trainer.check_val_every_n_epoch=null",
                "--trainer.val_check_interval=2", "--trainer.limit_val_batches=2", "--model.grad_clip_norm=1.0",
                *toy_data(Path(tiny_world))], tmp_path)
    run = tmp_path / "runs" / "fsdp2" / "version_0"
    losses = [v for _, v in scalars(run, "train/loss")]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert len(scalars(run, "val/zeroshot_top1")) == 1 and len(scalars(run, "val/i2t_R@1")) == 1
    assert (run / "checkpoints" / "last.ckpt").exists()  # a distributed checkpoint: one shard per rank
    # the open_clip file holds the whole model, gathered from both ranks' shards: it loads strictly
    import open_clip

    from perceptlab.core import transforms  # noqa: F401  (registers perceptlab's small architectures)

    weights = run / "checkpoints" / "open_clip_model.pt"
    model, _, _ = open_clip.create_model_and_transforms("perceptlab-vit-tiny-64", pretrained=str(weights))
    state = torch.load(weights, map_location="cpu")
    assert set(state) == set(model.state_dict()) and all(not hasattr(v, "full_tensor") for v in state.values())


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@requires_cuda
@pytest.mark.gpu
@pytest.mark.slow
def test_fsdp1_bf16_on_gpu(tiny_world, tmp_path):
    perceptlab(["--config", "experiments/strategies/fsdp.yaml", "--config", TOY, "--experiment", "fsdp",
                "--trainer.accelerator=gpu", f"--trainer.devices={min(2, torch.cuda.device_count())}",
                "--trainer.precision=bf16-mixed", "--trainer.max_steps=3", "--trainer.log_every_n_steps=1",
                "--trainer.check_val_every_n_epoch=null", "--trainer.val_check_interval=2",
                "--trainer.limit_val_batches=2", *toy_data(Path(tiny_world))], tmp_path)
    losses = [v for _, v in scalars(tmp_path / "runs" / "fsdp" / "version_0", "train/loss")]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


@requires_cuda
@pytest.mark.gpu
@pytest.mark.slow
def test_compiled_bf16_ddp_on_gpu_with_accumulation(tiny_world, tmp_path):
    perceptlab(["--config", "experiments/strategies/ddp.yaml", "--config", TOY, "--experiment", "compiled",
                "--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.precision=bf16-mixed",
                "--trainer.max_steps=4", "--trainer.log_every_n_steps=1", "--trainer.limit_val_batches=0",
                "--model.compile=true", "--model.accum_freq=2", "--model.patch_dropout=0.5",
                "--model.grad_checkpointing=true", *toy_data(Path(tiny_world), batch_size=16)], tmp_path)
    losses = [v for _, v in scalars(tmp_path / "runs" / "compiled" / "version_0", "train/loss")]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.slow
def test_validation_metrics_do_not_depend_on_loader_workers_or_processes(tiny_world, tmp_path):
    """val/loss and the recalls of one model: the same with 0, 1 or 2 loader workers in one process
    and with 2 processes of 2 workers. Workers and processes split the validation shard sample by
    sample (and pad), which used to change what shared a batch and so the loss."""
    from perceptlab.datamodules.image_text import ImageTextDataModule, WebDatasetSource

    val = str(Path(tiny_world) / "image_text" / "val_shards" / "00000.tar")
    init_args = yaml.safe_load((REPO / TOY).read_text())["model"]["init_args"]
    keys = ("val/loss", "val/i2t_R@1", "val/t2i_R@1", "val/i2t_R@5")
    measured = {}
    for workers in (0, 1, 2):
        pl.seed_everything(0)  # as the CLI: seeded before the model is built
        module = ContrastivePretrainModule(**init_args)
        dm = ImageTextDataModule(WebDatasetSource(None, val), loader=Loader(batch_size=8, eval_batch_size=128, num_workers=workers))
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False)
        (out,) = trainer.validate(module, datamodule=dm, verbose=False)
        measured[workers] = {k: out[k] for k in keys}
    # two processes, two workers each: four readers of the one shard
    perceptlab_validate = ["--config", "experiments/strategies/ddp.yaml", "--config", TOY, "--experiment", "val2",
                           "--trainer.accelerator=cpu", "--trainer.devices=2",
                           *toy_data(Path(tiny_world), val=val, zeroshot_data=None, num_workers=2)]
    proc = subprocess.run([*PERCEPTLAB, "validate", *perceptlab_validate, "--runs_dir", str(tmp_path / "runs")],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    run = tmp_path / "runs" / "val2" / "version_0"
    measured["2 processes"] = {k: scalars(run, k)[-1][1] for k in keys}
    reference = measured[0]
    assert 1.0 < reference["val/loss"] < 20.0
    for setting, values in measured.items():
        for k in keys:
            assert values[k] == pytest.approx(reference[k], rel=1e-5, abs=1e-6), (setting, k, values[k], reference[k])
