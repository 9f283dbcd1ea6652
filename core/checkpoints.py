"""What a model file is: any checkpoint the field writes, read as open_clip CLIP weights.

``ModelSource.read(spec)`` recognises

* a perceptlab Lightning checkpoint of any stage (``state_dict`` with ``backbone.model.*`` keys,
  ``hyper_parameters.model_name``, ``global_step``, ``epoch``);
* a ``visual.pt`` (``CLIPBackbone.save_visual``: the vision tower and its architecture name);
* an ``open_clip_train`` checkpoint (``epoch_N.pt``: ``epoch``, ``state_dict`` with ``module.``
  prefixes under DDP) or a plain open_clip state dict;
* a transformers CLIP folder or file (``core.hf_clip``);
* an open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``, with ``model_name``), loaded by
  open_clip itself (its cache or the network).

:func:`open_clip_model_from_checkpoint` builds the open_clip model any of them holds, and
:func:`place_series` turns globs into files and places every model at the training step it
knows (see there): a series is the run users made, so the step of a file is never guessed from
its neighbours.

The file names a run writes that are not steps of their own live here too (the one owner of them):
the moving aliases of some step (``last.ckpt``, open_clip_train's ``epoch_latest.pt``, the
suite's ``alignment-peak.ckpt``) and the exports written when ``fit`` ends (stage 2's
``checkpoints/open_clip_model.pt``, stage 1's ``visual.pt``), whose step is the run's last one,
read from ``fit_end.json`` (written by ``perceptlab fit`` when training returns normally).
"""
from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from perceptlab.core.backbone import CLIPBackbone
from perceptlab.core.hf_clip import is_hf_clip_source, open_clip_state_from_hf, read_hf_clip
from perceptlab.core.safe_load import load_file

log = logging.getLogger(__name__)

VISUAL_FORMAT = "perceptlab-visual-v1"

PEAK_CHECKPOINT_NAME = "alignment-peak.ckpt"
#: Checkpoint names that are moving aliases of some step, not a step of their own.
ALIAS_CHECKPOINTS = ("last.ckpt", "epoch_latest.pt", PEAK_CHECKPOINT_NAME)
VISUAL_FILENAME = "visual.pt"  # stage 1's vision tower, in the run directory
OPEN_CLIP_FILENAME = "open_clip_model.pt"  # stage 2's open_clip weights, in checkpoints/
#: Files written when ``fit`` ends, at the run's last step.
END_OF_FIT_FILES = (VISUAL_FILENAME, OPEN_CLIP_FILENAME)
#: Written by ``perceptlab fit`` when training ends normally (not on a crash or a pre-emption):
#: ``{"step", "epoch"}``; ``perceptlab evaluate --watch`` knows then that no checkpoint follows.
FIT_END_NAME = "fit_end.json"


def read_fit_end(run_dir: str | os.PathLike) -> dict | None:
    """The training's end marker, or ``None`` while it runs (or if it ended abnormally)."""
    import json

    try:
        return json.loads((Path(run_dir) / FIT_END_NAME).read_text())
    except (OSError, ValueError):
        return None


def end_of_fit_run(path: str | os.PathLike) -> Path | None:
    """The run directory of an end-of-fit export (``RUN/visual.pt``, ``RUN/checkpoints/open_clip_model.pt``)."""
    path = Path(path)
    if path.name == VISUAL_FILENAME:
        return path.parent
    if path.name == OPEN_CLIP_FILENAME:
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return None


class SeriesOrderError(ValueError):
    """A series mixes models whose training step is known with models whose step is not."""


@dataclass
class ModelSource:
    spec: str  # the path or tag as given
    kind: str  # lightning | visual | open_clip_train | open_clip | hf | tag
    model_name: str | None
    step: int | None = None
    epoch: int | None = None
    has_text: bool = True
    at: int | None = None  # the step the series records it at (``place_series``)
    end_of_fit: bool = False  # an export written when fit ended: its step is the run's last (``fit_end.json``)

    @property
    def alias(self) -> bool:
        """A moving alias of some step, or an end-of-fit export: the same weights as a step's checkpoint."""
        name = Path(self.spec).name
        return name in ALIAS_CHECKPOINTS or self.end_of_fit

    @property
    def name_number(self) -> int | None:
        numbers = re.findall(r"\d+", Path(self.spec).name)
        return int(numbers[-1]) if numbers else None

    @classmethod
    def read(cls, spec: str, model_name: str | None = None) -> "ModelSource":
        """Recognise ``spec`` (see the module docstring); errors name the file and what is missing.
        An end-of-fit export gets its run's last step and epoch when the run has ended."""
        source = cls._read(spec, model_name)
        run = end_of_fit_run(spec) if source.kind in ("visual", "open_clip") else None
        if run is not None:
            source.end_of_fit = True
            end = read_fit_end(run)
            if end is not None:
                source.step, source.epoch = int(end["step"]), int(end["epoch"])
        return source

    @classmethod
    def _read(cls, spec: str, model_name: str | None = None) -> "ModelSource":
        path = Path(spec).expanduser()
        if not path.exists():
            import open_clip

            if model_name and spec in open_clip.list_pretrained_tags_by_model(model_name):
                return cls(spec, "tag", model_name)
            raise FileNotFoundError(f"model {spec!r}: no such file or folder, nor an open_clip pretrained tag of "
                                    f"{model_name or '--model_name (not given)'}")
        if path.is_dir():
            if not is_hf_clip_source(path):
                raise ValueError(f"model {spec!r}: not a transformers CLIP folder")
            converted = open_clip_state_from_hf(read_hf_clip(path)[1])
            return cls(spec, "hf", model_name, has_text=any(k.startswith("token_embedding") for k in converted))
        raw = load_file(path)
        if not isinstance(raw, dict):
            raise ValueError(f"model {spec!r}: not a checkpoint (a {type(raw).__name__})")
        state = raw.get("state_dict") if isinstance(raw.get("state_dict"), dict) else raw
        if "hyper_parameters" in raw or "pytorch-lightning_version" in raw:
            name = model_name or (raw.get("hyper_parameters") or {}).get("model_name")
            keys = [k for k in state if k.startswith("backbone.model.")]
            if not keys:
                raise ValueError(f"model {spec!r}: a Lightning checkpoint without a perceptlab backbone "
                                 "(no backbone.model.* weights)")
            return cls(spec, "lightning", name, int(raw.get("global_step", 0)), int(raw.get("epoch", 0)),
                       has_text=any(not k.startswith("backbone.model.visual.") for k in keys if k != "backbone.model.logit_scale"))
        if raw.get("format") == VISUAL_FORMAT:
            return cls(spec, "visual", model_name or raw.get("model_name"), has_text=False)
        keys = [k.removeprefix("module.") for k in state if isinstance(state[k], torch.Tensor)]
        if is_hf_clip_source(state):
            return cls(spec, "hf", model_name, has_text=any("token_embedding" in k for k in keys))
        if not any(k.startswith("visual.") for k in keys):
            raise ValueError(f"model {spec!r}: no CLIP weights found (visual.* keys)")
        kind = "open_clip_train" if "epoch" in raw and "state_dict" in raw else "open_clip"
        epoch = int(raw["epoch"]) if kind == "open_clip_train" else None
        model_name = model_name or (raw.get("model_name") if isinstance(raw.get("model_name"), str) else None)
        return cls(spec, kind, model_name, epoch=epoch, has_text="token_embedding.weight" in keys)

    def open_clip_state(self) -> dict[str, torch.Tensor]:
        """The weights in open_clip's keys (``visual.*``, the text tower, ``logit_scale``); LoRA
        adapters of a Lightning checkpoint stay as they are (``CLIPBackbone.load_visual`` merges them)."""
        if self.kind == "hf":
            return open_clip_state_from_hf(read_hf_clip(self.spec)[1])
        raw = load_file(self.spec)
        state = raw.get("state_dict") if isinstance(raw.get("state_dict"), dict) else raw
        if self.kind == "lightning":
            return {k[len("backbone.model."):]: v for k, v in state.items() if k.startswith("backbone.model.")}
        return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def expand_specs(specs: list[str]) -> tuple[list[str], list[str]]:
    """(files in the order given, globs expanded; aliases a glob matched, left out): a glob stands
    for a series of steps, so the moving aliases it matches (``last.ckpt``, ...) are not points of
    it; an alias named on its own is measured."""
    expanded: list[str] = []
    aliases: list[str] = []
    for spec in specs:
        if glob.has_magic(os.path.expanduser(spec)):
            matches = sorted(glob.glob(os.path.expanduser(spec)))
            if not matches:
                raise FileNotFoundError(f"model pattern {spec!r} matches no file")
            aliases += [m for m in matches if Path(m).name in ALIAS_CHECKPOINTS]
            expanded += [m for m in matches if Path(m).name not in ALIAS_CHECKPOINTS]
        else:
            expanded.append(spec)
    return list(dict.fromkeys(expanded)), aliases


def place_series(sources: list[ModelSource], steps_per_epoch: int | None = None,
                 taken: dict[int, str] | None = None) -> tuple[list[ModelSource], list[str]]:
    """Place every model at the training step it knows, in step order; returns (the models to
    measure, notes for the user).

    A Lightning checkpoint knows its ``global_step``; an end-of-fit export its run's last step;
    an ``open_clip_train`` checkpoint its epoch, which is a step with ``steps_per_epoch``. A model
    whose step is known is never moved by one whose step is not: a series mixing them raises
    :class:`SeriesOrderError` naming the unplaced files. A series where no step is known is placed
    by epoch (every file an open_clip_train checkpoint), else by the number in the file names,
    else as given (0, 1, 2, ...), and the note says so. An alias (or end-of-fit export) at a step
    another file of the series holds, or ``taken`` (steps already measured: step -> model), is the
    same weights and is not measured again.
    """
    for s in sources:
        s.at = s.step
        if s.at is None and s.epoch is not None and s.kind == "open_clip_train" and steps_per_epoch:
            s.at = s.epoch * int(steps_per_epoch)
    notes: list[str] = []
    known = [s for s in sources if s.at is not None]
    if known and len(known) < len(sources):
        unplaced = [s.spec for s in sources if s.at is None]
        epochs = any(s.kind == "open_clip_train" for s in sources if s.at is None)
        raise SeriesOrderError(
            f"{len(unplaced)} model(s) have no training step while the others have one: {', '.join(unplaced)}; "
            + ("give --steps_per_epoch N to place open_clip_train epochs at steps, " if epochs else "")
            + "or evaluate them as a series of their own")
    if not known:
        if sources and all(s.kind == "open_clip_train" and s.epoch is not None for s in sources):
            rule, key = "by epoch (open_clip_train checkpoints; --steps_per_epoch N places them at steps)", "epoch"
        elif sources and all(s.name_number is not None for s in sources) and len(sources) > 1:
            rule, key = "by the number in the file names (the files record no training step)", "name_number"
        else:
            rule, key = "as given, at 0, 1, 2, ... (the files record no training step)", None
        for i, s in enumerate(sources):
            s.at = int(getattr(s, key)) if key else i
        if len(sources) > 1 or key is None:
            notes.append(f"series placed {rule}")
    ordered = sorted(sources, key=lambda s: (s.at, s.alias))  # a step's own checkpoint before its aliases
    held = dict(taken or {})
    kept = []
    for s in ordered:
        if s.at in held and s.alias:
            notes.append(f"{s.spec} is step {s.at}, measured as {held[s.at]}: not measured again")
            continue
        held.setdefault(s.at, s.spec)
        kept.append(s)
    return kept, notes


def expand_sources(specs: list[str], model_name: str | None = None, steps_per_epoch: int | None = None,
                   taken: dict[int, str] | None = None) -> tuple[list[ModelSource], list[str]]:
    """Read every model of ``specs`` (globs expanded) and place it (:func:`place_series`);
    returns (the models in step order, notes for the user)."""
    files, aliases = expand_specs(specs)
    notes = [f"{', '.join(Path(a).name for a in aliases)}: an alias of some step, left out of the series "
             "(name it on its own to measure it)"] if aliases else []
    sources, placed = place_series([ModelSource.read(s, model_name) for s in files], steps_per_epoch, taken)
    return sources, notes + placed


def open_clip_model_from_checkpoint(source: str | os.PathLike, model_name: str | None = None) -> tuple[str, torch.nn.Module]:
    """The open_clip CLIP model held by any perceptlab file: ``(architecture name, model)``.

    ``source`` is a Lightning checkpoint of any stage (keys ``backbone.model.*``; LoRA adapters
    are merged), a ``visual.pt``, or an open_clip state dict. ``model_name`` defaults to the one
    the file records (the checkpoint's hyper-parameters, ``visual.pt``'s header). A file without a
    text tower (stage 1, the perceptual tasks) gives a model whose text tower is open_clip's
    random initialisation under seed 0 (logged): a vision-only checkpoint has nothing better.
    """
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    raw = load_file(path, mmap=False)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a checkpoint or state dict (a {type(raw).__name__})")
    recorded = (raw.get("hyper_parameters") or {}).get("model_name") or raw.get("model_name")
    model_name = model_name or recorded
    if not model_name:
        raise ValueError(f"{path} does not record its architecture: give --model_name (e.g. ViT-B-32)")
    state = raw.get("state_dict", raw)
    prefix = "backbone.model." if any(k.startswith("backbone.model.") for k in state) else ""
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and isinstance(v, torch.Tensor)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = CLIPBackbone(model_name)
    report = backbone.load_visual({f"visual.{k[len('visual.'):]}": v for k, v in state.items() if k.startswith("visual.")},
                                  strict=False)
    if report.missing:
        raise ValueError(f"{path}: the vision tower lacks {', '.join(report.missing[:5])}: not a {model_name} checkpoint?")
    model = backbone.model
    rest = {k: v for k, v in state.items() if not k.startswith("visual.")}
    if "logit_scale" in rest:  # stage 2 keeps it as shape (1,); open_clip as a scalar
        rest["logit_scale"] = rest["logit_scale"].reshape(model.logit_scale.shape)
    text_keys = [k for k in model.state_dict() if not k.startswith("visual.")]
    if any(k in rest for k in text_keys if k != "logit_scale"):
        absent = [k for k in text_keys if k not in rest]
        if absent:
            raise ValueError(f"{path}: text tower incomplete, lacks {', '.join(absent[:5])}")
        model.load_state_dict({k: v for k, v in rest.items() if k in text_keys}, strict=False)
    else:
        log.info("%s holds no text tower: the exported text tower is open_clip's random initialisation (seed 0)", path)
    return model_name, model
