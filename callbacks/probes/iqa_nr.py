"""No-reference IQA probe: CLIP-IQA (Wang, Chan & Loy, AAAI 2023) against MOS.

For each antonym prompt pair (default ``"Good photo."`` / ``"Bad photo."``), the softmax over
``logit_scale x cosine`` of the image with the two prompts gives the probability of the positive
prompt; the quality prediction is its mean over pairs, in [0, 1], higher = better. Reported as
``iqa_nr/<dataset>/srcc`` / ``/plcc`` / ``/krcc`` against the human scores oriented higher-better.

Differences from pyiqa's ``clipiqa`` that matter when comparing numbers: the image goes through the
backbone's eval transform (resize + centre crop to the model's input size) rather than being fed
at full resolution, ``logit_scale`` is fixed (default 100, the temperature of a trained CLIP
and of pyiqa) so that the averaged probability does not move with the learned temperature, and
``max_items`` evaluates a fixed subset (1000 by default; ``None``: the whole set). As in pyiqa,
the ``livec`` preset leaves out the CSV's first 7 rows (the original data set's training images).

Needs a text tower; the suite skips it for vision-only backbones. Data: pyiqa meta-info CSVs
with an image-name column and a score column; presets for ``koniq``, ``livec`` and ``spaq``, which
read the columns by position as pyiqa does (image name first, score second, whatever the header).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from perceptlab.core import scores, uncertainty
from perceptlab.callbacks.probes.base import Items, ProbeContext, TableProbe, decode_images, select_items
from perceptlab.callbacks.probes.metric_info import MetricInfo
from perceptlab.datamodules.iqa import PHASES, IQASet, check_iqa_set, iqa_preset, is_preset, read_iqa_set

DEFAULT_PROMPT_PAIRS = (("Good photo.", "Bad photo."),)


class CLIPIQAProbe(TableProbe):
    """CLIP-IQA quality predictions vs. no-reference MOS.

    Args:
        root: data-set folder (CSV and image folder).
        dataset: preset name (``koniq``, ``livec``, ``spaq``) or any name used in metric names.
        meta_info_file / image_dir / lower_better: table layout (default from the preset;
            ``meta_info_file`` and ``lower_better`` required without one). ``image_dir`` is relative to ``root``.
        name_column / mos_column: image-name and human score columns, by name (default with a
            preset: the CSV's first and second column, as pyiqa reads them; else ``img_name``, ``mos``).
        split: keep only the rows of this phase (``train``/``val``/``test``), by the one IQA split
            rule (``datamodules.iqa.split_labels``), so a probe and a task model on the same set
            see the same rows.
        split_column / split_file / split_index / split_ratio / split_seed: that rule's settings,
            as ``IQASet`` takes them (``auto``: the preset's split column, else ``official_split``
            or ``split``, else a seeded ratio split).
        drop_first: leave out the CSV's first rows (default: 7 for ``livec``, as pyiqa; else 0).
        prompt_pairs: ``[[positive, negative], ...]``; probabilities are averaged over pairs.
        logit_scale: softmax temperature multiplier (fixed; see the module docstring).
        **common: ``name``, ``max_items``, ``layer``, ``batch_size``, ``seed`` of :class:`Probe`,
            declared there once (``layer`` reads the block's class token through the final norm
            and projection).
    """

    family = "iqa_nr"
    needs_text = True
    #: Arguments of earlier versions and where they went (``perceptlab.commands.moved``).
    moved_arguments = {"csv": "meta_info_file", "score_column": "mos_column",
                       "higher_better": "lower_better (the opposite: lower_better = not higher_better)"}

    def __init__(
        self,
        root: str,
        dataset: str = "koniq",
        meta_info_file: str | None = None,
        image_dir: str | None = None,
        name_column: str | None = None,
        mos_column: str | None = None,
        lower_better: bool | None = None,
        split: str | None = None,
        split_column: str | None = "auto",
        split_file: str | None = None,
        split_index: Any = 1,
        split_ratio: Sequence[float] = (0.7, 0.1, 0.2),
        split_seed: int = 0,
        drop_first: int | None = None,
        prompt_pairs: Sequence[Sequence[str]] = DEFAULT_PROMPT_PAIRS,
        logit_scale: float = 100.0,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)  # name, max_items, layer, batch_size, seed: see Probe
        preset = iqa_preset(dataset) if is_preset(dataset) else None
        if preset is not None and preset.full_reference:
            raise ValueError(f"CLIPIQAProbe(dataset={dataset!r}): {preset.name} is a full-reference set; "
                             "use FullReferenceIQAProbe")
        if split is not None and split not in PHASES:
            raise ValueError(f"CLIPIQAProbe.split must be one of {', '.join(PHASES)} or null, got {split!r}")
        self._dataset = dataset
        self.split = split
        # the table is the tasks' (datamodules.iqa): the same reader, presets, split rule and checks
        self.iqa = IQASet(name=dataset, root=str(root), preset=dataset if preset else None, full_reference=False,
                          meta_info_file=meta_info_file, image_dir=image_dir, name_column=name_column,
                          mos_column=mos_column, lower_better=lower_better, mos_normalize="none",
                          split_column=split_column, split_file=split_file, split_index=split_index,
                          split_ratio=tuple(split_ratio), split_seed=split_seed, drop_first=drop_first,
                          subset="all" if split is None else "split")
        try:
            check_iqa_set(self.iqa)
        except ValueError as exc:
            raise ValueError(f"CLIPIQAProbe(dataset={dataset!r}): {exc}; a pyiqa preset (e.g. koniq, livec, "
                             "spaq) sets both") from None
        self.prompt_pairs = [tuple(p) for p in prompt_pairs]
        bad = [p for p in self.prompt_pairs if len(p) != 2]
        if not self.prompt_pairs or bad:
            raise ValueError(f"prompt_pairs must be a non-empty list of [positive, negative] pairs, got {prompt_pairs!r}")
        self.logit_scale = logit_scale

    @property
    def dataset(self) -> str:
        return self._dataset

    def load_table(self) -> int:
        rows = read_iqa_set(replace(self.iqa, root=str(self.path)), self.split or "test")
        rows = rows.iloc[select_items(len(rows), self.max_items, self.seed)].reset_index(drop=True)
        self.names, self.paths = rows["file"].tolist(), rows["path"].tolist()
        self.quality = torch.tensor(rows["score"].to_numpy(), dtype=torch.float64)  # oriented higher = better
        return len(rows)

    def load_images(self, items: list[int], transform: Callable) -> None:
        self.images = decode_images([self.paths[i] for i in items], transform, self.num_workers)

    def measure(self, ctx: ProbeContext) -> Items:
        """Per image: the predicted quality (probability of the positive prompts) and the human score."""
        backbone = ctx.backbone
        texts = [p for pair in self.prompt_pairs for p in pair]
        with ctx.autocast():
            text = backbone.encode_text(backbone.tokenize(texts).to(ctx.device), normalize=True).float()
        text = F.normalize(text, dim=-1)
        image = self.features(ctx, self.images, text_space=True)
        local = scores.antonym_probability(image, text[0::2], text[1::2], self.logit_scale)
        return {self.name: {"prediction": self.gather_items(ctx, local), "quality": self.quality}}

    def describe(self, metric: str) -> MetricInfo:
        """``<name>/srcc|plcc|krcc``: correlations with MOS, each in a chart of its own, one figure
        panel per data set; Spearman's is the headline."""
        statistic = metric.rsplit("/", 1)[-1]
        return MetricInfo(probe=self.name, family=self.family, statistic=statistic, headline=statistic == "srcc",
                          chart=metric, panel=self.name)

    def score(self, items: Items) -> dict[str, float]:
        t = items[self.name]
        return {f"{self.name}/{k}": v for k, v in scores.correlations(t["prediction"], t["quality"]).items()}

    def resampled(self, items: Items, idx: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t = items[self.name]
        return {f"{self.name}/{k}": v
                for k, v in uncertainty.correlations(t["prediction"], t["quality"], idx[self.name]).items()}
