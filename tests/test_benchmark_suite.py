"""The zero-shot / retrieval benchmark probe: CLIP_benchmark's layout, numbers and definitions.

The reference is CLIP_benchmark itself: its ``eval`` command (benchmarks/clip_benchmark_eval.py is
that command with our model configs registered) on the same weights and the same toy sets.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from perceptlab.callbacks.probes.base import ProbeContext
from perceptlab.callbacks.probes.benchmark import CLIPBenchmarkProbe
from perceptlab.core.backbone import CLIPBackbone
from perceptlab.core.benchmark_metrics import clip_benchmark_engine, prompts_for
from perceptlab.datamodules.benchmark_sets import (
    PAPER_TASKS,
    BenchmarkTask,
    resolve_tasks,
)
from perceptlab.datamodules.toyworld import CLASSES

REPO = Path(__file__).resolve().parents[1]
MODEL = "perceptlab-vit-tiny-64"
TASKS = {"toy_objects": "zeroshot_classification", "toy_captions": "zeroshot_retrieval"}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny CLIP with random weights, saved as an open_clip state dict (what CLIP_benchmark loads)."""
    torch.manual_seed(0)
    backbone = CLIPBackbone(MODEL)
    path = tmp_path_factory.mktemp("benchmark_model") / "model.pt"
    torch.save(backbone.model.state_dict(), path)
    return path


def ours(world: Path, model_file: Path, **probe_args) -> dict[str, float]:
    backbone = CLIPBackbone(MODEL)
    backbone.model.load_state_dict(torch.load(model_file))
    backbone.eval()
    probe = CLIPBenchmarkProbe(root=str(world / "benchmark"), tasks="toy", **probe_args)
    probe.num_workers = 0
    probe.prepare(backbone)
    with torch.inference_mode():
        return probe.evaluate(ProbeContext(backbone=backbone, batch_size=50))


@pytest.fixture(scope="module")
def reference(tiny_world, model_file, tmp_path_factory):
    """CLIP_benchmark's `eval` command (its `clip_benchmark.cli.main`, in this process) on both toy
    tasks, full precision."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("clip_benchmark_eval", REPO / "benchmarks" / "clip_benchmark_eval.py")
    command = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(command)
    out = tmp_path_factory.mktemp("clip_benchmark")
    argv = sys.argv
    try:
        for dataset, task in TASKS.items():
            assert command.main(["eval", "--model", MODEL, "--pretrained", str(model_file), "--dataset", f"wds/{dataset}",
                                 "--dataset_root", str(tiny_world / "benchmark" / dataset), "--task", task, "--no_amp",
                                 "--num_workers", "0", "--batch_size", "64", "--recall_k", "1", "5", "10",
                                 "--output", str(out / f"{dataset}.json"), "--quiet"]) == 0
    finally:
        sys.argv = argv
    return {dataset: json.loads((out / f"{dataset}.json").read_text())["metrics"] for dataset in TASKS}


def test_the_toy_world_writes_a_suite_clip_benchmark_reads(tiny_world):
    from clip_benchmark.datasets.builder import build_dataset

    objects = build_dataset("wds/toy_objects", root=str(tiny_world / "benchmark" / "toy_objects"), split="test")
    assert objects.classes == list(CLASSES)
    assert objects.templates[0] == "itap of a {c}." and len(objects.templates) == 7
    labels = [label for _, label in objects]
    assert len(labels) == 16 * 8 and sorted(set(labels)) == list(range(16))

    captions = build_dataset("wds/toy_captions", root=str(tiny_world / "benchmark" / "toy_captions"), split="test",
                             task="zeroshot_retrieval")
    items = list(captions)
    assert len(items) == 64 and all(len(texts) == 5 and len(set(texts)) == 5 for _, texts in items)
    with tarfile.open(tiny_world / "image_text" / "val_shards" / "00000.tar") as tar:
        own = [tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")]
    assert [texts[0] for _, texts in items] == own  # the held-out pair's own caption comes first


def test_our_numbers_equal_clip_benchmarks_eval_command(tiny_world, model_file, reference):
    metrics = ours(tiny_world, model_file)
    compared = 0
    for dataset, values in reference.items():
        family = "zeroshot" if TASKS[dataset] == "zeroshot_classification" else "retrieval"
        for key, value in values.items():
            assert metrics[f"{family}/{dataset}/{key}"] == pytest.approx(value, abs=1e-6), (dataset, key)
            compared += 1
    assert compared == 3 + 6
    mean_r1 = (reference["toy_captions"]["image_retrieval_recall@1"] + reference["toy_captions"]["text_retrieval_recall@1"]) / 2
    assert metrics["retrieval/toy_captions/mean_recall@1"] == pytest.approx(mean_r1, abs=1e-7)
    assert metrics["zeroshot/average/acc1"] == pytest.approx(reference["toy_objects"]["acc1"], abs=1e-7)
    # DataComp's average: top-1 of the classification set, mean recall@1 of the retrieval set
    assert metrics["benchmark/average"] == pytest.approx((reference["toy_objects"]["acc1"] + mean_r1) / 2, abs=1e-7)


def test_a_subset_and_any_batch_size_give_the_metrics_of_those_items(tiny_world, model_file):
    full = ours(tiny_world, model_file)
    again = ours(tiny_world, model_file, batch_size=7, text_batch_size=13)
    assert again == pytest.approx(full, abs=1e-6)
    part = ours(tiny_world, model_file, max_items=40)
    assert part != full and set(part) == set(full)


@pytest.mark.slow
def test_two_processes_measure_what_one_does(tiny_world, model_file, reference, tmp_path):
    """`perceptlab evaluate` under DDP on 2 CPU processes equals CLIP_benchmark's single-process numbers."""
    cfg = yaml.safe_load((REPO / "experiments/toy/alignment_suite.yaml").read_text())
    suite = cfg["trainer"]["callbacks"][0]["init_args"]
    suite.update(data_root=str(tiny_world), tensorboard_figure=False, num_workers=0)
    suite["probes"] = [p for p in suite["probes"] if p["class_path"].endswith("CLIPBenchmarkProbe")]
    config = tmp_path / "suite.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "perceptlab", "evaluate", str(model_file), "--model_name", MODEL,
                           "--config", str(config), "--out", str(out), "--trainer.accelerator=cpu",
                           "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.enable_progress_bar=false"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = [json.loads(line) for line in (out / "alignment.jsonl").read_text().splitlines()]
    for dataset, values in reference.items():
        family = "zeroshot" if TASKS[dataset] == "zeroshot_classification" else "retrieval"
        for key, value in values.items():
            assert record["metrics"][f"{family}/{dataset}/{key}"] == pytest.approx(value, abs=1e-6), (dataset, key)


def test_clip_benchmarks_accuracy_still_needs_the_numpy_fix_and_the_fix_keeps_its_definition():
    """When this fails at the first assertion, CLIP_benchmark fixed `accuracy` for numpy >= 2.4:
    drop the `float` shadowing in perceptlab.core.benchmark_metrics.clip_benchmark_engine."""
    import numpy as np
    from clip_benchmark.metrics import zeroshot_classification

    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],   # top-1 class 1
                           [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],   # top-1 class 0
                           [-1.0, 0.0, 0.1, 0.2, 0.3, 0.4],  # top-1 class 5, class 0 ranks last
                           [0.0, 0.5, 0.4, 0.3, 0.2, 0.1]])  # top-1 class 1; class 5 is 5th
    target = torch.tensor([1, 1, 0, 5])
    if tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 4):
        with pytest.raises(TypeError, match="0-dimensional"):
            zeroshot_classification.accuracy(logits, target, topk=(1, 5))
    with clip_benchmark_engine():
        acc1, acc5 = zeroshot_classification.accuracy(logits, target, topk=(1, 5))
    assert (acc1, acc5) == (0.25, 0.75)
    assert "float" not in vars(zeroshot_classification)  # restored: the package is left as it was


def test_prompts_are_clip_benchmarks_in_its_order():
    assert prompts_for(["cat", "dog"], ["a {c}.", "the {c}"]) == ["a cat.", "the cat", "a dog.", "the dog"]
    assert prompts_for(["cat", "dog"], {"cat": ["x"], "dog": ["y", "z"]}) == ["x", "y", "z"]


def test_every_missing_file_of_every_task_is_named_before_anything_is_read(tiny_world, tmp_path):
    import shutil

    root = tmp_path / "bench"
    shutil.copytree(tiny_world / "benchmark", root)
    (root / "toy_objects" / "test" / "1.tar").unlink()
    (root / "toy_objects" / "classnames.txt").unlink()
    probe = CLIPBenchmarkProbe(root=str(root), tasks=["toy", "wds/vtab/cifar100"])
    with pytest.raises(FileNotFoundError) as info:
        probe.prepare(CLIPBackbone(MODEL))
    message = str(info.value)
    assert "2 of 3 benchmark task(s)" in message
    assert f"{root / 'toy_objects' / 'test' / '1.tar'} (shard 1 of 2)" in message
    assert str(root / "toy_objects" / "classnames.txt") in message
    assert f"{root / 'vtab' / 'cifar100'}/" in message and "wds/toy_captions" not in message


def test_presets_and_names():
    assert len(PAPER_TASKS) == 31 and len(set(PAPER_TASKS)) == 31
    tasks = resolve_tasks(["paper", "wds/imagenet1k", "wds/sun397"], "/data", {"wds/flickr30k": "/elsewhere/f30k"})
    assert len(tasks) == 32 and tasks[-1].location == Path("/data/sun397")
    by_name = {t.name: t for t in tasks}
    assert by_name["wds/vtab/cifar100"].location == Path("/data/vtab/cifar100")
    assert by_name["wds/flickr30k"].location == Path("/elsewhere/f30k")
    assert BenchmarkTask("wds/vtab/pets", Path("/nowhere")).main_metric == "mean_per_class_recall"
    assert BenchmarkTask("wds/imagenet1k", Path("/nowhere")).main_metric == "acc1"
    with pytest.raises(ValueError, match="wds/imagenet1k"):
        CLIPBenchmarkProbe(tasks=["imagenet1k"])


def test_replicates_equal_the_score_of_the_resampled_items_on_both_kinds_of_task(tiny_world, model_file):
    """Bootstrap replicates of every benchmark metric (balanced accuracy, recall with several
    captions per image, the averages) are the probe's own numbers on the resampled images."""
    import math

    from perceptlab.core import uncertainty

    backbone = CLIPBackbone(MODEL)
    backbone.model.load_state_dict(torch.load(model_file))
    backbone.eval()
    probe = CLIPBenchmarkProbe(root=str(tiny_world / "benchmark"), tasks="toy")
    probe.num_workers = 0
    probe.prepare(backbone)
    with torch.inference_mode():
        items = probe.measure(ProbeContext(backbone=backbone, batch_size=50))
    assert set(items) == {"zeroshot/toy_objects", "retrieval/toy_captions"}
    idx = {g: uncertainty.resample_indices(len(next(iter(f.values()))), 6, seed=0, key=g) for g, f in items.items()}
    replicates = probe.resampled(items, idx)
    for b in range(6):
        expected = probe.score({g: {k: v[idx[g][b]] for k, v in f.items()} for g, f in items.items()})
        assert set(expected) == set(replicates)
        for metric, value in expected.items():
            got = replicates[metric][b].item()
            assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, abs=1e-9), (metric, b)


def test_averages_skip_sets_without_a_top5():
    metrics = {"zeroshot/a/acc1": 0.5, "zeroshot/a/acc5": 0.9, "zeroshot/b/acc1": 0.25, "zeroshot/b/acc5": float("nan"),
               "retrieval/c/mean_recall@1": 0.4, "retrieval/d/mean_recall@1": 0.2}
    averages = {k: float(v) for k, v in CLIPBenchmarkProbe.averages(metrics).items()}
    assert averages == pytest.approx({"zeroshot/average/acc1": 0.375, "zeroshot/average/acc5": 0.9,
                                      "retrieval/average/mean_recall@1": 0.3})


def test_preparing_the_suite_leaves_trainings_random_numbers_alone(tiny_world):
    """Reading a set through a DataLoader draws from the global generator; the suite forks it, so
    adding the benchmark probe to a training config changes none of the training's random draws."""
    from types import SimpleNamespace

    from perceptlab.callbacks.alignment import AlignmentSuite

    backbone = CLIPBackbone(MODEL)
    state = torch.get_rng_state()
    CLIPBenchmarkProbe(root=str(tiny_world / "benchmark"), tasks="toy").prepare(backbone)
    assert not torch.equal(state, torch.get_rng_state())  # what the suite guards against

    suite = AlignmentSuite([CLIPBenchmarkProbe(root="benchmark", tasks="toy")], data_root=str(tiny_world), num_workers=0)
    state = torch.get_rng_state()
    suite.prepare(SimpleNamespace(global_rank=0, world_size=1), SimpleNamespace(backbone=backbone))
    assert torch.equal(state, torch.get_rng_state())
    assert suite.active[0].n_items == 128 + 64


def test_the_shipped_paper_suite_names_valid_arguments_and_the_31_tasks():
    import inspect

    from perceptlab.callbacks.alignment import AlignmentSuite

    cfg = yaml.safe_load((REPO / "experiments/paper/benchmark_suite.yaml").read_text())
    (suite,) = cfg["trainer"]["callbacks"]
    args = dict(suite["init_args"])
    (probe,) = args.pop("probes")
    inspect.signature(AlignmentSuite).bind(probes=[], **args)  # raises on an unknown key
    built = CLIPBenchmarkProbe(**probe["init_args"])
    tasks = resolve_tasks(built.tasks, Path(args["data_root"]) / built.root)
    assert [t.name for t in tasks] == list(PAPER_TASKS)
    assert tasks[0].location == Path("/data/clip_benchmark/imagenet1k")
