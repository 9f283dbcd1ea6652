"""AlignmentSuite in real (tiny) trainings on the toy world: outputs, peaks, resume, DDP, CLI."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from open_clip import ClipLoss
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from perceptlab.core import uncertainty
from perceptlab.callbacks.alignment import AlignmentSuite
from perceptlab.callbacks.run_record import JSONL_NAME, SUMMARY_NAME
from perceptlab.core.checkpoints import PEAK_CHECKPOINT_NAME
from perceptlab.callbacks.probes.iqa_fr import FullReferenceIQAProbe
from perceptlab.callbacks.probes.iqa_nr import CLIPIQAProbe
from perceptlab.callbacks.probes.nights import NightsProbe
from perceptlab.callbacks.probes.noise import NoiseRobustnessProbe
from perceptlab.callbacks.probes.shape_bias import ShapeBiasProbe
from perceptlab.core.backbone import CLIPBackbone
from perceptlab.core.optim import adamw_cosine, param_groups, total_training_steps

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = ["a photo of a {}."]


# ------------------------------------------------------------------------- tiny trainings
class TinyCLIP(pl.LightningModule):
    """Contrastive image-text training of the tiny backbone (stage-2 style), keeping ``self.backbone``.

    ``frozen`` is a submodule kept in eval mode on purpose: the suite must give it back in eval
    mode, and the backbone in train mode, after each evaluation (checked at every step).
    """

    def __init__(self, lr: float = 2e-3, warmup_steps: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = CLIPBackbone("perceptlab-vit-tiny-64")
        self.loss = ClipLoss()
        self.frozen = torch.nn.Dropout(0.5).eval()

    def training_step(self, batch, batch_idx):
        assert self.backbone.training and not self.frozen.training, "train/eval modes not restored"
        images, tokens = batch
        loss = self.loss(self.backbone.encode_image(images), self.backbone.encode_text(tokens),
                         self.backbone.logit_scale.exp())
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return adamw_cosine(param_groups(self.named_parameters(), 0.1), self.hparams.lr, (0.9, 0.98), 1e-6, self.hparams.warmup_steps,
                            total_training_steps(self.trainer))


class TinyPerceptualInit(pl.LightningModule):
    """Vision-only training on NIGHTS triplets with DreamSim's hinge loss (stage-1 style)."""

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.backbone = CLIPBackbone("perceptlab-vit-tiny-64", vision_only=True)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        ref, left, right, p = batch
        e = [self.backbone.encode_image(x) for x in (ref, left, right)]
        d0, d1 = 1 - (e[0] * e[1]).sum(-1), 1 - (e[0] * e[2]).sum(-1)
        y = 2 * torch.round(p) - 1
        return torch.clamp(0.05 - (d0 - d1) * y, min=0).mean()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.backbone.parameters(), lr=self.lr)


def pairs_loader(world: Path, n: int = 16, batch_size: int = 8) -> DataLoader:
    """The toy world's captioned training pairs (``image_text/pairs.csv``) as tensors."""
    backbone = CLIPBackbone("perceptlab-vit-tiny-64")
    table = pd.read_csv(world / "image_text" / "pairs.csv", sep="\t").iloc[:n]
    tf = backbone.transform(train=False)
    images = torch.stack([tf(Image.open(world / "image_text" / f).convert("RGB")) for f in table["filepath"]])
    tokens = backbone.tokenize(table["title"].tolist())
    return DataLoader(TensorDataset(images, tokens), batch_size=batch_size, shuffle=False)


def triplet_loader(world: Path, n: int = 16, batch_size: int = 8) -> DataLoader:
    from perceptlab.datamodules.nights import NightsTriplets

    tf = CLIPBackbone("perceptlab-vit-tiny-64", vision_only=True).transform(train=False)
    ds = NightsTriplets(world / "nights", "train", tf)
    rows = [ds[i] for i in range(n)]
    tensors = [torch.stack([r[k] for r in rows]) for k in ("ref", "left", "right")]
    return DataLoader(TensorDataset(*tensors, torch.tensor([r["p"] for r in rows])), batch_size=batch_size)


def all_probes(max_items: int = 12) -> list:
    """Every probe family, small, with relative roots (the suite's data_root resolves them)."""
    return [
        NightsProbe("nights", split="test", max_items=max_items),
        FullReferenceIQAProbe("iqa/tid2013", dataset="tid2013", classical=["psnr"], max_items=max_items),
        CLIPIQAProbe("iqa/koniq", dataset="koniq", max_items=max_items),
        ShapeBiasProbe("cue_conflict", templates=TEMPLATES, max_items=max_items),
        NoiseRobustnessProbe("classification", sigmas=[0.2], templates=TEMPLATES, max_items=max_items),
    ]


def make_trainer(root: Path, suite: AlignmentSuite, version: int = 0, **kwargs) -> pl.Trainer:
    kwargs.setdefault("callbacks", [])
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=TensorBoardLogger(str(root), name="run", version=version),
        callbacks=[suite, *kwargs.pop("callbacks")], enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, **kwargs,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def best(values: list[float], direction: str) -> tuple[int, float]:
    """(index of the first best value, best value) in the direction."""
    pick = max if direction == "max" else min
    value = pick(values)
    return values.index(value), value


# ---------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_three_epoch_run_writes_every_probe_at_every_epoch_and_a_consistent_summary(tiny_world, tmp_path):
    torch.manual_seed(0)
    suite = AlignmentSuite(all_probes(max_items=10), data_root=str(tiny_world), every_n_epochs=1, batch_size=64)
    trainer = make_trainer(tmp_path, suite, max_epochs=3)
    trainer.fit(TinyCLIP(), pairs_loader(tiny_world, n=8, batch_size=8))

    run = tmp_path / "run" / "version_0"
    records = read_jsonl(run / JSONL_NAME)
    assert [(r["epoch"], r["step"], r["trigger"]) for r in records] == [
        (-1, 0, "baseline"), (0, 1, "epoch"), (1, 2, "epoch"), (2, 3, "epoch")]
    names = set(records[0]["metrics"])
    for family in ("nights/2afc", "iqa_fr/tid2013/srcc", "iqa_fr/tid2013/plcc", "iqa_fr/tid2013/krcc",
                   "iqa_fr/tid2013/psnr/srcc", "iqa_nr/koniq/srcc", "shape_bias/cue_conflict",
                   "shape_bias/cue_conflict/shape_acc", "shape_bias/cue_conflict/texture_acc",
                   "noise/classification/acc@sigma=0", "noise/classification/acc@sigma=0.2",
                   "noise/classification/drop"):
        assert family in names
    assert all(set(r["metrics"]) == names for r in records)
    assert set(records[0]["seconds"]) == {p.name for p in suite.probes} | {"bootstrap"}
    # The probes see the model as it trains: learned metrics move, the PSNR reference line does not.
    assert len({r["metrics"]["iqa_fr/tid2013/srcc"] for r in records}) > 1
    assert len({r["metrics"]["iqa_fr/tid2013/psnr/srcc"] for r in records}) == 1

    summary = json.loads((run / SUMMARY_NAME).read_text())
    # the one reader gives back what the suite holds (a JSON round trip)
    from perceptlab.callbacks.replay import replay
    from perceptlab.callbacks.run_record import read_run

    record = read_run(run)
    assert record.evaluations == json.loads(json.dumps(suite.history)) and record.summary == summary
    assert summary == json.loads(json.dumps(suite.summary()))
    # ... and the tracker recomputed post hoc from the per-item files alone gives the same summary
    replayed = replay(AlignmentSuite(probes=suite.probes, bootstrap_seed=suite.bootstrap_seed), run)
    assert json.loads(json.dumps(replayed.summary())) == summary
    # null = undefined at that evaluation (e.g. shape bias of a model hitting neither cue): not a peak.
    assert set(summary) == {n for n in names if any(r["metrics"][n] is not None for r in records)}
    for name, s in summary.items():
        evaluated = [r for r in records if r["metrics"][name] is not None]
        values = [r["metrics"][name] for r in evaluated]
        i, peak = best(values, s["direction"])
        assert s["peak"] == peak and s["peak_epoch"] == evaluated[i]["epoch"] and s["peak_step"] == evaluated[i]["step"]
        assert s["final"] == values[-1] and s["final_step"] == evaluated[-1]["step"]
        assert s["baseline"] == records[0]["metrics"][name] and s["evaluations"] == len(values)
        assert s["drop"] == pytest.approx(abs(peak - values[-1]))
    assert summary["nights/2afc"]["direction"] == "max"
    assert summary["noise/classification/drop"]["direction"] == "min"

    # Intervals: every defined metric has one at every evaluation; the summary's are those of the
    # peak and final evaluations, and the drop's comes from their paired replicates.
    import numpy as np

    for r in records:
        for name, value in r["metrics"].items():
            if value is not None and name in r["ci"] and r["ci"][name] is not None:
                low, high = r["ci"][name]
                assert low <= high
    for name, s in summary.items():
        peak_record = next(r for r in records if r["step"] == s["peak_step"])
        assert s["peak_ci"] == pytest.approx(peak_record["ci"][name])
        assert s["final_ci"] == pytest.approx(records[-1]["ci"][name])
        assert s["drop_significant"] == (s["drop_ci"][0] > 0)
    replicates = np.load(run / "alignment_bootstrap.npz")
    assert int(replicates["__bootstrap_seed__"]) == suite.bootstrap_seed
    peak, final = replicates["nights/2afc@peak"], replicates["nights/2afc@final"]
    assert peak.shape == final.shape == (1000,)
    # every evaluation's replicates are kept, and the drop test over them is what the summary says
    steps, trajectory = replicates["nights/2afc@steps"], replicates["nights/2afc@trajectory"]
    assert steps.tolist() == [r["step"] for r in records] and trajectory.shape == (len(records), 1000)
    np.testing.assert_array_equal(trajectory[-1], final)
    test = uncertainty.peak_drop_test([r["metrics"]["nights/2afc"] for r in records], trajectory)
    assert summary["nights/2afc"]["drop_ci"] == pytest.approx(test.interval, abs=1e-9)
    assert summary["nights/2afc"]["drop_p"] == pytest.approx(test.p)

    # Per-item outputs of every evaluation, on disk: the probes' own scoring of them gives the
    # recorded metrics back exactly, so any analysis can be redone from the files.
    for r in records:
        saved = np.load(run / r["items"])
        for probe in suite.probes:
            groups: dict[str, dict[str, torch.Tensor]] = {}
            for key in saved.files:
                group, _, field = key.rpartition("/")
                if group == probe.name:
                    groups.setdefault(group, {})[field] = torch.from_numpy(saved[key])
            for metric, value in probe.score(groups).items():
                assert (value != value and r["metrics"][metric] is None) or value == r["metrics"][metric], metric

    # TensorBoard: every metric as a scalar at the evaluation steps, plus the trajectory figure.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()
    assert [e.step for e in acc.Scalars("alignment/nights/2afc")] == [0, 1, 2, 3]
    assert [e.value for e in acc.Scalars("alignment/nights/2afc")] == pytest.approx(
        [r["metrics"]["nights/2afc"] for r in records])
    assert "alignment/trajectories" in acc.Tags()["images"]
    from tensorboard.plugins.custom_scalar import layout_pb2

    (layout_event,) = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(layout_event.tensor_proto.string_val[0])
    assert {c.title for c in layout.category} == {f"alignment: {f}" for f in ("nights", "iqa_fr", "iqa_nr", "shape_bias", "noise")}


def test_vision_only_backbone_skips_text_probes_with_one_log_line(tiny_world, tmp_path, caplog):
    suite = AlignmentSuite(all_probes(max_items=8), data_root=str(tiny_world), every_n_epochs=1)
    trainer = make_trainer(tmp_path, suite, max_steps=2)
    with caplog.at_level(logging.INFO):
        trainer.fit(TinyPerceptualInit(), triplet_loader(tiny_world))
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1
    assert all(n in lines[0] for n in ("iqa_nr/koniq", "shape_bias/cue_conflict", "noise/classification"))
    records = read_jsonl(tmp_path / "run" / "version_0" / JSONL_NAME)
    assert [r["trigger"] for r in records] == ["baseline", "epoch"]
    assert {m.split("/")[0] for m in records[-1]["metrics"]} == {"nights", "iqa_fr"}


@pytest.mark.slow
def test_step_schedule_dedup_and_checkpoint_at_peak(tiny_world, tmp_path):
    torch.manual_seed(0)
    probes = [FullReferenceIQAProbe("iqa/tid2013", dataset="tid2013", classical=[], max_items=16)]
    suite = AlignmentSuite(probes, data_root=str(tiny_world), every_n_epochs=1, every_n_steps=1, every_n_steps_until=2,
                           then_every_n_steps=3, checkpoint_peak_of="iqa_fr/tid2013/srcc", tensorboard_figure=False)
    trainer = make_trainer(tmp_path, suite, max_epochs=3)
    trainer.fit(TinyPerceptualInit(lr=5e-3), triplet_loader(tiny_world, n=8, batch_size=4))
    run = tmp_path / "run" / "version_0"
    records = read_jsonl(run / JSONL_NAME)
    # Two batches per epoch: the evaluation at the last step of an epoch is the epoch-end one, once;
    # every step up to step 2, then at the multiples of 3 (step 6 is also an epoch end: recorded once).
    assert [(r["epoch"], r["step"], r["trigger"]) for r in records] == [
        (-1, 0, "baseline"), (0, 1, "step"), (0, 2, "epoch"), (1, 3, "step"), (1, 4, "epoch"), (2, 6, "epoch")]
    with pytest.raises(ValueError, match="then_every_n_steps needs every_n_steps_until"):
        AlignmentSuite(probes, every_n_steps=1, then_every_n_steps=3)
    summary = json.loads((run / SUMMARY_NAME).read_text())
    peak = summary["iqa_fr/tid2013/srcc"]
    assert peak["checkpoint"] == f"checkpoints/{PEAK_CHECKPOINT_NAME}"
    ckpt = torch.load(run / "checkpoints" / PEAK_CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == peak["peak_step"]
    state = next(v for k, v in ckpt["callbacks"].items() if "AlignmentSuite" in k)
    assert state["history"][-1]["step"] == peak["peak_step"]
    assert state["history"][-1]["metrics"]["iqa_fr/tid2013/srcc"] == peak["peak"]
    with pytest.raises(KeyError, match="not_a_metric"):
        bad = AlignmentSuite(probes, data_root=str(tiny_world), checkpoint_peak_of="not_a_metric")
        make_trainer(tmp_path / "bad", bad, max_steps=1).fit(TinyPerceptualInit(), triplet_loader(tiny_world, n=4, batch_size=4))


@pytest.mark.slow
def test_resume_restores_history_without_duplicates(tiny_world, tmp_path):
    probes = lambda: [NightsProbe("nights", max_items=12)]  # noqa: E731 - fresh probes per run
    loader = triplet_loader(tiny_world, n=8, batch_size=4)
    torch.manual_seed(0)
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    suite = AlignmentSuite(probes(), data_root=str(tiny_world), tensorboard_figure=False)
    make_trainer(tmp_path, suite, max_epochs=2, callbacks=[every_epoch]).fit(TinyPerceptualInit(), loader)
    run = tmp_path / "run" / "version_0"
    first = read_jsonl(run / JSONL_NAME)
    assert [r["step"] for r in first] == [0, 2, 4]

    # Resume from the end of epoch 0 in the same run directory: the interrupted run's epoch-1
    # evaluation is dropped and redone, the baseline is not repeated.
    resumed = AlignmentSuite(probes(), data_root=str(tiny_world), tensorboard_figure=False)
    make_trainer(tmp_path, resumed, max_epochs=3).fit(TinyPerceptualInit(), loader,
                                                      ckpt_path=tmp_path / "ckpt" / "epoch=0-step=2.ckpt")
    records = read_jsonl(run / JSONL_NAME)
    assert [(r["epoch"], r["step"], r["trigger"]) for r in records] == [
        (-1, 0, "baseline"), (0, 2, "epoch"), (1, 4, "epoch"), (2, 6, "epoch")]
    assert records[:2] == first[:2]
    summary = json.loads((run / SUMMARY_NAME).read_text())["nights/2afc"]
    assert summary["evaluations"] == 4 and summary["baseline"] == first[0]["metrics"]["nights/2afc"]


DDP_SCRIPT = r'''
import json, sys
sys.path.insert(0, {tests!r})
import torch, lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from test_alignment import TinyCLIP, all_probes, pairs_loader
from perceptlab.callbacks.alignment import AlignmentSuite

world, out, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
model = TinyCLIP()
suite = AlignmentSuite(all_probes(max_items=11), data_root=world, every_n_epochs=None, at_end=False,
                       batch_size=4, tensorboard_figure=False)
trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=1,
                     logger=TensorBoardLogger(out, name="run", version=0), callbacks=[suite],
                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
trainer.fit(model, pairs_loader(__import__("pathlib").Path(world), n=16, batch_size=4))
'''


@pytest.mark.slow
def test_ddp_two_processes_give_the_same_probe_values_as_one(tiny_world, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(REPO / "tests"), repo=str(REPO)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"out{devices}"
        if devices == 1:  # the same script, in this process (its imports are paid already)
            import runpy

            argv = sys.argv
            sys.argv = [str(script), str(tiny_world), str(out), "1"]
            try:
                runpy.run_path(str(script), run_name="__main__")
            finally:
                sys.argv = argv
        else:
            proc = subprocess.run([sys.executable, str(script), str(tiny_world), str(out), str(devices)],
                                  cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
        results[devices] = read_jsonl(out / "run" / "version_0" / JSONL_NAME)
    one, two = results[1][0], results[2][0]
    assert one["trigger"] == two["trigger"] == "baseline"
    assert set(one["metrics"]) == set(two["metrics"]) and len(one["metrics"]) > 10
    for name, value in one["metrics"].items():
        assert two["metrics"][name] == pytest.approx(value, abs=1e-5), name


@pytest.mark.slow
def test_yaml_fragment_combines_with_a_stage_config_through_the_cli(tiny_world, tmp_path, capsys):
    """The shipped fragment is valid LightningCLI config and merges with a stage config."""
    stage = tmp_path / "stage.yaml"
    stage.write_text(
        "trainer:\n  accelerator: cpu\n  max_steps: 1\n  num_sanity_val_steps: 0\n  limit_val_batches: 0\n"
        "model:\n  class_path: test_alignment.TinyPerceptualInit\n"
    )
    from perceptlab.commands.cli import main

    with pytest.raises(SystemExit) as exit_:  # LightningCLI exits after printing the config
        main(["fit", "--config", str(stage), "--config", str(REPO / "experiments/toy/alignment_suite.yaml"),
              f"--trainer.callbacks.init_args.data_root={tiny_world}", "--print_config"])
    out = capsys.readouterr().out
    assert exit_.value.code in (0, None), out[-3000:]
    import yaml

    config = yaml.safe_load(out)
    (callback,) = config["trainer"]["callbacks"]
    assert callback["class_path"] == "perceptlab.callbacks.alignment.AlignmentSuite"
    assert callback["init_args"]["data_root"] == str(tiny_world)
    assert config["trainer"]["max_steps"] == 1
    shipped = yaml.safe_load((REPO / "experiments/toy/alignment_suite.yaml").read_text())
    expected = [p["class_path"] for p in shipped["trainer"]["callbacks"][0]["init_args"]["probes"]]
    assert [p["class_path"] for p in callback["init_args"]["probes"]] == expected
    from perceptlab.callbacks.probes.registry import shipped_probes

    assert set(expected) == set(shipped_probes())  # the suite runs every shipped probe


def test_the_suite_does_not_change_the_training_it_observes(tmp_path, tiny_world):
    """Evaluations draw nothing from the training's random streams (their loaders would: worker
    seeds, shuffles): a run with the suite every 2 steps ends with bit-identical weights to the
    same run without it. Here the training loader reshuffles every epoch from the global seed."""
    pairs = pairs_loader(tiny_world, n=32).dataset
    weights = []
    for with_suite in (False, True):
        pl.seed_everything(0)
        model = TinyCLIP()
        suite = [AlignmentSuite(probes=all_probes(), data_root=str(tiny_world), every_n_steps=2, num_workers=1,
                                tensorboard_figure=False)] if with_suite else []
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=8, logger=False, enable_checkpointing=False,
                             callbacks=suite, enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=tmp_path / str(with_suite))
        trainer.fit(model, DataLoader(pairs, batch_size=8, shuffle=True))
        weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if with_suite:
            assert [r["step"] for r in suite[0].history] == [0, 2, 4, 6, 8]
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=0, atol=0, msg=key)


def test_each_evaluation_prints_one_line_with_the_headline_metrics(tmp_path, tiny_world, caplog):
    pl.seed_everything(0)
    probes = [NightsProbe("nights", split="test", max_items=12),
              NoiseRobustnessProbe("classification", sigmas=[0.2], templates=TEMPLATES, max_items=12)]
    suite = AlignmentSuite(probes=probes, data_root=str(tiny_world), every_n_steps=1, num_workers=1,
                           tensorboard_figure=False)
    trainer = make_trainer(tmp_path, suite, max_steps=2)
    with caplog.at_level(logging.INFO):
        trainer.fit(TinyCLIP(), pairs_loader(tiny_world, n=16))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alignment at step")]
    assert len(lines) == len(suite.history) == 3  # baseline, steps 1 and 2
    for line, record in zip(lines, suite.history):
        assert line.startswith(f"alignment at step {record['step']} (epoch {record['epoch']}, {record['trigger']})")
        for key in ("nights/2afc", "noise/classification/drop"):
            value = record["metrics"][key]  # the drop is undefined (None) while clean accuracy is 0
            ci = record["ci"].get(key)
            shown = f"{key} {'n/a' if value is None else f'{value:.4f}'}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")
            assert shown in line
        assert "acc@sigma" not in line  # headline metrics only
    # the baseline has no peak to beat: no mark
    assert "*" not in lines[0] and "~" not in lines[0]
    low, high = suite.history[0]["ci"]["nights/2afc"]
    assert low < suite.history[0]["metrics"]["nights/2afc"] < high
