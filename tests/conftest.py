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
