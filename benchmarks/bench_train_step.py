"""Training-step throughput of ContrastivePretrainModule under Lightning against a plain PyTorch loop.

Both sides train the same open_clip model (the same initial weights), with open_clip's ClipLoss,
AdamW over the same parameter groups, the same cosine schedule, gradient clipping and logit-scale
clamp, on the same batch already in memory. They run interleaved inside ONE ``Trainer.fit``: after
every block of ``--block`` Lightning steps a callback runs a block of plain steps on the copy, so a
change of machine load hits both sides alike. The first block of each side is warm-up.

Prints one JSON object: images/s of each side (median over blocks) and
``ratio = lightning / plain`` (target >= 0.97: the framework costs at most 3% of a step).

    python benchmarks/bench_train_step.py                         # tiny ViT, CPU
    python benchmarks/bench_train_step.py --model ViT-B-32 --batch 256 --device cuda --precision bf16-mixed
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time


import lightning.pytorch as pl
import torch
from open_clip import ClipLoss
from torch.utils.data import DataLoader

from perceptlab.core.optim import AdamWCosine
from perceptlab.lightning_modules.contrastive import ContrastivePretrainModule
from perceptlab.core.optim import cosine_with_warmup, param_groups


def make_batch(module: ContrastivePretrainModule, batch: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    words = ["a", "photo", "of", "red", "blue", "large", "small", "cat", "dog", "car", "on", "grass", "sky"]
    captions = [" ".join(words[int(i)] for i in torch.randint(len(words), (8,), generator=g)) for _ in range(batch)]
    size = module.backbone.image_size
    return {"image": torch.randn(batch, 3, size, size, generator=g).to(device),
            "text": module.backbone.tokenize(captions).to(device), "skipped": torch.tensor(0)}


class PlainLoop:
    """The same training step written directly against open_clip and torch."""

    def __init__(self, module: ContrastivePretrainModule, batch: dict, total_steps: int, precision: str, device: str):
        hp = module.hparams
        self.model = copy.deepcopy(module.backbone.model).to(device)
        self.optimizer = torch.optim.AdamW(param_groups(self.model.named_parameters(), hp.weight_decay), lr=hp.lr,
                                           betas=tuple(hp.betas), eps=hp.eps)
        self.scheduler = cosine_with_warmup(self.optimizer, hp.warmup_steps, total_steps)
        self.loss = ClipLoss(local_loss=hp.local_loss, gather_with_grad=hp.gather_with_grad, cache_labels=True)
        self.batch, self.clip, self.max_log_scale = batch, hp.grad_clip_norm, math.log(hp.logit_scale_max)
        self.autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
        self.device = device

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            image, text, scale = self.model(self.batch["image"], self.batch["text"])
            loss = self.loss(image, text, scale)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, self.max_log_scale)

    def block(self, n: int) -> float:
        sync(self.device)
        start = time.perf_counter()
        for _ in range(n):
            self.step()
        sync(self.device)
        return time.perf_counter() - start


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Interleave(pl.Callback):
    """Times Lightning's steps and runs a block of plain steps after each block of them."""

    def __init__(self, plain: PlainLoop, block: int, device: str) -> None:
        self.plain, self.block, self.device = plain, block, device
        self.lightning_blocks: list[float] = []
        self.plain_blocks: list[float] = []
        self._block_start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx % self.block == 0:
            sync(self.device)
            self._block_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % self.block == 0:
            sync(self.device)
            self.lightning_blocks.append(time.perf_counter() - self._block_start)
            self.plain_blocks.append(self.plain.block(self.block))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="perceptlab-vit-tiny-64")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=6, help="blocks per side, the first one is warm-up")
    parser.add_argument("--block", type=int, default=5, help="steps per block")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed"))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pl.seed_everything(0, verbose=False)
    steps = args.blocks * args.block
    module = ContrastivePretrainModule(args.model, optim=AdamWCosine(lr=1e-4, warmup_steps=10), grad_clip_norm=3.0)
    batch = make_batch(module, args.batch, args.device)
    plain = PlainLoop(module, batch, steps, args.precision, args.device)
    timer = Interleave(plain, args.block, args.device)
    trainer = pl.Trainer(accelerator="gpu" if args.device.startswith("cuda") else "cpu", devices=1,
                         precision=args.precision, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=[timer])
    trainer.fit(module, DataLoader([batch] * steps, batch_size=None))

    lightning = statistics.median(args.block * args.batch / t for t in timer.lightning_blocks[1:])
    plain_rate = statistics.median(args.block * args.batch / t for t in timer.plain_blocks[1:])
    print(json.dumps({
        "model": args.model, "batch": args.batch, "device": args.device, "precision": args.precision,
        "threads": torch.get_num_threads(), "steps_per_side": steps,
        "lightning_images_per_s": round(lightning, 2), "plain_images_per_s": round(plain_rate, 2),
        "ratio": round(lightning / plain_rate, 4), "target_ratio": 0.97,
        "lightning_block_s": [round(t, 3) for t in timer.lightning_blocks],
        "plain_block_s": [round(t, 3) for t in timer.plain_blocks],
    }))


if __name__ == "__main__":
    main()
