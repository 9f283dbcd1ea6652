"""Image transforms of open_clip models, built without the model.

``preprocess_cfg_for`` follows open_clip's factory to a model's ``PreprocessCfg`` (what the data
modules need before any backbone exists); ``uint8_transform`` cuts a transform at its PIL steps so
that loader workers send ``uint8`` tensors and the backbone normalises them on its device
(:meth:`perceptlab.core.backbone.CLIPBackbone.prepare_images`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
from torchvision import transforms as T

#: This project's small architectures (``perceptlab-vit-tiny-64``, ...), registered with open_clip.
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)


def register_model_config(name: str, config: dict) -> str:
    """Register an open_clip model config under ``name`` (for this process) and return the name.

    open_clip's public way is a JSON file in a folder given to ``add_model_config``; the file goes
    to a fresh temporary folder, so nothing is written into the project or the user's cache.
    """
    import json
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="perceptlab-model-config-"))
    (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return name


def preprocess_cfg_for(model_name: str, pretrained: str | None = None, image_size: int | None = None):
    """open_clip's ``PreprocessCfg`` for a model, without building the model.

    Follows open_clip's factory order: defaults, the model config's ``preprocess_cfg``, the
    pretrained tag's mean/std (a tag, not a local file), the tower's input size, then
    ``image_size`` if given. The datamodules use it to build transforms before a backbone exists.
    """
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"unknown model_name {model_name!r}: not an open_clip architecture nor a perceptlab config")
    pp: dict[str, Any] = merge_preprocess_dict(PreprocessCfg(), cfg.get("preprocess_cfg", {}))
    if pretrained and not Path(str(pretrained)).expanduser().exists():
        pp = merge_preprocess_dict(pp, open_clip.get_pretrained_cfg(model_name, pretrained))
    pp["size"] = image_size or cfg.get("vision_cfg", {}).get("image_size", pp["size"])
    return PreprocessCfg(**pp)


def uint8_transform(transform: T.Compose) -> T.Compose:
    """``transform`` up to its PIL steps (resize, crop, ...), then a ``uint8`` tensor ``(3, H, W)``.

    Drops the float conversion and the normalisation, which :meth:`CLIPBackbone.encode_image`
    then applies on the model's device (``prepare_images``): loader workers do less work and send
    a quarter of the bytes (between processes and to the GPU). The result is the same numbers as
    the full transform (the same float ops in the same order).
    """
    steps, to_tensor_seen = [], False
    for t in transform.transforms:
        if type(t).__name__.endswith("ToTensor"):
            to_tensor_seen = True
        elif isinstance(t, T.Normalize):
            continue
        elif to_tensor_seen:  # a float-tensor step (e.g. RandomErasing) cannot run on uint8
            raise ValueError(f"uint8_transform: {t!r} runs on float tensors after ToTensor; use float batches "
                             "(uint8_images: false) with this transform")
        else:
            steps.append(t)
    return T.Compose([*steps, T.PILToTensor()])


def point_frame(transform: T.Compose, width: int, height: int):
    """Where a pixel of a ``width`` x ``height`` image lands after ``transform``'s geometric steps
    (open_clip's eval transform: ``Resize`` -- the shorter side, or both sides for a pair -- then
    ``CenterCrop``): a function ``(xs, ys) -> (xs, ys, kept)``, integer coordinates in the output
    frame and which points fall inside it. The arithmetic is torchvision's (``resize`` sizes the
    longer side as ``int(size * long / short)``; ``center_crop`` offsets by
    ``int(round((in - out) / 2))``); a pixel goes to the output pixel that holds its centre.
    Random or padding steps are refused by name, so fixations are never placed wrong silently."""
    import numpy as np

    w, h = float(width), float(height)
    new_w, new_h, left, top, out_w, out_h = width, height, 0, 0, width, height
    for t in transform.transforms:
        if isinstance(t, T.Resize):
            size = t.size if isinstance(t.size, (list, tuple)) else [t.size]
            if len(size) == 2:
                new_h, new_w = int(size[0]), int(size[1])
            else:
                short, long = (new_w, new_h) if new_w <= new_h else (new_h, new_w)
                s, l = int(size[0]), int(int(size[0]) * long / short)
                new_w, new_h = (s, l) if new_w <= new_h else (l, s)
            out_w, out_h = new_w, new_h
        elif isinstance(t, T.CenterCrop):
            out_h, out_w = (t.size if len(t.size) == 2 else (t.size[0], t.size[0]))
            top, left = int(round((new_h - out_h) / 2)), int(round((new_w - out_w) / 2))
        elif isinstance(t, (T.RandomResizedCrop, T.RandomCrop, T.Pad, T.RandomHorizontalFlip, T.RandomAffine)):
            raise ValueError(f"point_frame: {t!r} moves pixels (at random, or by padding); use the eval transform")
        # every other step (mode conversion, to-tensor, normalisation) keeps pixels where they are

    def frame(xs, ys):
        x = np.floor((np.asarray(xs, dtype=np.float64) + 0.5) * new_w / w).astype(np.int64) - left
        y = np.floor((np.asarray(ys, dtype=np.float64) + 0.5) * new_h / h).astype(np.int64) - top
        kept = (x >= 0) & (x < out_w) & (y >= 0) & (y < out_h)
        return x, y, kept

    return frame
