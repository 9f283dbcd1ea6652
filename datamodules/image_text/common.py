"""What the image-text readers share: image decoding, caption cleaning, skip counting, batching,
the map-style base that replaces an unreadable row by the next one."""
from __future__ import annotations

import abc
import io
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info
from torchvision import transforms as T

from perceptlab.core.images import to_rgb

log = logging.getLogger(__name__)

#: Image and caption members of a webdataset sample, in order of preference.
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEYS = ("txt",)
# A map-style row that fails is replaced by the next one; this many failures in a row is a broken set.
_MAX_REPLACEMENTS = 64


# ----------------------------------------------------------------------- transforms, tokens
def _to_rgb(image: Image.Image) -> Image.Image:
    return to_rgb(image)


def mocov2_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """MoCo v2's augmentation (He et al. 2020; Chen et al. 2020), normalised for the model."""
    kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)  # ~10% of the side, odd, as MoCo's 23 px at 224
    return T.Compose([
        _to_rgb,
        T.RandomResizedCrop(image_size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


# ----------------------------------------------------------------------------- skip counting
class SkipCounter:
    """Counts samples a loader process drops, and says so in the log without flooding it.

    Used as a webdataset error handler (``handler(exn) -> True`` = skip and continue) and directly
    (``skip(reason)``). ``take()`` returns the count since the previous ``take`` and resets it.
    The first few skips are logged with their reason, later ones at powers of two.
    """

    def __init__(self, where: str = "") -> None:
        self.where = where
        self.total = 0
        self._pending = 0

    def skip(self, reason: str) -> None:
        self.total += 1
        self._pending += 1
        if self.total <= 3 or (self.total & (self.total - 1)) == 0:
            log.warning("image-text loader%s skipped a sample (%s); %d skipped so far in this process",
                        f" ({self.where})" if self.where else "", reason, self.total)

    def handler(self, exn: BaseException) -> bool:
        self.skip(f"{type(exn).__name__}: {exn}"[:300])
        return True

    def take(self) -> int:
        n, self._pending = self._pending, 0
        return n


def decode_image(value: Any, root: Path | None = None) -> Image.Image:
    """A fully loaded RGB PIL image from bytes, a ``datasets`` image dict, a PIL image or a path."""
    if isinstance(value, dict):  # datasets' undecoded Image: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, Image.Image):
        image = value
    elif isinstance(value, (str, os.PathLike)):
        path = Path(value)
        image = Image.open(path if path.is_absolute() or root is None else root / path)
    else:
        raise TypeError(f"cannot read an image from {type(value).__name__}")
    return to_rgb(image)  # forces the full decode, so a truncated file fails here


def clean_caption(value: Any) -> str:
    """The caption as a stripped string; ``ValueError`` if there is none."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError("missing caption")
    text = str(value).strip()
    if not text:
        raise ValueError("empty caption")
    return text


class PairBatcher:
    """Stacks transformed images and tokenises their captions into a batch dict; ``index`` (when
    given) is each pair's position in the evaluation set, whatever process or worker read it."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        self.tokenizer = tokenizer

    def __call__(self, images: list[torch.Tensor], captions: list[str], skipped: int,
                 indices: list[int] | None = None) -> dict[str, torch.Tensor]:
        batch = {
            "image": torch.stack(images),
            "text": self.tokenizer(captions),
            "skipped": torch.tensor(skipped, dtype=torch.long),
        }
        if indices is not None:
            batch["index"] = torch.tensor(indices, dtype=torch.long)
        return batch


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)



# ------------------------------------------------------------------------------ map-style sets
class MapPairs(Dataset, abc.ABC):
    """Base for map-style pairs: an unreadable row is replaced by the next readable one."""

    name = "pairs"

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of rows."""

    @abc.abstractmethod
    def _raw(self, index: int) -> tuple[Any, Any]:
        """Row ``index`` as (image value, caption value), undecoded."""

    def _root(self) -> Path | None:
        return None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, int, int]:
        """``(image, caption, unreadable rows skipped, index)``."""
        return first_readable(lambda i, _attempt: self._raw(i), index, len(self), self.transform, self.name,
                              self._root())


def first_readable(raw: Callable[[int, int], tuple[Any, Any]], index: int, n: int, transform: Callable,
                   name: str, root: Path | None = None, what: str = "row") -> tuple[torch.Tensor, str, int, int]:
    """``(image, caption, failures, index)``: item ``index`` decoded and transformed or, when it
    cannot be read, the next readable one (``raw(i, attempt)`` gives item ``i``'s undecoded image
    and caption); the rule every map-style reader shares."""
    failures = 0
    for attempt in range(_MAX_REPLACEMENTS):
        i = (index + attempt) % n
        try:
            image, caption = raw(i, attempt)
            caption = clean_caption(caption)
            return transform(decode_image(image, root)), caption, failures, index
        except Exception as exn:  # noqa: BLE001  counted (the batch carries it to data/skipped), replaced
            failures += 1
            if failures <= 3:
                log.warning("%s: skipped %s %d (%s: %s)", name, what, i, type(exn).__name__, str(exn)[:200])
    raise RuntimeError(f"{name}: {_MAX_REPLACEMENTS} {what}s in a row from {what} {index} are unreadable")



class MapPairCollate:
    """Collates ``(image, caption, failures, index)`` items into the batch dict, tokenising in the worker."""

    def __init__(self, tokenizer) -> None:
        self.batcher = PairBatcher(tokenizer)

    def __call__(self, items: list[tuple[torch.Tensor, str, int, int]]) -> dict[str, torch.Tensor]:
        return self.batcher([i[0] for i in items], [i[1] for i in items], sum(i[2] for i in items),
                            [i[3] for i in items])
