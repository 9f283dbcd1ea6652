"""How much patch dropout raises stage 2's logged ``train/loss``: the contrastive loss of the same
weights on the same training batches, with the configured patch dropout and without it.

``train/loss`` is measured on the training forward pass; with ``patch_dropout: 0.5`` (the toy
configs) half the image tokens are dropped there, so it reads higher than the loss of whole images,
and higher than ``open_clip_train``'s when that runs without ``--force-patch-dropout``. Prints one
JSON object: the mean difference over ``--batches`` batches and its 95 % t-interval.

    python benchmarks/patch_dropout_loss_gap.py runs/demo/pretrain_random/version_0/checkpoints/last.ckpt \\
        --shards 'data/toyworld/image_text/shards/*.tar'
"""
from __future__ import annotations

import argparse
import json
import math
import statistics

import torch
from scipy.stats import t

from perceptlab.datamodules.image_text import ImageTextDataModule, WebDatasetSource
from perceptlab.lightning_modules.contrastive import ContrastivePretrainModule
from perceptlab.datamodules.loader import Loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a stage-2 checkpoint trained with patch dropout")
    parser.add_argument("--shards", required=True, help="training shards (brace pattern or glob)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    ns = parser.parse_args()
    module = ContrastivePretrainModule.load_from_checkpoint(ns.checkpoint, map_location="cpu").train()
    dropout = module.backbone.model.visual.patch_dropout
    prob = float(getattr(dropout, "prob", 0.0))
    if prob <= 0:
        raise SystemExit(f"{ns.checkpoint}: the model trains without patch dropout; nothing to measure")
    dm = ImageTextDataModule(WebDatasetSource(ns.shards), augmentation="none",
                             model_name=module.backbone.model_name, loader=Loader(batch_size=ns.batch, num_workers=0))
    dm.setup("fit")
    torch.manual_seed(0)
    differences = []
    with torch.no_grad():
        for i, batch in enumerate(dm.train_dataloader()):
            if i == ns.batches:
                break
            with_dropout = float(module.contrastive_loss(*module(batch["image"], batch["text"])))
            dropout.prob = 0.0
            whole = float(module.contrastive_loss(*module(batch["image"], batch["text"])))
            dropout.prob = prob
            differences.append(with_dropout - whole)
    mean = statistics.fmean(differences)
    half = t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    print(json.dumps({"patch_dropout": prob, "batches": len(differences), "mean_loss_gap": mean,
                      "interval_95": [mean - half, mean + half]}))


if __name__ == "__main__":
    main()
