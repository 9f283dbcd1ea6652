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

and ``expand_sources`` turns globs into files and orders a series: by the step stored in the files
(Lightning's ``global_step``), else their epoch (open_clip's ``epoch``), else the number in the
file name, else as given.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from perceptlab.core.hf_clip import is_hf_clip_source, open_clip_state_from_hf, read_hf_clip

VISUAL_FORMAT = "perceptlab-visual-v1"


@dataclass
class ModelSource:
    spec: str  # the path or tag as given
    kind: str  # lightning | visual | open_clip_train | open_clip | hf | tag
    model_name: str | None
    step: int | None = None
    epoch: int | None = None
    has_text: bool = True
    at: int | None = None  # the step the series records it at (``expand_sources``)

    @property
    def name_number(self) -> int | None:
        numbers = re.findall(r"\d+", Path(self.spec).name)
        return int(numbers[-1]) if numbers else None

    @classmethod
    def read(cls, spec: str, model_name: str | None = None) -> "ModelSource":
        """Recognise ``spec`` (see the module docstring); errors name the file and what is missing."""
        path = Path(spec).expanduser()
        if not path.exists():
            import open_clip

            if model_name and spec in open_clip.list_pretrained_tags_by_model(model_name):
                return cls(spec, "tag", model_name)
            raise FileNotFoundError(f"model {spec!r}: no such file or folder, nor an open_clip pretrained tag of "
                                    f"{model_name or '--model_name (not given)'}")
        if path.is_dir() or path.suffix in (".safetensors", ".bin"):
            if not is_hf_clip_source(path):
                raise ValueError(f"model {spec!r}: not a transformers CLIP folder or file")
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


def load_file(path: str | Path, mmap: bool = True) -> Any:
    """``torch.load`` of a weights or checkpoint file on the CPU; a missing file is a
    ``FileNotFoundError`` and a truncated or foreign one a ``ValueError``, each naming the file
    (the one loader of model files, so every command reports them the same way)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            # an old (non-zip) serialisation cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exn:  # noqa: BLE001  named, with the file, before any work starts
        first = str(exn).strip().splitlines()[0] if str(exn).strip() else ""
        raise ValueError(f"{path}: not a readable model file ({type(exn).__name__}: {first})") from exn



def expand_sources(specs: list[str], model_name: str | None = None) -> list[ModelSource]:
    """Read every model of ``specs`` (globs expanded), in trajectory order (see the module docstring)."""
    expanded: list[str] = []
    for spec in specs:
        if glob.has_magic(os.path.expanduser(spec)):
            matches = sorted(glob.glob(os.path.expanduser(spec)))
            if not matches:
                raise FileNotFoundError(f"model pattern {spec!r} matches no file")
            expanded += matches
        else:
            expanded.append(spec)
    sources = [ModelSource.read(s, model_name) for s in dict.fromkeys(expanded)]
    for key in ("step", "epoch", "name_number"):
        if all(getattr(s, key) is not None for s in sources):
            sources = sorted(sources, key=lambda s: getattr(s, key))
            for s in sources:
                s.at = int(getattr(s, key))
            return sources
    for i, s in enumerate(sources):  # nothing orders them all: as given, at 0, 1, 2, ...
        s.at = i
    return sources
