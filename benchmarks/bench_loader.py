"""Does the webdataset pipeline keep the training step fed?

Measures, in one run: (1) the samples/s ONE loader process delivers through ImageTextDataModule's
webdataset pipeline (read tar, decode JPEG, open_clip train transform, tokenise, batch), (2) the
same with ``--workers`` processes, and (3) the samples/s the training step consumes (forward,
backward, AdamW of the model on a batch in memory). ``workers_needed`` = step rate / per-worker
rate, rounded up; the loader is not what the step waits on when ``--workers`` >= that (the
``keeps_up`` field; ``ratio`` = loader with ``--workers`` / step). (4) open_clip_train's own
loader (``open_clip_train.data.get_wds_dataset``: its webdataset pipeline, its train transform and
tokenizer, through ``benchmarks/open_clip_train_run.py``'s end-of-shard fix) on the same shards,
one process and ``--workers`` processes: ``loader_ratio_one_worker`` = ours / theirs per worker.
Our workers stop at ``uint8`` images (the backbone normalises on the device); theirs send
normalised float32. (5) ``format: litdata``: the same pairs, in the same order, written by
litdata's own writer, read with ``--workers`` processes (litdata's ``StreamingDataLoader``, the
same decode, transform and tokeniser): ``litdata_ratio_<W>_workers`` = litdata / webdataset.

Shards are written to a temporary folder unless ``--shards`` names real ones: JPEGs of
``--image-size`` px (img2dataset's default resize is 256) with short captions. ``--step-rate``
replaces the measured step rate, e.g. with a GPU's images/s from bench_flops.py.

    python benchmarks/bench_loader.py
    python benchmarks/bench_loader.py --model ViT-B-32 --image-size 256 --workers 8 --step-rate 3000
"""
from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()  # the total includes the imports: the whole command is what a user waits for

import numpy as np
import torch
from open_clip import ClipLoss
from PIL import Image

from perceptlab.datamodules.image_text import ImageTextDataModule, WebDatasetSource
from perceptlab.core.backbone import CLIPBackbone
from perceptlab.datamodules.loader import Loader


def write_shards(folder: Path, shards: int, per_shard: int, size: int) -> str:
    """Smooth random images (JPEG sizes like photos', not like noise) with captions.

    A pool of 256 distinct JPEGs is encoded once and reused across samples: the loader decodes every
    sample all the same, and writing a node's worth of shards (16 workers x batch 256) stays a
    matter of seconds instead of encoding tens of thousands of images in one process."""
    rng = np.random.default_rng(0)
    words = ["a", "photo", "of", "the", "red", "blue", "large", "small", "cat", "dog", "car", "on", "grass"]
    pool = []
    for _ in range(256):
        low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(low).resize((size, size), Image.BICUBIC).save(buf, format="JPEG", quality=90)
        pool.append(buf.getvalue())
    # One shard is written and copied: the same bytes in every shard are read and decoded all the same.
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for i in range(per_shard):
            caption = " ".join(rng.choice(words, 10))
            for name, data in ((f"{i:09d}.jpg", pool[i % len(pool)]), (f"{i:09d}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    for s in range(1, shards):
        shutil.copyfile(folder / "00000.tar", folder / f"{s:05d}.tar")
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


# Each loader measurement stops after this many seconds even if its batches are not all read, so
# that one slow path cannot eat the run (a node's 16 workers x batch 256 would read 100k samples).
SECONDS_PER_MEASUREMENT = 8.0


def timed(next_batch, batches: int) -> float:
    """Samples/s over up to ``batches`` calls of ``next_batch`` (each returns its batch size),
    stopping early at ``SECONDS_PER_MEASUREMENT``."""
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += next_batch()
        if time.perf_counter() - start > SECONDS_PER_MEASUREMENT:
            break
    return n / (time.perf_counter() - start)


def progress(message: str) -> None:
    print(f"[bench_loader {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loader_rate(pattern: str, model: str, batch: int, workers: int, batches: int) -> float:
    """Samples/s through the pipeline; ``workers=0`` runs it in this process, single-threaded like a
    loader worker (DataLoader workers run with one intra-op thread)."""
    threads = torch.get_num_threads()
    if workers == 0:
        torch.set_num_threads(1)
    try:
        return _loader_rate(pattern, model, batch, workers, batches)
    finally:
        torch.set_num_threads(threads)


def _loader_rate(pattern: str, model: str, batch: int, workers: int, batches: int, fmt: str = "webdataset") -> float:
    if fmt == "litdata":
        from perceptlab.datamodules.image_text.litdata_pairs import LitdataSource

        source = LitdataSource(pattern)
    else:
        source = WebDatasetSource(pattern, samples_per_epoch=batch * batches * max(1, workers) * 4)
    dm = ImageTextDataModule(source, model_name=model, augmentation="clip", loader=Loader(batch_size=batch, num_workers=workers))
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)  # worker start-up and first fills are not the steady state
    return timed(lambda: next(it)["text"].shape[0], batches * max(1, workers))


def litdata_copy(pattern: str, folder: Path, limit: int) -> str:
    """The shards' first ``limit`` pairs, in order, as a litdata-optimised dataset (one chunk per
    shard's worth)."""
    from itertools import islice

    import webdataset as wds

    from perceptlab.datamodules.image_text.litdata_pairs import write_litdata

    urls = wds.shardlists.expand_urls(pattern)
    per_chunk = min(limit, sum(1 for _ in wds.WebDataset(urls[0], shardshuffle=False)))
    items = ({"image": s["jpg"], "caption": s["txt"].decode()}
             for s in islice(wds.WebDataset(urls, shardshuffle=False), limit))
    return str(write_litdata(items, folder, chunk_size=per_chunk))


def open_clip_loader_rate(pattern: str, model: str, batch: int, workers: int, batches: int) -> float:
    """The same measurement through open_clip_train's webdataset loader."""
    import open_clip

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from open_clip_train.data import get_wds_dataset
    from open_clip_train.params import parse_args
    from open_clip_train_run import install

    install()
    samples = batch * batches * max(1, workers) * 4
    args = parse_args(["--train-data", pattern, "--dataset-type", "webdataset", "--train-num-samples", str(samples),
                       "--batch-size", str(batch), "--workers", str(workers), "--model", model])
    args.world_size, args.rank, args.distributed = 1, 0, False
    _, preprocess_train, _ = open_clip.create_model_and_transforms(model)
    data = get_wds_dataset(args, preprocess_train, is_train=True, epoch=0, tokenizer=open_clip.get_tokenizer(model))
    threads = torch.get_num_threads()
    if workers == 0:
        torch.set_num_threads(1)
    try:
        it = iter(data.dataloader)
        next(it)
        return timed(lambda: next(it)[0].shape[0], batches * max(1, workers))
    finally:
        torch.set_num_threads(threads)


def step_rate(model: str, batch: int, steps: int, device: str) -> float:
    backbone = CLIPBackbone(model).to(device)
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-4)
    loss_fn = ClipLoss()
    size = backbone.image_size
    images = torch.randn(batch, 3, size, size, device=device)
    tokens = backbone.tokenize(["a photo of a large red car on grass"] * batch).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(*backbone.model(images, tokens)).backward()
        optimizer.step()

    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    global SECONDS_PER_MEASUREMENT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="perceptlab-vit-tiny-64")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per loader process")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--shards", default=None, help="real shards (pattern) instead of generated ones")
    parser.add_argument("--step-rate", type=float, default=None, help="images/s the step consumes, if known")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="the most one loader measurement reads for")
    args = parser.parse_args()

    SECONDS_PER_MEASUREMENT = args.seconds
    started = STARTED
    with tempfile.TemporaryDirectory() as tmp:
        per_shard = args.batch * (args.batches + 2)
        if not args.shards:
            progress(f"writing {max(2, args.workers)} shards of {per_shard} {args.image_size}-px JPEGs")
        pattern = args.shards or write_shards(Path(tmp), max(2, args.workers), per_shard, args.image_size)

        def measure(name: str, fn, *fn_args):
            progress(f"{name} ...")
            value = fn(*fn_args)
            progress(f"{name}: {value:.1f} samples/s ({time.perf_counter() - started:.0f} s so far)")
            return value

        one = measure("our loader, one process", loader_rate, pattern, args.model, args.batch, 0, args.batches)
        step = args.step_rate or measure("training step", step_rate, args.model, args.batch, args.steps, args.device)
        many = measure(f"our loader, {args.workers} workers", loader_rate, pattern, args.model, args.batch,
                       args.workers, args.batches)
        theirs_one = measure("open_clip_train's loader, one process", open_clip_loader_rate, pattern, args.model,
                             args.batch, 0, args.batches)
        theirs_many = measure(f"open_clip_train's loader, {args.workers} workers", open_clip_loader_rate, pattern,
                              args.model, args.batch, args.workers, args.batches)
        progress("copying the pairs into a litdata dataset")
        optimised = litdata_copy(pattern, Path(tmp) / "litdata", per_shard * max(2, args.workers))
        lit_many = measure(f"litdata, {args.workers} workers", _loader_rate, optimised, args.model, args.batch,
                           args.workers, args.batches, "litdata")
    needed = math.ceil(step / one)
    print(json.dumps({
        "model": args.model, "batch": args.batch, "image_size": args.image_size, "device": args.device,
        "loader_samples_per_s_one_worker": round(one, 1),
        f"loader_samples_per_s_{args.workers}_workers": round(many, 1),
        "step_samples_per_s": round(step, 1), "step_rate_measured": args.step_rate is None,
        "workers_needed": needed, "workers": args.workers, "keeps_up": args.workers >= needed and many >= step,
        "ratio": round(many / step, 3),
        "open_clip_train_loader_samples_per_s_one_worker": round(theirs_one, 1),
        f"open_clip_train_loader_samples_per_s_{args.workers}_workers": round(theirs_many, 1),
        "loader_ratio_one_worker": round(one / theirs_one, 3),
        f"loader_ratio_{args.workers}_workers": round(many / theirs_many, 3),
        f"litdata_loader_samples_per_s_{args.workers}_workers": round(lit_many, 1),
        f"litdata_ratio_{args.workers}_workers": round(lit_many / many, 3),
        "seconds_total": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    main()
