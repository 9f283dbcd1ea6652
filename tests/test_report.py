"""`perceptlab report` on run directories written the way the alignment suite writes them."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from perceptlab.commands.report import load_run, write_report


def _write_run(path: Path, trajectory: dict[str, list[float]], steps: list[int]) -> dict:
    path.mkdir(parents=True)
    lines = []
    for i, step in enumerate(steps):
        lines.append({"epoch": i - 1, "step": step, "metrics": {m: v[i] for m, v in trajectory.items()}})
    (path / "alignment.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    summary = {}
    for m, values in trajectory.items():
        k = max(range(len(values)), key=values.__getitem__)
        summary[m] = {"peak_epoch": k - 1, "peak_step": steps[k], "peak": values[k], "final": values[-1],
                      "drop": values[k] - values[-1], "direction": "max"}
    (path / "alignment_summary.json").write_text(json.dumps(summary))
    return summary


def _table_rows(markdown: str, section: str) -> list[list[str]]:
    body = markdown.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in body.splitlines() if ln.startswith("|")][2:]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows]


def test_report_tables_agree_with_summaries_and_differences_are_run_minus_reference(tmp_path):
    steps = [0, 10, 20, 30]
    pi = _write_run(tmp_path / "pi", {"nights/2afc": [0.6, 0.8, 0.75, 0.7],
                                      "iqa_fr/tid2013/srcc": [0.5, 0.55, 0.6, 0.4],
                                      "iqa_fr/tid2013/psnr/srcc": [0.7] * 4}, steps)
    rnd = _write_run(tmp_path / "rnd", {"nights/2afc": [0.6, 0.65, 0.7, 0.72],
                                        "iqa_fr/tid2013/srcc": [0.5, 0.52, 0.5, 0.45],
                                        "iqa_fr/tid2013/psnr/srcc": [0.7] * 4}, steps)
    runs = [load_run(tmp_path / "pi", "pi"), load_run(tmp_path / "rnd", "random")]
    md = write_report(runs, tmp_path / "out", reference="random").read_text()

    peaks = {(r[0], r[1]): r for r in _table_rows(md, "Peaks")}
    assert set(peaks) == {("pi", "nights/2afc"), ("pi", "iqa_fr/tid2013/srcc"),
                          ("random", "nights/2afc"), ("random", "iqa_fr/tid2013/srcc")}
    for name, summary in (("pi", pi), ("random", rnd)):
        for metric in ("nights/2afc", "iqa_fr/tid2013/srcc"):
            row, s = peaks[(name, metric)], summary[metric]
            assert int(row[2]) == s["peak_epoch"] and int(row[3]) == s["peak_step"]
            assert float(row[4]) == pytest.approx(s["peak"], abs=5e-5)
            assert float(row[5]) == pytest.approx(s["final"], abs=5e-5)
            assert float(row[6]) == pytest.approx(s["drop"], abs=5e-5)

    diffs = {r[0]: r for r in _table_rows(md, "Differences (run − random)")}
    assert float(diffs["nights/2afc"][2]) == pytest.approx(0.8 - 0.72, abs=5e-5)
    assert float(diffs["nights/2afc"][3]) == pytest.approx(0.7 - 0.72, abs=5e-5)
    assert float(diffs["iqa_fr/tid2013/srcc"][2]) == pytest.approx(0.6 - 0.52, abs=5e-5)
    # the model-free psnr line is listed once as a reference, not tracked as a peak
    assert "iqa_fr/tid2013/psnr/srcc" in md.split("## Classical", 1)[1]
    assert ("pi", "iqa_fr/tid2013/psnr/srcc") not in peaks

    for png in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (tmp_path / "out" / png).stat().st_size > 5_000
    assert {"nights.png", "iqa_fr.png"} <= {p.name for p in (tmp_path / "out").glob("*.png")}


def test_report_cli_names_a_missing_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "perceptlab.commands.cli", "report", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "run directory not found" in proc.stderr and "nope" in proc.stderr
