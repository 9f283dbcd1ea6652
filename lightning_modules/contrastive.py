"""Stage 2: contrastive image-text pretraining (CLIP's InfoNCE, or SigLIP) from a perceptual or random init.

The hand-off from stage 1 is a file: ``init_visual_from`` names a ``visual.pt`` (written by
``CLIPBackbone.save_visual``) or any Lightning/open_clip checkpoint; only its ``visual.*`` tensors
are copied (``CLIPBackbone.load_visual``), the text tower and the logit scale keep their fresh
initialisation. ``init_visual_from: null`` is the random-init baseline. The copy happens in
``setup``, before any distributed wrapping, and is skipped when the weights come from a
checkpoint (a resumed run, ``load_from_checkpoint``), as in every stage (``lightning_modules.base``).

Loss
----
open_clip's ``ClipLoss`` (symmetric InfoNCE; ``local_loss`` / ``gather_with_grad`` as in open_clip,
rank and world size from the trainer) or ``SigLipLoss`` (sigmoid loss with a learnable bias).
The learnable logit scale (1 / temperature) starts at ``logit_scale_init`` -- 100 for CLIP here,
i.e. ``ln(100)`` in the log-space parameter; note open_clip's own default is 1/0.07 = 14.3 -- and
is clamped to at most ``logit_scale_max`` (100) after every optimiser step, as open_clip does.
The parameter is stored with shape ``[1]`` (open_clip's ``nonscalar_logit_scale`` layout), because
FSDP2 cannot shard a 0-d parameter.

Gradient accumulation
---------------------
``accum_freq = k`` splits each batch into k micro-batches and keeps the WHOLE batch as negatives,
as open_clip's ``--accum-freq``: features of every micro-batch are first computed without
gradients, then each micro-batch is recomputed with gradients and its loss taken against the
cached features of the others; the summed gradients equal those of one pass over the whole batch
(the random state of each micro-batch is replayed, so patch dropout draws the same patches in both
passes; the logit scale/bias, which enter every micro-batch's loss directly, get their gradient
once, not k times). Peak activation memory is that of one micro-batch. Lightning's
``accumulate_grad_batches`` is refused: it would average the gradients of k separate small
contrastive batches, silently shrinking the negatives of every loss to one small batch.

The module uses manual optimisation (several backward passes per step), so gradient clipping is
the module's ``grad_clip_norm``, not ``Trainer(gradient_clip_val=...)``.

Options researchers use with open_clip
--------------------------------------
``lock_image`` (LiT: freeze the image tower; ``lock_image_unlocked_groups`` keeps the last groups
trainable), ``lock_image_first_blocks`` (freeze the patch embedding and the first N transformer
blocks), ``patch_dropout`` (FLIP: drop this share of patch tokens in training), ``grad_checkpointing``
and ``compile`` (``torch.compile`` of every transformer block, in place: state-dict keys unchanged).

Validation: loss, retrieval recall and zero-shot accuracy (``lightning_modules.contrastive_validation``).
Logged while training: ``train/loss`` (mean over ranks), ``train/logit_scale`` (the scale itself,
not its log) and ``data/skipped`` (samples the loaders dropped so far, summed over ranks; a warning
repeats it at 1, 2, 4, 8, ... skips).

Distributed: DDP (any backend), FSDP (``FSDPStrategy``, GPUs) and FSDP2 (``ModelParallelStrategy``
with ``data_parallel_size`` = world size, ``tensor_parallel_size: 1``); sharding, compilation and
the speed settings are ``lightning_modules.contrastive_parallel``. Every rank must receive
batches of the same size (``ImageTextDataModule`` guarantees it).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from open_clip import ClipLoss
from open_clip.loss import SigLipLoss
from torch import nn
from torchmetrics import CatMetric, MeanMetric

from perceptlab.core.backbone import CLIPBackbone
from perceptlab.core.checkpoints import OPEN_CLIP_FILENAME  # what a model file is
from perceptlab.core.optim import AdamWCosine, no_weight_decay, param_groups
from perceptlab.lightning_modules.base import StageModule
from perceptlab.lightning_modules.contrastive_parallel import ContrastiveParallel, canonical_name, full_tensor
from perceptlab.lightning_modules.contrastive_validation import ContrastiveValidation

LOSSES = ("clip", "siglip")

class ContrastivePretrainModule(ContrastiveValidation, ContrastiveParallel, StageModule):
    """CLIP/SigLIP image-text pretraining of a ``CLIPBackbone`` (see the module docstring).

    Args:
        model_name: open_clip architecture or a ``model_configs/*.json`` name.
        pretrained: ``None`` (random init), an open_clip tag, or a local weights file.
        init_visual_from: stage-1 ``visual.pt`` or any checkpoint whose ``visual.*`` tensors
            initialise the image tower; ``None`` = random-init baseline.
        loss: ``clip`` (open_clip ``ClipLoss``) or ``siglip`` (open_clip ``SigLipLoss``).
        local_loss: ``ClipLoss``: each rank's loss over its own rows against all gathered columns
            (memory O(local x global) instead of O(global^2)).
        gather_with_grad: ``ClipLoss``: all-gather features with gradient (exact gradients with
            ``local_loss``).
        logit_scale_init: initial 1/temperature (the parameter holds its log); default 100 for
            ``clip`` and 10 for ``siglip`` (SigLIP's init). open_clip's own CLIP default is 1/0.07.
        logit_scale_max: clamp of the scale after every step (open_clip: 100).
        logit_bias_init: ``siglip``: initial logit bias (SigLIP: -10).
        accum_freq: micro-batches per batch, all of them negatives of each other (see docstring).
        max_skipped_share: stop at the end of an epoch in which more than this share of the samples
            read were skipped as corrupt or caption-less (``null``: never stop).
        optim: the optimiser and schedule (``core.optim.AdamWCosine``: ``lr``, ``weight_decay`` -- not
            applied to biases, norms, embeddings of rank < 2 and the logit scale/bias, open_clip's
            exclusions --, ``betas``, ``eps``, ``warmup_steps``); open_clip_train's defaults.
        grad_clip_norm: clip the global gradient norm to this value (``None`` = no clipping).
        lock_image: freeze the image tower (LiT), except its last ``lock_image_unlocked_groups``.
        lock_image_unlocked_groups: open_clip's groups left trainable when ``lock_image``.
        lock_image_freeze_bn_stats: also freeze BatchNorm statistics (ResNet towers).
        lock_image_first_blocks: freeze the patch embedding and the first N transformer blocks.
        patch_dropout: FLIP patch dropout: share of patch tokens dropped in training, in [0, 1).
        grad_checkpointing: recompute activations in backward (open_clip's ``set_grad_checkpointing``).
        compile: ``torch.compile`` every transformer block (GPU runs; CPU needs a C++ compiler).
        fused_adamw: torch's fused AdamW kernel; ``null``: fused when the parameters are plain CUDA
            tensors (not FSDP2's sharded ones), else torch's default (the same update up to rounding).
        matmul_precision: ``torch.set_float32_matmul_precision`` for the fit (``high``: TF32 for
            the float32 matmuls left outside bf16 autocast); restored when fitting ends.
        retrieval_ks: the k of retrieval recall@k.
    """

    def __init__(
        self,
        model_name: str | None = "perceptlab-vit-tiny-64",
        pretrained: str | None = None,
        init_visual_from: str | None = None,
        loss: Literal["clip", "siglip"] = "clip",
        local_loss: bool = True,
        gather_with_grad: bool = True,
        logit_scale_init: float | None = None,
        logit_scale_max: float = 100.0,
        logit_bias_init: float = -10.0,
        accum_freq: int = 1,
        max_skipped_share: float | None = 0.05,
        optim: AdamWCosine = AdamWCosine(lr=5e-4, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6, warmup_steps=2500),
        grad_clip_norm: float | None = None,
        lock_image: bool = False,
        lock_image_unlocked_groups: int = 0,
        lock_image_freeze_bn_stats: bool = False,
        lock_image_first_blocks: int = 0,
        patch_dropout: float | None = None,
        grad_checkpointing: bool = False,
        compile: bool = False,
        fused_adamw: bool | None = None,
        matmul_precision: Literal["highest", "high", "medium"] | None = None,
        retrieval_ks: tuple[int, ...] = (1, 5, 10),
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
        if accum_freq < 1:
            raise ValueError(f"accum_freq must be >= 1, got {accum_freq}")
        if lock_image and lock_image_first_blocks:
            raise ValueError("lock_image and lock_image_first_blocks are exclusive: pick one way to freeze the image tower")
        if patch_dropout is not None and not 0.0 <= patch_dropout < 1.0:
            raise ValueError(f"patch_dropout must be in [0, 1), got {patch_dropout}")
        self.save_optim_hyperparameters(optim)
        self.automatic_optimization = False

        self.backbone = CLIPBackbone(model_name, pretrained=pretrained, patch_dropout=patch_dropout)
        model = self.backbone.model
        scale_init = logit_scale_init if logit_scale_init is not None else (100.0 if loss == "clip" else 10.0)
        if not 0 < scale_init <= logit_scale_max:
            raise ValueError(f"logit_scale_init must be in (0, logit_scale_max={logit_scale_max}], got {scale_init}")
        model.logit_scale = nn.Parameter(torch.full((1,), math.log(scale_init)))
        if loss == "siglip":
            model.logit_bias = nn.Parameter(torch.full((1,), float(logit_bias_init)))
        self._lock_image_tower()
        if grad_checkpointing:
            model.set_grad_checkpointing(True)
        # Decided here, on the unwrapped shapes: FSDP1 turns parameters into flat 1-D shards.
        self._no_decay = {n for n, p in self.named_parameters() if no_weight_decay(n, p)}

        self._configured = False
        self._loss_fn: nn.Module | None = None
        self._val_loss_fn = self._make_loss(rank=0, world_size=1)
        self._skipped_total = 0  # this rank's
        self._epoch_read = 0  # samples this rank read this epoch (kept + skipped)
        self._epoch_skipped = 0
        self._skipped_global = 0  # over all ranks, as last logged
        self._skipped_reported = 0
        self._zeroshot_weights: torch.Tensor | None = None
        self.val_zeroshot_top1 = MeanMetric()
        self.val_zeroshot_top5 = MeanMetric()
        self.val_image_features = CatMetric()
        self.val_text_features = CatMetric()
        # each pair's place in the validation set (our loaders send it); float64 holds any index exactly
        self.val_indices = CatMetric().set_dtype(torch.float64)
        self._val_batch_size = 0

    # ------------------------------------------------------------------------------ set-up
    def _lock_image_tower(self) -> None:
        hp = self.hparams
        model = self.backbone.model
        if hp.lock_image:
            model.lock_image_tower(unlocked_groups=hp.lock_image_unlocked_groups,
                                   freeze_bn_stats=hp.lock_image_freeze_bn_stats)
        elif hp.lock_image_first_blocks:
            if not self.backbone._is_vit:
                raise ValueError("lock_image_first_blocks needs a ViT image tower; use lock_image with "
                                 "lock_image_unlocked_groups for other towers")
            blocks = self.backbone.num_visual_layers
            n = hp.lock_image_first_blocks
            if not 0 < n <= blocks:
                raise ValueError(f"lock_image_first_blocks must be in [1, {blocks}] for {hp.model_name}, got {n}")
            # open_clip's ViT groups: [stem], blocks[0..L-2] one each, [block L-1, ln_post], proj;
            # unlocking the last (L + 1 - n) groups leaves exactly the stem and the first n blocks frozen.
            model.visual.lock(unlocked_groups=blocks + 1 - n, freeze_bn_stats=False)

    def _make_loss(self, rank: int, world_size: int) -> nn.Module:
        hp = self.hparams
        if hp.loss == "siglip":
            return SigLipLoss(rank=rank, world_size=world_size)
        return ClipLoss(local_loss=hp.local_loss, gather_with_grad=hp.gather_with_grad, cache_labels=True,
                        rank=rank, world_size=world_size)

    def configure_callbacks(self):
        # The first hook Lightning calls with the trainer attached, before its own configuration
        # checks, so these errors say what to do instead of Lightning's generic ones.
        trainer = self.attached_trainer
        if trainer is not None:
            if trainer.accumulate_grad_batches != 1:
                raise ValueError(
                    f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}) would average the "
                    "gradients of separate small contrastive batches, silently shrinking every loss's negatives "
                    "to one small batch. Use model.accum_freq instead: it splits each batch into micro-batches "
                    "and keeps the whole accumulated batch as negatives (open_clip's accum_freq)."
                )
            if trainer.gradient_clip_val:
                raise ValueError(
                    f"Trainer(gradient_clip_val={trainer.gradient_clip_val}) does not apply to this module "
                    "(manual optimisation, several backward passes per step): set model.grad_clip_norm instead"
                )
        return []

    def setup(self, stage: str) -> None:
        trainer = self.attached_trainer
        if trainer is not None:
            self._loss_fn = self._make_loss(int(trainer.global_rank), int(trainer.world_size))
        super().setup(stage)  # init_visual_from: the tower only; text tower and logit scale keep their fresh init

    def configure_optimizers(self):
        # decay decided on the unwrapped names (see __init__): FSDP1 flattens parameters to 1-D
        no_decay = lambda name, param: canonical_name(name) in self._no_decay  # noqa: E731
        return self.adamw_cosine(param_groups(self.named_parameters(), self.optim.weight_decay, exclude=no_decay))

    def on_fit_end(self) -> None:
        """``checkpoints/open_clip_model.pt`` beside ``last.ckpt``: the model as an open_clip state dict,
        ``open_clip.create_model_and_transforms(model_name, pretrained=<file>)`` loads it strictly."""
        # a collective call: every rank asks, rank zero writes; without a logger there is no run
        # directory (log_dir would be the working directory), so nothing is written
        run_dir = self.trainer.log_dir if self.trainer.logger is not None else None
        state = self.full_model_state()  # a collective
        if not run_dir or not self.trainer.is_global_zero:
            return
        state.pop("logit_bias", None)  # SigLIP's; open_clip's CLIP has none
        state["logit_scale"] = state["logit_scale"].reshape(())
        path = Path(run_dir) / "checkpoints" / OPEN_CLIP_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        rank_zero_info(f"open_clip weights written to {path}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["data_skipped"] = self._skipped_global

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)  # init_visual_from is not re-applied
        # The count is a sum over ranks: rank 0 carries it on, the others start again from 0.
        self._skipped_total = int(checkpoint.get("data_skipped", 0)) if self.global_rank == 0 else 0
        self._skipped_global = self._skipped_reported = int(checkpoint.get("data_skipped", 0))

    # ---------------------------------------------------------------------------- forward
    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        """``(image_features, text_features, logit_scale[, logit_bias])``: normalised features
        ``(B, embed_dim)`` and the scale as ``exp`` of the parameter (open_clip's CLIP.forward).
        ``images``: normalised floats, or ``uint8`` (the default loaders'), normalised here on the device."""
        return self.backbone.model(self.backbone.prepare_images(images), tokens)

    def contrastive_loss(self, image_features, text_features, logit_scale, logit_bias=None, loss_fn=None):
        """The configured open_clip loss on normalised features; scalar."""
        loss_fn = loss_fn or self._loss_fn or self._val_loss_fn
        if self.hparams.loss == "siglip":
            return loss_fn(image_features, text_features, logit_scale, logit_bias)
        return loss_fn(image_features, text_features, logit_scale)

    @staticmethod
    def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if isinstance(batch, dict):
            return batch["image"], batch["text"], batch.get("skipped")
        return batch[0], batch[1], None

    def _rng_state(self):
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set_rng_state(self, state) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    def forward_backward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Forward and backward of one contrastive batch (``accum_freq`` micro-batches); the loss.

        Gradients are accumulated into ``.grad`` through ``manual_backward``; the returned loss is
        detached and, for ``accum_freq > 1``, the loss of the whole batch.
        """
        k = self.hparams.accum_freq
        if k == 1:
            loss = self.contrastive_loss(*self(images, tokens))
            self.manual_backward(loss)
            return loss.detach()
        image_chunks, token_chunks = images.tensor_split(k), tokens.tensor_split(k)
        states, cached_images, cached_texts = [], [], []
        with torch.no_grad():
            for x, t in zip(image_chunks, token_chunks):
                states.append(self._rng_state())
                image_features, text_features, *_ = self(x, t)
                cached_images.append(image_features)
                cached_texts.append(text_features)
        after = self._rng_state()
        loss_value = None
        for j, (x, t) in enumerate(zip(image_chunks, token_chunks)):
            self._set_rng_state(states[j])  # same dropout/patch draws as the cached pass
            image_features, text_features, scale, *bias = self(x, t)
            all_images = torch.cat(cached_images[:j] + [image_features] + cached_images[j + 1:])
            all_texts = torch.cat(cached_texts[:j] + [text_features] + cached_texts[j + 1:])
            loss = self.contrastive_loss(all_images, all_texts, scale, *bias)
            self.manual_backward(loss)
            if loss_value is None:
                loss_value = loss.detach()
        self._set_rng_state(after)
        # The scale (and bias) enter every micro-batch's loss directly, so their gradient was
        # counted k times; the features' gradients were each counted once.
        for param in (self.backbone.model.logit_scale, getattr(self.backbone.model, "logit_bias", None)):
            if param is not None and param.grad is not None:
                param.grad.div_(k)
        return loss_value

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, tokens, skipped = self._unpack(batch)
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        optimizer.zero_grad(set_to_none=True)
        loss = self.forward_backward(images, tokens)
        if self.hparams.grad_clip_norm:
            self._clip_gradients(optimizer)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            self.backbone.model.logit_scale.clamp_(0, math.log(self.hparams.logit_scale_max))
        batch_size = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch_size)
        self.log("train/logit_scale", full_tensor(self.backbone.model.logit_scale.detach()).exp().mean(), batch_size=batch_size)
        self._epoch_read += batch_size
        if skipped is not None:
            self._epoch_read += int(skipped)
            self._epoch_skipped += int(skipped)
            self._log_skipped(skipped)
        return loss

    def _log_skipped(self, skipped: torch.Tensor) -> None:
        """``data/skipped``: samples the loaders dropped so far, summed over ranks."""
        self._skipped_total += int(skipped)
        total = self._skipped_total
        if self.trainer.world_size > 1:
            total = int(self.trainer.strategy.reduce(torch.tensor(float(total), device=self.device), reduce_op="sum"))
        self._skipped_global = total
        self.log("data/skipped", float(total), batch_size=1)
        if total > 0 and total >= 2 * self._skipped_reported:  # at 1, 2, 4, 8, ...: a handful of warnings a run
            rank_zero_warn(f"image-text loaders skipped {total} unreadable or caption-less samples so far "
                           "(logged as data/skipped)")
            self._skipped_reported = total

    # ------------------------------------------------------------------------- validation
    def on_train_epoch_start(self) -> None:
        self._epoch_read = self._epoch_skipped = 0

    def on_train_epoch_end(self) -> None:
        if self._skipped_reported:
            rank_zero_info(f"data/skipped: {self._skipped_reported} samples skipped so far")
        counts = torch.tensor([float(self._epoch_skipped), float(self._epoch_read)], device=self.device)
        if self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        skipped, read = int(counts[0]), int(counts[1])
        if skipped:
            rank_zero_info(f"epoch {self.current_epoch}: skipped {skipped} of {read} samples read ({skipped / max(read, 1):.1%})")
        limit = self.hparams.max_skipped_share
        if limit is not None and read and skipped / read > limit:
            raise RuntimeError(
                f"{skipped} of {read} samples ({skipped / read:.1%}) read in epoch {self.current_epoch} were skipped "
                f"as corrupt or caption-less, above max_skipped_share={limit:.1%}: check the shards "
                "(the data/skipped warnings name the samples), or raise max_skipped_share"
            )
