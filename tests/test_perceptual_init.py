"""Stage 1 (PerceptualInitModule): hinge loss, exact 2AFC, variants, export, learning, CLI run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from test_nights import EXPECTED_2AFC, ROWS, write_nights

from perceptlab.core.optim import AdamWCosine
from perceptlab.datamodules.nights import NightsDataModule
from perceptlab.core.backbone import CLIPBackbone
from perceptlab.lightning_modules.perceptual_init import PerceptualInitModule, hinge_loss
from perceptlab.datamodules.loader import Loader

TINY = "perceptlab-vit-tiny-64"
REPO = Path(__file__).resolve().parents[1]


def trainer(root: Path, **kwargs) -> pl.Trainer:
    """A quiet CPU trainer; without a logger, Lightning's run directory is ``root``."""
    defaults = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                "default_root_dir": root, "enable_progress_bar": False, "enable_model_summary": False,
                "num_sanity_val_steps": 0}
    return pl.Trainer(**{**defaults, **kwargs})


def module(seed: int = 0, **kwargs) -> PerceptualInitModule:
    torch.manual_seed(seed)
    return PerceptualInitModule(model_name=TINY, **kwargs)


@torch.no_grad()
def encode(backbone: CLIPBackbone, images: torch.Tensor) -> torch.Tensor:
    # Always without autograd: nn.MultiheadAttention takes a different (fused) kernel when no
    # weight needs a gradient, which changes the last bits; compare like with like.
    return backbone.eval().encode_image(images)


@pytest.fixture(scope="module")
def nights_root(tmp_path_factory) -> Path:
    return write_nights(tmp_path_factory.mktemp("nights"), ROWS)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 4 - 2


# ---------------------------------------------------------------------------------- the loss
def test_hinge_loss_hand_computed():
    d0 = torch.tensor([0.30, 0.10, 0.20, 0.50])
    d1 = torch.tensor([0.10, 0.30, 0.20, 0.52])
    p = torch.tensor([1.0, 1.0, 0.5, 0.2])
    # y = [+1, +1, -1 (0.5 rounds to even: "left"), -1]
    # margin 0.05: max(0, .05 - .2) = 0; .05 + .2 = .25; .05 - 0 = .05; .05 - .02 = .03
    assert hinge_loss(d0, d1, p, margin=0.05).item() == pytest.approx((0 + 0.25 + 0.05 + 0.03) / 4)
    # margin 0: only the wrongly ordered second triplet costs (0.2)
    assert hinge_loss(d0, d1, p, margin=0.0).item() == pytest.approx(0.2 / 4)
    # The gradient pushes the wrongly ordered pair apart: d0 down, d1 up for triplet 1.
    d0.requires_grad_(True)
    d1.requires_grad_(True)
    hinge_loss(d0, d1, p, margin=0.0).backward()
    assert d0.grad.tolist() == pytest.approx([0, -0.25, 0, 0]) and d1.grad.tolist() == pytest.approx([0, 0.25, 0, 0])


# ------------------------------------------------------------------------ exact 2AFC, any model
@pytest.mark.parametrize("seed,variant", [(0, "full"), (1, "full"), (2, "head")])
def test_two_afc_is_exact_for_any_model(nights_root, tmp_path, seed, variant):
    """Rows where left (right) IS the reference make any model pick left (right); p in {0, 1} then
    fixes the score; ref = left = right is a tie (0.5); rows under 6 votes would lower the score."""
    dm = NightsDataModule(str(nights_root),
                          test_splits=["test_imagenet", "test_no_imagenet", "test"], loader=Loader(batch_size=2, num_workers=0))
    model = module(seed, variant=variant)
    t = trainer(tmp_path)
    (val,) = t.validate(model, datamodule=dm, verbose=False)
    assert val["val/2afc"] == pytest.approx(EXPECTED_2AFC["val"], abs=1e-6)
    results = t.test(model, datamodule=dm, verbose=False)
    merged = {k: v for r in results for k, v in r.items()}
    for split in ("test_imagenet", "test_no_imagenet", "test"):
        assert merged[f"test/2afc/{split}"] == pytest.approx(EXPECTED_2AFC[split], abs=1e-6)


@pytest.mark.slow
def test_two_afc_is_exact_under_ddp(nights_root, tmp_path):
    """Two CPU processes, five validation triplets: Lightning's default sampler would pad rank 1
    with a repeated triplet (6 scores, 2AFC 0.75); the unrepeated sharding keeps it at 0.7."""
    dm = NightsDataModule(str(nights_root), loader=Loader(batch_size=2, num_workers=0))
    t = trainer(tmp_path, strategy="ddp_spawn", devices=2)
    (val,) = t.validate(module(0), datamodule=dm, verbose=False)
    assert val["val/2afc"] == pytest.approx(EXPECTED_2AFC["val"], abs=1e-6)


# ----------------------------------------------------------------------------------- variants
def test_lora_trains_only_adapters(nights_root, tmp_path):
    rank = 4
    model = module(variant="lora", lora_rank=rank, lora_alpha=8, lora_dropout=0.0)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    width, blocks = 128, 6  # perceptlab-vit-tiny-64: q, k, v adapters of rank r per block
    expected = blocks * 3 * rank * (width + width)
    assert sum(p.numel() for p in trainable.values()) == expected == model.lora_parameter_count() == 18432
    # The optimiser gets exactly these, and one step leaves every other weight untouched.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    t = trainer(tmp_path, max_steps=2, limit_val_batches=0)
    t.fit(model, datamodule=NightsDataModule(str(nights_root), loader=Loader(batch_size=2, num_workers=0)))
    opt_params = {id(p) for g in t.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in trainable.values()}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trainable)


def test_lora_export_merges_into_a_plain_tower(tmp_path, images):
    model = module(variant="lora", lora_rank=4, lora_alpha=8, lora_dropout=0.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # peft starts B at 0 (a no-op); make the adapters matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    adapted = encode(model.backbone, images)
    plain = CLIPBackbone(TINY, vision_only=True)
    assert (encode(plain, images) - adapted).abs().max() > 1e-2  # the adapters change the output
    path = model.export_visual(tmp_path / "visual.pt")
    report = plain.load_visual(path, strict=True)
    assert not report.missing and not report.unexpected
    # Merging re-associates W x + s B A x as (W + s B A) x: equal up to float32 rounding.
    torch.testing.assert_close(encode(plain, images), adapted, atol=2e-5, rtol=0)
    assert model.lora_parameter_count() > 0  # the training tower keeps its adapters


@pytest.mark.parametrize("variant", ["full", "lora", "head"])
def test_init_visual_from_is_applied_at_setup_in_every_variant(tmp_path, variant):
    """The stage-1 tower starts from the file's exactly, after LoRA is in place, and a run whose
    weights come from a checkpoint does not read the file again."""
    torch.manual_seed(7)
    source = CLIPBackbone(TINY, vision_only=True)
    path = source.save_visual(tmp_path / "source.pt")
    model = module(variant=variant, init_visual_from=str(path))
    model.setup("fit")
    assert not model.visual_load_report.missing
    exported = torch.load(model.export_visual(tmp_path / "visual.pt"), weights_only=True)["state_dict"]
    for k, v in source.model.visual.state_dict().items():
        assert torch.equal(exported[f"visual.{k}"], v), k
    resumed = module(variant=variant, init_visual_from=str(tmp_path / "gone.pt"))
    resumed.on_load_checkpoint({})
    resumed.setup("fit")
    assert resumed.visual_load_report is None


def test_full_export_round_trip_is_identical(tmp_path, images, nights_root):
    model = module(variant="full")
    trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, datamodule=NightsDataModule(str(nights_root), loader=Loader(batch_size=2, num_workers=0)))
    path = tmp_path / "visual.pt"  # written at the end of fit into the run directory
    fresh = CLIPBackbone(TINY, vision_only=True)
    assert not torch.equal(encode(fresh, images), encode(model.backbone, images))
    fresh.load_visual(path, strict=True)
    assert torch.equal(encode(fresh, images), encode(model.backbone, images))


def test_head_variant_freezes_the_backbone(tmp_path, images, nights_root):
    model = module(variant="head", head_hidden=32)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["head.fc1.weight", "head.fc1.bias", "head.fc2.weight", "head.fc2.bias"]
    backbone_before = encode(model.backbone, images)
    with torch.no_grad():  # the head starts as the identity: distances are the backbone's own
        torch.testing.assert_close(model.eval().embed(images), backbone_before)
    trainer(tmp_path, max_steps=3, limit_val_batches=0).fit(model, datamodule=NightsDataModule(str(nights_root), loader=Loader(batch_size=2, num_workers=0)))
    assert torch.equal(encode(model.backbone, images), backbone_before)
    with torch.no_grad():
        assert not torch.allclose(model.eval().embed(images), backbone_before)  # the head did learn
    fresh = CLIPBackbone(TINY, vision_only=True)
    fresh.load_visual(tmp_path / "visual.pt", strict=True)
    assert torch.equal(encode(fresh, images), backbone_before)  # the head is not handed off


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="'adapter'"):
        PerceptualInitModule(model_name=TINY, variant="adapter")


# ---------------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_training_raises_val_two_afc_on_the_tiny_world(tiny_world, tmp_path):
    """Stage 1 from random weights on the tiny toy world (113 train / 34 val triplets), CPU.

    Measured: val 2AFC 0.530 at initialisation -> 0.653 after 24 steps of 32 triplets (seed 0);
    seeds 1 and 2 gave 0.524 -> 0.705 and 0.532 -> 0.625. The tower learns the toy people's rule
    (colour matters; texture, position and pixel noise do not) from about seven passes over the
    train split. The threshold leaves room for float differences between machines.
    """
    pl.seed_everything(0)
    model = PerceptualInitModule(model_name=TINY, optim=AdamWCosine(lr=1e-3, warmup_steps=2), export_visual=False)
    dm = NightsDataModule(str(tiny_world / "nights"), loader=Loader(batch_size=32, num_workers=0))
    before = trainer(tmp_path).validate(model, datamodule=dm, verbose=False)[0]["val/2afc"]
    trainer(tmp_path, max_steps=24, limit_val_batches=0).fit(model, datamodule=dm)
    after = trainer(tmp_path).validate(model, datamodule=dm, verbose=False)[0]["val/2afc"]
    assert before == pytest.approx(0.530, abs=0.05)
    assert after >= before + 0.06, f"val 2AFC {before:.3f} -> {after:.3f}"


# ------------------------------------------------------------------------------ the CLI run
def perceptlab_command() -> list[str]:
    exe = Path(sys.executable).with_name("perceptlab")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "perceptlab.commands.cli"]


@pytest.mark.slow
def test_cli_fast_dev_run_writes_the_run_layout(tiny_world, tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.run(
        # the strategy fragment first, as `make pi-nights` gives it: the run is still named pi_nights
        [*perceptlab_command(), "fit", "--config", str(REPO / "experiments/strategies/ddp.yaml"),
         "--config", str(REPO / "experiments/toy/pi_nights.yaml"), "--trainer.accelerator=cpu", "--trainer.devices=1",
         "--trainer.fast_dev_run=true", f"--data.init_args.root={tiny_world / 'nights'}", f"--runs_dir={runs}",
         "--trainer.enable_progress_bar=false"],
        cwd=tmp_path, check=False, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(os.listdir(tmp_path)) == ["runs"]  # nothing written into the working directory
    assert sorted(os.listdir(runs)) == ["pi_nights"]
    run = runs / "pi_nights" / "version_0"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["class_path"] == "perceptlab.lightning_modules.perceptual_init.PerceptualInitModule"
    assert config["data"]["init_args"]["root"] == str(tiny_world / "nights")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1
    assert list(run.glob("events.out.tfevents.*"))
    # visual.pt is the checkpoint's tower, and stage 2 loads either one the same.
    from_visual, from_ckpt = CLIPBackbone(TINY, vision_only=True), CLIPBackbone(TINY, vision_only=True)
    assert not from_visual.load_visual(run / "visual.pt", strict=True).missing
    from_ckpt.load_visual(run / "checkpoints" / "last.ckpt", strict=True)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(encode(from_visual, images), encode(from_ckpt, images))


def print_config(capsys, *args: str) -> dict:
    """``perceptlab fit ... --print_config`` in this process (imports paid once): the resolved config."""
    from perceptlab.commands.cli import main

    argv = sys.argv
    try:
        with pytest.raises(SystemExit) as info:
            main(["fit", *args, "--print_config"])
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    assert info.value.code in (0, None), captured.err[-3000:]
    return yaml.safe_load(captured.out)


def test_paper_config_resolves(capsys):
    """The paper YAML matches the module and data module signatures, given the one required key."""
    config = print_config(capsys, "--config", str(REPO / "experiments/paper/pi_nights_vitb32.yaml"),
                          "--data.init_args.root=/data/nights")
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert (model["model_name"], model["pretrained"], model["variant"]) == ("ViT-B-32", None, "full")
    optim = model["optim"]
    assert (optim["lr"], optim["weight_decay"], optim["betas"], optim["warmup_steps"], model["margin"]) == (
        5e-4, 0.1, [0.9, 0.98], 150, 0.05)
    assert (data["loader"]["batch_size"], config["trainer"]["max_epochs"], config["trainer"]["precision"]) == (128, 32, "bf16-mixed")


@pytest.mark.parametrize("arm", ["pi", "random"])
def test_paper_stage2_configs_validate_imagenet_zero_shot_through_the_benchmark_probe(capsys, arm):
    config = print_config(capsys, "--config", str(REPO / f"experiments/paper/pretrain_yfcc15m_vitb32_{arm}.yaml"))
    (suite,) = config["trainer"]["callbacks"]
    assert suite["class_path"] == "perceptlab.callbacks.alignment.AlignmentSuite"
    assert suite["init_args"]["every_n_epochs"] == 1
    (probe,) = suite["init_args"]["probes"]
    assert probe["class_path"] == "perceptlab.callbacks.probes.benchmark.CLIPBenchmarkProbe"
    assert probe["init_args"]["tasks"] == ["wds/imagenet1k"]
    assert config["data"]["init_args"]["zeroshot_data"] is None  # one zero-shot path, not two


@pytest.mark.parametrize("order", [("strategies/ddp.yaml", "toy/pi_nights.yaml", "toy/alignment_suite.yaml"),
                                   ("toy/alignment_suite.yaml", "toy/pi_nights.yaml", "strategies/ddp.yaml"),
                                   ("toy/pi_nights.yaml", "strategies/fsdp2.yaml")])
def test_run_is_named_after_the_experiment_config_in_any_order(order):
    from perceptlab.commands.cli import experiment_name

    assert experiment_name([REPO / "experiments" / c for c in order]) == "pi_nights"
    assert experiment_name([REPO / "experiments/strategies/ddp.yaml"]) == "ddp"  # no experiment config: the first
