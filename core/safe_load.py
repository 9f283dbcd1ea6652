"""Reading files that may come from strangers: model files and pickled split files are data.

A ``.pt``/``.pth``/``.ckpt``/``.bin`` file is a pickle, and unpickling can run any code the file
names. Researchers score checkpoints they downloaded (PerceptCLIP's releases, CLIP checkpoints from
other people's runs), so every model file perceptlab opens goes through :func:`load_file`, which
reads it with ``torch.load(weights_only=True)``: tensors, numbers, strings and plain containers,
nothing else (every checkpoint perceptlab writes is only that, Lightning's included, so no extra
``torch.serialization.add_safe_globals`` is needed). A file that needs more is refused with
:class:`UnsafeFileError`, naming the file and the global it tried to load. ``.safetensors`` files
(only tensors and a string header) are read by safetensors.

The opt-in, **only for files you made yourself**: ``perceptlab --trust_model_files <command> ...``
or ``PERCEPTLAB_TRUST_MODEL_FILES=1`` reads model files the old way (``weights_only=False``),
and lets a litdata dataset whose items are pickled be read.

pyiqa's split files (``{index: {"train": [rows], ...}}``) are pickles too; :func:`load_plain_pickle`
admits only Python's plain containers and numbers (and numpy's numeric arrays and scalars).
"""
from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

#: Set to 1 (or give ``perceptlab --trust_model_files``) to read model files that run code when opened.
TRUST_ENV = "PERCEPTLAB_TRUST_MODEL_FILES"
TRUST_FLAG = "--trust_model_files"
_TRUST_HINT = (f"if you made this file yourself, {TRUST_FLAG} (or {TRUST_ENV}=1) reads it anyway; "
               "never for a file from someone else")


class UnsafeFileError(ValueError):
    """A file that would run code when read; refused (a user error: exit 2, one line)."""


def trusted() -> bool:
    """Whether the user opted in to reading model files that can run code (``TRUST_ENV``)."""
    return os.environ.get(TRUST_ENV, "") not in ("", "0")


def _refused(path: Path, exn: BaseException) -> UnsafeFileError:
    found = re.search(r"GLOBAL ([\w.]+)", str(exn))
    what = found.group(1) if found else " ".join(str(exn).split())[:120]
    return UnsafeFileError(f"{path}: refused: reading it would run code (it loads {what}, not only tensors "
                           f"and numbers); {_TRUST_HINT}")


def read_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file; its string metadata (``model_name``, ...) beside them
    as ``{"state_dict": tensors, **metadata}`` when it has any, so a header reads like a checkpoint's."""
    from safetensors import safe_open
    from safetensors.torch import load_file as load_tensors

    path = Path(path)
    try:
        tensors = load_tensors(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except Exception as exn:  # noqa: BLE001  named, with the file, before any work starts
        raise ValueError(f"{path}: not a readable safetensors file ({type(exn).__name__}: "
                         f"{' '.join(str(exn).split())[:200]})") from exn
    metadata.pop("format", None)  # transformers' {"format": "pt"}: says nothing about the model
    return {"state_dict": tensors, **metadata} if metadata else tensors


def load_file(path: str | os.PathLike, mmap: bool = True) -> Any:
    """A weights or checkpoint file on the CPU, read as data (see the module docstring); a missing
    file is a ``FileNotFoundError``, a file that would run code an :class:`UnsafeFileError`, a
    truncated or foreign one a ``ValueError``, each naming the file (the one loader of model files,
    so every command reports them the same way)."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    weights_only = not trusted()
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            # an old (non-zip) serialisation cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exn:
        if weights_only and re.search(r"GLOBAL [\w.]+", str(exn)):
            raise _refused(path, exn) from None
        if weights_only and "Weights only load failed" in str(exn):  # not a pickle at all (a page, text)
            raise ValueError(f"{path}: not a readable model file (neither a torch file nor a pickle)") from None
        raise ValueError(f"{path}: not a readable model file (UnpicklingError: {_first_line(exn)})") from exn
    except Exception as exn:  # noqa: BLE001  named, with the file, before any work starts
        raise ValueError(f"{path}: not a readable model file ({type(exn).__name__}: {_first_line(exn)})") from exn


def _first_line(exn: BaseException) -> str:
    text = str(exn).strip()
    return text.splitlines()[0] if text else ""


# ----------------------------------------------------------------------------- plain pickles
#: What a plain pickle may name besides the containers pickle writes without naming a class:
#: sets (protocols < 4 name them), numpy's numeric arrays and scalars, and ``_codecs.encode``,
#: which protocols < 3 use to write ``bytes`` from Python 3 (a text-to-bytes conversion; torch's
#: ``weights_only`` unpickler allows it too). Everything that an array holds goes through
#: ``find_class`` again, so an object array cannot smuggle a class in.
_PLAIN_GLOBALS = {
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("_codecs", "encode"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"),
    *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")


def load_plain_pickle(path: str | os.PathLike, encoding: str = "ASCII") -> Any:
    """A pickle of plain containers, numbers and numpy arrays (pyiqa's split files, CIFAR's python
    batches: ``encoding="bytes"`` for their Python 2 strings); one naming anything else (a class, a
    function: code that would run) is refused with :class:`UnsafeFileError`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pickle file not found: {path}")
    data = path.read_bytes()
    try:
        return _PlainUnpickler(io.BytesIO(data), encoding=encoding).load()
    except pickle.UnpicklingError as exn:
        if str(exn).startswith("GLOBAL "):
            raise UnsafeFileError(f"{path}: refused: reading it would run code (it loads {str(exn)[7:]}); "
                                  "a split file holds only containers and numbers") from None
        raise ValueError(f"{path}: not a readable pickle ({_first_line(exn)})") from exn
    except Exception as exn:  # noqa: BLE001  truncated, empty, foreign
        raise ValueError(f"{path}: not a readable pickle ({type(exn).__name__}: {_first_line(exn)})") from exn
