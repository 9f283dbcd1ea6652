"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest

# Everything runs offline: no hub look-ups from `datasets` / `huggingface_hub`.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Lightning gives its logger a StreamHandler bound to sys.stderr when first imported. Imported
# inside a test that captures output (capsys), that stream is closed when the test ends, and every
# later Lightning log line in the process ("Seed set to 0") becomes a "--- Logging error ---"
# traceback in another test's output. Imported here, it binds to pytest's session-long stream.
import lightning.pytorch  # noqa: E402,F401


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The toy world at scale ``tiny``, seed 0, written once per test session; returns its root."""
    from perceptlab.datamodules.toyworld import synthesize

    root = tmp_path_factory.mktemp("toyworld")
    synthesize(root, seed=0, scale="tiny", progress=False)
    return root


def toy_suite_probes(max_items: int | None = 12, **overrides) -> list:
    """One probe of every shipped probe class (``callbacks/probes/registry.py``), set as the toy
    suite (``experiments/toy/alignment_suite.yaml``) sets its first probe of that class, with
    ``max_items`` and, where a class takes them, ``overrides`` (e.g. a single prompt template)."""
    import inspect
    from pathlib import Path

    import yaml

    from perceptlab.callbacks.probes.registry import shipped_probes

    shipped = shipped_probes()
    suite = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments/toy/alignment_suite.yaml").read_text())
    first: dict[str, dict] = {}
    for spec in suite["trainer"]["callbacks"][0]["init_args"]["probes"]:
        first.setdefault(spec["class_path"], dict(spec.get("init_args") or {}))
    assert set(first) == set(shipped), "every shipped probe runs in the toy suite, and only those"
    probes = []
    for path, args in first.items():
        accepted = inspect.signature(shipped[path]).parameters
        args.update({k: v for k, v in overrides.items() if k in accepted}, max_items=max_items)
        probes.append(shipped[path](**args))
    return probes


#: The image-text reader of each format (``ImageTextDataModule.pairs``).
SOURCES = {
    "webdataset": "perceptlab.datamodules.image_text.wds_pairs.WebDatasetSource",
    "csv": "perceptlab.datamodules.image_text.csv_pairs.CsvSource",
    "hf": "perceptlab.datamodules.image_text.hf_pairs.HFSource",
    "litdata": "perceptlab.datamodules.image_text.litdata_pairs.LitdataSource",
}


def pair_source(fmt: str, train, val=None, **settings):
    """The reader object of ``fmt`` over ``train`` / ``val`` (str paths)."""
    import importlib

    module, _, name = SOURCES[fmt].rpartition(".")
    return getattr(importlib.import_module(module), name)(
        None if train is None else str(train), None if val is None else str(val), **settings)


def pairs_override(fmt: str, train, val=None, key: str = "--data.init_args.pairs", **settings) -> str:
    """The command-line override that sets the data module's reader object."""
    import json

    init = {"train": None if train is None else str(train), "val": None if val is None else str(val), **settings}
    return f"{key}={json.dumps({'class_path': SOURCES[fmt], 'init_args': init})}"
