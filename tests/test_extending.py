"""docs/extending.md's recipes, run as written: a user's probe in a module outside the package,
named by class_path, through `perceptlab fit`, `evaluate` and `report` (the last without the
module importable); and the shipped probes found by the registry, each in the toy suite."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from perceptlab.commands.cli import main as perceptlab
from perceptlab.datamodules.loader import Loader

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "extending.md"


def recipe_files() -> dict[str, str]:
    """The code blocks of docs/extending.md that name a file (```python file=NAME)."""
    return {name: body for name, body in re.findall(r"```\w+ file=(\S+)\n(.*?)```", DOC.read_text(), re.S)}


def odd_one_out_set(folder: Path, world: Path, n_same: int = 24, n_classes: int = 24) -> list[int]:
    """Triplets from the toy world's classification folder: ``n_same`` with two copies of one image
    (any model with deterministic features finds the odd one: the copies' similarity is 1), then
    ``n_classes`` with two images of one class and one of another. Returns the odd positions."""
    classes = sorted(p for p in (world / "classification").iterdir() if p.is_dir())
    images = {c.name: sorted(c.glob("*.png")) for c in classes}
    rng = np.random.default_rng(0)
    rows, odd = [], []
    for t in range(n_same + n_classes):
        a, b = classes[t % len(classes)].name, classes[(t + 1) % len(classes)].name
        first = images[a][t % len(images[a])]
        second = first if t < n_same else images[a][(t + 1) % len(images[a])]
        triplet = [first, second]
        k = int(rng.integers(3))
        triplet.insert(k, images[b][t % len(images[b])])
        rows.append({f"image_{i}": str(p) for i, p in enumerate(triplet)} | {"odd": k})
        odd.append(k)
    folder.mkdir(parents=True)
    import pandas as pd

    pd.DataFrame(rows).to_csv(folder / "triplets.csv", index=False)
    return odd


def test_a_users_probe_runs_through_fit_evaluate_and_report_without_touching_perceptlab(tiny_world, tmp_path, monkeypatch):
    files = recipe_files()
    assert {"my_probes.py", "odd_suite.yaml"} <= set(files)
    user = tmp_path / "user"  # the user's own folder: nothing of it is inside the package
    user.mkdir()
    (user / "my_probes.py").write_text(files["my_probes.py"])
    suite = yaml.safe_load(files["odd_suite.yaml"])
    init = suite["trainer"]["callbacks"][0]["init_args"]
    init.update(data_root=str(tiny_world), tensorboard_figure=False, num_workers=0)
    init["probes"][1]["init_args"]["root"] = str(tmp_path / "odd_one_out")  # absolute: data_root leaves it
    (user / "odd_suite.yaml").write_text(yaml.safe_dump(suite))
    odd_one_out_set(tmp_path / "odd_one_out", tiny_world)
    monkeypatch.syspath_prepend(str(user))  # PYTHONPATH=. in the recipe

    runs = tmp_path / "runs"
    perceptlab(["fit", "--config", str(REPO / "experiments/toy/pi_nights.yaml"), "--config", str(user / "odd_suite.yaml"),
                f"--data.init_args.root={tiny_world / 'nights'}", f"--runs_dir={runs}", "--trainer.max_steps=2",
                "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
                "--trainer.enable_progress_bar=false", "--data.init_args.loader.num_workers=0"])
    run = runs / "pi_nights" / "version_0"
    metric = "odd_one_out/odd_one_out/accuracy"
    live = [json.loads(line) for line in (run / "alignment.jsonl").read_text().splitlines()]
    assert [r["step"] for r in live] == [0, 2] and all(metric in r["metrics"] and r["ci"][metric] for r in live)
    described = json.loads((run / "alignment_metrics.json").read_text())
    assert described[metric] == {"probe": "odd_one_out/odd_one_out", "family": "odd_one_out", "headline": True}
    with np.load(run / live[-1]["items"]) as items:
        right = items["odd_one_out/odd_one_out/right"]
    assert right.shape == (48,) and right[:24].tolist() == [1.0] * 24  # the copies: always found
    assert live[-1]["metrics"][metric] == pytest.approx(right.mean())
    summary = json.loads((run / "alignment_summary.json").read_text())
    assert summary[metric]["direction"] == "max" and summary[metric]["items"] == 48
    assert summary[metric]["ci_note"] is None  # a mean over 48 items: its interval holds from 25

    evaluated = tmp_path / "evaluated"
    perceptlab(["evaluate", str(run / "checkpoints" / "last.ckpt"), "--config", str(user / "odd_suite.yaml"),
                "--out", str(evaluated), "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"])
    (again,) = [json.loads(line) for line in (evaluated / "alignment.jsonl").read_text().splitlines()]
    assert again["step"] == 2 and again["metrics"][metric] == live[-1]["metrics"][metric]

    watched = tmp_path / "watched"  # the finished run's files, as a watcher beside the training measures them
    perceptlab(["evaluate", "--watch", str(run), "--config", str(user / "odd_suite.yaml"), "--out", str(watched),
                "--poll", "0.2", "--settle", "0", "--idle_timeout", "30", "--trainer.accelerator=cpu",
                "--trainer.enable_progress_bar=false"])
    seen = [json.loads(line) for line in (watched / "alignment.jsonl").read_text().splitlines()]
    assert seen and seen[-1]["step"] == 2 and seen[-1]["metrics"][metric] == live[-1]["metrics"][metric]

    # the report, in a process where the user's module cannot be imported
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "perceptlab", "report", f"live={run}", f"evaluated={evaluated}",
                           "--out", str(tmp_path / "report")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "### odd_one_out" in md and (tmp_path / "report" / "odd_one_out.png").stat().st_size > 5_000
    row = next(line for line in md.splitlines() if line.startswith(f"| live | {metric} |"))
    assert re.search(r"\d\.\d{4} \[\d\.\d{3}, \d\.\d{3}\]", row)  # peak with its interval


def test_every_shipped_probe_is_found_and_runs_in_the_toy_suite():
    from perceptlab.callbacks.probes.registry import shipped_probes

    shipped = shipped_probes()
    suite = yaml.safe_load((REPO / "experiments/toy/alignment_suite.yaml").read_text())
    used = {p["class_path"] for p in suite["trainer"]["callbacks"][0]["init_args"]["probes"]}
    assert set(shipped) == used, "every shipped probe runs in the toy suite, and only those"


def load_recipe(name: str, tmp_path: Path):
    """The recipe file ``name`` of docs/extending.md, written to ``tmp_path`` and imported."""
    import importlib.util

    path = tmp_path / name
    path.write_text(recipe_files()[name])
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_toy_data_set_is_its_writer_and_one_registration(tmp_path):
    """The recipe's odd-one-out set, written after the classification set it draws from: counted in
    world.json, byte-identical for a seed, and read by the recipe's probe."""
    import torch

    from perceptlab.callbacks.probes.base import ProbeContext
    from perceptlab.core.backbone import CLIPBackbone
    from perceptlab.datamodules.toyworld import TOY_SETS, classification, synthesize

    world = load_recipe("odd_one_out_world.py", tmp_path)
    probes = load_recipe("my_probes.py", tmp_path)
    assert classification.TOY_SET in TOY_SETS and all(s.name != "odd_one_out" for s in TOY_SETS)
    for copy in ("a", "b"):
        manifest = synthesize(tmp_path / copy, seed=0, scale="tiny", progress=False,
                              sets=(classification.TOY_SET, world.ODD_ONE_OUT))
    assert manifest["counts"]["odd_one_out"] == {"triplets": 48} and manifest["paths"]["odd_one_out"] == "odd_one_out"
    table = (tmp_path / "a" / "odd_one_out" / "triplets.csv").read_bytes()
    assert table == (tmp_path / "b" / "odd_one_out" / "triplets.csv").read_bytes()  # the seed decides it all

    probe = probes.OddOneOutProbe("odd_one_out", max_items=None)
    probe.data_root, probe.num_workers = str(tmp_path / "a"), 1
    backbone = CLIPBackbone("perceptlab-vit-tiny-64").eval()
    probe.prepare(backbone)
    with torch.inference_mode():
        items = probe.measure(ProbeContext(backbone))
    assert probe.n_items == 48 and items[probe.name]["right"].shape == (48,)
    assert 0 <= probe.score(items)["odd_one_out/odd_one_out/accuracy"] <= 1


def test_a_command_is_a_typed_function_in_its_module(tmp_path, capsys):
    from perceptlab.callbacks import run_record
    from perceptlab.commands.cli import MODULE_COMMANDS, USAGE

    command = load_recipe("count_evaluations.py", tmp_path)
    run = tmp_path / "run"
    run_record.write_evaluations(run, [{"epoch": e, "step": 10 * e, "metrics": {"nights/2afc": 0.5 + e / 10}}
                                       for e in range(3)] + [{"epoch": 3, "step": 30, "metrics": {"nights/2afc": None}}])
    assert command.main([str(run), "--metric", "nights/2afc"]) == {str(run): 3}  # an undefined value is not counted
    with pytest.raises(FileNotFoundError, match="missing"):
        command.main([str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exit_:
        command.main(["--help"])
    assert exit_.value.code == 0 and "How many evaluations of METRIC" in capsys.readouterr().out
    # what the recipe says a command is: a module with main(argv), named in the table and the usage
    import importlib

    for name, module in MODULE_COMMANDS.items():
        assert callable(importlib.import_module(module).main) and f"\n  {name} " in USAGE, name


def test_an_image_text_format_is_one_reader_object(tiny_world, tmp_path, monkeypatch):
    """The recipe's JSON-lines reader over the toy world's CSV pairs gives the CSV reader's batches,
    and the CLI takes it by class_path as the data module's pairs."""
    import pandas as pd
    import torch

    from perceptlab.datamodules.image_text import CsvSource, ImageTextDataModule

    fmt = load_recipe("my_format.py", tmp_path)
    csv = Path(tiny_world) / "image_text" / "pairs.csv"
    table = pd.read_csv(csv, sep="\t")
    with open(tmp_path / "train.jsonl", "w") as f:
        for path, caption in zip(table["filepath"], table["title"]):
            f.write(json.dumps({"image": str(csv.parent / path), "caption": caption}) + "\n")
    batches = []
    for source in (fmt.JsonlSource(str(tmp_path / "train.jsonl")), CsvSource(str(csv))):
        dm = ImageTextDataModule(source, model_name="perceptlab-vit-tiny-64",
                                 shuffle=False, augmentation="none", loader=Loader(batch_size=16, num_workers=0))
        dm.setup("fit")
        batches.append(next(iter(dm.train_dataloader())))
    assert torch.equal(batches[0]["image"], batches[1]["image"]) and torch.equal(batches[0]["text"], batches[1]["text"])

    monkeypatch.syspath_prepend(str(tmp_path))
    pairs = json.dumps({"class_path": "my_format.JsonlSource", "init_args": {"train": str(tmp_path / "train.jsonl")}})
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        perceptlab(["fit", "--config", str(REPO / "experiments/toy/pretrain_random.yaml"),
                    f"--data.init_args.pairs={pairs}", "--print_config"])
    assert exit_.value.code in (0, None)
    assert yaml.safe_load(out.getvalue())["data"]["init_args"]["pairs"]["class_path"] == "my_format.JsonlSource"
