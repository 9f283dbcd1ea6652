"""The probes perceptlab ships, found, not listed: every concrete :class:`Probe` subclass defined in a
module of this package. A user's probe needs no registration at all: the suite's YAML names it by
``class_path`` (docs/extending.md). The toy suite (``experiments/toy/alignment_suite.yaml``) runs
each shipped probe at least once, which a test checks against :func:`shipped_probes`.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

from perceptlab.callbacks.probes.base import Probe


def shipped_probes() -> dict[str, type[Probe]]:
    """``{class path: class}`` of every concrete probe class in ``perceptlab.callbacks.probes``."""
    import perceptlab.callbacks.probes as package

    found: dict[str, type[Probe]] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Probe) and not inspect.isabstract(cls) and cls.__module__ == module.__name__:
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return dict(sorted(found.items()))
