"""The zero-shot classification set of stage 2's validation: images, class names, prompt templates."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from perceptlab.datamodules.image_text.common import decode_image

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------- zero-shot set
class ZeroShotImages(Dataset):
    """Labelled images for zero-shot classification: ``(image tensor, class index)``.

    ``rows`` is any sequence of ``(image, label)`` (paths, bytes or PIL images); an HF dataset is
    read row by row through ``image_key`` / ``label_key``, so its images are decoded lazily.
    """

    def __init__(self, rows, transform, image_key: str | None = None, label_key: str | None = None) -> None:
        self.rows, self.transform = rows, transform
        self.image_key, self.label_key = image_key, label_key

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.rows[index]
        image, label = (row[self.image_key], row[self.label_key]) if self.image_key else row
        return self.transform(decode_image(image)), int(label)


def _zeroshot_collate(items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    return {"image": torch.stack([i[0] for i in items]), "label": torch.tensor([i[1] for i in items])}


def image_folder(root: str | os.PathLike) -> tuple[list[str], list[str], list[int]]:
    """``ROOT/<class>/<image>`` -> (class names, image paths, labels); classes sorted by folder name."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"zero-shot image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"zero-shot image folder {root} has no class sub-folders (expected ROOT/<class>/*.png)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMG_EXTENSIONS:
                paths.append(str(path))
                labels.append(label)
    if not paths:
        raise ValueError(f"zero-shot image folder {root} holds no images")
    return [c.replace("_", " ") for c in classes], paths, labels



def _templates(value: list[str] | str | None) -> list[str]:
    if value is None or value == "simple_imagenet":
        from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

        return [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES]
    if value == "openai_imagenet":
        import open_clip

        return [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    if isinstance(value, str):
        value = [value]
    templates = [str(t) for t in value]
    if not templates:
        raise ValueError("zeroshot_templates is empty")
    for template in templates:
        if "{}" not in template:
            raise ValueError(f"zero-shot template {template!r} has no '{{}}' for the class name")
    return templates


def _classnames(value: list[str] | str | None) -> list[str] | None:
    if value is None:
        return None
    if value == "imagenet":
        import open_clip

        return list(open_clip.IMAGENET_CLASSNAMES)
    if isinstance(value, str):
        raise TypeError(f"zeroshot_classnames must be a list of names or 'imagenet', got {value!r}")
    return [str(v) for v in value]
