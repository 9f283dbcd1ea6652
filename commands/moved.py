"""Arguments that moved: a configuration written for an earlier version fails with one line that
names the new place of its first old key, before any work starts (jsonargparse would say only
"Option 'csv' is not accepted").

A class declares what moved beside its signature, ``moved_arguments = {"old": "new place"}``
(inherited by subclasses); this module reads every ``--config`` file and dotted override given to
``fit``/``validate``/``test``/``evaluate`` and checks each ``class_path`` block's ``init_args``.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Iterator


def moved_arguments(class_path: str) -> dict[str, str]:
    """``{old argument: its new place}`` declared by the class (and its bases); ``{}`` when the
    class cannot be imported (jsonargparse reports that itself)."""
    module, _, name = str(class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return {}
    out: dict[str, str] = {}
    for klass in reversed(getattr(cls, "__mro__", ())):
        out.update(getattr(klass, "moved_arguments", None) or {})
    return out


def _blocks(node: Any, where: str) -> Iterator[tuple[str, dict]]:
    """Every ``class_path`` block under ``node`` with its dotted place."""
    if isinstance(node, dict):
        if "class_path" in node:
            yield where, node
        for key, value in node.items():
            yield from _blocks(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _blocks(value, f"{where}[{i}]")


def _check_block(source: str, where: str, block: dict) -> None:
    moved = moved_arguments(block["class_path"])
    for key in block.get("init_args") or {}:
        if key in moved:
            short = str(block["class_path"]).rsplit(".", 1)[-1]
            raise ValueError(f"{source}: {where}.init_args.{key} ({short}) moved: give {moved[key]} instead")


def check_moved_arguments(args: list[str]) -> None:
    """Raise ``ValueError`` naming the first old argument in the ``--config`` files or overrides of ``args``."""
    import yaml

    configs: list[tuple[str, Any]] = []
    for i, arg in enumerate(args):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else (
            args[i + 1] if arg in ("--config", "-c") and i + 1 < len(args) else None)
        if path is None:
            continue
        try:
            configs.append((path, yaml.safe_load(Path(path).read_text())))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # named by the parser or by errors._unparsable_config
    for source, config in configs:
        for where, block in _blocks(config, ""):
            _check_block(source, where, block)
    # a dotted override of an old argument: --model.init_args.lr=..., --data.init_args.batch_size ...
    merged: dict = {}
    for _, config in configs:
        if isinstance(config, dict):
            merged.update(config)
    for arg in args:
        if not arg.startswith("--") or arg.startswith("--config"):
            continue
        parts = arg[2:].split("=", 1)[0].split(".")
        node = merged.get(parts[0])
        if isinstance(node, dict) and "class_path" in node and len(parts) >= 2:
            key = parts[2] if parts[1] == "init_args" and len(parts) > 2 else parts[1]
            _check_block(f"--{'.'.join(parts)}", parts[0], {"class_path": node["class_path"], "init_args": {key: None}})
