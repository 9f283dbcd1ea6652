"""The texture-bias paper's suite as users run it: `make texture-bias-suite` on a model with the five
data folders (built here from the toy world in the real layouts), and `make pretrain-pi` tracking
the suite when the folders are given, each missing folder named."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

from perceptlab.commands.cli import main

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"TID2013": "iqa/tid2013", "NIGHTS": "nights", "MIT1003": "fixations/mit1003", "CUE_CONFLICT": "cue_conflict"}


def folders(tiny_world: Path, tmp_path: Path) -> dict[str, str]:
    from test_cifar_noise import cifar_layouts

    cifar, *_ = cifar_layouts(Path(tiny_world), tmp_path)
    return {**{k: str(Path(tiny_world) / v) for k, v in FOLDERS.items()}, "CIFAR100": str(cifar)}


def test_make_texture_bias_suite_measures_every_family_of_the_paper(tiny_world, tmp_path):
    import open_clip

    torch.manual_seed(0)
    model = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model("perceptlab-vit-tiny-64").state_dict(), model)
    out = tmp_path / "run"
    data = folders(tiny_world, tmp_path)
    extra = (f"--model_name perceptlab-vit-tiny-64 --out {out} --trainer.accelerator=cpu --trainer.enable_progress_bar=false "
             "--trainer.callbacks.init_args.num_workers=0 --trainer.callbacks.init_args.tensorboard_figure=false")
    proc = subprocess.run(["make", "texture-bias-suite", f"MODELS={model}", f"TEXTURE_DATA={tmp_path / 'links'}",
                           *(f"{k}={v}" for k, v in data.items()), f"EXTRA={extra}"],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (record,) = [json.loads(line) for line in (out / "alignment.jsonl").read_text().splitlines()]
    metrics = record["metrics"]
    for metric in ("iqa_fr/tid2013/srcc", "nights/hard_accuracy", "nights/2afc", "saliency/mit1003/nss",
                   "saliency/mit1003/center_bias/nss", "shape_bias/cue_conflict", "noise/cifar100/acc@sigma=0",
                   "noise/cifar100/drop@sigma=0.4", "noise/cifar100/drop"):
        assert metric in metrics and metrics[metric] == metrics[metric], metric  # present, not NaN
    assert all(metric in record["ci"] for metric in metrics if "center_bias" not in metric and "/psnr/" not in metric
               and "/ssim/" not in metric)
    # the protocol's settings reached the probes: every NIGHTS triplet of every split, every TID2013 pair
    import pandas as pd

    from perceptlab.callbacks.run_record import read_run

    run = read_run(out)
    items = run.items(run.evaluations[0])
    nights = pd.read_csv(Path(tiny_world) / "nights" / "data.csv")
    assert nights["split"].nunique() > 1 and len(items["nights/d0"]) == len(nights)
    tid = pd.read_csv(next((Path(tiny_world) / "iqa" / "tid2013").rglob("*.csv")))
    assert len(items["iqa_fr/tid2013/prediction"]) == len(tid)
    assert run.describe("saliency/mit1003/kld").direction == "min"


def test_make_pretrain_tracks_the_suite_when_its_folders_are_given_and_names_each_missing_one(tiny_world, tmp_path,
                                                                                           capsys):
    base = ["SHARDS=/data/yfcc/{0..9}.tar", "VAL_SHARDS=/data/val.tar", "IMAGENET_VAL=/data/imagenet/val",
            "PI_VISUAL=runs/pi/visual.pt", f"TEXTURE_DATA={tmp_path / 'links'}"]
    plain = subprocess.run(["make", "-n", "pretrain-pi", *base], cwd=REPO, capture_output=True, text=True)
    assert plain.returncode == 0 and "texture_bias_suite" not in plain.stdout
    missing = subprocess.run(["make", "-n", "pretrain-pi", *base, "CIFAR100=/data/cifar-100-python"], cwd=REPO,
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "TID2013 is not set" in missing.stderr
    data = folders(tiny_world, tmp_path)
    full = subprocess.run(["make", "-n", "pretrain-pi", *base, *(f"{k}={v}" for k, v in data.items())], cwd=REPO,
                          capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    fit = next(line for line in full.stdout.replace("\\\n", " ").splitlines() if " fit " in line)
    words = shlex.split(fit)
    os.environ["PERCEPTLAB_PARSE_ONLY"] = "1"
    try:
        with pytest.raises(SystemExit) as exit_:
            main([*words[words.index("fit"):], "--print_config"])
    finally:
        os.environ.pop("PERCEPTLAB_PARSE_ONLY")
    import yaml

    assert exit_.value.code in (0, None)
    (suite,) = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"][:1]
    probes = [p["class_path"].rsplit(".", 1)[-1] for p in suite["init_args"]["probes"]]
    assert probes == ["FullReferenceIQAProbe", "NightsProbe", "SaliencyProbe", "ShapeBiasProbe",
                      "NoiseRobustnessProbe", "CLIPBenchmarkProbe"]  # the paper's five and ImageNet zero-shot
    assert suite["init_args"]["data_root"] == str(tmp_path / "links") and suite["init_args"]["every_n_epochs"] == 1
