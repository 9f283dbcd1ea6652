"""The command line: one table, typed flags, one line per user error (exit 2), nothing left in the
working directory that was not asked for."""
from __future__ import annotations

from pathlib import Path

import pytest

from perceptlab.commands.cli import MODULE_COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", ["synth", *MODULE_COMMANDS])
def test_every_command_has_help_from_its_signature(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and f"perceptlab {command}" in out
    assert "--image-size" not in out and "``" not in out  # one flag style; help that renders


def test_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    suite = Path(__file__).resolve().parent.parent / "experiments" / "toy" / "alignment_suite.yaml"
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(tmp_path / "missing.ckpt"), "--config", str(suite)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err[-2000:]
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines[-1].startswith("perceptlab evaluate: error:") and "missing.ckpt" in lines[-1]
    assert "Traceback" not in err


def test_a_truncated_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "epoch_3.pt"
    bad.write_bytes(b"PK\x03\x04 not a whole file")
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(bad), "--to", "open_clip", "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "epoch_3.pt" in err and len(err.strip().splitlines()) == 1


def test_an_unknown_flag_is_named(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", "runs/x", "--out", "o", "--bogus_flag", "1"])
    assert exit_.value.code == 2 and "bogus_flag" in capsys.readouterr().err


def test_validate_without_a_logger_writes_nothing_into_the_working_directory(tmp_path, monkeypatch, tiny_world):
    from pathlib import Path

    config = Path(__file__).resolve().parent.parent / "experiments" / "toy" / "pi_nights.yaml"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    main(["validate", "--config", str(config), f"--data.init_args.root={tiny_world / 'nights'}",
          "--trainer.logger=false", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
          "--data.init_args.loader.num_workers=0"])
    assert sorted(p.name for p in work.iterdir()) == []


def test_no_false_random_initialisation_warning_when_weights_come_from_a_file(tmp_path, caplog):
    """open_clip warns "No pretrained weights loaded ... initialized randomly" when it builds the
    model; the weights are loaded from the file right after, so the command keeps that line out."""
    import logging

    import torch

    from perceptlab.core.backbone import CLIPBackbone

    torch.save(CLIPBackbone("perceptlab-vit-tiny-64").model.state_dict(), tmp_path / "weights.pt")
    caplog.clear()  # building the model above warns, as it should: nothing is loaded there
    with caplog.at_level(logging.WARNING):
        main(["export", str(tmp_path / "weights.pt"), "--to", "open_clip", "--out", str(tmp_path / "out.pt"),
              "--model_name", "perceptlab-vit-tiny-64"])
    assert (tmp_path / "out.pt").is_file() and "No pretrained weights" not in caplog.text


def test_a_gpu_config_on_a_machine_without_one_says_what_to_pass(capsys):
    config = Path(__file__).resolve().parent.parent / "experiments" / "toy" / "pi_nights.yaml"
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "--config", str(config), "--trainer.accelerator=gpu", "--trainer.logger=false"])
    err = capsys.readouterr().err.strip().splitlines()
    # (a logging handler left by an earlier test may print "--- Logging error ---" here: not ours)
    assert exit_.value.code == 2 and "--trainer.accelerator=cpu" in err[-1]
    assert not any("MisconfigurationException" in l or "accelerator_connector" in l for l in err), err


@pytest.mark.parametrize("command", ["fit", "evaluate"])
def test_an_argument_of_an_earlier_version_is_one_line_naming_its_new_place(tmp_path, capsys, command):
    """The IQA probes took csv/score_column/higher_better; they take the IQA tables' names now. A
    configuration written for the earlier version stops before any work, naming the new place."""
    import yaml

    suite = yaml.safe_load((REPO / "experiments/toy/alignment_suite.yaml").read_text())
    probes = suite["trainer"]["callbacks"][0]["init_args"]["probes"]
    koniq = next(p for p in probes if p["init_args"].get("dataset") == "koniq")
    koniq["init_args"]["higher_better"] = True
    path = tmp_path / "old_suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    args = ["fit", "--config", str(REPO / "experiments/toy/pretrain_pi.yaml"), "--config", str(path), "--print_config"]
    if command == "evaluate":
        args = ["evaluate", "model.pt", "--config", str(path)]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    assert "init_args.higher_better (CLIPIQAProbe) moved: give lower_better" in err[0] and str(path) in err[0]


class Renamed:
    """A class whose argument ``old`` became ``new`` (for the override check below)."""

    moved_arguments = {"old": "new"}

    def __init__(self, new: int = 0) -> None:
        self.new = new


def test_a_dotted_override_of_a_moved_argument_is_named(tmp_path):
    from perceptlab.commands.moved import check_moved_arguments

    config = tmp_path / "c.yaml"
    config.write_text("model:\n  class_path: test_cli.Renamed\n")
    check_moved_arguments(["--config", str(config), "--model.init_args.new=3"])  # the new name passes
    with pytest.raises(ValueError, match=r"--model.init_args.old: model.init_args.old \(Renamed\) moved: give new"):
        check_moved_arguments(["--config", str(config), "--model.init_args.old=3"])


def test_an_image_text_key_of_an_earlier_version_names_the_reader_object(tmp_path, capsys):
    """Image-text formats are reader objects now (data.init_args.pairs): a stage-2 config or override
    with format/train_data/hf_caption_key stops before any work, naming the reader setting."""
    old = tmp_path / "old_stage2.yaml"
    old.write_text("data:\n  class_path: perceptlab.datamodules.image_text.ImageTextDataModule\n"
                   "  init_args:\n    format: csv\n    train_data: pairs.csv\n")
    for args in (["--config", str(old)],
                 ["--config", str(REPO / "experiments/toy/pretrain_pi.yaml"), "--data.init_args.hf_caption_key=text"]):
        with pytest.raises(SystemExit) as exit_:
            main(["fit", *args, "--print_config"])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and "(ImageTextDataModule) moved: give pairs:" in err[0], err
    assert "HFSource" in err[0] and "caption_key" in err[0]


def test_an_optimiser_argument_of_an_earlier_version_names_the_optim_group(capsys):
    """The stages' lr, weight_decay, betas, eps and warmup_steps are one group now (optim: {...})."""
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(REPO / "experiments/toy/pretrain_pi.yaml"), "--model.init_args.lr=1e-3",
              "--print_config"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "model.init_args.lr (ContrastivePretrainModule) moved: give optim:" in err[0]
    with pytest.raises(SystemExit) as exit_:  # the new place parses, over the stage's own defaults
        main(["fit", "--config", str(REPO / "experiments/toy/pretrain_pi.yaml"), "--model.init_args.optim.lr=1e-3",
              "--print_config"])
    import yaml

    optim = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["optim"]
    assert exit_.value.code in (0, None) and optim["lr"] == 1e-3 and optim["warmup_steps"] == 50


@pytest.mark.parametrize("config,old,module", [
    ("experiments/toy/pi_nights.yaml", "num_workers=0", "NightsDataModule"),
    ("experiments/toy/perceptual_iqa.yaml", "batch_size=8", "IQADataModule"),
    ("experiments/toy/pretrain_pi.yaml", "val_batch_size=8", "ImageTextDataModule"),
])
def test_a_loader_argument_of_an_earlier_version_names_the_loader_group(config, old, module, tmp_path, capsys):
    """Every data module's batch sizes, workers and pinning are one group now (loader: {...}): an old
    key, given as an override or in a config file, stops before any work with one line naming it."""
    import yaml

    key = old.split("=")[0]
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(REPO / config), f"--data.init_args.{old}", "--print_config"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    assert f"data.init_args.{key} ({module}) moved: give loader:" in err[0], err
    shipped = yaml.safe_load((REPO / config).read_text())
    shipped["data"]["init_args"].update(yaml.safe_load(old.replace("=", ": ")))
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(shipped))
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(path), "--print_config"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and str(path) in err[0] and "moved: give loader:" in err[0], err


def test_a_loader_override_sets_one_field_over_the_shipped_group(capsys):
    """--data.init_args.loader.<field> changes that field and keeps the config's others; a field the
    config leaves out takes the data module's own default (256 pairs for stage 2)."""
    import yaml

    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(REPO / "experiments/toy/pretrain_pi.yaml"), "--data.init_args.loader.num_workers=0",
              "--print_config"])
    loader = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]["loader"]
    assert exit_.value.code in (0, None)
    assert loader == {"batch_size": 64, "eval_batch_size": 128, "num_workers": 0, "pin_memory": True}
    from perceptlab.datamodules.image_text import ImageTextDataModule
    from perceptlab.datamodules.loader import Loader

    assert ImageTextDataModule().loader == Loader(batch_size=256, num_workers=4)
    with pytest.raises(ValueError, match="loader.batch_size must be positive"):
        Loader(batch_size=0)
