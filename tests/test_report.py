"""`perceptlab report` on run directories written the way the alignment suite writes them."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from perceptlab.commands.report import write_report
from perceptlab.commands.report_arms import load_run


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
            assert int(row[2]) == 1 and int(row[3]) == s["peak_step"]
            assert float(row[4]) == pytest.approx(s["peak"], abs=5e-5)
            assert float(row[5]) == pytest.approx(s["final"], abs=5e-5)
            assert float(row[6]) == pytest.approx(s["drop"], abs=5e-5)
            assert row[7] == "–"  # these summaries carry no intervals

    diffs = {r[0]: r for r in _table_rows(md, "Differences (run − random)")}
    assert float(diffs["nights/2afc"][3]) == pytest.approx(0.8 - 0.72, abs=5e-5)
    assert float(diffs["nights/2afc"][4]) == pytest.approx(0.7 - 0.72, abs=5e-5)
    assert float(diffs["iqa_fr/tid2013/srcc"][3]) == pytest.approx(0.6 - 0.52, abs=5e-5)
    # the model-free psnr line is listed once as a reference, not tracked as a peak
    assert "iqa_fr/tid2013/psnr/srcc" in md.split("## Model-free reference lines", 1)[1]
    assert ("pi", "iqa_fr/tid2013/psnr/srcc") not in peaks

    for png in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (tmp_path / "out" / png).stat().st_size > 5_000
    assert {"nights.png", "iqa_fr.png"} <= {p.name for p in (tmp_path / "out").glob("*.png")}


def test_report_cli_names_a_missing_run(tmp_path, capsys):
    from perceptlab.commands.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "run directory not found" in err and "nope" in err


def _cell(value: str) -> tuple[float, list[float] | None]:
    """``0.7123 [0.690, 0.735]`` -> (0.7123, [0.690, 0.735])."""
    head, _, rest = value.partition(" [")
    return float(head), ([float(x) for x in rest.rstrip("]").split(",")] if rest else None)


def test_multi_seed_report_agrees_with_the_per_run_summaries_and_pairs_differences_by_seed(tmp_path):
    from scipy.stats import t

    steps = [0, 10, 20]
    arms = {"pi": {0: [0.60, 0.80, 0.70], 1: [0.62, 0.78, 0.71], 2: [0.58, 0.83, 0.69]},
            "random": {0: [0.60, 0.66, 0.68], 1: [0.61, 0.64, 0.70], 2: [0.59, 0.70, 0.66]}}
    summaries, paths = {}, {}
    for arm, seeds in arms.items():
        for seed, values in seeds.items():
            path = tmp_path / arm / f"version_{seed}"
            summaries[arm, seed] = _write_run(path, {"nights/2afc": values}, steps)["nights/2afc"]
            (path / "config.yaml").write_text(f"seed_everything: {seed}\n")
            paths.setdefault(arm, []).append(str(path))
    paths["random"].reverse()  # given in another order: the differences pair by seed, not position
    from perceptlab.commands.report import main

    md = main([f"pi={','.join(paths['pi'])}", f"random={','.join(paths['random'])}", "--out", str(tmp_path / "out"),
               "--reference", "random"]).read_text()

    def t_interval(values):
        mean = sum(values) / len(values)
        sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        half = t.ppf(0.975, len(values) - 1) * sd / len(values) ** 0.5
        return mean, [mean - half, mean + half]

    peaks = {(r[0], r[1]): r for r in _table_rows(md, "Peaks")}
    for arm, seeds in arms.items():
        row = peaks[(arm, "nights/2afc")]
        assert int(row[2]) == 3
        for column, key in ((4, "peak"), (5, "final")):
            value, interval = _cell(row[column])
            mean, expected = t_interval([summaries[arm, s][key] for s in range(3)])
            assert value == pytest.approx(mean, abs=5e-5) and interval == pytest.approx(expected, abs=5e-4)
        # the drop: the mean trajectory's peak minus its final value, its interval the largest of the
        # Bonferroni-adjusted one-sided t bounds over every candidate peak step (the peak is chosen)
        mean_trajectory = [sum(seeds[s][i] for s in range(3)) / 3 for i in range(len(steps))]
        at = max(range(len(steps)), key=mean_trajectory.__getitem__)
        assert row[3] == f"{steps[at]} ({', '.join(str(summaries[arm, s]['peak_step']) for s in range(3))})"
        value, interval = _cell(row[6])
        q = t.ppf(1 - 0.025 / (len(steps) - 1), 2)
        bounds = []
        for i in range(len(steps) - 1):
            mean, _ = t_interval([seeds[s][i] - seeds[s][-1] for s in range(3)])
            se = (sum((seeds[s][i] - seeds[s][-1] - mean) ** 2 for s in range(3)) / 2) ** 0.5 / 3 ** 0.5
            bounds.append((mean - q * se, mean + q * se))
        expected = [max(0, max(b[0] for b in bounds)), max(0, max(b[1] for b in bounds))]
        assert value == pytest.approx(mean_trajectory[at] - mean_trajectory[-1], abs=5e-5)
        assert interval == pytest.approx(expected, abs=5e-4)
        assert row[8] == ("yes (+)" if expected[0] > 0 else "no")
    # 0.10, 0.07, 0.14 below the common peak over 3 seeds: the naive t-interval at the chosen step
    # excludes zero, the one that pays for choosing among the steps does not
    assert peaks[("pi", "nights/2afc")][8] == "no"
    assert peaks[("random", "nights/2afc")][8] == "no"  # its mean trajectory peaks at the end
    diff = {r[0]: r for r in _table_rows(md, "Differences (run − random)")}["nights/2afc"]
    assert int(diff[2]) == 3
    for column, key in ((3, "peak"), (4, "final")):
        value, interval = _cell(diff[column])
        mean, expected = t_interval([summaries["pi", s][key] - summaries["random", s][key] for s in range(3)])
        assert value == pytest.approx(mean, abs=5e-5) and interval == pytest.approx(expected, abs=5e-4)
    assert diff[5] == ("yes (+)" if expected[0] > 0 else "no")
    assert "3 seeds: 0, 1, 2" in md


def test_one_run_each_differences_take_the_paired_bootstrap_of_their_replicates(tmp_path):
    import numpy as np

    steps = [0, 10]
    rng = np.random.default_rng(0)
    common = rng.normal(0.7, 0.03, 1000)  # the items' shared part: pairing removes it
    reps = {"a": common + 0.02 + rng.normal(0, 0.005, 1000), "b": common + rng.normal(0, 0.005, 1000)}
    for name, values in (("a", [0.6, 0.72]), ("b", [0.6, 0.70])):
        _write_run(tmp_path / name, {"nights/2afc": values}, steps)
        np.savez(tmp_path / name / "alignment_bootstrap.npz", **{"nights/2afc@final": reps[name],
                                                                  "nights/2afc@peak": reps[name]})
    md = write_report([load_run(tmp_path / "a", "a"), load_run(tmp_path / "b", "b")], tmp_path / "out",
                      reference="b").read_text()
    diff = {r[0]: r for r in _table_rows(md, "Differences (run − b)")}["nights/2afc"]
    value, interval = _cell(diff[4])
    assert value == pytest.approx(0.02, abs=5e-5)
    assert interval == pytest.approx(np.quantile(reps["a"] - reps["b"], [0.025, 0.975]).tolist(), abs=5e-4)
    assert diff[5] == "yes (+)"  # unpaired, the 0.03 spread of the items would hide a 0.02 difference

    # replicates drawn with another bootstrap seed are not paired: no interval rather than a wrong one
    for name, seed in (("a", 0), ("b", 1)):
        np.savez(tmp_path / name / "alignment_bootstrap.npz", **{"nights/2afc@final": reps[name],
                                                                  "__bootstrap_seed__": np.array(seed)})
    md = write_report([load_run(tmp_path / "a", "a"), load_run(tmp_path / "b", "b")], tmp_path / "out2",
                      reference="b").read_text()
    diff = {r[0]: r for r in _table_rows(md, "Differences (run − b)")}["nights/2afc"]
    assert _cell(diff[4]) == (pytest.approx(0.02, abs=5e-5), None) and diff[5] == "–"
