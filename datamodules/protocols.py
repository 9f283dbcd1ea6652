"""PerceptCLIP's test protocols: how each released model is scored on its model card.

* ``perceptclip_iqa``: resize to 512x384 (height x width, torchvision's ``Resize((512, 384))``,
  bilinear), 15 random 224-px crops, the head's mean over the crops, mapped to [0, 1] with the
  card's stated prediction range: ``(mean - (-6.52)) / (3.11 - (-6.52))``.
* ``perceptclip_memorability``: resize the shorter side to 224, centre 224-px crop, the raw score.
* ``perceptclip_emotions``: the same crop; the 8 emotions' probabilities.

Every protocol normalises with OpenAI CLIP's mean and std, as the cards do.

Reproducible crops: the card seeds Python's ``random``, which does not fix torchvision's
``RandomCrop`` (it draws from torch's global generator), so its scores change from run to run.
Here each image's crops come from a ``torch.Generator`` seeded by ``(seed, the resized image's
bytes)``: the same image gets the same crops in every run, in any order, batch, worker or rank.
The draws are ``RandomCrop.get_params``' own (top, then left, each ``randint``), so a loop that
seeds torch with :func:`crop_seed` and applies ``RandomCrop`` gives the same crops; written out
here because ``RandomCrop`` takes no generator.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F

from perceptlab.core.images import to_rgb


@dataclass(frozen=True)
class Protocol:
    """A released model's test-time recipe (see the module docstring)."""

    name: str
    task: str  # "regression" or "classification"
    resize: int | tuple[int, int]  # torchvision Resize's size: the shorter side, or (height, width)
    crop: int
    crops: int
    random_crops: bool
    output_range: tuple[float, float] | None = None  # (min, max) prediction mapped to (0, 1)

    def map(self, score: torch.Tensor | float) -> torch.Tensor | float:
        """The card's output mapping of a (crop-averaged) score; identity when there is none."""
        if self.output_range is None:
            return score
        low, high = self.output_range
        return (score - low) / (high - low)

    def transform(self, seed: int = 0) -> "ProtocolTransform":
        return ProtocolTransform(self, seed)


PROTOCOLS: dict[str, Protocol] = {
    p.name: p for p in (
        Protocol("perceptclip_iqa", "regression", (512, 384), 224, 15, True, (-6.52, 3.11)),
        Protocol("perceptclip_memorability", "regression", 224, 224, 1, False),
        Protocol("perceptclip_emotions", "classification", 224, 224, 1, False),
    )
}

# Words in a release's file name that say which task it is (PerceptCLIP's own names:
# perceptCLIP_IQA.pth, perceptCLIP_Memorability.pth, perceptCLIP_Emotions.pth).
_RELEASE_NAMES = (("perceptclip_iqa", ("iqa", "koniq", "quality")),
                  ("perceptclip_memorability", ("memorab", "lamem")),
                  ("perceptclip_emotions", ("emotion", "emoset")))


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)} or none") from None


def release_protocol(path: str | Path, outputs: int) -> Protocol | None:
    """The protocol of a release file, from its name (or 8 outputs: the emotion model); ``None``
    when neither tells."""
    stem = Path(path).name.lower()
    for name, words in _RELEASE_NAMES:
        if any(w in stem for w in words):
            return PROTOCOLS[name]
    return PROTOCOLS["perceptclip_emotions"] if outputs == 8 else None


def crop_seed(resized: Image.Image, seed: int = 0) -> int:
    """The seed of one image's crops: ``seed`` and the resized image's pixels, hashed."""
    digest = hashlib.blake2b(resized.tobytes(), digest_size=7, key=int(seed).to_bytes(8, "little", signed=True))
    return int.from_bytes(digest.digest(), "little")


class ProtocolTransform:
    """PIL image -> ``(3, crop, crop)``, or ``(crops, 3, crop, crop)`` for a multi-crop protocol."""

    def __init__(self, protocol: Protocol, seed: int = 0) -> None:
        self.protocol, self.seed = protocol, int(seed)
        self.resize = T.Resize(protocol.resize)  # bilinear with antialiasing, as the cards' default
        self.to_tensor = T.Compose([T.ToTensor(), T.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        p = self.protocol
        resized = self.resize(to_rgb(image))
        if not p.random_crops:
            views = [F.center_crop(resized, [p.crop, p.crop])] * p.crops
        else:
            width, height = resized.size
            if height < p.crop or width < p.crop:
                raise ValueError(f"{p.name}: a {p.crop}-px crop does not fit the resized {width}x{height} image")
            g = torch.Generator().manual_seed(crop_seed(resized, self.seed))
            views = []
            for _ in range(p.crops):
                top = int(torch.randint(0, height - p.crop + 1, size=(1,), generator=g))
                left = int(torch.randint(0, width - p.crop + 1, size=(1,), generator=g))
                views.append(F.crop(resized, top, left, p.crop, p.crop))
        tensors = [self.to_tensor(v) for v in views]
        return tensors[0] if p.crops == 1 else torch.stack(tensors)
