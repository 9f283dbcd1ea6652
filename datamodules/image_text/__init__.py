"""Image-text pairs for contrastive pretraining (stage 2): webdataset shards, CSV/TSV, HF or litdata datasets.

Formats: one reader object each (``ImageTextDataModule(pairs=...)``, ``image_text.source``)
-----------------------------------------------------------------------------------------
``WebDatasetSource`` (``wds_pairs``)
    tar shards as img2dataset writes them (``KEY.jpg`` + ``KEY.txt`` [+ ``KEY.json``]; ``png``,
    ``jpeg`` and ``webp`` images are read too). ``train``/``val`` are brace patterns
    (``/data/yfcc/{00000..01500}.tar``), globs (``/data/yfcc/*.tar``), several patterns joined by
    ``::`` (webdataset's convention), a list of any of these, or remote URLs (``pipe:curl -s ...``,
    ``s3://...``: opened by webdataset, never checked at set-up). A local pattern that matches no
    file raises ``FileNotFoundError`` naming the pattern.
``CsvSource`` (``csv_pairs``)
    open_clip's CSV semantics: one row per pair, an image-path column (``image_key``, default
    ``filepath``) and a caption column (``caption_key``, default ``title``), separator
    ``separator`` (default TAB). Relative paths are resolved against ``image_root``
    (default: the CSV's own folder, where img2dataset and the toy world put the images).
``HFSource`` (``hf_pairs``)
    a ``datasets`` dataset: a hub id (needs ``HF_HUB_OFFLINE=0`` or a filled cache), a local
    ``*.parquet`` file or glob, a ``save_to_disk`` folder or a local folder (parquet files, or an
    ``imagefolder`` with a ``metadata.jsonl``/``csv`` caption column). Columns ``image_key`` (a
    ``datasets.Image``, bytes or a path) and ``caption_key``; ``split`` / ``val_split``;
    ``streaming=True`` reads hub datasets as a stream (then ``samples_per_epoch`` is required).
``LitdataSource`` (``litdata_pairs``, which imports litdata: only when this format is named)
    a litdata-optimised dataset (``litdata.optimize``'s output: ``index.json`` + ``chunk-*.bin``) in
    a local folder; each item a dict with an image field (``image_key``, default ``image``:
    encoded bytes, a PIL image or a path) and a caption field (``caption_key``, default
    ``caption``). Every chunk the index lists is checked at set-up (a missing or truncated one is
    named before training); ranks, workers, the per-epoch shuffle (seeded by ``seed``) and the
    epoch length are litdata's (``StreamingDataset``, ``drop_last``: every rank equal).

Batches
-------
A dict: ``image`` float ``(B, 3, H, W)`` (normalised by the model's mean/std), ``text`` long
``(B, context_length)`` token ids from the model's open_clip tokenizer, ``skipped`` a long scalar:
how many samples the loader process dropped since its previous batch (undecodable image, missing
or empty caption, unreadable tar member). Decoding, augmentation and tokenisation all happen in
the loader workers; the count travels with the batch because a worker's own counters die with it.
The module sums it over steps and ranks into ``data/skipped``. Training batches always hold
exactly ``batch_size`` pairs on every rank (a contrastive loss gathered across ranks needs equal
sizes): a skipped webdataset/stream sample is replaced by the next one, a skipped CSV/HF row by
the next readable row.

Validation loaders (``val_dataloader``, in this order, each only when configured): held-out pairs
(``pairs.val``; loss and retrieval) and a zero-shot classification set (``zeroshot_data``: an image
folder ``ROOT/<class>/*`` or an HF dataset, read by ``datamodules.labelled_images``); zero-shot batches are
``{"image", "label"}``. The class names (``zeroshot_classnames``, folder names with ``_`` read as
spaces) and prompt ``zeroshot_templates`` are attributes the module reads to build open_clip's
zero-shot classifier.

Where the transform and tokenizer come from
-------------------------------------------
Attached to a trainer whose module has a ``backbone`` (a ``CLIPBackbone``, as every perceptlab
stage module has), the data module takes the backbone's own transforms and tokenizer in
``setup``: data and model can never disagree on image size, normalisation or context length.
Used on its own (a benchmark, a notebook), it builds the same ones from ``model_name`` with
open_clip's preprocess configuration and ``open_clip.get_tokenizer``. A ``model_name`` that
contradicts the attached backbone is an error. ``augmentation``: ``clip`` (open_clip's train
transform: random resized crop, scale 0.9-1), ``mocov2`` (MoCo v2: random resized crop scale
0.2-1, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale p 0.2, Gaussian blur p 0.5,
horizontal flip) or ``none`` (the eval transform: resize + centre crop).

Distribution and epochs
-----------------------
CSV/HF (map-style) data are split across ranks by a ``DistributedSampler`` the data module sets
itself (seeded by the run's seed; ``shuffle`` holds, ``drop_last`` keeps every rank's batch count
equal). Webdataset
shards are split across the ``world_size x num_workers`` loader processes by shard when there are
at least as many shards as processes, else by sample (every process reads every shard and keeps
one sample in ``world_size x num_workers``: slower I/O, still correct); ``resampled=True`` lets
each process draw shards with replacement instead (open_clip's choice for multi-node runs: no
process ever runs dry). Ranks and workers come from the trainer and the DataLoader, not from
environment variables. A webdataset epoch is ``samples_per_epoch`` pairs (default: the count in
img2dataset's ``*_stats.json`` or open_clip's ``sizes.json`` beside the shards, else the tar
headers are scanned); every process yields the same number of batches, cycling through its shards
as needed, so no rank waits for another at the end of an epoch. Shuffling is a shard-order shuffle
plus a sample buffer of ``shuffle_buffer`` pairs, seeded by (seed, epoch, process).

Resumption
----------
CSV and HF (map-style) training loaders are torchdata ``StatefulDataLoader``s, litdata's are its
``StreamingDataLoader``: Lightning stores their position in the checkpoint and a resumed run
continues mid-epoch exactly where it stopped, each pair of the epoch seen once.
Webdataset and streaming-HF resumption is approximate: a run resumed in the middle of an epoch
restarts that epoch's stream with a fresh shuffle (seeded by the resumed global step), so the rest
of that epoch may repeat or miss some pairs; later epochs are as usual.
"""
from __future__ import annotations

from perceptlab.datamodules.image_text.common import (
    CAPTION_KEYS,
    IMAGE_KEYS,
    MapPairCollate,
    PairBatcher,
    SkipCounter,
    clean_caption,
    decode_image,
    mocov2_transform,
)
from perceptlab.datamodules.image_text.csv_pairs import CsvPairs, CsvSource
from perceptlab.datamodules.image_text.datamodule import (
    AUGMENTATIONS,
    ZEROSHOT_FORMATS,
    ImageTextDataModule,
)
from perceptlab.datamodules.image_text.hf_pairs import HFPairs, HFSource, HFStreamPairs, load_hf
from perceptlab.datamodules.image_text.source import PairSource
from perceptlab.datamodules.image_text.wds_pairs import (
    WebDatasetPairs,
    WebDatasetSource,
    count_samples,
    expand_shards,
)
from perceptlab.datamodules.image_text.zeroshot import ZeroShotImages

__all__ = [
    "AUGMENTATIONS", "CAPTION_KEYS", "IMAGE_KEYS", "ZEROSHOT_FORMATS", "CsvPairs", "CsvSource", "HFPairs",
    "HFSource", "HFStreamPairs", "ImageTextDataModule", "PairSource", "WebDatasetSource", "MapPairCollate", "PairBatcher", "SkipCounter", "WebDatasetPairs",
    "ZeroShotImages", "clean_caption", "count_samples", "decode_image", "expand_shards", "load_hf",
    "mocov2_transform",
]
