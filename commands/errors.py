"""How a user's mistake becomes one line: which exceptions are mistakes (a path, key, value or file
the command cannot use), and their message made short and specific (the file of a YAML that does
not parse, the deepest reason of a nested configuration error, the file torch refused to unpickle).
``perceptlab`` prints it as ``perceptlab <command>: error: <line>`` and exits with status 2.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

#: Exceptions that mean the user asked for something that cannot be done (a path, key or value).
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError, KeyError,
               ValueError)



def user_errors() -> tuple[type[BaseException], ...]:
    """Every exception ``perceptlab`` reports as a mistake (imports Lightning: called on failure only)."""
    from argparse import ArgumentError

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return USER_ERRORS + (pickle.UnpicklingError, MisconfigurationException, ArgumentError)


def error_line(exc: BaseException, args: list[str]) -> str:
    """The one line for ``exc``, raised by a command given ``args``."""
    from perceptlab.core.safe_load import TRUST_FLAG

    if isinstance(exc, pickle.UnpicklingError):  # a file torch refused to unpickle, opened by a library
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        return ("a checkpoint was refused: reading it would run code" + (f" (it loads {found.group(1)})" if found else "")
                + f"; {TRUST_FLAG} reads files you made yourself")
    return _unparsable_config(args) or user_message(exc)


def check_checkpoint_file(ckpt_path) -> None:
    """A ``--ckpt_path`` file is read as data before Lightning opens it: one that would run code is
    refused naming it (torch's own refusal names no file), as is one that is not a checkpoint."""
    if not ckpt_path or str(ckpt_path) in ("last", "best", "hpc", "registry") or "://" in str(ckpt_path):
        return
    from perceptlab.core.safe_load import load_file

    raw = load_file(ckpt_path)
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise ValueError(f"--ckpt_path {ckpt_path}: not a Lightning checkpoint (no state_dict)")


def user_message(exc: BaseException) -> str:
    """One line for a user error, with the fix where we know it."""
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    message = _innermost(str(message))
    message = " ".join(str(message).split())
    if "No supported gpu backend found" in message or "CUDAAccelerator can not run on your system" in message:
        message += " (this machine has no GPU: pass --trainer.accelerator=cpu)"
    return message


def _unparsable_config(args: list[str]) -> str | None:
    """The first ``--config`` file of ``args`` that is not YAML, named with the parser's reason
    (jsonargparse says only "Problems parsing config" and the line)."""
    import yaml

    paths = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    paths += [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")]
    for path in paths:
        try:
            yaml.safe_load(Path(path).read_text())
        except (OSError, UnicodeDecodeError):
            continue
        except yaml.YAMLError as exn:
            mark = getattr(exn, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            return f"{path}: not YAML{where}: {getattr(exn, 'problem', None) or exn}"
    return None


def _innermost(message: str) -> str:
    """A nested configuration error (jsonargparse lists every alternative it tried, indented, and
    the whole value given) as its first line and its deepest reasons: ``Parser key "trainer.callbacks":
    Option 'max_itmes' is not accepted``."""
    lines = [line for line in message.splitlines() if line.strip()]
    if len(lines) < 2:
        return message
    body = []
    for line in lines[1:]:
        if line.strip().lstrip("- ").startswith(("Given value", "Not a valid subclass")):
            break
        body.append(line)
    if not body:
        return lines[0]
    depth = max(len(line) - len(line.lstrip()) for line in body)
    deepest = [line.strip().lstrip("- ") for line in body if len(line) - len(line.lstrip()) == depth]
    given = next((line.strip()[len("Given value:"):].strip() for line in lines if line.strip().startswith("Given value:")), "")
    return f"{lines[0].rstrip(':')}: {'; '.join(deepest)}" + (f" (given: {given})" if given and len(given) <= 80 else "")
