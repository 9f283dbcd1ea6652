"""The benchmarks' timed loops compute what they claim. Their timings are never asserted here."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from perceptlab.core.scores import two_afc
from perceptlab.datamodules.nights import NightsDataModule
from perceptlab.lightning_modules.perceptual_init import PerceptualInitModule
from test_nights import EXPECTED_2AFC, EXPECTED_ROWS, ROWS, write_nights

TINY = "perceptlab-vit-tiny-64"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
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
    dm = NightsDataModule(str(nights_root), batch_size=2, num_workers=0, model_name=TINY, val_split=split)
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
