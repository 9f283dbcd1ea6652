"""What "approximate" means for a webdataset run resumed mid-epoch: samples repeated and skipped.

A run killed after batch ``b`` of an epoch of ``B`` batches and resumed with ``--ckpt_path last``
reads the rest of that epoch from a new shard order and shuffle (seeded by the resume step,
``datamodules/image_text/wds_pairs.py``): its ``B - b`` batches are drawn afresh from the whole
epoch, so some samples of the first ``b`` batches come again (*repeated*) and as many of the epoch
are never read (*skipped*). This script reads the same ``WebDatasetPairs`` streams the data module
builds -- the uninterrupted epoch, and the killed one (``b`` batches, then ``B - b`` from the
resumed stream) -- identifies samples by their image bytes and caption, counts as multisets
(read more often than in the uninterrupted epoch: *repeated*; less often: *skipped*), and prints one
JSON line per kill point with the measured counts beside :func:`perceptlab.datamodules.image_text.wds_pairs.
resume_redraw_estimate` (what the run record keeps on a resume)::

    python benchmarks/resume_webdataset.py --shards 'data/toyworld/image_text/shards/*.tar'
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter

import torch
from torchvision.transforms import PILToTensor

from perceptlab.datamodules.image_text.wds_pairs import (
    WebDatasetPairs,
    count_samples,
    expand_shards,
    resume_redraw_estimate,
)


def keys(stream: WebDatasetPairs, batches: int) -> list[str]:
    """Each sample read, as the digest of its image bytes and caption (the tokenizer below)."""
    out: list[str] = []
    for i, batch in enumerate(stream):
        if i == batches:
            break
        out += [hashlib.sha1(image.numpy().tobytes() + text.numpy().tobytes()).hexdigest()
                for image, text in zip(batch["image"], batch["text"])]
    return out


def caption_digest(texts: list[str]) -> torch.Tensor:
    """A stand-in tokenizer: each caption as an integer digest (captions are part of a sample's identity)."""
    return torch.tensor([[int(hashlib.sha1(t.encode()).hexdigest()[:15], 16)] for t in texts], dtype=torch.long)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="data/toyworld/image_text/shards/*.tar")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shuffle-buffer", type=int, default=500, help="the toy stage-2 config's")
    parser.add_argument("--epoch", type=int, default=1, help="the epoch the kill falls in")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    urls = expand_shards(args.shards)
    samples = count_samples(urls)
    batches = samples // args.batch_size

    def stream(resume_step: int) -> WebDatasetPairs:
        s = WebDatasetPairs(urls, PILToTensor(), caption_digest, args.batch_size, batches, shuffle=True,
                            shuffle_buffer=args.shuffle_buffer, seed=args.seed)
        s.start_epoch, s.resume_step = args.epoch, resume_step
        return s

    start = time.perf_counter()
    full = keys(stream(0), batches)
    rows = []
    for b in sorted({1, batches // 4, batches // 2, 3 * batches // 4, batches - 1} - {0}):
        before = full[: b * args.batch_size]
        after = keys(stream(args.epoch * batches + b), batches - b)
        # as multisets: a stream that cycles its shards may read a sample twice in one epoch already
        read, uninterrupted = Counter(before + after), Counter(full)
        row = {"samples": samples, "batch_size": args.batch_size, "epoch_batches": batches, "killed_after_batch": b,
               "read": sum(read.values()), "repeated": sum((read - uninterrupted).values()),
               "skipped": sum((uninterrupted - read).values()),
               "expected": resume_redraw_estimate(samples, args.batch_size, b, batches)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"seconds": round(time.perf_counter() - start, 1)}))
    return rows


if __name__ == "__main__":
    main()
