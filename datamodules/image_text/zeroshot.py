"""The zero-shot classification set of stage 2's validation: images, class names, prompt templates."""
from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from perceptlab.datamodules.image_text.common import decode_image
from perceptlab.datamodules.labelled_images import LabelledImages

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------- zero-shot set
class ZeroShotImages(Dataset):
    """Labelled images for zero-shot classification, ``(image tensor, class index)``, from the one
    labelled-image reader (``datamodules.labelled_images``: an image folder or an HF data set,
    whose images are decoded lazily, row by row)."""

    def __init__(self, images: LabelledImages, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        found = self.images
        image = found.paths[index] if found.paths is not None else found.dataset[index][found.image_column]
        return self.transform(decode_image(image)), int(found.labels[index])


def _zeroshot_collate(items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    return {"image": torch.stack([i[0] for i in items]), "label": torch.tensor([i[1] for i in items])}


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
