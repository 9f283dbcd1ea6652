"""Full-reference IQA probe: embedding distance between reference and distorted image vs. MOS.

The model's quality prediction for a pair is the negative distance between the embeddings of the
distorted and the reference image (closer = judged less degraded). Reported against the human
scores, oriented so that a positive correlation means agreement with people:
``iqa_fr/<dataset>/srcc`` (Spearman), ``/plcc`` (Pearson, raw scores) and ``/krcc`` (Kendall).

Classical full-reference metrics of pyiqa (``psnr``, ``ssim``, ``fsim``, ``vif``, ``gmsd``, ...:
formulas, no learned weights) are computed once on the same pairs, as the model sees them (resized
and centre-cropped), and reported at every evaluation as constant reference lines
``iqa_fr/<dataset>/<metric>/srcc`` (and ``/plcc``).

Data: pyiqa meta-info CSVs (``ref_name,dist_name,<score>,...``), read by the IQA tables' one reader
(``perceptlab.datamodules.iqa.read_iqa_set``, the perceptual tasks' too), with its argument names.
Presets fill in the file names and the score's direction for ``tid2013`` (``mos``, higher is better)
and ``kadid10k`` (``dmos``, higher is better, as pyiqa reads KADID-10k), and read the columns by
position as pyiqa does (reference, distorted, score, whatever the header); any other data set has
``ref_name``, ``dist_name`` and ``mos`` columns (or names its own) and states ``lower_better``.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from perceptlab.core import scores, uncertainty
from perceptlab.callbacks.probes.base import Items, ProbeContext, TableProbe, decode_images, select_items, shard_indices
from perceptlab.callbacks.probes.metric_info import MetricInfo
from perceptlab.datamodules.iqa import IQASet, check_iqa_set, iqa_preset, is_preset, read_iqa_set

log = logging.getLogger(__name__)

DEFAULT_CLASSICAL = ("psnr", "ssim", "fsim", "vif", "gmsd")


class FullReferenceIQAProbe(TableProbe):
    """Correlation of embedding distances with full-reference MOS.

    Args:
        root: data-set folder (holds the CSV and the image folders).
        dataset: preset name (``tid2013``, ``kadid10k``) or any name used in metric names.
        meta_info_file: meta-info CSV, relative to ``root`` (default from the preset).
        image_dir / ref_dir: folders of the distorted / reference images, relative to ``root``
            (default from the preset, else ``images``).
        name_column / ref_column / mos_column: the distorted image, reference image and human
            score columns, by name (default with a preset: pyiqa's positions 1, 0 and 2; else
            ``dist_name``, ``ref_name``, ``mos``).
        lower_better: direction of the human score (False: higher = better quality). Required for
            data sets without a preset.
        distance: ``cosine`` (default), ``l2`` or ``per_dimension_normalized_l2`` (each embedding
            dimension's squared difference divided by its mean over every pair of the set,
            Hernandez-Camara et al.'s; with ``max_items: null``, all 3,000 TID2013 pairs as they
            measure it).
        classical: pyiqa full-reference metrics computed once as reference lines (``[]``: none).
        **common: ``name``, ``max_items``, ``layer``, ``batch_size``, ``seed`` of :class:`Probe`, declared there once.
    """

    family = "iqa_fr"
    #: Arguments of earlier versions and where they went (one line names the new place; see
    #: ``perceptlab.commands.moved``): the IQA probes take the IQA tables' argument names.
    moved_arguments = {"csv": "meta_info_file", "dist_dir": "image_dir", "score_column": "mos_column",
                       "higher_better": "lower_better (the opposite: lower_better = not higher_better)"}

    def __init__(
        self,
        root: str,
        dataset: str = "tid2013",
        meta_info_file: str | None = None,
        image_dir: str | None = None,
        ref_dir: str | None = None,
        name_column: str | None = None,
        ref_column: str | None = None,
        mos_column: str | None = None,
        lower_better: bool | None = None,
        distance: str = "cosine",
        classical: Sequence[str] = DEFAULT_CLASSICAL,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)  # name, max_items, layer, batch_size, seed: see Probe
        preset = iqa_preset(dataset) if is_preset(dataset) else None
        if preset is not None and not preset.full_reference:
            raise ValueError(f"FullReferenceIQAProbe(dataset={dataset!r}): {preset.name} is a no-reference set; "
                             "use CLIPIQAProbe")
        self._dataset = dataset
        # the table is the tasks' (datamodules.iqa): the same reader, presets, columns and checks
        self.iqa = IQASet(name=dataset, root=str(root), preset=dataset if preset else None, full_reference=True,
                          meta_info_file=meta_info_file, image_dir=image_dir, ref_dir=ref_dir, name_column=name_column,
                          ref_column=ref_column, mos_column=mos_column, lower_better=lower_better,
                          mos_normalize="none", subset="all")
        try:
            check_iqa_set(self.iqa)
        except ValueError as exc:
            raise ValueError(f"FullReferenceIQAProbe(dataset={dataset!r}): {exc}; a pyiqa preset (e.g. tid2013, "
                             "kadid10k) sets both") from None
        scores.check_distance(distance)
        self.distance = distance
        self.classical = list(classical)
        self._classical_values: dict[str, torch.Tensor] | None = None
        self._classical_local: dict[str, tuple[torch.Tensor, bool]] = {}

    @property
    def dataset(self) -> str:
        return self._dataset

    def load_table(self) -> int:
        rows = read_iqa_set(replace(self.iqa, root=str(self.path)), "test")  # subset="all": every row
        rows = rows.iloc[select_items(len(rows), self.max_items, self.seed)].reset_index(drop=True)
        self.table = pd.DataFrame({"ref_name": rows["ref_file"], "dist_name": rows["file"]})
        self.ref_paths, self.dist_paths = rows["ref_path"].tolist(), rows["path"].tolist()
        # Human quality, oriented so that higher is better whatever the data set's convention.
        self.quality = torch.tensor(rows["score"].to_numpy(), dtype=torch.float64)
        return len(rows)

    def load_images(self, items: list[int], transform: Callable) -> None:
        self.dist_images = decode_images([self.dist_paths[i] for i in items], transform, self.num_workers)
        # References are shared by many distortions: each one is encoded once, by one process, and
        # the features are gathered, so every process runs the same number of forward passes.
        refs = sorted(set(self.ref_paths))
        self.n_refs = len(refs)
        index = {r: i for i, r in enumerate(refs)}
        self.ref_of_item = torch.tensor([index[self.ref_paths[i]] for i in items], dtype=torch.long)
        self.ref_images = decode_images([refs[i] for i in shard_indices(len(refs), self.rank, self.world_size)],
                                        transform, self.num_workers)
        if self.classical:
            # Model-free, so computed once here on this process's pairs, gathered at evaluation.
            local_refs = sorted({self.ref_paths[i] for i in items})
            pair_refs = decode_images(local_refs, transform, self.num_workers)
            local_index = {r: i for i, r in enumerate(local_refs)}
            ref_per_pair = pair_refs[[local_index[self.ref_paths[i]] for i in items]] if items else pair_refs
            self._classical_local = self._compute_classical(ref_per_pair)
        self._classical_values = None

    def measure(self, ctx: ProbeContext) -> Items:
        """Per pair: the model's prediction (minus the embedding distance), the human quality and
        each classical metric's value (oriented higher = better)."""
        refs = self.gather_items(ctx, self.features(ctx, self.ref_images), n=self.n_refs).to(ctx.device)
        dist = self.features(ctx, self.dist_images)
        (distance,) = self.pair_distances(ctx, [(dist, refs[self.ref_of_item.to(ctx.device)])], self.distance)
        return {self.name: {"prediction": -distance, "quality": self.quality, **self.classical_values(ctx)}}

    def describe(self, metric: str) -> MetricInfo:
        """``<name>/srcc|plcc|krcc``: the model's correlations with MOS, as the no-reference probe's;
        ``<name>/<classical>/<statistic>``: a classical metric's correlation, a model-free reference
        line drawn with its data set and statistic."""
        parts = metric[len(self.name) + 1:].split("/")
        statistic = parts[-1]
        if len(parts) == 2:
            return MetricInfo(probe=self.name, family=self.family, statistic=statistic, reference=True,
                              chart=f"{self.name}/{statistic}", panel=self.name)  # drawn with the model's <statistic>
        return MetricInfo(probe=self.name, family=self.family, statistic=statistic, headline=statistic == "srcc",
                          chart=metric, panel=self.name)

    def score(self, items: Items) -> dict[str, float]:
        t = items[self.name]
        metrics = {f"{self.name}/{k}": v for k, v in scores.correlations(t["prediction"], t["quality"]).items()}
        for metric_name in self.classical:  # model-free reference lines: the same at every evaluation
            metrics[f"{self.name}/{metric_name}/srcc"] = scores.srcc(t[metric_name], t["quality"])
            metrics[f"{self.name}/{metric_name}/plcc"] = scores.plcc(t[metric_name], t["quality"])
        return metrics

    def resampled(self, items: Items, idx: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t, i = items[self.name], idx[self.name]
        out = {f"{self.name}/{k}": v for k, v in uncertainty.correlations(t["prediction"], t["quality"], i).items()}
        for metric_name in self.classical:
            out[f"{self.name}/{metric_name}/srcc"] = uncertainty.spearman(t[metric_name], t["quality"], i)
            out[f"{self.name}/{metric_name}/plcc"] = uncertainty.pearson(t[metric_name], t["quality"], i)
        return out

    def _compute_classical(self, ref_per_pair: torch.Tensor) -> dict[str, tuple[torch.Tensor, bool]]:
        """pyiqa value of every classical metric per local pair, and whether lower is better."""
        import pyiqa  # slow to import; only when reference lines are wanted

        out: dict[str, tuple[torch.Tensor, bool]] = {}
        for metric_name in self.classical:
            metric = pyiqa.create_metric(metric_name, as_loss=False, device="cpu")
            values = []
            for start in range(0, self.dist_images.shape[0], 64):
                dist = self.dist_images[start:start + 64].float() / 255
                ref = ref_per_pair[start:start + 64].float() / 255
                try:
                    with torch.inference_mode():
                        values.append(metric(dist, ref).flatten().float())
                except RuntimeError as err:  # e.g. ms_ssim needs inputs of 161 px or more
                    raise RuntimeError(
                        f"{self.name}: pyiqa metric {metric_name!r} failed on images of "
                        f"{tuple(dist.shape[-2:])} px: {err}"
                    ) from err
            out[metric_name] = (torch.cat(values) if values else torch.zeros(0), bool(metric.lower_better))
        return out

    def classical_values(self, ctx: ProbeContext) -> dict[str, torch.Tensor]:
        """Every classical metric's value per pair, all pairs, oriented higher = better (gathered once)."""
        if self._classical_values is None:
            self._classical_values = {}
            for metric_name, (local, lower_better) in self._classical_local.items():
                value = self.gather_items(ctx, local.to(ctx.device))
                self._classical_values[metric_name] = -value if lower_better else value
        return dict(self._classical_values)
