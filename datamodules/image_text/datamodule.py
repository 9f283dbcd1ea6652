"""``ImageTextDataModule``: image-text pairs of any format for contrastive pretraining."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from perceptlab.core.transforms import uint8_transform
from perceptlab.datamodules.base import BackboneDataModule
from perceptlab.datamodules.image_text.common import MapPairCollate, mocov2_transform
from perceptlab.datamodules.image_text.csv_pairs import CsvPairs
from perceptlab.datamodules.image_text.hf_pairs import HFPairs, HFStreamPairs, load_hf
from perceptlab.datamodules.image_text.wds_pairs import (
    RESUMES_NAME,
    WebDatasetPairs,
    resume_redraw_estimate,
    _is_remote,
    count_samples,
    expand_shards,
)
from perceptlab.datamodules.image_text.zeroshot import (
    ZeroShotImages,
    _classnames,
    _templates,
    _zeroshot_collate,
)
from perceptlab.datamodules.labelled_images import FORMATS as LABELLED_FORMATS
from perceptlab.datamodules.labelled_images import read_labelled_images

log = logging.getLogger(__name__)

FORMATS = ("webdataset", "csv", "hf", "litdata")
AUGMENTATIONS = ("clip", "mocov2", "none")
ZEROSHOT_FORMATS = LABELLED_FORMATS  # an image folder or an HF data set



class ImageTextDataModule(BackboneDataModule):
    """Image-text pairs (webdataset, CSV, HF or litdata) for contrastive pretraining; see the module docstring.

    Args:
        format: ``webdataset``, ``csv``, ``hf`` or ``litdata``.
        train_data: shard pattern(s), CSV path, HF id/path, or litdata folder of the training pairs.
        val_data: the same for held-out pairs (validation loss and retrieval); ``None`` = none.
        batch_size: pairs per training step and per device (the contrastive batch of one rank;
            with the module's ``accum_freq`` it is split into micro-batches).
        val_batch_size: pairs per validation batch (default ``batch_size``).
        num_workers: loader processes per device; decoding, augmentation and tokenisation run there.
        model_name: open_clip architecture for transform and tokenizer when no model is attached.
        augmentation: ``clip``, ``mocov2`` or ``none`` (training only; validation uses the eval
            transform).
        samples_per_epoch: pairs per epoch over all ranks for webdataset and streaming HF
            (default for webdataset: counted from the shards, see :func:`count_samples`).
        resampled: webdataset: draw shards with replacement in every process (multi-node).
        shuffle: shuffle training pairs (sampler for CSV/HF; shard order and buffer for webdataset).
        shuffle_buffer: webdataset/streaming sample-shuffle buffer, in pairs.
        seed: base seed of the webdataset/stream shuffles (default: the run's seed, else 0).
        csv_image_key, csv_caption_key, csv_separator: CSV columns and separator (open_clip's
            defaults ``filepath``, ``title``, TAB).
        image_root: base folder of relative CSV image paths (default: the CSV's folder).
        hf_image_key, hf_caption_key: HF columns.
        litdata_image_key, litdata_caption_key: the litdata items' image field (encoded bytes, a
            PIL image or a path) and caption field.
        hf_split, hf_val_split: HF splits of ``train_data`` / ``val_data`` (ignored for parquet
            files, which are one split).
        hf_streaming: stream the HF dataset instead of downloading/memory-mapping it.
        hf_cache_dir: where ``datasets`` keeps its Arrow cache (default ``HF_DATASETS_CACHE``).
        zeroshot_data: image folder (``ROOT/<class>/*``) or HF dataset for zero-shot accuracy.
        zeroshot_format: ``imagefolder`` or ``hf``.
        zeroshot_split, zeroshot_image_key, zeroshot_label_key: HF zero-shot split and columns
            (the label column must be a ``ClassLabel``: its names are the class names).
        zeroshot_templates: prompts, ``{}`` is replaced by the class name; the class embedding is
            the normalised mean over templates (open_clip's classifier builder). Also the names
            ``simple_imagenet`` (open_clip's 7 prompts, the default) or ``openai_imagenet`` (CLIP's 80).
        zeroshot_classnames: class names in label order, overriding the folder names / ClassLabel
            names (an ImageNet folder is named by WordNet ids); ``imagenet`` = open_clip's 1000
            ImageNet class names.
        pin_memory: pin batches for faster host-to-GPU copies (on when CUDA is available).
        uint8_images: loader workers stop at ``uint8`` image tensors (after the PIL steps: decode,
            crop, resize, flip, colour jitter) and the model's backbone converts and normalises them
            on its device, with the same numbers as ``ToTensor`` + ``Normalize`` and a quarter of
            the bytes through the loader, pinned memory and the host-to-device copy. ``false``:
            normalised float32 batches.
    """

    def __init__(
        self,
        format: str = "webdataset",
        train_data: str | list[str] | None = None,
        val_data: str | list[str] | None = None,
        batch_size: int = 256,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        model_name: str | None = None,
        augmentation: str = "clip",
        samples_per_epoch: int | None = None,
        resampled: bool = False,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        seed: int | None = None,
        csv_image_key: str = "filepath",
        csv_caption_key: str = "title",
        csv_separator: str = "\t",
        image_root: str | None = None,
        hf_image_key: str = "image",
        hf_caption_key: str = "caption",
        hf_split: str = "train",
        hf_val_split: str = "validation",
        litdata_image_key: str = "image",
        litdata_caption_key: str = "caption",
        hf_streaming: bool = False,
        hf_cache_dir: str | None = None,
        zeroshot_data: str | None = None,
        zeroshot_format: str = "imagefolder",
        zeroshot_split: str = "test",
        zeroshot_image_key: str = "image",
        zeroshot_label_key: str = "label",
        zeroshot_templates: list[str] | str | None = None,
        zeroshot_classnames: list[str] | str | None = None,
        pin_memory: bool | None = None,
        uint8_images: bool = True,
    ) -> None:
        super().__init__(model_name)
        if format not in FORMATS:
            raise ValueError(f"unknown image-text format {format!r}; expected one of {', '.join(FORMATS)}")
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augmentation!r}; expected one of {', '.join(AUGMENTATIONS)}")
        if zeroshot_format not in ZEROSHOT_FORMATS:
            raise ValueError(f"unknown zeroshot_format {zeroshot_format!r}; expected one of {', '.join(ZEROSHOT_FORMATS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        # model_name stays out of hparams: Lightning refuses a data module and a model whose
        # hparams share a key with different values.
        self.save_hyperparameters(ignore=["model_name"])
        self.format = format
        self.zeroshot_templates: list[str] = _templates(zeroshot_templates)
        self._classnames_override = _classnames(zeroshot_classnames)
        self.zeroshot_classnames: list[str] | None = None
        self.train_set: Dataset | IterableDataset | None = None
        self.val_set: Dataset | IterableDataset | None = None
        self.zeroshot_set: Dataset | None = None
        self._processing: tuple[Callable, Callable, Callable] | None = None
        self._litdata_loader = None
        self._resume_litdata_epoch = 0

    # ----------------------------------------------------------------------------- helpers
    def _seed(self) -> int:
        return self.run_seed() if self.hparams.seed is None else int(self.hparams.seed)

    def processing(self) -> tuple[Callable, Callable, Callable]:
        """(train transform, eval transform, tokenizer): the attached backbone's, or ``model_name``'s."""
        if self._processing is not None:
            return self._processing
        aug = self.hparams.augmentation
        uint8 = bool(self.hparams.get("uint8_images", True))
        pp = self.preprocessing(tokenizer=True, uint8=uint8)
        eval_tf, clip_train_tf, tokenizer = pp.eval, pp.train, pp.tokenizer
        size, mean, std = pp.size, pp.mean, pp.std
        if aug == "clip":
            train_tf = clip_train_tf
        elif aug == "mocov2":
            train_tf = mocov2_transform(int(size), mean, std)
            if uint8:
                train_tf = uint8_transform(train_tf)
        else:
            train_tf = eval_tf
        self._processing = (train_tf, eval_tf, tokenizer)
        return self._processing

    # ------------------------------------------------------------------------------ set-up
    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        train_tf, eval_tf, tokenizer = self.processing()
        rank, world = self.rank_world()
        if stage in (None, "fit") and self.train_set is None:
            if hp.train_data is None:
                raise ValueError("ImageTextDataModule: train_data is required for fitting")
            self.train_set = self._build_train(train_tf, tokenizer, rank, world)
        if stage in (None, "fit", "validate"):
            if hp.val_data is not None and self.val_set is None:
                self.val_set = self._build_val(eval_tf, tokenizer, rank, world)
            if hp.zeroshot_data is not None and self.zeroshot_set is None:
                self.zeroshot_set = self._build_zeroshot(eval_tf)

    def _epoch_batches(self, samples: int, world: int) -> int:
        """Batches per loader process per epoch (open_clip's arithmetic: every process equal)."""
        workers = max(1, self.hparams.num_workers)
        global_batch = self.hparams.batch_size * world
        batches = max(1, math.ceil(samples / global_batch))
        return max(1, math.ceil(batches / workers))

    def _build_train(self, transform, tokenizer, rank: int, world: int):
        hp = self.hparams
        if hp.format == "webdataset":
            urls = expand_shards(hp.train_data)
            samples = hp.samples_per_epoch or count_samples(urls)
            stream = WebDatasetPairs(
                urls, transform, tokenizer, hp.batch_size, self._epoch_batches(samples, world), rank=rank,
                world_size=world, resampled=hp.resampled, shuffle=hp.shuffle, shuffle_buffer=hp.shuffle_buffer,
                seed=self._seed(),
            )
            stream.num_workers = max(1, hp.num_workers)
            if not hp.resampled and len(urls) < world * max(1, hp.num_workers):
                log.info("%d shards for %d loader processes: splitting by sample (every process reads every shard)",
                         len(urls), world * max(1, hp.num_workers))
            return stream
        if hp.format == "csv":
            return CsvPairs(hp.train_data, transform, hp.csv_image_key, hp.csv_caption_key, hp.csv_separator, hp.image_root)
        if hp.format == "litdata":
            from perceptlab.datamodules.image_text.litdata_pairs import LitdataPairs  # litdata takes 2 s to import

            return LitdataPairs(hp.train_data, transform, hp.litdata_image_key, hp.litdata_caption_key,
                                shuffle=hp.shuffle, seed=self._seed(), drop_last=True)
        dataset = load_hf(str(hp.train_data), hp.hf_split, streaming=hp.hf_streaming, cache_dir=hp.hf_cache_dir)
        if hp.hf_streaming:
            if not hp.samples_per_epoch:
                raise ValueError("hf_streaming=True needs samples_per_epoch (a stream has no length)")
            from datasets.distributed import split_dataset_by_node

            if hp.shuffle:
                dataset = dataset.shuffle(seed=self._seed(), buffer_size=hp.shuffle_buffer)
            dataset = split_dataset_by_node(dataset, rank=rank, world_size=world)
            stream = HFStreamPairs(dataset, transform, tokenizer, hp.batch_size,
                                   self._epoch_batches(hp.samples_per_epoch, world), hp.hf_image_key,
                                   hp.hf_caption_key, name=str(hp.train_data))
            stream.num_workers = max(1, hp.num_workers)
            return stream
        return HFPairs(dataset, transform, hp.hf_image_key, hp.hf_caption_key, name=str(hp.train_data))

    def _build_val(self, transform, tokenizer, rank: int, world: int):
        hp = self.hparams
        if hp.format == "webdataset":
            urls = expand_shards(hp.val_data)
            stream = WebDatasetPairs(urls, transform, tokenizer, self.val_batch_size, None, rank=rank,
                                     world_size=world, shuffle=False, seed=self._seed(),
                                     num_samples=count_samples(urls) if not any(map(_is_remote, urls)) else None)
            stream.num_workers = max(1, hp.num_workers)
            return stream
        if hp.format == "csv":
            return CsvPairs(hp.val_data, transform, hp.csv_image_key, hp.csv_caption_key, hp.csv_separator, hp.image_root)
        if hp.format == "litdata":
            from perceptlab.datamodules.image_text.litdata_pairs import LitdataItems, LitdataPairs

            return LitdataItems(LitdataPairs(hp.val_data, transform, hp.litdata_image_key, hp.litdata_caption_key,
                                             shuffle=False, drop_last=False))
        dataset = load_hf(str(hp.val_data), hp.hf_val_split, cache_dir=hp.hf_cache_dir)
        return HFPairs(dataset, transform, hp.hf_image_key, hp.hf_caption_key, name=str(hp.val_data))

    def _build_zeroshot(self, transform) -> ZeroShotImages:
        hp = self.hparams
        found = read_labelled_images(hp.zeroshot_data, hp.zeroshot_format, hp.zeroshot_split, hp.zeroshot_image_key,
                                     hp.zeroshot_label_key, cache_dir=hp.hf_cache_dir)
        self.zeroshot_classnames = self._override_classnames([n.replace("_", " ") for n in found.classes])
        return ZeroShotImages(found, transform)

    def _override_classnames(self, found: list[str]) -> list[str]:
        if self._classnames_override is None:
            return found
        if len(self._classnames_override) != len(found):
            raise ValueError(
                f"zeroshot_classnames has {len(self._classnames_override)} names but {self.hparams.zeroshot_data} "
                f"has {len(found)} classes"
            )
        return list(self._classnames_override)

    @property
    def val_batch_size(self) -> int:
        return int(self.hparams.val_batch_size or self.hparams.batch_size)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self._litdata_loader is not None:  # litdata counts its epochs itself (its shuffle's seed)
            state["litdata_epoch"] = int(self._litdata_loader.current_epoch)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._resume_litdata_epoch = int(state_dict.get("litdata_epoch", 0))

    # -------------------------------------------------------------------------- loaders
    def _pin(self) -> bool:
        return torch.cuda.is_available() if self.hparams.pin_memory is None else bool(self.hparams.pin_memory)

    def train_dataloader(self):
        hp = self.hparams
        if self.train_set is None:
            self.setup("fit")
        _, _, tokenizer = self.processing()
        workers = hp.num_workers
        if isinstance(self.train_set, (WebDatasetPairs, HFStreamPairs)):
            trainer = self.trainer
            self.train_set.start_epoch = int(trainer.current_epoch) if trainer is not None else 0
            if isinstance(self.train_set, WebDatasetPairs):
                self._place_stream(self.train_set, trainer)
            # Persistent workers keep their copy of the stream, so each counts its own epochs.
            return DataLoader(self.train_set, batch_size=None, num_workers=workers, pin_memory=self._pin(),
                              persistent_workers=workers > 0)
        if hp.format == "litdata":
            from perceptlab.datamodules.image_text.litdata_pairs import ResumableStreamingLoader

            rank, world = self.rank_world()
            built = self.train_set.distributed_env
            if (built.global_rank, built.world_size) != (rank, world):
                # built before the process group existed (a setup call outside the trainer): litdata
                # fixes rank and world at construction (from the environment until then), so build
                # it again for this process
                self.train_set = self._build_train(self.processing()[0], tokenizer, rank, world)

            # litdata splits the items over ranks and workers itself and reshuffles each epoch;
            # Lightning stores this loader's state_dict, so a resumed run continues mid-epoch exactly.
            self._litdata_loader = ResumableStreamingLoader(
                self.train_set, batch_size=hp.batch_size, num_workers=workers, drop_last=True,
                collate_fn=MapPairCollate(tokenizer), pin_memory=self._pin())
            self._litdata_loader.current_epoch = self._resume_litdata_epoch  # litdata's count of finished epochs
            return self._litdata_loader
        # Our own sampler (``datamodules.sampling``), so that `shuffle` holds under DDP too (Lightning's
        # injected one always shuffles training data) and the order follows the run's seed and epoch.
        return self.train_loader(self.train_set, hp.batch_size, workers, self._pin(), shuffle=hp.shuffle,
                                 drop_last=True, seed=self._seed(), collate_fn=MapPairCollate(tokenizer), even_shards=True)

    def _place_stream(self, stream: WebDatasetPairs, trainer) -> None:
        """Where a (resumed) webdataset run's stream starts: the epoch of the next batch from the
        global step (one batch a step), and, resumed inside an epoch, a redraw of that epoch's
        rest seeded by the step (``wds_pairs``: approximate), written to the run's ``RESUMES_NAME``."""
        step = int(trainer.global_step) if trainer is not None else 0
        per_epoch = len(stream)
        limit = getattr(trainer, "limit_train_batches", None)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            per_epoch = min(per_epoch, limit)
        elif isinstance(limit, float) and 0 < limit < 1:
            per_epoch = max(1, int(per_epoch * limit))
        stream.start_epoch, read = divmod(step, per_epoch)
        stream.resume_step = step if read else 0  # at an epoch boundary the next epoch is the uninterrupted one's
        if not read:
            return
        rank, world = self.rank_world()
        samples = (self.hparams.samples_per_epoch or count_samples(stream.urls)) // max(1, world)
        estimate = resume_redraw_estimate(samples, self.hparams.batch_size, read, per_epoch)
        log.warning("webdataset resumed inside epoch %d after %d of its %d batches: the rest is redrawn, "
                    "about %.0f samples repeated and %.0f skipped in this epoch (per rank)", stream.start_epoch,
                    read, per_epoch, estimate["repeated"], estimate["skipped"])
        run_dir = getattr(getattr(trainer, "logger", None), "log_dir", None)
        if run_dir and rank == 0:
            import json
            from pathlib import Path

            with open(Path(run_dir) / RESUMES_NAME, "a") as f:
                f.write(json.dumps({"format": "webdataset", "step": step, "epoch": stream.start_epoch,
                                    "batches_read": read, "epoch_batches": per_epoch, "batch_size": self.hparams.batch_size,
                                    "samples_per_rank": samples, "expected": estimate}) + "\n")

    def val_dataloader(self):
        if self.val_set is None and self.zeroshot_set is None:
            self.setup("validate")
        _, _, tokenizer = self.processing()
        workers = self.hparams.num_workers
        loaders = []
        if self.val_set is not None:
            if isinstance(self.val_set, WebDatasetPairs):
                loaders.append(DataLoader(self.val_set, batch_size=None, num_workers=workers, pin_memory=self._pin()))
            else:
                loaders.append(self.eval_loader(self.val_set, self.val_batch_size, workers, self._pin(),
                                                collate_fn=MapPairCollate(tokenizer), persistent_workers=False))
        if self.zeroshot_set is not None:
            loaders.append(self.eval_loader(self.zeroshot_set, self.val_batch_size, workers, self._pin(),
                                            collate_fn=_zeroshot_collate, persistent_workers=False))
        return loaders
