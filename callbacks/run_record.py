"""The run record: what an alignment run leaves on disk, written and read in one place.

A run directory (``runs/<experiment>/version_<n>/``, or ``perceptlab evaluate``'s) holds

``alignment.jsonl`` (:data:`JSONL_NAME`)
    one :class:`Evaluation` per line: ``{"epoch", "step", "trigger", "metrics": {name: value},
    "ci": {name: [low, high]}, "seconds": {probe: s}, "items": "alignment_items/step=0000125.npz"}``
    plus ``"model"`` from ``perceptlab evaluate``; undefined values are ``null``.
``alignment_summary.json`` (:data:`SUMMARY_NAME`)
    per metric a :class:`MetricSummary` (``perceptlab.callbacks.peaks``).
``alignment_items/step=<step>.npz`` (:func:`items_path`)
    every evaluation's per-item outputs, ``<group>/<field>`` arrays.
``alignment_metrics.json`` (:data:`METRICS_NAME`)
    per metric its description by the probe that computed it (``MetricInfo``'s non-default fields).
``alignment_bootstrap.npz`` (:data:`BOOTSTRAP_NAME`)
    bootstrap replicates: ``<metric>@peak``, ``@final``, ``@baseline`` ``(B,)`` and the whole
    trajectory ``<metric>@trajectory`` ``(T, B)`` with its steps ``<metric>@steps`` ``(T,)``;
    :data:`BOOTSTRAP_SEED_KEY` records the seed that fixed the resampled items.
``data_resumes.jsonl`` (``datamodules.image_text.wds_pairs.RESUMES_NAME``)
    one line per webdataset resume inside an epoch: where, and the samples that epoch is expected
    to repeat and skip (the only resume that is not exact).
``config.yaml``, TensorBoard event files (``test/*`` scalars of perceptual-task runs).

The writers replace a file atomically (a reader or a crash never sees half a file); the one
reader is :func:`read_run`. What each metric is (its direction, statistic, chart, whether it is a
headline or a reference line) is the probes' word, stored in ``alignment_metrics.json``
(:class:`~perceptlab.callbacks.probes.metric_info.MetricInfo`), so the suite, the report and
TensorBoard agree, and a run made with a user's probe reports without importing it.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, TypedDict

import numpy as np

from perceptlab.callbacks.probes.metric_info import MetricInfo, legacy_info

# The checkpoint names (aliases, end-of-fit exports, the end marker) are core.checkpoints' (what a
# model file is); the run record writes the end marker.
from perceptlab.core.checkpoints import FIT_END_NAME

log = logging.getLogger(__name__)

JSONL_NAME = "alignment.jsonl"
SUMMARY_NAME = "alignment_summary.json"
BOOTSTRAP_NAME = "alignment_bootstrap.npz"
METRICS_NAME = "alignment_metrics.json"
ITEMS_DIR = "alignment_items"
CONFIG_NAME = "config.yaml"
BOOTSTRAP_SEED_KEY = "__bootstrap_seed__"
TRIGGERS = ("baseline", "epoch", "step", "end", "model")


class Evaluation(TypedDict, total=False):
    """One line of ``alignment.jsonl``."""

    epoch: int
    step: int
    trigger: str  # one of TRIGGERS
    metrics: dict[str, float | None]
    ci: dict[str, list[float] | None]
    seconds: dict[str, float]
    items: str  # relative path of the per-item outputs
    model: str  # perceptlab evaluate: the model measured


class MetricSummary(TypedDict, total=False):
    """One metric of ``alignment_summary.json`` (see ``perceptlab.callbacks.peaks``)."""

    direction: str  # "max" (higher is more human-like) or "min"
    peak: float
    peak_epoch: int
    peak_step: int
    final: float
    final_epoch: int
    final_step: int
    drop: float  # the largest drop from any evaluation to the final one, >= 0
    drop_ci: list[float] | None  # valid although the peak is picked after looking
    drop_p: float | None
    drop_significant: bool | None
    baseline: float | None
    evaluations: int
    items: int | None  # items behind the metric's interval
    peak_ci: list[float] | None
    final_ci: list[float] | None
    baseline_ci: list[float] | None
    change: float | None
    change_ci: list[float] | None
    ci_reliable: bool | None
    ci_note: str | None
    checkpoint: str


def items_path(step: int) -> str:
    """Per-item outputs of the evaluation at ``step``, relative to the run directory."""
    return f"{ITEMS_DIR}/step={int(step):07d}.npz"


def finite(value: Any) -> float | None:
    """``float(value)`` when finite, else ``None`` (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------------------ writers
def write_json_atomic(path: str | os.PathLike, obj: Any, lines: bool = False) -> None:
    """Write JSON (or JSON lines from a list) to ``path`` via a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        if lines:
            for record in obj:
                f.write(json.dumps(record, allow_nan=False) + "\n")
        else:
            json.dump(obj, f, indent=2, allow_nan=False)
            f.write("\n")
    os.replace(tmp, path)


def write_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """Write numpy arrays to a compressed ``.npz`` at ``path`` via a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def write_evaluations(run_dir: str | os.PathLike, evaluations: Iterable[Evaluation]) -> None:
    write_json_atomic(Path(run_dir) / JSONL_NAME, list(evaluations), lines=True)


def write_summary(run_dir: str | os.PathLike, summary: Mapping[str, MetricSummary]) -> None:
    write_json_atomic(Path(run_dir) / SUMMARY_NAME, dict(summary))


def write_metric_info(run_dir: str | os.PathLike, info: Mapping[str, MetricInfo]) -> None:
    """What each metric is (``{metric: MetricInfo fields}``), as the probes described them."""
    write_json_atomic(Path(run_dir) / METRICS_NAME, {k: v.to_json() for k, v in info.items()})


def write_items(run_dir: str | os.PathLike, step: int, items: Mapping[str, Any]) -> str:
    """Write one evaluation's per-item outputs; returns their relative path."""
    relative = items_path(step)
    write_npz_atomic(Path(run_dir) / relative, {k: np.asarray(v) for k, v in items.items()})
    return relative


def write_bootstrap(run_dir: str | os.PathLike, trajectories: Mapping[str, tuple[list[int], np.ndarray]],
                    marks: Mapping[str, Mapping[str, int]], seed: int) -> None:
    """``trajectories``: metric -> (steps, ``(T, B)`` replicates in evaluation order); ``marks``:
    metric -> {"peak"|"final"|"baseline": row}. Writes the named rows and the whole trajectory."""
    arrays: dict[str, np.ndarray] = {}
    for name, (steps, reps) in trajectories.items():
        reps = np.asarray(reps, dtype=np.float32)
        arrays[f"{name}@trajectory"] = reps
        arrays[f"{name}@steps"] = np.asarray(steps, dtype=np.int64)
        for which, row in marks.get(name, {}).items():
            arrays[f"{name}@{which}"] = reps[row]
    if arrays:
        arrays[BOOTSTRAP_SEED_KEY] = np.array(seed)
        write_npz_atomic(Path(run_dir) / BOOTSTRAP_NAME, arrays)


# ------------------------------------------------------------------------------------- reader
@dataclass
class RunRecord:
    """Everything a run directory says about alignment (and perceptual-task test results)."""

    path: Path
    evaluations: list[Evaluation] = field(default_factory=list)
    summary: dict[str, MetricSummary] = field(default_factory=dict)
    replicates: dict[str, np.ndarray] = field(default_factory=dict)  # keys as in the bootstrap file
    task_results: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    metric_info: dict[str, MetricInfo] = field(default_factory=dict)  # as stored; see describe()

    def metrics(self) -> list[str]:
        """Every metric the run measured or summarised, sorted."""
        return sorted({m for e in self.evaluations for m in e["metrics"]} | set(self.summary))

    def describe(self, metric: str) -> MetricInfo:
        """What ``metric`` is: as its probe described it, or for a run written before probes
        described their metrics, by the name rules of that time (``metric_info.legacy_info``)."""
        info = self.metric_info.get(metric)
        if info is None:
            info = self.metric_info[metric] = legacy_info(metric, (), self.metrics())
        return info

    @property
    def bootstrap_seed(self) -> int | None:
        seed = self.replicates.get(BOOTSTRAP_SEED_KEY)
        return None if seed is None else int(seed)

    def replicate(self, metric: str, which: str) -> np.ndarray | None:
        """``(B,)`` replicates of ``metric`` at its ``peak``, ``final`` or ``baseline`` evaluation."""
        return self.replicates.get(f"{metric}@{which}")

    def trajectory_replicates(self, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(steps ``(T,)``, replicates ``(T, B)``) of every evaluation of ``metric``, if written."""
        reps, steps = self.replicates.get(f"{metric}@trajectory"), self.replicates.get(f"{metric}@steps")
        return None if reps is None or steps is None else (steps, reps)

    def items(self, evaluation: Evaluation) -> dict[str, np.ndarray]:
        """The per-item outputs of one evaluation (``FileNotFoundError`` naming the file)."""
        relative = evaluation.get("items") or items_path(evaluation["step"])
        path = self.path / relative
        if not path.is_file():
            raise FileNotFoundError(f"per-item outputs not found: {path}")
        with np.load(path) as z:
            return {k: z[k] for k in z.files}


def grouped(items: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"<group>/<field>": values}`` (an items file) -> ``{group: {field: values}}``; a group may
    hold slashes (``iqa_fr/tid2013``), a field does not."""
    out: dict[str, dict[str, Any]] = {}
    for key, values in items.items():
        group, _, name = key.rpartition("/")
        out.setdefault(group, {})[name] = values
    return out


def write_fit_end(run_dir: str | os.PathLike, step: int, epoch: int) -> None:
    write_json_atomic(Path(run_dir) / FIT_END_NAME, {"step": int(step), "epoch": int(epoch)})


def read_evaluations(path: str | os.PathLike) -> list[Evaluation]:
    """The records of ``alignment.jsonl`` in a run directory ([] when there is none)."""
    jsonl = Path(path) / JSONL_NAME
    if not jsonl.is_file():
        return []
    out = []
    try:
        lines = [(n, line) for n, line in enumerate(jsonl.read_text().splitlines(), 1) if line.strip()]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{jsonl}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for number, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == lines[-1][0]:  # a line torn by a kill while it was written: the records before it stand
                log.warning("%s:%d: ignored a torn last line (%s): %r", jsonl, number, exc.msg, line[:80])
                break
            raise ValueError(f"{jsonl}:{number}: not a JSON record ({exc.msg})") from None
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{jsonl}:{number}: not an evaluation record (no step)")
        out.append(record)
    return out


def read_run(path: str | os.PathLike, require: bool = True) -> RunRecord:
    """Read a run directory. ``FileNotFoundError`` naming it when it is missing or (``require``)
    holds no alignment record and no ``test/*`` scalars."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory not found: {path}")
    run = RunRecord(path=path, evaluations=read_evaluations(path))
    summary = path / SUMMARY_NAME
    if summary.is_file():
        try:
            run.summary = json.loads(summary.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{summary}: not a JSON summary ({' '.join(str(exc).split())[:120]})") from None
    bootstrap = path / BOOTSTRAP_NAME
    if bootstrap.is_file():
        try:
            with np.load(bootstrap) as z:
                run.replicates = {k: z[k] for k in z.files}
        except Exception as exc:  # noqa: BLE001  zip and pickle errors of a torn or foreign file
            raise ValueError(f"{bootstrap}: not a readable .npz ({type(exc).__name__}: {str(exc)[:120]})") from None
    described = path / METRICS_NAME
    if described.is_file():
        try:
            run.metric_info = {k: MetricInfo.from_json(v) for k, v in json.loads(described.read_text()).items()}
        except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{described}: not a metric description ({' '.join(str(exc).split())[:120]})") from None
    run.task_results = read_test_scalars(path)
    run.seed = read_seed(path)
    if require and not run.evaluations and not run.summary and not run.task_results:
        raise FileNotFoundError(f"{path} has no {JSONL_NAME}, {SUMMARY_NAME} or test/* TensorBoard scalars")
    return run


def read_seed(path: Path) -> int | None:
    """``seed_everything`` of the run's ``config.yaml`` (LightningCLI writes it), if any."""
    config = Path(path) / CONFIG_NAME
    if not config.is_file():
        return None
    import yaml

    try:
        seed = (yaml.safe_load(config.read_text()) or {}).get("seed_everything")
    except yaml.YAMLError:
        return None
    return int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None


def read_test_scalars(path: Path) -> dict[str, float]:
    """Last value of every ``test/...`` scalar in the run's TensorBoard event files."""
    events = sorted(Path(path).glob("events.out.tfevents.*"))
    if not events:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, float] = {}
    for event_file in events:
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith("test/"):
                out[tag] = float(acc.Scalars(tag)[-1].value)
    return out
