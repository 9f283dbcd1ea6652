"""``ImageTextDataModule``: image-text pairs of any format for contrastive pretraining."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

from torch.utils.data import Dataset, IterableDataset

from perceptlab.core.transforms import uint8_transform
from perceptlab.datamodules.base import BackboneDataModule
from perceptlab.datamodules.image_text.common import mocov2_transform
from perceptlab.datamodules.image_text.source import PairSource
from perceptlab.datamodules.image_text.zeroshot import (
    ZeroShotImages,
    _classnames,
    _templates,
    _zeroshot_collate,
)
from perceptlab.datamodules.labelled_images import FORMATS as LABELLED_FORMATS
from perceptlab.datamodules.labelled_images import read_labelled_images
from perceptlab.datamodules.loader import Loader

log = logging.getLogger(__name__)

AUGMENTATIONS = ("clip", "mocov2", "none")
ZEROSHOT_FORMATS = LABELLED_FORMATS  # an image folder or an HF data set



class ImageTextDataModule(BackboneDataModule):
    """Image-text pairs (webdataset, CSV, HF or litdata) for contrastive pretraining; see the module docstring.

    Args:
        pairs: where the image-text pairs come from, one reader object per format, chosen once:
            ``WebDatasetSource`` (``image_text.wds_pairs``), ``CsvSource`` (``csv_pairs``),
            ``HFSource`` (``hf_pairs``) or ``LitdataSource`` (``litdata_pairs``), each with its
            ``train`` and ``val`` data and its format's settings (``None``: no pairs, e.g. a
            validation of the zero-shot set alone).
        loader: batch sizes, loader processes and pinning (:class:`perceptlab.datamodules.loader.
            Loader`): ``batch_size`` is the pairs per training step and per device (the contrastive
            batch of one rank; with the module's ``accum_freq`` it is split into micro-batches);
            decoding, augmentation and tokenisation run in the ``num_workers`` processes.
        model_name: open_clip architecture for transform and tokenizer when no model is attached.
        augmentation: ``clip``, ``mocov2`` or ``none`` (training only; validation uses the eval
            transform).
        shuffle: shuffle training pairs (sampler for CSV/HF; shard order and buffer for webdataset).
        seed: base seed of the shuffles (default: the run's seed, else 0).
        zeroshot_data: image folder (``ROOT/<class>/*``) or HF dataset for zero-shot accuracy.
        zeroshot_format: ``imagefolder`` or ``hf``.
        zeroshot_split, zeroshot_image_key, zeroshot_label_key: HF zero-shot split and columns
            (a ``ClassLabel``, whose names are the class names, or class-name strings).
        zeroshot_templates: prompts, ``{}`` is replaced by the class name; the class embedding is
            the normalised mean over templates (open_clip's classifier builder). Also the names
            ``simple_imagenet`` (open_clip's 7 prompts, the default) or ``openai_imagenet`` (CLIP's 80).
        zeroshot_classnames: class names in label order, overriding the folder names / ClassLabel
            names (an ImageNet folder is named by WordNet ids); ``imagenet`` = open_clip's 1000
            ImageNet class names.
        uint8_images: loader workers stop at ``uint8`` image tensors (after the PIL steps: decode,
            crop, resize, flip, colour jitter) and the model's backbone converts and normalises them
            on its device, with the same numbers as ``ToTensor`` + ``Normalize`` and a quarter of
            the bytes through the loader, pinned memory and the host-to-device copy. ``false``:
            normalised float32 batches.
    """

    #: Arguments of earlier versions and where they went (``perceptlab.commands.moved``).
    moved_arguments = {
        **{k: f"pairs: {{class_path: perceptlab.datamodules.image_text.<format>.<Format>Source, init_args: {{{v}}}}}"
           for k, v in {"format": "one class per format: WebDatasetSource (wds_pairs), CsvSource (csv_pairs), "
                                  "HFSource (hf_pairs) or LitdataSource (litdata_pairs)",
                        "train_data": "train: ...", "val_data": "val: ...",
                        "samples_per_epoch": "samples_per_epoch: ... (WebDatasetSource, HFSource)",
                        "resampled": "resampled: ... (WebDatasetSource)",
                        "shuffle_buffer": "shuffle_buffer: ... (WebDatasetSource, HFSource)",
                        "csv_image_key": "image_key: ... (CsvSource)", "csv_caption_key": "caption_key: ... (CsvSource)",
                        "csv_separator": "separator: ... (CsvSource)", "image_root": "image_root: ... (CsvSource)",
                        "hf_image_key": "image_key: ... (HFSource)", "hf_caption_key": "caption_key: ... (HFSource)",
                        "hf_split": "split: ... (HFSource)", "hf_val_split": "val_split: ... (HFSource)",
                        "hf_streaming": "streaming: ... (HFSource)", "hf_cache_dir": "cache_dir: ... (HFSource)",
                        "litdata_image_key": "image_key: ... (LitdataSource)",
                        "litdata_caption_key": "caption_key: ... (LitdataSource)"}.items()},
    }

    def __init__(
        self,
        pairs: PairSource | None = None,
        loader: Loader = Loader(batch_size=256, num_workers=4),
        model_name: str | None = None,
        augmentation: str = "clip",
        shuffle: bool = True,
        seed: int | None = None,
        zeroshot_data: str | None = None,
        zeroshot_format: str = "imagefolder",
        zeroshot_split: str = "test",
        zeroshot_image_key: str = "image",
        zeroshot_label_key: str = "label",
        zeroshot_templates: list[str] | str | None = None,
        zeroshot_classnames: list[str] | str | None = None,
        uint8_images: bool = True,
    ) -> None:
        super().__init__(model_name)
        if pairs is not None and not isinstance(pairs, PairSource):
            raise TypeError(f"ImageTextDataModule.pairs must be a PairSource (WebDatasetSource, CsvSource, HFSource, "
                            f"LitdataSource), got {type(pairs).__name__}")
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augmentation!r}; expected one of {', '.join(AUGMENTATIONS)}")
        if zeroshot_format not in ZEROSHOT_FORMATS:
            raise ValueError(f"unknown zeroshot_format {zeroshot_format!r}; expected one of {', '.join(ZEROSHOT_FORMATS)}")
        # model_name stays out of hparams: Lightning refuses a data module and a model whose
        # hparams share a key with different values; the reader object is kept as itself (a
        # checkpoint written by the CLI stores its configuration).
        self.save_loader_hyperparameters(loader, ignore=("pairs",))
        self.pairs = pairs
        self.zeroshot_templates: list[str] = _templates(zeroshot_templates)
        self._classnames_override = _classnames(zeroshot_classnames)
        self.zeroshot_classnames: list[str] | None = None
        self.train_set: Dataset | IterableDataset | None = None
        self.val_set: Dataset | IterableDataset | None = None
        self.zeroshot_set: Dataset | None = None
        self._processing: tuple[Callable, Callable, Callable] | None = None

    # ----------------------------------------------------------------------------- helpers
    def seed(self) -> int:
        """The shuffles' seed: ``seed``, else the run's."""
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
            if self.pairs is None or self.pairs.train is None:
                raise ValueError("ImageTextDataModule: pairs.train is required for fitting")
            self.train_set = self.pairs.train_set(self, train_tf, tokenizer, rank, world)
        if stage in (None, "fit", "validate"):
            if self.pairs is not None and self.pairs.val is not None and self.val_set is None:
                self.val_set = self.pairs.val_set(self, eval_tf, tokenizer, rank, world)
            if hp.zeroshot_data is not None and self.zeroshot_set is None:
                self.zeroshot_set = self._build_zeroshot(eval_tf)

    def epoch_batches(self, samples: int, world: int) -> int:
        """Batches per loader process per epoch of a stream (open_clip's arithmetic: every process equal)."""
        workers = max(1, self.loader.num_workers)
        global_batch = self.loader.batch_size * world
        batches = max(1, math.ceil(samples / global_batch))
        return max(1, math.ceil(batches / workers))

    def _build_zeroshot(self, transform) -> ZeroShotImages:
        hp = self.hparams
        found = read_labelled_images(hp.zeroshot_data, hp.zeroshot_format, hp.zeroshot_split, hp.zeroshot_image_key,
                                     hp.zeroshot_label_key, cache_dir=getattr(self.pairs, "cache_dir", None))
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

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.pairs is not None:
            state.update(self.pairs.state_dict())
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if self.pairs is not None:
            self.pairs.load_state_dict(state_dict)

    # -------------------------------------------------------------------------- loaders
    def train_dataloader(self):
        if self.train_set is None:
            self.setup("fit")
        return self.pairs.train_loader(self, self.train_set, self.processing()[2])

    def val_dataloader(self):
        if self.val_set is None and self.zeroshot_set is None:
            self.setup("validate")
        loaders = []
        if self.val_set is not None:
            loaders.append(self.pairs.val_loader(self, self.val_set, self.processing()[2]))
        if self.zeroshot_set is not None:
            loaders.append(self.eval_loader(self.zeroshot_set, collate_fn=_zeroshot_collate, persistent_workers=False))
        return loaders
