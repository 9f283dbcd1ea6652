"""Stage 1: perceptual initialisation of a CLIP vision tower on NIGHTS triplets (DreamSim's recipe).

A triplet is a reference and two distortions; people chose which distortion looks closer to the
reference. The model's embedding of an image is the L2-normalised, projected image embedding of
the shared backbone (through an MLP head in the ``head`` variant); its distance is the cosine
distance ``d = 1 - cos(e_ref, e_x)``, in [0, 2], lower = more similar. Training minimises
DreamSim's hinge loss (:func:`hinge_loss`) so that the image most people chose gets the smaller
distance by at least the margin.

Variants (``variant``):
    * ``full`` (default) -- every weight of the vision tower trains; with ``pretrained=None`` this
      is the paper's setting, a tower trained from random initialisation on human judgements.
    * ``lora`` -- peft LoRA adapters on the query, key and value projections of every attention
      block (``perceptlab.core.lora.apply_lora``); only adapter weights train.
    * ``head`` -- the backbone is frozen; a residual MLP on the embedding (DreamSim's) trains.

Only the vision tower is ever in memory (``vision_only=True``): stage 1 has no text.

Hand-off to stage 2: at the end of ``fit`` the vision tower is written to
``<trainer.log_dir>/visual.pt`` (``runs/<experiment>/version_<n>/visual.pt``; the trainer's
``default_root_dir`` when it has no logger) with
``CLIPBackbone.save_visual``; stage 2 reads it with ``init_visual_from``. For ``lora`` the
adapters are merged into the weights first, so the file is a plain open_clip tower. For ``head``
the file holds the (unchanged) backbone tower: the head is NOT part of the hand-off, because
stage 2 trains the tower itself. The Lightning checkpoint of a ``full`` run is an equally valid
``init_visual_from`` source (for instance the best-validation checkpoint), and so is that of a
``lora`` run: ``CLIPBackbone.load_visual`` merges its adapters on the way in.

Metrics (torchmetrics means of per-triplet scores, so they are exact under DDP; 2AFC is in
[0, 1], higher = more human-like, 0.5 = chance): ``train/loss``, ``train/2afc``, ``val/2afc``,
``val/2afc_best`` and ``test/2afc/<split>`` for each test split of the data module.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MaxMetric, MeanMetric

from perceptlab.core.scores import two_afc_per_item
from perceptlab.core.backbone import CLIPBackbone
from perceptlab.core.lora import apply_lora, lora_parameter_count
from perceptlab.core.optim import AdamWCosine, param_groups
from perceptlab.core.checkpoints import VISUAL_FILENAME
from perceptlab.lightning_modules.base import StageModule

log = logging.getLogger(__name__)

VARIANTS = ("full", "lora", "head")


def hinge_loss(d0: torch.Tensor, d1: torch.Tensor, p: torch.Tensor, margin: float = 0.05) -> torch.Tensor:
    """DreamSim's hinge loss: ``mean(max(0, margin - (d0 - d1) * y))`` with ``y = 2 round(p) - 1``.

    ``d0``/``d1``: distances ``(n,)`` of the reference to the left/right image; ``p``: share of
    people who judged the right image closer. ``y = +1`` (most chose right) asks for
    ``d1 <= d0 - margin``, ``y = -1`` for ``d0 <= d1 - margin``. As in DreamSim, ``torch.round``
    rounds half to even, so a tied vote (``p = 0.5``) counts as "left".
    """
    y = 2 * torch.round(p.to(d0.dtype)) - 1
    return torch.clamp(margin - (d0 - d1) * y, min=0).mean()


class EmbeddingHead(nn.Module):
    """DreamSim's MLP head on an embedding: ``e + fc2(relu(fc1(e)))``, shape ``(n, dim)`` kept.

    ``fc2`` starts at zero, so the head is the identity at initialisation and training starts
    from the backbone's own distances (DreamSim initialises it randomly).
    """

    def __init__(self, dim: int, hidden_dim: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return e + self.fc2(F.relu(self.fc1(e)))


class PerceptualInitModule(StageModule):
    """Trains the shared backbone's vision tower on NIGHTS 2AFC triplets (stage 1).

    Batches are dicts ``{"ref", "left", "right"}`` of image tensors ``(n, 3, H, W)`` plus ``"p"``
    (``(n,)``, share of people who judged the right image closer), as
    ``perceptlab.datamodules.nights.NightsDataModule`` yields them.

    Args:
        model_name: open_clip architecture or perceptlab config (``perceptlab-vit-tiny-64``).
        pretrained: ``None`` (random init: the paper's stage 1), an open_clip tag or a weights file.
        init_visual_from: a ``visual.pt``, Lightning or open_clip checkpoint whose vision tower is
            loaded before training (applied after ``pretrained``; see ``lightning_modules.base``).
        variant: ``full`` (train every tower weight), ``lora`` (peft adapters on q/k/v only) or
            ``head`` (frozen backbone + residual MLP head).
        margin: hinge-loss margin, in cosine-distance units (DreamSim: 0.05).
        optim: the optimiser and schedule (``core.optim.AdamWCosine``: ``lr``, ``weight_decay`` -- not
            on biases, norms, gains and scales --, ``betas``, ``eps``, ``warmup_steps``).
        lora_rank: LoRA rank r (``variant="lora"``; DreamSim: 16).
        lora_alpha: LoRA alpha; adapters are scaled by ``alpha / rank`` (DreamSim: 0.5).
        lora_dropout: dropout on each adapter's input (DreamSim: 0.3).
        lora_targets: peft target names; default the q, k, v projections of every block.
        head_hidden: hidden width of the MLP head (``variant="head"``).
        force_image_size: override the architecture's input resolution (pixels).
        patch_dropout: FLIP patch-dropout rate during training (ViTs), ``None`` = the config's.
        export_visual: write ``visual.pt`` into the run directory at the end of ``fit``.
    """

    def __init__(
        self,
        model_name: str | None = "perceptlab-vit-tiny-64",
        pretrained: str | None = None,
        init_visual_from: str | None = None,
        variant: Literal["full", "lora", "head"] = "full",
        margin: float = 0.05,
        optim: AdamWCosine = AdamWCosine(lr=5e-4, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6, warmup_steps=150),
        lora_rank: int = 16,
        lora_alpha: float = 0.5,
        lora_dropout: float = 0.3,
        lora_targets: list[str] | None = None,
        head_hidden: int = 512,
        force_image_size: int | None = None,
        patch_dropout: float | None = None,
        export_visual: bool = True,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.save_optim_hyperparameters(optim)
        self.backbone = CLIPBackbone(
            model_name, pretrained=pretrained, vision_only=True,
            force_image_size=force_image_size, patch_dropout=patch_dropout,
        )
        # Only the tower's weights are used: leave the logit scale (and anything else outside
        # the tower) frozen, or DDP would wait for gradients that never come.
        for name, param in self.backbone.model.named_parameters():
            if not name.startswith("visual."):
                param.requires_grad_(False)
        self.head: EmbeddingHead | None = None
        if variant == "lora":
            apply_lora(self.backbone.model.visual, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout,
                       target_modules=lora_targets)
        elif variant == "head":
            self.backbone.requires_grad_(False)
            self.head = EmbeddingHead(self.backbone.embed_dim, head_hidden)

        self.train_2afc = MeanMetric()
        self.val_2afc = MeanMetric()
        self.val_2afc_best = MaxMetric()
        self.test_2afc = nn.ModuleDict()

    # ---------------------------------------------------------------------------- the model
    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.variant == "head":
            # A frozen backbone is a fixed function: no patch dropout or other train-time noise.
            self.backbone.eval()
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm perceptual embeddings ``(n, dim)`` of images ``(n, 3, H, W)``."""
        if self.head is None:
            return self.backbone.encode_image(images, normalize=True)
        with torch.no_grad():
            e = self.backbone.encode_image(images, normalize=True)
        return F.normalize(self.head(e.float()), dim=-1)

    def distances(self, ref: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine distances ``(d0, d1)``, each ``(n,)`` float32, of ``ref`` to ``left`` / ``right``.

        Three encodes per triplet (a pairwise ``model(a, b)`` loop needs four). On an accelerator
        the three images go through the tower as ONE batch of ``3n`` (larger matmuls, one launch
        per layer). On CPU they go as three batches of ``n``: there a ``3n`` batch's activations
        fall out of cache and cost more per image than three passes (tiny ViT, 2 cores, 3 x 32
        images: 175 ms as one batch, 145 ms as three).
        """
        n = ref.shape[0]
        if ref.device.type == "cpu":
            e = torch.cat([self.embed(x) for x in (ref, left, right)])
        else:
            e = self.embed(torch.cat([ref, left, right]))
        e = e.float()  # distances in fp32 under bf16-mixed
        e_ref, e_left, e_right = e[:n], e[n : 2 * n], e[2 * n :]
        return 1 - (e_ref * e_left).sum(-1), 1 - (e_ref * e_right).sum(-1)

    def forward(self, ref: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.distances(ref, left, right)

    def _step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(hinge loss, per-triplet 2AFC scores ``(n,)``, n) of a batch."""
        d0, d1 = self.distances(batch["ref"], batch["left"], batch["right"])
        p = torch.as_tensor(batch["p"], device=d0.device, dtype=d0.dtype)
        return hinge_loss(d0, d1, p, self.hparams.margin), two_afc_per_item(d0.detach(), d1.detach(), p), p.shape[0]

    # ----------------------------------------------------------------------------- training
    def on_train_start(self) -> None:
        # The sanity check's few batches must not count as the best validation score.
        self.val_2afc.reset()
        self.val_2afc_best.reset()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, scores, n = self._step(batch)
        self.train_2afc(scores)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("train/2afc", self.train_2afc, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, scores, n = self._step(batch)
        self.val_2afc.update(scores)
        self.log("val/loss", loss, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("val/2afc", self.val_2afc, on_epoch=True, prog_bar=True, batch_size=n)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_2afc_best(self.val_2afc.compute())
        self.log("val/2afc_best", self.val_2afc_best.compute(), sync_dist=True)  # equal on every rank

    # --------------------------------------------------------------------------------- test
    def _test_split_names(self) -> list[str]:
        names = getattr(self.trainer.datamodule, "test_set_names", None) if self.trainer.datamodule is not None else None
        if names:
            return list(names)
        return [str(i) for i in range(len(self.trainer.num_test_batches))]

    def on_test_start(self) -> None:
        self._test_names = self._test_split_names()
        for name in self._test_names:
            if name not in self.test_2afc:
                self.test_2afc[name] = MeanMetric().to(self.device)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        _, scores, n = self._step(batch)
        name = self._test_names[dataloader_idx]
        metric = self.test_2afc[name]
        metric.update(scores)
        self.log(f"test/2afc/{name}", metric, on_epoch=True, batch_size=n, add_dataloader_idx=False)

    # -------------------------------------------------------------------------- optimisers
    def configure_optimizers(self) -> dict:
        return self.adamw_cosine(param_groups(self.named_parameters(), self.optim.weight_decay))

    # ------------------------------------------------------------------------------ export
    def lora_parameter_count(self) -> int:
        """Scalar LoRA parameters in the vision tower (0 unless ``variant="lora"``)."""
        return lora_parameter_count(self.backbone.model.visual)

    def on_fit_end(self) -> None:
        if not self.hparams.export_visual:
            return
        run_dir = self.trainer.log_dir  # a collective call: every rank asks, rank zero writes
        if not run_dir:
            rank_zero_info("no run directory (logger disabled): visual.pt not written")
            return
        if self.trainer.is_global_zero:
            path = self.export_visual(Path(run_dir) / VISUAL_FILENAME)
            rank_zero_info(f"vision tower for stage 2 written to {path}")
