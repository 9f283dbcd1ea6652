"""What every perceptlab data module shares: preprocessing from the model, loaders, checks.

* **Preprocessing comes from the model.** Attached to a LightningModule with a ``backbone``
  (:class:`perceptlab.core.backbone.CLIPBackbone`), a data module takes the backbone's own
  transforms and tokenizer, so data and model never disagree on size, normalisation or context
  length; a ``model_name`` or ``image_size`` given to the data module that contradicts the backbone
  is an error naming both. On its own (a notebook, a benchmark) it builds open_clip's transforms and
  tokenizer for ``model_name``.
* **Evaluation loaders never repeat items.** Lightning's default ``DistributedSampler`` pads the
  last shard with repeated items, which counts some judgements twice in a 2AFC, an SRCC or an
  accuracy; :meth:`BackboneDataModule.eval_loader` shards without repeats under DDP (torchmetrics
  and the modules' own gathers handle uneven shards).
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from perceptlab.datamodules.loader import MOVED_LOADER_ARGUMENTS, Loader
from perceptlab.datamodules.sampling import EpochSampler


@dataclass
class Preprocessing:
    """Transforms (and tokenizer) of one model: open_clip's train/eval transforms and their parameters."""

    train: Callable
    eval: Callable
    size: int  # input side, pixels
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    tokenizer: Callable | None = None


class BackboneDataModule(pl.LightningDataModule):
    """Base of the data modules whose transforms follow a CLIP backbone (see the module docstring).

    Args:
        model_name: open_clip architecture for the transforms when no model is attached (an
            attached backbone of another architecture is an error, not silently preferred).
        pretrained: open_clip tag whose mean/std apply when no model is attached.
        image_size: input size when no model is attached (default: the architecture's).
    """

    #: The transform's model keys stay out of a data module's hparams: Lightning refuses to log a
    #: data module and a model whose hparams share a key with different values.
    MODEL_KEYS = ("model_name", "pretrained", "image_size")
    #: A data module's loader arguments of earlier versions went into its ``loader`` group.
    moved_arguments = MOVED_LOADER_ARGUMENTS

    def __init__(self, model_name: str | None = None, pretrained: str | None = None,
                 image_size: int | None = None) -> None:
        super().__init__()
        self.model_name, self.pretrained, self.image_size = model_name, pretrained, image_size
        self._train_sampler: EpochSampler | None = None
        self._resume_epoch = 0  # the epoch of the next training batch, from a resumed checkpoint
        self.loader = Loader()

    def save_loader_hyperparameters(self, loader: Loader | dict, ignore: tuple[str, ...] = ()) -> None:
        """``save_hyperparameters`` of the calling ``__init__`` (without the model keys and
        ``ignore``), with the ``loader`` group kept as ``self.loader`` and stored as plain fields
        (a checkpoint holds data, not a class)."""
        self.save_hyperparameters(ignore=[*self.MODEL_KEYS, "loader", *ignore], frame=inspect.currentframe().f_back)
        self.loader = Loader.of(loader)
        self.hparams["loader"] = self.loader.as_dict()

    # ----------------------------------------------------------------------- the model's side
    def attached_backbone(self):
        """The backbone of the LightningModule this data module is trained with, if any."""
        trainer = self.trainer
        module = trainer.lightning_module if trainer is not None else None
        return getattr(module, "backbone", None)

    def rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def preprocessing(self, train_augment: bool = True, uint8: bool = False, tokenizer: bool = False) -> Preprocessing:
        """The model's preprocessing: the attached backbone's, else open_clip's for ``model_name``.

        ``train_augment=False`` uses the eval transform for training too; ``uint8=True`` stops both
        transforms at ``uint8`` tensors that the backbone normalises on its device
        (:func:`perceptlab.core.transforms.uint8_transform`); ``tokenizer=True`` adds the tokenizer.
        """
        name = type(self).__name__
        backbone = self.attached_backbone()
        if backbone is not None:
            if self.model_name and self.model_name != backbone.model_name:
                raise ValueError(f"{name}.model_name={self.model_name!r} but the model's backbone is "
                                 f"{backbone.model_name!r}: drop data.model_name (the attached model decides) "
                                 "or make them agree")
            if self.image_size and self.image_size != backbone.image_size:
                raise ValueError(f"{name}.image_size={self.image_size} but the model's backbone takes "
                                 f"{backbone.image_size} px: drop data.image_size or make them agree")
            if tokenizer and backbone.tokenizer is None:
                raise ValueError(f"{name}: the attached backbone has no text tower (vision_only=True): "
                                 "it cannot tokenize captions")
            eval_tf = backbone.transform(train=False, uint8=uint8)
            train_tf = backbone.transform(train=True, uint8=uint8) if train_augment else eval_tf
            return Preprocessing(train_tf, eval_tf, backbone.image_size, tuple(backbone.image_mean),
                                 tuple(backbone.image_std), backbone.interpolation,
                                 backbone.tokenizer if tokenizer else None)
        if not self.model_name:
            raise ValueError(f"{name} needs model_name (an open_clip architecture) to build its transform"
                             f"{' and tokenizer' if tokenizer else ''} when it is not attached to a model with a backbone")
        import open_clip
        from open_clip.transform import image_transform_v2

        from perceptlab.core.transforms import preprocess_cfg_for, uint8_transform

        cfg = preprocess_cfg_for(self.model_name, self.pretrained, self.image_size)
        eval_tf = image_transform_v2(cfg, is_train=False)
        train_tf = image_transform_v2(cfg, is_train=True) if train_augment else eval_tf
        if uint8:
            train_tf, eval_tf = uint8_transform(train_tf), uint8_transform(eval_tf)
        size = cfg.size[0] if isinstance(cfg.size, (tuple, list)) else cfg.size
        return Preprocessing(train_tf, eval_tf, int(size), tuple(cfg.mean), tuple(cfg.std), cfg.interpolation,
                             open_clip.get_tokenizer(self.model_name) if tokenizer else None)

    # -------------------------------------------------------------------------------- loaders
    def loader_kwargs(self) -> dict[str, Any]:
        """The ``DataLoader`` arguments of the ``loader`` group besides the batch size."""
        workers = int(self.loader.num_workers)
        return {"num_workers": workers, "pin_memory": self.loader.pinned, "persistent_workers": workers > 0}

    @staticmethod
    def run_seed() -> int:
        """The run's seed (``seed_everything``), 0 when none was set."""
        return int(os.environ.get("PL_GLOBAL_SEED", "0"))

    def train_loader(self, dataset: Dataset, shuffle: bool = True, drop_last: bool = False, seed: int | None = None,
                     collate_fn: Callable | None = None, even_shards: bool = False) -> StatefulDataLoader:
        """The training loader of a map-style ``dataset``: its order from :class:`EpochSampler`
        (``seed`` + epoch; the run's seed by default; one rank's share under DDP, padded with
        repeats unless ``even_shards`` drops the tail), stateful so that Lightning stores the
        position inside an epoch; a resumed run's loader starts at the checkpoint's next epoch."""
        rank, world = self.rank_world()
        batch_size = self._train_batch_size = self.loader.batch_size
        self._train_sampler = EpochSampler(dataset, shuffle=shuffle, seed=self.run_seed() if seed is None else seed,
                                           rank=rank, world_size=world, drop_last=even_shards, epoch=self._resume_epoch)
        return StatefulDataLoader(dataset, batch_size=batch_size, sampler=self._train_sampler, drop_last=drop_last,
                                  collate_fn=collate_fn, **self.loader_kwargs())

    def state_dict(self) -> dict[str, Any]:
        # Lightning restores a loader's position only for a checkpoint written inside an epoch:
        # the epoch of the next batch comes back through the data module (``datamodules.sampling``).
        if self._train_sampler is None:
            return {}
        batches = getattr(self.trainer, "num_training_batches", None) if self.trainer is not None else None
        batches = int(batches) if isinstance(batches, (int, float)) and batches == batches and batches < float("inf") else None
        return {"train_epoch": self._train_sampler.next_epoch(batches, self._train_batch_size)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_epoch = int(state_dict.get("train_epoch", 0))

    def eval_loader(self, dataset: Dataset, collate_fn: Callable | None = None,
                    persistent_workers: bool = True) -> DataLoader:
        """An evaluation loader over a map-style ``dataset`` (batches of ``loader.eval_batch_size``)
        that never repeats an item under DDP."""
        rank, world = self.rank_world()
        sampler = None
        if world > 1:
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        kwargs = self.loader_kwargs()
        kwargs["persistent_workers"] = kwargs["persistent_workers"] and persistent_workers
        # Its own generator for the workers' seed: drawn from the global one, a persistent loader's
        # first iteration would take a training random number at whichever validation came first
        # in this process -- another one after a resume, and the resumed run's dropout would differ.
        return DataLoader(dataset, batch_size=self.loader.eval_size, shuffle=False, sampler=sampler,
                          collate_fn=collate_fn, generator=torch.Generator().manual_seed(0), **kwargs)


def tar_sample_count(path, image_extensions) -> int:
    """Samples in one webdataset tar, from its headers alone (no image is decoded): the keys that
    have an image member, a key being what webdataset's own ``base_plus_ext`` makes of a member
    name (folder and file name up to the first dot). The one sample counter of the project."""
    import tarfile

    from webdataset.tariterators import base_plus_ext

    extensions = {e.lower() for e in image_extensions}
    keys = set()
    size = os.path.getsize(path)
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.offset_data + member.size > size:  # tarfile reads a cut-off member as the end
                    raise tarfile.ReadError(f"member {member.name} ends past the end of the file")
                if not member.isfile():
                    continue
                key, ext = base_plus_ext(member.name)
                if key is not None and ext.lower().rsplit(".", 1)[-1] in extensions:
                    keys.add(key)
            # a tar ends with two zero blocks (POSIX); a copy cut at a block boundary reads as a shorter
            # archive without them
            if size - tar.offset < 1024:
                raise tarfile.ReadError("no end-of-archive blocks")
    except (tarfile.TarError, EOFError) as exn:  # counted before training: a broken shard is named then
        raise ValueError(f"{path}: not a whole tar file ({type(exn).__name__}: {exn}); a truncated copy?") from None
    return len(keys)


def name_some(items, shown: int = 5) -> str:
    """The first ``shown`` items, comma-separated, and how many more (for error messages)."""
    items = [str(i) for i in items]
    more = len(items) - shown
    return ", ".join(items[:shown]) + (f" (and {more} more)" if more > 0 else "")



def _unreadable(path: str | os.PathLike) -> str | None:
    """``None`` when the file exists, PIL identifies it from its header (format, size, within
    PIL's decompression-bomb limit) and, for PNG and JPEG, its end is there; else why not. Header
    and tail only: cheap enough for every file at set-up (damage inside a whole file fails later,
    at decode, with the path named)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - forces the header parse
            kind = im.format
        return _cut_short(path, kind)
    except FileNotFoundError:
        return f"{path} (missing)"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # PIL's failure types
        return f"{path} ({type(err).__name__}: {err})"


#: What the last bytes of a whole file hold: PNG's IEND chunk, JPEG's end-of-image marker (some
#: cameras append data after it, hence a search in the tail rather than an exact ending).
_ENDINGS = {"PNG": b"IEND", "JPEG": b"\xff\xd9"}


def _cut_short(path: str | os.PathLike, kind: str | None) -> str | None:
    """A PNG or JPEG whose end is missing (an interrupted download or copy): found from its last
    kilobyte, without decoding, so the check stays a header read in cost."""
    ending = _ENDINGS.get(kind or "")
    if ending is None:
        return None
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 1024))
        tail = f.read()
    return None if ending in tail else f"{path} (truncated: its {kind} end marker is missing)"


def check_images(paths, what: str, workers: int = 16) -> None:
    """Raise ``ValueError`` naming the images of ``paths`` that are missing or that PIL cannot
    identify (the first few and the count), before any training step: the one set-up check of
    the labelled sets (NIGHTS, the perceptual tasks), where an image left out would change what a
    judgement or a score refers to."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:  # file-system latency bound, not CPU
        bad = [msg for msg in pool.map(_unreadable, sorted({str(p) for p in paths})) if msg]
    if bad:
        raise ValueError(f"{len(bad)} unreadable {what} image(s): {name_some(bad)}")
