"""The training order of a map-style data set: a permutation fixed by the run's seed and the epoch.

Every map-style training loader of perceptlab (NIGHTS triplets, task images, CSV and Hugging Face
image-text pairs) draws its order from :class:`EpochSampler`, one process or many. Its permutation
is torch's ``DistributedSampler``'s (``randperm`` of a generator seeded with ``seed + epoch``, one
rank's share under DDP), so the order of any epoch is known without replaying the ones before it,
and its iterator is stateful (torchdata's protocol: ``{"epoch", "yielded"}``), so a
``StatefulDataLoader`` stores and restores the position inside an epoch.

Why not the loader's own ``shuffle=True``: that sampler seeds itself from the global generator when
the loader is built and carries its epochs in its generator's state. Lightning restores a loader's
state only for a checkpoint written inside an epoch; resumed from an epoch-end checkpoint, the
loader starts over with a fresh generator and the next epoch reads the first epoch's order again.
Here the data module keeps the epoch of the next batch in its own state (Lightning's public
``LightningDataModule.state_dict``), and the loader it builds on resume starts there.

Written by hand: neither torch, torchdata nor Lightning has a sampler whose epoch survives an
epoch-end resume.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler


class _EpochIterator(Iterator[int]):
    """One epoch's indices; its state is the epoch and how many indices it has handed out."""

    def __init__(self, sampler: "EpochSampler") -> None:
        self.sampler = sampler
        self._start(sampler.epoch, 0)

    def _start(self, epoch: int, yielded: int) -> None:
        self.epoch = int(epoch)
        self.sampler.epoch = self.epoch  # what DistributedSampler.__iter__ seeds with
        self.indices = list(DistributedSampler.__iter__(self.sampler))
        self.yielded = int(yielded)
        self.sampler.current = self

    def __iter__(self) -> "_EpochIterator":
        return self

    def __next__(self) -> int:
        if self.yielded >= len(self.indices):
            raise StopIteration
        self.yielded += 1
        return self.indices[self.yielded - 1]

    @property
    def exhausted(self) -> bool:
        return self.yielded >= len(self.indices)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._start(state["epoch"], state["yielded"])


class EpochSampler(DistributedSampler):
    """``DistributedSampler``'s permutation (seed + epoch; one rank's share) with a stateful
    iterator; ``epoch``: the epoch of the first iterator (a resumed run's next epoch).

    It counts its epochs itself: each new iterator is the epoch after the last one that handed out
    indices (restored or not). Lightning's ``set_epoch`` is ignored -- after a resume from an epoch-end checkpoint of a
    ``max_steps`` run, Lightning passes the epoch index one too high (it counts the restored,
    finished epoch once more)."""

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, epoch: int = 0) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.epoch = int(epoch)
        self.current: _EpochIterator | None = None

    def __iter__(self) -> _EpochIterator:
        # a new iterator after one that handed out indices is the next epoch; one that handed out
        # none (torch's loader iterators build their sampler iterator twice) is replaced
        if self.current is not None and self.current.yielded > 0:
            self.epoch = self.current.epoch + 1
        return _EpochIterator(self)

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the sampler counts its epochs itself (see the class docstring)."""

    def next_epoch(self, batches_done: int | None = None, batch_size: int = 1) -> int:
        """The epoch the next batch belongs to: the current one, or the one after it once its
        indices are all handed out or ``batches_done`` (the epoch's batches, e.g. Lightning's
        ``num_training_batches`` under ``limit_train_batches``) batches of ``batch_size`` are."""
        if self.current is None:
            return self.epoch
        done = self.current.exhausted or (batches_done is not None and self.current.yielded >= batches_done * batch_size)
        return self.current.epoch + 1 if done else self.current.epoch
