"""The benchmarks' timed loops compute what they claim. Their timings are never asserted here."""
from __future__ import annotations

import importlib.util
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from perceptlab.core.scores import two_afc
from perceptlab.datamodules.nights import NightsDataModule
from perceptlab.lightning_modules.perceptual_init import PerceptualInitModule
from perceptlab.datamodules.loader import Loader
from test_nights import EXPECTED_2AFC, EXPECTED_ROWS, ROWS, write_nights

TINY = "perceptlab-vit-tiny-64"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def nights_root(tmp_path_factory) -> Path:
    return write_nights(tmp_path_factory.mktemp("nights"), ROWS)


@pytest.mark.parametrize("split", ["val", "test_imagenet"])
def test_2afc_benchmark_sides_score_the_known_2afc_with_the_same_distances(nights_root, split):
    """Every side of bench_nights_2afc (DreamSim's float transport and loop, the same loop on
    uint8 batches, perceptlab's evaluation) scores the constructed split's known 2AFC, from the
    same distances."""
    bench = load_benchmark("bench_nights_2afc")
    torch.manual_seed(0)
    model = PerceptualInitModule(model_name=TINY).eval()
    dm = NightsDataModule(str(nights_root), model_name=TINY, val_split=split, loader=Loader(batch_size=2, num_workers=0))
    dm.setup("validate")
    uint8_loader, float_loader = dm.val_dataloader(), bench.dreamsim_loader(dm, split)

    u8, fl = next(iter(uint8_loader)), next(iter(float_loader))
    assert u8["ref"].dtype == torch.uint8 and fl["ref"].dtype == torch.float32
    assert 0 <= fl["ref"].min() and fl["ref"].max() <= 1  # ToTensor's range: the model normalises
    # DreamSim's transport divides by 255 in the worker: the same numbers as on the device.
    torch.testing.assert_close(fl["ref"], u8["ref"].float() / 255, rtol=0, atol=0)

    sides = [(bench.dreamsim_style, float_loader), (bench.dreamsim_style, uint8_loader), (bench.perceptlab, uint8_loader)]
    results = [fn(model, loader, torch.device("cpu")) for fn, loader in sides]
    for (fn, loader), (seconds, d0, d1, p) in zip(sides, results):
        assert len(p) == EXPECTED_ROWS[split] and seconds > 0
        assert two_afc(d0, d1, p) == pytest.approx(EXPECTED_2AFC[split], abs=1e-6), (fn.__name__, loader.dataset.transform)
    # The same distances on every side (the 2AFC above holds for any model; this does not): the
    # DreamSim side normalises its [0, 1] floats exactly as the backbone normalises uint8 images.
    _, ref_d0, ref_d1, _ = results[-1]
    for _, d0, d1, _ in results[:-1]:
        torch.testing.assert_close(d0, ref_d0, rtol=0, atol=1e-6)
        torch.testing.assert_close(d1, ref_d1, rtol=0, atol=1e-6)


def test_zeroshot_benchmark_sides_classify_the_same_set_identically(tmp_path):
    """Both timed passes of bench_zeroshot.py (CLIP_benchmark's loop, our probe) give the same top-1."""
    import open_clip

    from perceptlab.core.backbone import CLIPBackbone

    bench = load_benchmark("bench_zeroshot")
    root = bench.write_set(tmp_path, per_class=3)
    torch.manual_seed(0)
    backbone = CLIPBackbone(TINY).eval()
    model, _, preprocess = open_clip.create_model_and_transforms(TINY)
    model.load_state_dict(backbone.model.state_dict())
    model.eval()
    _, reference = bench.clip_benchmark_pass(model, preprocess, open_clip.get_tokenizer(TINY), root, batch=16, workers=0)
    _, _, ours = bench.perceptlab_pass(backbone, root, batch=16, workers=0)
    assert ours == pytest.approx(reference, abs=1e-9)
    assert 0 < reference < 1  # 48 images, 16 classes: a random tower is right on some, wrong on others


def open_clip_train_loader(shards: str, n: int, batch: int):
    """open_clip_train's own training loader (get_wds_dataset) over ``shards``."""
    import open_clip
    from open_clip_train.data import get_wds_dataset
    from open_clip_train.params import parse_args

    args = parse_args(["--train-data", shards, "--dataset-type", "webdataset", "--train-num-samples", str(n),
                       "--batch-size", str(batch), "--workers", "0", "--model", TINY])
    args.world_size, args.rank, args.distributed = 1, 0, False
    _, preprocess, _ = open_clip.create_model_and_transforms(TINY)
    return get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=open_clip.get_tokenizer(TINY)).dataloader


def test_open_clip_train_needs_the_end_of_shard_fix_and_reads_every_pair_with_it(tiny_world):
    """The reference trainer fails on webdataset 1.x's end-of-shard marker; the wrapper's fix
    (eof_value=None) lets it read every pair. When this test fails at the first assertion, the fix
    is no longer needed: remove it from benchmarks/open_clip_train_run.py."""
    from open_clip_train import data

    run = load_benchmark("open_clip_train_run")
    shards = str(Path(tiny_world) / "image_text" / "shards" / "*.tar")
    import glob

    shards = "::".join(sorted(glob.glob(shards)))
    original = data.tarfile_to_samples_nothrow
    try:
        with pytest.raises(KeyError, match="fname"):
            next(iter(open_clip_train_loader(shards, 64, 16)))
        run.install()
        batches = list(open_clip_train_loader(shards, 256, 16))
    finally:
        data.tarfile_to_samples_nothrow = original
    images, texts = batches[0]
    assert images.shape == (16, 3, 64, 64) and texts.shape == (16, 32)  # the tiny text tower: 32 tokens
    assert sum(b[0].shape[0] for b in batches) == 256  # the tiny world's 256 training pairs


@pytest.mark.slow
def test_bench_vs_open_clip_reads_both_trainers_steps_and_losses(tiny_world, tmp_path):
    """Both sides of bench_vs_open_clip.py run on the toy shards, a few steps each, and the bench
    reads a rate and a loss for every step of each (their values are not asserted)."""
    import glob
    from types import SimpleNamespace

    bench = load_benchmark("bench_vs_open_clip")
    shards = sorted(glob.glob(str(Path(tiny_world) / "image_text" / "shards" / "*.tar")))
    ns = SimpleNamespace(model=TINY, device="cpu", precision="fp32", batch=16, workers=0, steps=6, warmup=2, compile=False)
    ours = bench.run_perceptlab(ns, shards, tmp_path, "t")
    theirs = bench.run_open_clip_train(ns, shards, tmp_path, "t")
    for side in (ours, theirs):
        assert side["samples_per_s"] > 0 and len(side["losses"]) == 6
        assert all(1.0 < v < 10.0 for v in side["losses"])  # ln(16) = 2.77 at the start


def test_calibration_script_quick_grid_reports_rates_and_coverage():
    """benchmarks/calibrate_statistics.py --quick: every cell has the valid and the naive test's
    rates with Monte-Carlo errors; the naive test never calls fewer drops than the valid one (its
    critical value is the smaller, up to one draw at T = 2), and every metric family gets a coverage row per size."""
    bench = load_benchmark("calibrate_statistics")
    out = bench.main(["--quick"])
    assert {(r["T"], r["peak"]) for r in out["drop"]} == {(2, 0.0), (2, 0.08), (12, 0.0), (12, 0.08)}
    # (at T = 2 the two differ only by percentile vs studentized bounds: one draw either way)
    assert all(r["naive"] >= r["valid"] - 0.05 and r["valid_se"] >= 0 for r in out["drop"])
    assert {r["kind"] for r in out["coverage"]} == set(out["min_reliable_items"])
    assert all(0 <= r["coverage"] <= 1 for r in out["coverage"])


def test_bench_loader_measures_every_path_and_its_shards_hold_what_it_reads(tmp_path, monkeypatch, capsys):
    """bench_loader.py end to end on tiny settings: every rate is measured (positive), the shards it
    writes hold ``per_shard`` decodable samples each, and ``--seconds`` stops a measurement early:
    a measurement capped at 0 s reads exactly one batch (a node's settings once ran past 120 s)."""
    import json
    import sys

    import webdataset as wds

    bench = load_benchmark("bench_loader")
    pattern = bench.write_shards(tmp_path, 3, 10, 64)
    samples = list(wds.WebDataset(pattern, shardshuffle=False).decode("pil"))
    assert len(samples) == 30 and samples[0]["jpg"].size == (64, 64) and len(samples[0]["txt"].split()) == 10
    calls = []
    monkeypatch.setattr(bench, "SECONDS_PER_MEASUREMENT", 0.0)
    assert bench.timed(lambda: calls.append(1) or 8, 50) > 0 and len(calls) == 1
    monkeypatch.setattr(sys, "argv", ["bench_loader.py", "--batch", "8", "--batches", "2", "--workers", "2",
                                      "--steps", "1", "--seconds", "2", "--device", "cpu"])
    bench.main()
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rates = [v for k, v in result.items() if k.endswith("samples_per_s") or "samples_per_s_" in k]
    assert len(rates) == 6 and all(r > 0 for r in rates)
    assert result["workers_needed"] >= 1 and result["seconds_total"] > 0


def test_gpu_check_boxes_each_step_and_writes_one_json_and_one_markdown(tmp_path):
    """gpu_check.py's plumbing on the CPU: a step past its box is killed and marked, a step's JSON
    line becomes its result, the budget skips what no longer fits, and the dry run of a real step
    (the MFU step on the CPU) lands in gpu_check.json and gpu_check.md."""
    import json
    import sys
    import time

    check = load_benchmark("gpu_check")
    start = time.perf_counter()
    slow = check.Step("slow", "sleeps", [sys.executable, "-c", "import time; time.sleep(60)"], box=60)
    row = check.run_step(slow, box=1.5)
    assert row["status"] == "timed_out" and time.perf_counter() - start < 30
    fine = check.Step("fine", "prints", [sys.executable, "-c", "print('noise'); print('{\"ratio\": 1.5}')"], box=30)
    assert check.run_step(fine, box=30)["result"] == {"ratio": 1.5}
    # a step that prints a JSON line per measurement keeps what it had when its box ran out
    halfway = check.Step("halfway", "prints, then hangs", [sys.executable, "-c",
                         "import time; print('{\"eager\": 1}', flush=True); time.sleep(60)"], box=60)
    row = check.run_step(halfway, box=3)
    assert row["status"] == "partial" and row["result"] == {"eager": 1}
    # the CUDA-tests step names each failed test and its reason (a GPU failure once came back without one)
    (tmp_path / "test_gpu_like.py").write_text("def test_fine():\n    pass\n\n"
                                              "def test_broken():\n    assert 1 == 2, 'strategy says no'\n")
    tests = check.Step("tests", "pytest", [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
                                           str(tmp_path / "test_gpu_like.py")], box=60, kind="pytest",
                       env={"COLUMNS": "1000"})
    row = check.run_step(tests, box=60)
    assert row["status"] == "failed" and "1 failed, 1 passed" in row["result"]["summary"]
    assert row["result"]["failures"] == [f for f in row["result"]["failures"] if "test_broken" in f and "strategy says no" in f] != []
    broken = check.Step("broken", "fails", [sys.executable, "-c", "raise SystemExit('bad flag --x')"], box=30)
    row = check.run_step(broken, box=30)
    assert row["status"] == "failed" and "bad flag --x" in row["error"]

    results = check.main(["--dry-run", "--only", "flops", "--out", str(tmp_path)])
    flops = results["steps"]["flops"]
    assert flops["status"] == "ok" and flops["result"]["device"] == "cpu" and flops["result"]["batch"] == 8
    variants = flops["result"]["variants"]  # what the fused optimiser buys, measured beside the eager step
    assert set(variants) == {"eager", "fused"} and variants["eager"]["speedup"] == 1.0
    assert all(v["images_per_s"] > 0 and 0 < v["share_of_matmul_peak"] for v in variants.values())
    assert json.loads((tmp_path / "gpu_check.json").read_text())["steps"]["flops"] == flops
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| flops |" in md and "dry run" in md
    skipped = check.main(["--dry-run", "--only", "flops", "--budget", "5", "--out", str(tmp_path / "b")])
    assert skipped["steps"]["flops"]["status"] == "skipped"
    with pytest.raises(SystemExit, match="no CUDA device") if not torch.cuda.is_available() else nullcontext():
        check.main(["--only", "flops", "--budget", "1", "--out", str(tmp_path / "c")])
