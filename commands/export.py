"""``perceptlab export``: a model trained here, as open_clip or Hugging Face ``transformers`` weights.

    perceptlab export runs/pretrain_pi/version_0/checkpoints/last.ckpt --to open_clip --out model.pt
    perceptlab export runs/pretrain_pi/version_0/checkpoints/last.ckpt --to hf --out clip-hf/

``open_clip``: a plain state dict that open_clip loads strictly,
``open_clip.create_model_and_transforms(NAME, pretrained="model.pt")`` (NAME: the architecture
the command prints; perceptlab's own small ones are registered by ``import perceptlab.core.transforms``).
``hf``: a ``save_pretrained`` folder, ``transformers.CLIPModel.from_pretrained("clip-hf/")``
(open_clip ViT towers with CLIP's text transformer). Any stage's checkpoint works; LoRA adapters
are merged, and a vision-only checkpoint gets a randomly initialised text tower (said on the
console).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal


def export(source: str, to: Literal["open_clip", "hf"], out: str, model_name: str | None = None) -> Path:
    """Write a checkpoint's model as open_clip or Hugging Face weights; returns the path written.

    Args:
        source: a Lightning checkpoint of any stage, a visual.pt or an open_clip state dict.
        to: open_clip (a state dict file) or hf (a transformers CLIPModel folder).
        out: open_clip: the .pt file to write; hf: the folder to write.
        model_name: the architecture, where the file does not record it.
    """
    import open_clip
    import torch

    from perceptlab.core.backbone import open_clip_model_from_checkpoint
    from perceptlab.core.hf_clip import hf_config_from_open_clip, hf_state_from_open_clip

    if to not in ("open_clip", "hf"):
        raise ValueError(f"--to must be open_clip or hf, got {to!r}")
    name, model = open_clip_model_from_checkpoint(source, model_name)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out_path = Path(out).expanduser()
    if to == "open_clip":
        out_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, out_path)
    else:
        from transformers import CLIPModel

        hf = CLIPModel(hf_config_from_open_clip(open_clip.get_model_config(name)))
        hf.load_state_dict(hf_state_from_open_clip(state), strict=True)
        hf.save_pretrained(out_path)
    print(f"{source} ({name}) -> {out_path} [{to}]")
    return out_path


def main(argv: list[str] | None = None) -> Path:
    from perceptlab.commands.cli import run_function

    return run_function(export, argv, prog="perceptlab export", positional=("source",))
