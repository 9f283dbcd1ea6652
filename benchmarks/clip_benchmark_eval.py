"""CLIP_benchmark's own command line, able to load perceptlab's architectures.

    python benchmarks/clip_benchmark_eval.py eval --model perceptlab-vit-tiny-64 --pretrained model.pt \\
        --dataset wds/toy_objects --dataset_root data/toyworld/benchmark/toy_objects --no_amp --output out.json

It is ``clip_benchmark`` (``clip_benchmark.cli.main``) with two additions before it runs: our model
configs are registered with open_clip (importing ``perceptlab.core.transforms`` does that), so
``--model`` can name them, and the numpy-2.4 fix of ``perceptlab.core.benchmark_metrics`` is
applied, without which its zero-shot ``accuracy`` raises. Nothing else of CLIP_benchmark changes;
this is the reference our ``CLIPBenchmarkProbe`` is tested and timed against.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from clip_benchmark.cli import main as clip_benchmark_main

    import perceptlab.core.transforms  # noqa: F401  (registers perceptlab's model configs with open_clip)
    from perceptlab.core.benchmark_metrics import clip_benchmark_engine

    sys.argv = ["clip_benchmark", *(sys.argv[1:] if argv is None else argv)]
    with clip_benchmark_engine(quiet=False):
        return clip_benchmark_main() or 0


if __name__ == "__main__":
    sys.exit(main())
