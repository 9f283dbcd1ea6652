"""Fault tests: NaN loss, preemption (SIGTERM), kills during checkpoint writes, bad configs.

Each starts real trainings (tiny model, toy world) and checks what is left on disk.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from perceptlab.core.optim import AdamWCosine
from perceptlab.callbacks.reliability import NonFiniteLossError, NonFiniteLossGuard
from perceptlab.datamodules.loader import Loader

REPO = Path(__file__).resolve().parent.parent
PI_CONFIG = str(REPO / "experiments" / "toy" / "pi_nights.yaml")
PRETRAIN_CONFIG = str(REPO / "experiments" / "toy" / "pretrain_random.yaml")


def perceptlab(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perceptlab.commands.cli", *args], capture_output=True, text=True,
                          cwd=kw.pop("cwd", REPO), timeout=kw.pop("timeout", 300), **kw)


class PoisonedRegression(pl.LightningModule):
    """A real small regression whose loss is made NaN from ``poison_at`` (a diverging run)."""

    def __init__(self, poison_at: int) -> None:
        super().__init__()
        self.poison_at = poison_at
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        if self.global_step >= self.poison_at:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_nan_loss_stops_with_the_step_named_and_keeps_the_last_good_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, every_n_train_steps=1)
    trainer = pl.Trainer(max_epochs=1, callbacks=[NonFiniteLossGuard(), ckpt], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    model = PoisonedRegression(poison_at=5)
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at global step 5 .*last\.ckpt"):
        trainer.fit(model, loader)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    # the guard fires before backward: the live weights are still the finite ones of step 5
    torch.testing.assert_close(model.net.weight.detach(), state["state_dict"]["net.weight"])


@pytest.mark.slow
def test_sigterm_saves_last_checkpoint_and_resume_continues_in_the_same_run(tmp_path, tiny_world):
    runs = tmp_path / "runs"
    common = ["fit", "--config", PI_CONFIG, f"--data.init_args.root={tiny_world / 'nights'}", "--runs_dir", str(runs),
              "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=1", "--data.init_args.loader.num_workers=0"]
    args = [*common, "--trainer.max_epochs=1000", "--checkpoint_every_n_steps=2"]
    proc = subprocess.Popen([sys.executable, "-m", "perceptlab.commands.cli", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = runs / "pi_nights" / "version_0"
    deadline = time.time() + 240
    # wait until training has really started (the first step checkpoint exists), then preempt
    while time.time() < deadline and not list((run / "checkpoints").glob("epoch=*.ckpt")):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert "SIGTERM received: saved" in out, out[-2000:]
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    stopped_at = state["global_step"]
    assert stopped_at > 0

    target = stopped_at + 2 + stopped_at % 2  # a multiple of the 2-step checkpoint interval
    resumed = perceptlab(*args, f"--trainer.max_steps={target}", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (runs / "pi_nights" / "version_1").exists()
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == target
    assert not list((run / "checkpoints").glob("last-v*.ckpt"))


_SAVER = """
import sys, torch, lightning.pytorch as pl
class M(pl.LightningModule):
    def __init__(self):
        super().__init__(); self.w = torch.nn.Parameter(torch.randn(2_000_000))
m = M(); t = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
t.strategy.connect(m); t.strategy._lightning_module = m
i = 0
while True:
    m.w.data.fill_(float(i)); t.save_checkpoint(sys.argv[1]); i += 1
    print(i, flush=True)
"""


def test_a_kill_during_checkpoint_writes_never_leaves_a_corrupt_last_ckpt(tmp_path):
    paths = [tmp_path / f"{attempt}" / "last.ckpt" for attempt in range(3)]
    procs = []
    for path in paths:  # started together: their imports overlap
        path.parent.mkdir()
        procs.append(subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE, text=True))
    for attempt, (path, proc) in enumerate(zip(paths, procs)):
        # wait for a few completed saves, then kill at an arbitrary point of a later one
        for _ in range(2 + 2 * attempt):
            assert proc.stdout.readline(), "saver died"
        time.sleep(0.02 * attempt)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state = torch.load(path, weights_only=True)
        w = state["state_dict"]["w"]
        assert w.numel() == 2_000_000 and torch.all(w == w[0])


def cli_error(capsys, *args: str) -> str:
    """Run the `perceptlab` command in this process (the imports are paid once); it must fail.
    Returns what it printed: LightningCLI's usage errors and our own messages."""
    from perceptlab.commands.cli import main

    argv = sys.argv
    try:
        with pytest.raises((SystemExit, Exception)) as info:
            main(list(args))
    finally:
        sys.argv = argv
    assert not (isinstance(info.value, SystemExit) and info.value.code in (0, None)), "the command succeeded"
    captured = capsys.readouterr()
    return captured.out + captured.err + ("" if isinstance(info.value, SystemExit) else str(info.value))


def test_unknown_key_and_wrong_type_are_named_by_the_cli(tmp_path, capsys):
    assert "marginn" in cli_error(capsys, "fit", "--config", PI_CONFIG, "--model.init_args.marginn=0.1",
                                  "--runs_dir", str(tmp_path))
    bad_type = cli_error(capsys, "fit", "--config", PI_CONFIG, "--trainer.max_epochs=many", "--runs_dir", str(tmp_path))
    assert "max_epochs" in bad_type and "many" in bad_type
    assert "nope.yaml" in cli_error(capsys, "fit", "--config", str(tmp_path / "nope.yaml"))


def test_missing_dataset_root_is_named_before_training(tmp_path, capsys):
    message = cli_error(capsys, "fit", "--config", PI_CONFIG, f"--data.init_args.root={tmp_path / 'no_nights'}",
                        "--runs_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar=false")
    assert "no_nights" in message
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_probe_pointed_at_a_missing_folder_fails_at_start_up_naming_probe_and_path(tmp_path, tiny_world):
    from perceptlab.callbacks.alignment import AlignmentSuite
    from perceptlab.callbacks.probes.nights import NightsProbe
    from perceptlab.datamodules.nights import NightsDataModule
    from perceptlab.lightning_modules.perceptual_init import PerceptualInitModule

    suite = AlignmentSuite(probes=[NightsProbe(root=str(tmp_path / "missing_nights"), name="nights_test")], num_workers=0)
    trainer = pl.Trainer(max_steps=2, callbacks=[suite, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
                         logger=False, enable_progress_bar=False, enable_model_summary=False)
    model = PerceptualInitModule(optim=AdamWCosine(warmup_steps=1))
    with pytest.raises(FileNotFoundError, match=r"alignment probe 'nights_test' .*missing_nights"):
        trainer.fit(model, NightsDataModule(root=str(tiny_world / "nights"), loader=Loader(batch_size=8, num_workers=0)))
    assert trainer.global_step == 0
    assert not (tmp_path / "ckpt").exists()


class _Linear(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/out", self.net(batch[0]).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _EpochEnds(pl.Callback):
    """Counts on_train_epoch_end calls in its state (as the alignment suite keeps its history)."""

    def __init__(self) -> None:
        self.ends = 0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.ends += 1

    def state_dict(self) -> dict:
        return {"ends": self.ends}


@pytest.mark.parametrize(("every_n_steps", "max_steps", "expected"), [
    # validation every 2nd epoch: Lightning writes last.ckpt only at validation end (step 8), before
    # on_train_epoch_end, and nothing at the end of epoch 0
    (None, -1, [(4, "last.ckpt"), (8, "epoch=1-step=8.ckpt"), (8, "last.ckpt")]),
    (3, 7, [(3, "epoch=0-step=3.ckpt"), (3, "last.ckpt"), (4, "last.ckpt"), (6, "epoch=1-step=6.ckpt"),
            (6, "last.ckpt"), (7, "last.ckpt")]),
])
def test_last_ckpt_is_written_once_per_epoch_end_after_the_epoch_hooks_and_at_the_end_of_fit(
        tmp_path, every_n_steps, max_steps, expected):
    from perceptlab.callbacks.reliability import RunCheckpoint

    written = []

    class Recorded(RunCheckpoint):
        def _save_checkpoint(self, trainer, filepath):
            super()._save_checkpoint(trainer, filepath)
            state = torch.load(filepath, weights_only=True)["callbacks"]
            written.append((trainer.global_step, Path(filepath).name, next(s["ends"] for k, s in state.items() if "_EpochEnds" in k)))

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=2)
    trainer = pl.Trainer(max_epochs=2, max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, check_val_every_n_epoch=2, callbacks=[
                             _EpochEnds(), Recorded(dirpath=tmp_path, save_last=True, every_n_train_steps=every_n_steps,
                                                    enable_version_counter=False)])
    trainer.fit(_Linear(), data, data)
    # In step mode Lightning alone writes no last.ckpt at epoch ends, nor at step 7 when max_steps
    # stops mid-epoch.
    assert [(step, name) for step, name, _ in written] == expected
    # each epoch-end last.ckpt already holds that epoch's on_train_epoch_end (the suite's evaluation)
    ends_by_step = {4: 1, 7: 2, 8: 2}
    last = [(step, ends) for step, name, ends in written if name == "last.ckpt" and step in ends_by_step]
    assert last and all(ends == ends_by_step[step] for step, ends in last), last


def test_the_private_lightning_names_run_checkpoint_relies_on_are_still_there():
    """RunCheckpoint overrides ModelCheckpoint._save_last_checkpoint(trainer, monitor_candidates),
    calls _monitor_candidates(trainer) and reads _last_global_step_saved (Lightning has no public way
    to write last.ckpt at a moment of its choosing). A Lightning that renames them fails here, not in
    a user's run."""
    import inspect

    from lightning.pytorch.callbacks import ModelCheckpoint

    from perceptlab.callbacks.reliability import RunCheckpoint

    assert list(inspect.signature(ModelCheckpoint._save_last_checkpoint).parameters) == ["self", "trainer",
                                                                                          "monitor_candidates"]
    assert list(inspect.signature(ModelCheckpoint._monitor_candidates).parameters) == ["self", "trainer"]
    checkpoint = RunCheckpoint(save_last=True)
    assert checkpoint._last_global_step_saved == 0  # set by ModelCheckpoint.__init__
    assert RunCheckpoint._save_last_checkpoint is not ModelCheckpoint._save_last_checkpoint
    source = inspect.getsource(ModelCheckpoint)
    assert source.count("self._save_last_checkpoint(") >= 2  # what it calls when it writes top-k and at validation end
