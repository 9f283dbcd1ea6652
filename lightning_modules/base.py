"""What the three stage modules share: the ``init_visual_from`` contract, AdamW + cosine, the tower file.

* ``init_visual_from`` -- a ``visual.pt``, a Lightning checkpoint of any stage, an open_clip
  checkpoint or a plain CLIP state dict -- is copied into the vision tower (``visual.*`` tensors
  only; LoRA adapters in the file are merged on the way in, LoRA adapters of this module keep
  their initialisation) at the same point in every stage: in ``setup``, before the first batch
  and before FSDP shards the model. It is skipped when the weights come from a checkpoint
  (``--ckpt_path``, ``load_from_checkpoint``), so a resumed run never overwrites its trained
  tower and the file need not exist any more.
* The optimiser is AdamW with open_clip's weight-decay exclusions and a per-step cosine schedule
  with linear warm-up (:func:`perceptlab.core.optim.adamw_cosine`).
* The tower leaves a run as ``visual.pt`` (:meth:`perceptlab.core.backbone.CLIPBackbone.save_visual`,
  LoRA merged).

Stage modules subclass :class:`StageModule`, keep their backbone as ``self.backbone`` and call
``super()`` from ``setup`` and ``on_load_checkpoint`` when they override them.
"""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from perceptlab.core.backbone import CLIPBackbone, LoadReport
from perceptlab.core.optim import MOVED_OPTIMISER_ARGUMENTS, AdamWCosine, adamw_cosine, total_training_steps


class StageModule(pl.LightningModule):
    """Base of the stage modules (see the module docstring)."""

    backbone: CLIPBackbone

    def __init__(self) -> None:
        super().__init__()
        self.visual_load_report: LoadReport | None = None
        self._weights_from_checkpoint = False

    # ------------------------------------------------------------------------ init_visual_from
    @property
    def init_visual_source(self) -> str | None:
        return self.hparams.get("init_visual_from")

    @property
    def init_visual_strict(self) -> bool:
        return bool(self.hparams.get("init_visual_strict", False))

    def init_visual(self) -> LoadReport:
        """Copy the ``visual.*`` tensors of ``init_visual_from`` into the vision tower; returns the report."""
        source = self.init_visual_source
        if not source:
            raise ValueError("init_visual_from is not set")
        report = self.backbone.load_visual(source, strict=self.init_visual_strict)
        self.visual_load_report = report
        rank_zero_info(f"init_visual_from: {report}")
        return report

    @property
    def attached_trainer(self):
        """The trainer this module is attached to, or ``None`` (``LightningModule.trainer``, Lightning's
        public property, raises ``RuntimeError`` when there is none)."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def setup(self, stage: str) -> None:
        trainer = self.attached_trainer
        from_checkpoint = self._weights_from_checkpoint or (trainer is not None and trainer.ckpt_path is not None)
        if self.init_visual_source and self.visual_load_report is None:
            if from_checkpoint:
                rank_zero_info("weights come from a checkpoint: init_visual_from is not re-applied")
            else:
                self.init_visual()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Called by load_from_checkpoint and by a resumed fit: the checkpoint holds every weight,
        # so a later fit must not overwrite the trained tower with init_visual_from's.
        self._weights_from_checkpoint = True

    def on_fit_start(self) -> None:
        if self.visual_load_report is not None and self.logger is not None:
            experiment = getattr(self.logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text("init_visual_from", str(self.visual_load_report).replace("; ", "  \n"))

    # ------------------------------------------------------------------------------ optimiser
    #: A stage's optimiser arguments of earlier versions went into its ``optim`` group.
    moved_arguments = MOVED_OPTIMISER_ARGUMENTS

    def save_optim_hyperparameters(self, optim: AdamWCosine | dict) -> None:
        """``save_hyperparameters`` of the calling ``__init__``, with the ``optim`` group kept as
        ``self.optim`` and stored as plain fields (a checkpoint holds data, not a class)."""
        import inspect

        self.save_hyperparameters(ignore=["optim"], frame=inspect.currentframe().f_back)
        self.optim = AdamWCosine.of(optim)
        self.hparams["optim"] = self.optim.as_dict()

    def adamw_cosine(self, groups: list[dict]) -> dict:
        """What ``configure_optimizers`` returns for parameter ``groups`` (see ``core.optim.param_groups``)."""
        o = self.optim
        # the run's length is asked for at the first step, not here (``core.optim.cosine_with_warmup``)
        return adamw_cosine(groups, o.lr, o.betas, o.eps, o.warmup_steps, lambda: total_training_steps(self.trainer),
                            fused=self.hparams.get("fused_adamw"))

    # ---------------------------------------------------------------------------------- export
    def export_visual(self, path: str | Path) -> Path:
        """Write the vision tower alone to ``path`` (``CLIPBackbone.save_visual``: LoRA merged into a copy)."""
        return self.backbone.save_visual(path)
