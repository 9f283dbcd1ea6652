"""``perceptlab export``: a model trained here, as open_clip or Hugging Face ``transformers`` weights.

    perceptlab export runs/pretrain_pi/version_0/checkpoints/last.ckpt --to open_clip --out model.safetensors
    perceptlab export runs/pretrain_pi/version_0/checkpoints/last.ckpt --to hf --out clip-hf/

``open_clip``: a state dict that open_clip loads strictly,
``open_clip.create_model_and_transforms(NAME, pretrained="model.safetensors")`` (NAME: the
architecture the command prints and the file's metadata records as ``model_name``; perceptlab's own
small ones are registered by ``import perceptlab.core.transforms``). The file is safetensors (only
tensors: opening it runs no code) unless ``--out`` ends in ``.pt``/``.pth``/``.bin``, which gets
``torch.save``'s format (still only tensors, readable with ``weights_only=True``).
``hf``: a ``save_pretrained`` folder, ``transformers.CLIPModel.from_pretrained("clip-hf/")``
(open_clip ViT towers with CLIP's text transformer). Any stage's checkpoint works; LoRA adapters
are merged, and a vision-only checkpoint gets a randomly initialised text tower (said on the
console).

An existing ``--out`` is never replaced unless ``--overwrite`` is given, and the new file (or
folder) appears whole or not at all: it is written beside the target and renamed into place.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

#: ``--out`` suffixes that get ``torch.save``'s format; any other name gets safetensors.
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def export(source: str, to: Literal["open_clip", "hf"], out: str, model_name: str | None = None,
           overwrite: bool = False) -> Path:
    """Write a checkpoint's model as open_clip or Hugging Face weights; returns the path written.

    Args:
        source: a Lightning checkpoint of any stage, a visual.pt or an open_clip state dict (.pt or .safetensors).
        to: open_clip (a weights file) or hf (a transformers CLIPModel folder).
        out: open_clip: the file to write (.safetensors; .pt for torch.save's format); hf: the folder to write.
        model_name: the architecture, where the file does not record it.
        overwrite: replace an existing --out.
    """
    import shutil

    import open_clip
    import torch

    from perceptlab.core.checkpoints import open_clip_model_from_checkpoint
    from perceptlab.core.hf_clip import hf_config_from_open_clip, hf_state_from_open_clip

    if to not in ("open_clip", "hf"):
        raise ValueError(f"--to must be open_clip or hf, got {to!r}")
    out_path = Path(out).expanduser()
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists: give --overwrite to replace it, or another --out")
    name, model = open_clip_model_from_checkpoint(source, model_name)
    # clones: safetensors refuses tensors that share memory (a tied weight), and the file holds its own
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.partial")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    if to == "open_clip":
        if out_path.suffix in TORCH_SUFFIXES:
            torch.save(state, tmp)
        else:
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={"model_name": name, "format": "pt"})
    else:
        from transformers import CLIPModel

        hf = CLIPModel(hf_config_from_open_clip(open_clip.get_model_config(name)))
        hf.load_state_dict(hf_state_from_open_clip(state), strict=True)
        hf.save_pretrained(tmp)
    if out_path.is_dir() and not out_path.is_symlink():
        shutil.rmtree(out_path)  # --overwrite of a folder: os.replace cannot replace a non-empty one
    os.replace(tmp, out_path)
    print(f"{source} ({name}) -> {out_path} [{to}]")
    return out_path


def main(argv: list[str] | None = None) -> Path:
    from perceptlab.commands.cli import run_function

    return run_function(export, argv, prog="perceptlab export", positional=("source",))
