"""The main job in miniature: `perceptlab demo --quick` end to end, and its report checked
against the runs' own alignment_summary.json files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def _cell(value: float, interval) -> str:
    """How the report prints a value and its 95% interval."""
    return f"{value:.4f}" + ("" if interval is None else f" [{interval[0]:.3f}, {interval[1]:.3f}]")


def _rows(markdown: str, section: str) -> list[list[str]]:
    body = markdown.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in r.strip("|").split("|")] for r in body.splitlines() if r.startswith("|")][2:]


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_reports_what_the_runs_wrote(tmp_path, tiny_world):
    # The session's tiny world stands in for `perceptlab synth` (tested on its own): the demo finds
    # it complete at data/toyworld and reuses it, as on a second run.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "toyworld").symlink_to(tiny_world, target_is_directory=True)
    proc = subprocess.run([sys.executable, "-m", "perceptlab.commands.cli", "demo", "--quick", "--out", "runs/demo"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "toy world already at data/toyworld" in proc.stdout
    out = tmp_path / "runs" / "demo"
    world = json.loads((tmp_path / "data" / "toyworld" / "world.json").read_text())
    assert world["scale"] == "tiny"

    runs = {name: out / name / "version_0" for name in ("pi_nights", "pretrain_pi", "pretrain_random")}
    for run in runs.values():
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
        lines = [json.loads(x) for x in (run / "alignment.jsonl").read_text().splitlines()]
        assert lines[0]["epoch"] == -1 and len(lines) >= 3  # baseline + two epochs
    assert (runs["pi_nights"] / "visual.pt").is_file()
    # stage 2 from the perceptual init really started from the stage-1 tower: same baseline 2AFC
    base = {n: json.loads((r / "alignment.jsonl").read_text().splitlines()[0])["metrics"] for n, r in runs.items()}
    assert base["pretrain_pi"]["nights/2afc"] == pytest.approx(
        json.loads((runs["pi_nights"] / "alignment.jsonl").read_text().splitlines()[-1])["metrics"]["nights/2afc"], abs=1e-6)

    md = (out / "report" / "report.md").read_text()
    names = {"perceptual_init": runs["pretrain_pi"], "random_init": runs["pretrain_random"], "stage1": runs["pi_nights"]}
    table = {(r[0], r[1].removesuffix(" †")): r for r in _rows(md, "Peaks")}
    checked = 0
    for name, run in names.items():
        summary = json.loads((run / "alignment_summary.json").read_text())
        for metric, s in summary.items():
            if (name, metric) not in table:
                continue
            row = table[(name, metric)]
            assert int(row[2]) == 1 and int(row[3]) == s["peak_step"]
            for col, key in ((4, "peak"), (5, "final"), (6, "drop")):
                if s[key] is not None:
                    assert row[col] == _cell(s[key], s[f"{key}_ci"]), (name, metric, key)
            assert row[8] == ("–" if s["drop_ci"] is None else "yes (+)" if s["drop_ci"][0] > 0 else
                              "yes (−)" if s["drop_ci"][1] < 0 else "no")
            assert row[7] == ("–" if s["drop_p"] is None else "<0.001" if s["drop_p"] < 0.001 else f"{s['drop_p']:.3f}")
            assert row[1].endswith(" †") == bool(s.get("ci_note")), (name, metric)
            checked += 1
    assert checked >= 20
    assert "## Differences (run − random_init)" in md
    # the per-dataset benchmark table: each stage-2 run's last record, side by side, and the difference
    final = {n: json.loads((runs[e] / "alignment.jsonl").read_text().splitlines()[-1])["metrics"]
             for n, e in (("perceptual_init", "pretrain_pi"), ("random_init", "pretrain_random"))}
    (objects,) = [r for r in _rows(md, "Zero-shot classification") if r[0] == "toy_objects"]
    # the difference's interval: a paired bootstrap of the two runs' replicates (same images, same resamples)
    replicates = {n: np.load(runs[e] / "alignment_bootstrap.npz")["zeroshot/toy_objects/acc1@final"]
                  for n, e in (("perceptual_init", "pretrain_pi"), ("random_init", "pretrain_random"))}
    interval = np.quantile(replicates["perceptual_init"].astype(np.float64) - replicates["random_init"], [0.025, 0.975])
    assert objects[1:] == [f"{final['perceptual_init']['zeroshot/toy_objects/acc1']:.4f}",
                           f"{final['perceptual_init']['zeroshot/toy_objects/acc5']:.4f}",
                           f"{final['random_init']['zeroshot/toy_objects/acc1']:.4f}",
                           f"{final['random_init']['zeroshot/toy_objects/acc5']:.4f}",
                           _cell(final['perceptual_init']['zeroshot/toy_objects/acc1']
                                 - final['random_init']['zeroshot/toy_objects/acc1'], interval)]
    (captions,) = [r for r in _rows(md, "Image-text retrieval") if r[0] == "toy_captions"]
    assert captions[1] == f"{final['perceptual_init']['retrieval/toy_captions/mean_recall@1']:.4f}"
    assert "## Perceptual-task results" in md and "iqa_from_perceptual_init" in md
    assert (out / "report" / "nights.png").is_file()
    timings = json.loads((out / "demo_timings.json").read_text())
    assert len(timings["steps"]) >= 8
