"""The loader settings every data module takes, declared once: ``loader`` of ``NightsDataModule``,
the perceptual-task data modules and ``ImageTextDataModule`` (a YAML block
``loader: {batch_size: ..., num_workers: ...}`` overrides fields over the module's defaults)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Loader:
    """How a data module batches and reads its items.

    Args:
        batch_size: items per training batch and per device (triplets for NIGHTS, images for a
            task, pairs for contrastive pretraining: the contrastive batch of one rank).
        eval_batch_size: items per validation/test batch (default ``batch_size``).
        num_workers: loader processes per device; decoding, augmentation (and tokenisation) run there.
        pin_memory: pin batches for faster host-to-GPU copies (only when CUDA is available).
    """

    batch_size: int = 32
    eval_batch_size: int | None = None
    num_workers: int = 4
    pin_memory: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"loader.{name} must be positive, got {value}")
        if int(self.num_workers) < 0:
            raise ValueError(f"loader.num_workers must be >= 0, got {self.num_workers}")

    @classmethod
    def of(cls, value: "Loader | dict") -> "Loader":
        """The group from itself or its fields (a checkpoint's hyper-parameters hold a dict)."""
        return value if isinstance(value, cls) else cls(**dict(value))

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def eval_size(self) -> int:
        """Items per validation/test batch."""
        return int(self.eval_batch_size or self.batch_size)

    @property
    def pinned(self) -> bool:
        """Whether batches are pinned: ``pin_memory`` and CUDA available."""
        return bool(self.pin_memory) and torch.cuda.is_available()


#: Where a data module's loader arguments of earlier versions went (``commands.moved``).
MOVED_LOADER_ARGUMENTS = {
    **{k: f"loader: {{{k}: ...}} (the loader group, datamodules.loader.Loader)"
       for k in ("batch_size", "eval_batch_size", "num_workers", "pin_memory")},
    "val_batch_size": "loader: {eval_batch_size: ...} (the loader group, datamodules.loader.Loader)",
}
