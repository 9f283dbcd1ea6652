"""``CheckpointSeries``: any model, or a run's checkpoints, as a LightningModule the alignment suite can measure.

``perceptlab evaluate`` runs it through Lightning's validation loop: one "batch" per model, each
at the training step it knows, in step order (``core.checkpoints.place_series``: a file without a
step never moves those with one; the series' rule is printed). Each step loads that model's weights into
the one backbone (every process loads every model: the probes share their items across
processes, as in training) and returns ``{"evaluated_model", "step", "epoch"}``; the
:class:`~perceptlab.callbacks.alignment.AlignmentSuite` then evaluates the model as loaded and
records it at the model's own step. Lightning supplies devices, DDP, precision (``bf16-mixed``)
and the progress bar.

Every model is read before any work (file, kind, architecture), so a bad file or a missing
architecture is named at once. The backbone is built once, for the first model's architecture
(``model_name`` where the files do not record it); a model of another architecture is an error
naming both. Text-based probes need every model of the series to have a text tower; a series with
a vision-only file is evaluated vision-only (the suite says which probes it skips).
"""
from __future__ import annotations

from collections.abc import Iterator

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset

from perceptlab.core.backbone import CLIPBackbone
from perceptlab.core.checkpoints import ModelSource, expand_sources


class _Indices(IterableDataset):
    """0..n-1 in every process (iterable: Lightning never splits it across ranks)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))


class CheckpointSeries(pl.LightningModule):
    """Models to measure, one after the other (see the module docstring).

    Args:
        models: files, folders, globs or open_clip pretrained tags.
        model_name: the architecture where a file does not record it (open_clip checkpoints, tags).
        skip: models already measured (``perceptlab evaluate`` on a growing folder): not loaded again.
        steps_per_epoch: places ``open_clip_train`` checkpoints (which record their epoch) at
            ``epoch x steps_per_epoch``.
        taken: steps already measured (step -> model): an alias of one of them is not measured again.
    """

    evaluates_checkpoints = True

    def __init__(self, models: list[str], model_name: str | None = None, skip: list[str] | None = None,
                 steps_per_epoch: int | None = None, taken: dict[int, str] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not models:
            raise ValueError("perceptlab evaluate needs at least one MODEL")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"--steps_per_epoch must be a positive integer, got {steps_per_epoch}")
        self.sources: list[ModelSource] = self._placed(list(models), model_name, taken)
        names = {s.model_name for s in self.sources if s.model_name} | ({model_name} if model_name else set())
        first = self.sources[0]
        if first.kind == "hf" and not model_name:
            arch, pretrained = None, first.spec  # the architecture is read from the transformers weights
        else:
            arch, pretrained = model_name or first.model_name, first.spec if first.kind == "tag" else None
            if not arch:
                raise ValueError(f"model {first.spec!r} ({first.kind}) does not record its architecture: "
                                 "give --model_name (e.g. ViT-B-32)")
            if len(names) > 1:
                raise ValueError(f"the models are of different architectures ({', '.join(sorted(names))}): "
                                 "evaluate them as separate series")
        self.vision_only = not all(s.has_text for s in self.sources)
        self.backbone = CLIPBackbone(arch, pretrained=pretrained, vision_only=self.vision_only)
        self.backbone.requires_grad_(False)
        done = set(skip or [])
        self.todo = [(i, s) for i, s in enumerate(self.sources) if s.spec not in done]
        if not self.sources:
            raise ValueError("every model given is an alias of a step already measured: nothing to measure")

    def _placed(self, models: list[str], model_name: str | None, taken: dict[int, str] | None) -> list[ModelSource]:
        sources, notes = expand_sources(models, model_name, self.hparams.steps_per_epoch, taken)
        for note in notes:
            rank_zero_info(f"perceptlab evaluate: {note}")
        return sources

    def extend(self, models: list[str], taken: dict[int, str] | None = None) -> None:
        """Models that appeared since (``perceptlab evaluate --watch``): they become the only ones to
        measure, each at its own step, into the same backbone (same architecture and towers);
        ``taken``: the steps measured so far (an alias of one is not measured again)."""
        new = self._placed(list(models), self.hparams.model_name or self.backbone.model_name, taken)
        other = sorted({s.model_name for s in new if s.model_name and s.model_name != self.backbone.model_name})
        if other:
            raise ValueError(f"new models of another architecture ({', '.join(other)}) than the series' "
                             f"{self.backbone.model_name}: {', '.join(s.spec for s in new if s.model_name in other)}")
        if not self.vision_only and not all(s.has_text for s in new):
            raise ValueError("a vision-only model joined a series measured with its text tower: "
                             + ", ".join(s.spec for s in new if not s.has_text))
        start = len(self.sources)
        self.sources += new
        self.todo = [(start + i, s) for i, s in enumerate(new)]

    def load(self, source: ModelSource) -> None:
        """Put ``source``'s weights into the backbone (vision tower; the text tower where it is used)."""
        if source.kind == "tag":
            import open_clip

            state = open_clip.create_model(self.backbone.model_name, pretrained=source.spec).state_dict()
        else:
            state = source.open_clip_state()
        self.backbone.load_visual({f"visual.{k[len('visual.'):]}": v for k, v in state.items() if k.startswith("visual.")},
                                  strict=True)
        if not self.vision_only:
            model = self.backbone.model
            text = {k: v for k, v in state.items() if not k.startswith("visual.") and k in model.state_dict()}
            if "logit_scale" in text:
                text["logit_scale"] = text["logit_scale"].reshape(model.logit_scale.shape)
            missing = [k for k in model.state_dict() if not k.startswith("visual.") and k not in text]
            if missing:
                raise ValueError(f"model {source.spec!r}: its text tower lacks {', '.join(missing[:5])}")
            with torch.no_grad():
                for key, value in text.items():
                    model.state_dict()[key].copy_(value)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Indices(len(self.todo)), batch_size=None)

    def validation_step(self, batch: int, batch_idx: int) -> dict:
        _, source = self.todo[int(batch)]
        self.load(source)
        return {"evaluated_model": source.spec, "step": source.at,
                "epoch": source.epoch if source.epoch is not None else -1}

    def configure_optimizers(self):
        return None
