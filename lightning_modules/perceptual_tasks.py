"""Perceptual tasks: LoRA + MLP-head adaptation of CLIP's vision tower (PerceptCLIP's recipe).

The image embedding of the shared backbone (``encode_image(normalize=False)``, after the frozen
visual projection; ``embed_dim`` wide: 512 for ViT-B/32, 768 for ViT-L/14, 64 for the tiny toy
config) feeds an MLP head ``embed_dim -> head_hidden -> ReLU -> Dropout(head_dropout) -> out``.
The tower is adapted with LoRA on the query, key and value projections of every attention block
(:mod:`perceptlab.core.lora`: rank 16, alpha 8, dropout 0.1 by default); every other backbone
weight is frozen. Only the adapters and the head are trained.

Tasks:

* ``regression`` (memorability, image quality): one score per image, higher = more memorable /
  better. Loss ``mse``, ``plcc`` (``(1 - PLCC) / 2`` over the batch, in [0, 1]) or ``mse+plcc``
  (their sum). Metrics: SRCC and PLCC (torchmetrics, exact under DDP), higher is better.
* ``classification`` (emotion): logits over ``num_classes``; cross-entropy; metrics top-1
  accuracy and macro F1 (torchmetrics).

Logged: ``train/loss``; ``val/loss``, ``val/srcc``, ``val/plcc`` (or ``val/acc``, ``val/f1``);
``test/<set>/...`` for every test set the data module names (cross-dataset evaluation).
Test batches of shape ``(B, K, 3, H, W)`` (the data modules' ``test_crops``) are K crops per
image: scores are averaged, class probabilities are averaged.

Starting weights of the tower: ``pretrained`` (an open_clip tag or a local weights file) and/or
``init_visual_from`` (a stage-1/2 Lightning checkpoint, a ``visual.pt`` from
``CLIPBackbone.save_visual``, or a full CLIP state dict), copied into the vision tower's base
weights at set-up, as in every stage (:mod:`perceptlab.lightning_modules.base`); the LoRA adapters
keep their fresh initialisation, so training starts from exactly the file's tower. A checkpoint
of a LoRA-trained tower is merged on the way in (:func:`~perceptlab.core.lora.merge_lora_state_dict`).
A resumed run takes its weights from its checkpoint and does not read the file again.

The backbone stays ``self.backbone`` (a ``CLIPBackbone``), so the alignment callbacks can query
the adapted tower with ``backbone.encode_image``. With ``vision_only=True`` (default) the text
tower is not kept: probes that need text (zero-shot shape bias, noise robustness) are then
skipped by the alignment suite; set ``vision_only: false`` to keep the (frozen, unadapted) text
tower for them at the cost of its memory.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from perceptlab.core.backbone import CLIPBackbone
from perceptlab.core.hf_clip import PerceptCLIPRelease, open_clip_config_from_hf, open_clip_state_from_hf
from perceptlab.core.lora import apply_lora
from perceptlab.core.optim import AdamWCosine, param_groups
from perceptlab.core.transforms import register_model_config
from perceptlab.lightning_modules.base import StageModule

LOSSES = ("mse", "plcc", "mse+plcc")


def plcc_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(1 - r) / 2`` with ``r`` the Pearson correlation of ``pred`` and ``target`` (shape ``(N,)``).

    In [0, 1]; 0 for a perfect positive linear relation. Written here because pyiqa's version
    divides by a 1e-12 clamp (a ~1e11 gradient on a constant batch) and falls back to L1 for a
    batch of one, and torchmetrics' Pearson is NaN on a constant batch. ``eps`` is added to both
    sums of squares, so the gradient stays finite (at most about ``1 / (2 sqrt(eps))`` per unit
    target spread) when all predictions are equal; a batch of one gives 0.5 and no gradient.
    """
    pred = pred.reshape(-1).float()
    target = target.reshape(-1).float()
    pc = pred - pred.mean()
    tc = target - target.mean()
    r = (pc * tc).sum() / ((pc.square().sum() + eps).sqrt() * (tc.square().sum() + eps).sqrt())
    return (1 - r) / 2


class PerceptualTaskModule(StageModule):
    """LoRA-adapted CLIP vision tower + MLP head for a perceptual regression or classification task.

    Args:
        model_name: open_clip architecture or a ``model_configs/*.json`` name.
        pretrained: open_clip tag or local weights file for the whole model (``None``: random init).
        init_visual_from: checkpoint / ``visual.pt`` whose vision tower is copied into the tower's base
            weights (LoRA adapters keep their fresh initialisation; see ``lightning_modules.base``).
        init_visual_strict: require ``init_visual_from`` to provide exactly the tower's tensors.
        cache_dir: where open_clip looks for tagged weights.
        vision_only: drop the text tower (see module docstring for what the alignment suite loses).
        task: ``regression`` (one score, higher is better) or ``classification``.
        num_classes: classes of a classification task (EmoSet: 8); must match the data module.
        loss: regression loss, ``mse``, ``plcc`` or ``mse+plcc``.
        lora_rank: LoRA rank on q/k/v; 0 trains the head alone on a frozen tower.
        lora_alpha: LoRA alpha (update scaled by ``alpha / rank``).
        lora_dropout: dropout on the adapters' input.
        lora_targets: peft target module names (default: ``q_proj``, ``k_proj``, ``v_proj``).
        head_hidden: hidden width(s) of the MLP head: an int (one hidden layer) or a list
            (PerceptCLIP's ``[512, 256]``); each hidden layer is Linear -> ReLU -> Dropout.
        head_dropout: dropout after each of the head's ReLUs.
        normalize_embedding: L2-normalise the embedding before the head.
        optim: the optimiser and schedule (``core.optim.AdamWCosine``: ``lr`` -- the LoRA's, and the
            head's unless ``head_lr`` --, ``weight_decay`` -- biases and norms excluded, open_clip's
            rule --, ``betas``, ``eps``, ``warmup_steps``).
        head_lr: separate learning rate for the head (``None``: ``optim.lr``).
        release: a PerceptCLIP release file (see :class:`perceptlab.core.hf_clip.PerceptCLIPRelease`):
            architecture, LoRA rank, head sizes and task come from it (``model_name``,
            ``lora_rank``, ``head_hidden``, ``task`` and ``num_classes`` are then ignored) and so
            do all weights; ``lora_alpha`` is its scale (PerceptCLIP: 8).
        release_merge_lora: fold the release's adapters into the tower (a plain tower, head on
            top) instead of keeping them as trainable LoRA layers.
    """

    def __init__(
        self,
        model_name: str | None = "perceptlab-vit-tiny-64",
        pretrained: str | None = None,
        init_visual_from: str | None = None,
        init_visual_strict: bool = True,
        cache_dir: str | None = None,
        vision_only: bool = True,
        task: Literal["regression", "classification"] = "regression",
        num_classes: int = 8,
        loss: Literal["mse", "plcc", "mse+plcc"] = "mse",
        lora_rank: int = 16,
        lora_alpha: float = 8.0,
        lora_dropout: float = 0.1,
        lora_targets: list[str] | None = None,
        head_hidden: int | list[int] = 256,
        head_dropout: float = 0.5,
        normalize_embedding: bool = False,
        optim: AdamWCosine = AdamWCosine(lr=5e-5, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8, warmup_steps=0),
        head_lr: float | None = None,
        release: str | None = None,
        release_merge_lora: bool = False,
    ) -> None:
        super().__init__()
        self.save_optim_hyperparameters(optim)
        weights = None
        if release:
            weights = PerceptCLIPRelease.read(release)
            model_name = register_model_config(f"perceptclip-{Path(release).stem}",
                                               open_clip_config_from_hf(None, weights.vision))
            lora_rank = 0 if release_merge_lora else weights.rank
            head_hidden = weights.hidden
            task = "regression" if weights.out == 1 else "classification"
            num_classes = max(weights.out, 2)
            self.hparams.update(model_name=model_name, lora_rank=lora_rank, head_hidden=head_hidden, task=task,
                                num_classes=num_classes)  # what the module is, for checkpoints and logs
        if task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if task == "classification" and num_classes < 2:
            raise ValueError(f"a classification task needs num_classes >= 2, got {num_classes}")
        self.backbone = CLIPBackbone(model_name, pretrained=pretrained, vision_only=vision_only, cache_dir=cache_dir)
        if weights is not None:
            vision = weights.merged_vision(lora_alpha) if release_merge_lora else weights.vision
            self.backbone.load_visual(open_clip_state_from_hf(vision), strict=True)
        # Frozen first: apply_lora then re-enables exactly the adapter weights; a kept text
        # tower and logit_scale stay frozen too (unused parameters would trip up DDP).
        self.backbone.requires_grad_(False)
        if lora_rank > 0:
            apply_lora(self.backbone.model.visual, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout,
                       target_modules=lora_targets)
        out_dim = 1 if task == "regression" else num_classes
        sizes = [self.backbone.embed_dim, *([head_hidden] if isinstance(head_hidden, int) else head_hidden)]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(), nn.Dropout(head_dropout)]
        self.head = nn.Sequential(*layers, nn.Linear(sizes[-1], out_dim))
        if weights is not None:
            self._load_release(weights)
        self.val_metrics = self._make_metrics()
        self.test_metrics = nn.ModuleDict()

    # ------------------------------------------------------------------------ construction
    def _load_release(self, weights: PerceptCLIPRelease) -> None:
        """The release's head, and its adapters when they are kept (the tower is loaded already)."""
        linears = [m for m in self.head if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for layer, (w, b) in zip(linears, weights.head):
                layer.weight.copy_(w)
                layer.bias.copy_(b)
            if self.hparams.release_merge_lora:
                return
            params = dict(self.backbone.model.visual.named_parameters())
            for (i, letter), (a, b) in weights.lora.items():
                stem = f"transformer.resblocks.{i}.attn.{letter}_proj"
                params[f"{stem}.lora_A.default.weight"].copy_(a)
                params[f"{stem}.lora_B.default.weight"].copy_(b)

    def _make_metrics(self) -> MetricCollection:
        if self.hparams.task == "regression":
            return MetricCollection({"srcc": SpearmanCorrCoef(), "plcc": PearsonCorrCoef()})
        n = self.hparams.num_classes
        return MetricCollection({
            "acc": MulticlassAccuracy(num_classes=n, average="micro", top_k=1),
            "f1": MulticlassF1Score(num_classes=n, average="macro"),
        })

    # ------------------------------------------------------------------------------ model
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``(B, embed_dim)`` that the head reads."""
        return self.backbone.encode_image(images, normalize=self.hparams.normalize_embedding)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Scores ``(B,)`` (regression) or logits ``(B, num_classes)``.

        ``images`` is ``(B, 3, H, W)`` or ``(B, K, 3, H, W)`` (K crops per image): crop scores
        are averaged; for classification the result is the log of the mean crop probabilities.
        """
        crops = images.shape[1] if images.ndim == 5 else 1
        out = self.head(self.embed(images.flatten(0, 1) if crops > 1 else images))
        if self.hparams.task == "regression":
            out = out.squeeze(-1)
            return out.view(-1, crops).mean(1) if crops > 1 else out
        if crops > 1:
            out = torch.logsumexp(out.log_softmax(-1).view(-1, crops, out.shape[-1]), dim=1) - math.log(crops)
        return out

    def compute_loss(self, out: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss": ..., <parts>}`` for predictions ``out`` and targets ``target``."""
        if self.hparams.task == "classification":
            return {"loss": F.cross_entropy(out.float(), target.long())}
        target = target.float()
        parts: dict[str, torch.Tensor] = {}
        if "mse" in self.hparams.loss:
            parts["mse"] = F.mse_loss(out.float(), target)
        if "plcc" in self.hparams.loss:
            parts["plcc_loss"] = plcc_loss(out, target)
        parts["loss"] = sum(parts.values())
        return parts

    # ------------------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch["image"])
        losses = self.compute_loss(out, batch["target"])
        n = len(out)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=n)
        for name, value in losses.items():
            if name != "loss":
                self.log(f"train/{name}", value, batch_size=n)
        return losses["loss"]

    def _eval_step(self, batch: dict[str, Any], prefix: str, metrics: MetricCollection, attribute: str) -> None:
        out = self(batch["image"])
        target = batch["target"]
        n = len(out)
        self.log(f"{prefix}/loss", self.compute_loss(out, target)["loss"], batch_size=n,
                 sync_dist=True, add_dataloader_idx=False)
        metrics.update(out.float(), target.float() if self.hparams.task == "regression" else target.long())
        for name, metric in metrics.items():
            # metric_attribute: Lightning maps metric objects to attributes once, before lazily
            # created test metrics exist; naming it lets a Metric be logged (and reset) correctly.
            self.log(f"{prefix}/{name}", metric, batch_size=n, prog_bar=prefix == "val", add_dataloader_idx=False,
                     metric_attribute=f"{attribute}.{name}")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics, "val_metrics")

    def test_set_name(self, dataloader_idx: int) -> str:
        """Name of test dataloader ``dataloader_idx``: the data module's ``test_set_names``, else ``test<i>``."""
        trainer = self.attached_trainer
        names = getattr(trainer.datamodule, "test_set_names", None) if trainer is not None else None
        if names and dataloader_idx < len(names):
            return str(names[dataloader_idx])
        return f"test{dataloader_idx}"

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self.test_set_name(dataloader_idx)
        key = name.replace(".", "_")  # a module name may not contain dots
        if key not in self.test_metrics:
            self.test_metrics[key] = self._make_metrics().to(self.device)
        self._eval_step(batch, f"test/{name}", self.test_metrics[key], f"test_metrics.{key}")

    def predict_step(self, batch: dict[str, Any] | torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Scores ``(B,)`` or class probabilities ``(B, num_classes)``."""
        images = batch["image"] if isinstance(batch, dict) else batch
        if images.shape[0] == 0:  # every image of the batch was unreadable (perceptlab predict)
            return images.new_zeros((0,) if self.hparams.task == "regression" else (0, self.hparams.num_classes))
        out = self(images)
        return out if self.hparams.task == "regression" else out.softmax(-1)

    # --------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        super().setup(stage)  # init_visual_from
        trainer = self.attached_trainer
        dm = trainer.datamodule if trainer is not None else None
        data_task = getattr(dm, "task", None)
        if data_task is not None and data_task != self.hparams.task:
            raise ValueError(
                f"model.task={self.hparams.task!r} but {type(dm).__name__} serves a {data_task} task: "
                "set model.init_args.task to match the data"
            )
        n_data = getattr(dm, "num_classes", None)
        if self.hparams.task == "classification" and n_data is not None and n_data != self.hparams.num_classes:
            raise ValueError(
                f"model.num_classes={self.hparams.num_classes} but {type(dm).__name__} has {n_data} classes"
            )

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        decay = self.optim.weight_decay
        if hp.head_lr is None:
            return self.adamw_cosine(param_groups(self.named_parameters(), decay))
        return self.adamw_cosine([*param_groups(self.backbone.named_parameters(), decay, lr=self.optim.lr),
                                  *param_groups(self.head.named_parameters(), decay, lr=hp.head_lr)])
