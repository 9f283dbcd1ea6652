"""Measuring probes: every active probe on the model as it is, with per-item outputs, bootstrap
replicates over the same resampled items at every evaluation, and seconds per probe."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from perceptlab.callbacks.probes.base import Probe, ProbeContext
from perceptlab.callbacks.probes.metric_info import MetricInfo
from perceptlab.core import uncertainty


@dataclass
class Measurement:
    """One evaluation of the active probes."""

    metrics: dict[str, float] = field(default_factory=dict)
    items: dict[str, torch.Tensor] = field(default_factory=dict)  # "<group>/<field>" -> per-item values
    replicates: dict[str, torch.Tensor] = field(default_factory=dict)  # metric -> (B,) bootstrap values
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # metric -> items behind it
    info: dict[str, MetricInfo] = field(default_factory=dict)  # metric -> what its probe says it is


def measure(probes: Sequence[Probe], ctx: ProbeContext, module: torch.nn.Module, bootstrap_resamples: int,
            bootstrap_seed: int, progress: Callable[[str], None] | None = None) -> Measurement:
    """Run ``probes`` on ``module`` in eval mode under ``torch.inference_mode`` (each submodule's
    train/eval flag restored afterwards). Each probe's items are resampled by group with
    ``uncertainty.resample_indices(n, B, bootstrap_seed, group)``: the same items at every evaluation."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    out = Measurement()
    try:
        with torch.inference_mode():
            for probe in probes:
                start = time.perf_counter()
                items = probe.measure(ctx)
                scored = probe.score(items)
                out.metrics.update(scored)
                out.info.update({k: describe(probe, k) for k in scored})
                n_items = max((len(next(iter(f.values()))) for f in items.values() if f), default=0)
                out.counts.update({k: n_items for k in scored})
                out.items.update({f"{group}/{k}": v for group, fields in items.items() for k, v in fields.items()})
                out.seconds[probe.name] = round(time.perf_counter() - start, 4)
                if bootstrap_resamples:
                    start = time.perf_counter()
                    idx = {group: uncertainty.resample_indices(len(next(iter(fields.values()))), bootstrap_resamples,
                                                               bootstrap_seed, group)
                           for group, fields in items.items()}
                    out.replicates.update({k: v.float() for k, v in probe.resampled(items, idx).items()})
                    out.seconds["bootstrap"] = round(out.seconds.get("bootstrap", 0) + time.perf_counter() - start, 4)
                if progress is not None:
                    progress(f"  {probe.name}: {out.seconds[probe.name]:.1f} s")  # progress, probe by probe
    finally:
        for m, training in modes.items():
            m.train(training)
    return out


def describe(probe: Probe, metric: str) -> MetricInfo:
    """``probe.describe(metric)``, checked: a user's probe that returns something else is named."""
    info = probe.describe(metric)
    if not isinstance(info, MetricInfo):
        raise TypeError(f"{type(probe).__name__}.describe({metric!r}) returned {type(info).__name__}, not a MetricInfo")
    return info


def trainer_context(trainer, pl_module: torch.nn.Module, backbone, batch_size: int) -> ProbeContext:
    """What the probes need of a Lightning run: the backbone, the device, the ranks, the gather of
    per-item results across them, and the trainer's precision context."""
    def gather(t: torch.Tensor) -> torch.Tensor:
        return trainer.strategy.all_gather(t).reshape(trainer.world_size, *t.shape)

    return ProbeContext(backbone=backbone, device=pl_module.device, rank=trainer.global_rank,
                        world_size=trainer.world_size, gather=gather,
                        autocast=trainer.precision_plugin.forward_context, batch_size=batch_size)
