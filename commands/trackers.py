"""Experiment trackers beside TensorBoard: ``--trackers '[csv, mlflow, wandb]'`` (or a fragment of
``experiments/loggers/``) adds Lightning's CSV, MLflow or Weights & Biases logger to a run, named
after the run: the alignment suite's metrics, their interval ends and the peak summary reach
each of them as they reach TensorBoard.

* ``csv``: ``metrics.csv`` in the run directory itself (``runs/<experiment>/version_<n>/``).
* ``mlflow``: experiment ``<experiment>``, run ``version_<n>``, in ``$MLFLOW_TRACKING_URI`` or else a
  local file store ``<runs_dir>/mlruns`` (``mlflow ui --backend-store-uri runs/mlruns``). Needs
  ``pip install mlflow-skinny`` (the ``trackers`` extra).
* ``wandb``: project ``$WANDB_PROJECT`` or ``perceptlab``, run ``<experiment>/version_<n>``, files in
  the run directory, offline unless ``WANDB_MODE`` says otherwise (clusters rarely reach the
  service; ``wandb sync`` uploads later). Needs ``pip install wandb``.

TensorBoard stays the first logger, so ``trainer.log_dir`` and the run record do not move.
"""
from __future__ import annotations

import os
from pathlib import Path

TRACKERS = ("csv", "mlflow", "wandb")


def make_trackers(names: list[str], runs_dir: str, experiment: str, version: int | str):
    """Lightning loggers for ``names``, named after the run ``<runs_dir>/<experiment>/version_<n>``."""
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"--trackers: unknown {', '.join(unknown)} (known: {', '.join(TRACKERS)})")
    version_name = version if isinstance(version, str) else f"version_{version}"
    run_dir = Path(runs_dir) / experiment / version_name
    out = []
    for name in dict.fromkeys(names):
        if name == "csv":
            from lightning.pytorch.loggers import CSVLogger

            out.append(CSVLogger(save_dir=runs_dir, name=experiment, version=version))
        elif name == "mlflow":
            _require("mlflow", "mlflow-skinny")
            from lightning.pytorch.loggers import MLFlowLogger

            uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path(runs_dir).resolve() / "mlruns").as_uri()
            if uri.startswith("file:"):
                # MLflow 3 keeps its local file store behind this switch; a local store needs no server.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            out.append(MLFlowLogger(experiment_name=experiment, run_name=version_name, tracking_uri=uri))
        elif name == "wandb":
            _require("wandb", "wandb")
            from lightning.pytorch.loggers import WandbLogger

            run_dir.mkdir(parents=True, exist_ok=True)
            out.append(WandbLogger(project=os.environ.get("WANDB_PROJECT", "perceptlab"), name=f"{experiment}/{version_name}",
                                   save_dir=str(run_dir), offline=os.environ.get("WANDB_MODE", "offline") == "offline"))
    return out


def _require(module: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"--trackers {module} needs the {package} package: pip install {package} "
                                  "(or the project's `trackers` extra)")
