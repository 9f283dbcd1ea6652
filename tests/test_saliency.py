"""Saliency correspondence: the metrics equal pysaliency's on the same maps, the fixations land where
the model's transform puts the pixels, the attention maps equal transformers' attention weights for
the same weights, and on the toy world's fixation set a map on the object beats the centre bias
while a random tower does not."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from perceptlab.core import saliency

S = 32


def constructed(seed: int = 0, n: int = 5):
    """(maps, densities, fixation lists) on an S x S frame: smooth random maps, one quantised to
    16 levels (ties), densities blurred from the fixations."""
    rng = np.random.default_rng(seed)
    maps, densities, fixations = [], [], []
    for i in range(n):
        smap = saliency.blur(rng.random((S, S)), 2.0)
        if i == 1:
            smap = np.round(smap * 16) / 16  # plateaus: tied values at fixated and unfixated pixels
        flat = rng.choice(S * S, size=int(rng.integers(5, 25)), replace=False)
        ys, xs = np.divmod(flat, S)
        fixated = np.zeros((S, S))
        fixated[ys, xs] = 1
        maps.append(smap)
        densities.append(saliency.blur(fixated, 3.0))
        fixations.append((xs.astype(np.int64), ys.astype(np.int64)))
    return maps, densities, fixations


def ours(maps, densities, fixations) -> dict[str, np.ndarray]:
    out = {m: [] for m in saliency.METRICS}
    for i, smap in enumerate(maps):
        other_x = np.concatenate([f[0] for j, f in enumerate(fixations) if j != i])
        other_y = np.concatenate([f[1] for j, f in enumerate(fixations) if j != i])
        for k, v in saliency.image_metrics(smap, densities[i], *fixations[i], other_x, other_y).items():
            out[k].append(v)
    return {k: np.array(v) for k, v in out.items()}


def test_each_metric_equals_pysaliency_on_the_same_maps():
    np.trapz = getattr(np, "trapz", np.trapezoid)  # pysaliency's ROC calls np.trapz, removed in numpy 2.4
    import pysaliency  # the test extra installs it (from source)
    from pysaliency import metrics as psm

    maps, densities, fixations = constructed()
    # pysaliency's objects: stimulus i is a constant image of value i, which its model maps to maps[i]
    stimuli = pysaliency.Stimuli([np.full((S, S), i, dtype=np.uint8) for i in range(len(maps))])
    xs = np.concatenate([f[0] for f in fixations]).astype(float)
    ys = np.concatenate([f[1] for f in fixations]).astype(float)
    ns = np.concatenate([np.full(len(f[0]), i) for i, f in enumerate(fixations)])
    fix = pysaliency.Fixations.create_without_history(xs, ys, ns)

    class Maps(pysaliency.SaliencyMapModel):
        def _saliency_map(self, stimulus):
            return maps[int(stimulus[0, 0])]

    model = Maps(caching=False)
    reference = {
        "auc_judd": model.AUC_per_image(stimuli, fix, nonfixations="unfixated", thresholds="fixations"),
        "sauc": model.AUC_per_image(stimuli, fix, nonfixations="shuffled", thresholds="all"),
        "nss": [model.NSSs(stimuli, fix)[ns == i].mean() for i in range(len(maps))],
        "cc": [psm.CC(m, d) for m, d in zip(maps, densities)],
        "kld": [psm.MIT_KLDiv(m, d) for m, d in zip(maps, densities)],
        "sim": [psm.SIM(m, d) for m, d in zip(maps, densities)],
    }
    mine = ours(maps, densities, fixations)
    for metric in saliency.METRICS:
        np.testing.assert_allclose(mine[metric], reference[metric], rtol=0, atol=1e-9, err_msg=metric)
    assert 0.0 < mine["kld"].min() and 0.3 < mine["auc_judd"].mean() < 0.7  # random maps: near chance


def test_fixation_points_land_where_the_models_transform_puts_their_pixels():
    """A bright block in a landscape image, through the tower's own eval transform (shorter side
    resized, centre crop): its centroid there is where point_frame sends the block's centre."""
    from PIL import Image

    from perceptlab.core.backbone import CLIPBackbone
    from perceptlab.core.transforms import point_frame

    tf = CLIPBackbone("perceptlab-vit-tiny-64", vision_only=True).transform(train=False, normalize=False)
    width, height = 150, 100
    for x0, y0 in ((60, 40), (30, 70), (110, 10)):
        image = np.zeros((height, width, 3), np.uint8)
        image[y0:y0 + 10, x0:x0 + 10] = 255
        out = tf(Image.fromarray(image))[0].numpy()
        rows, cols = np.nonzero(out > 0.5)
        x, y, kept = point_frame(tf, width, height)(np.array([x0 + 4.5]), np.array([y0 + 4.5]))
        assert kept[0] == (len(rows) > 0)
        if len(rows):
            assert abs(cols.mean() - x[0]) <= 1 and abs(rows.mean() - y[0]) <= 1, (x0, y0, cols.mean(), x, rows.mean(), y)
    _, _, kept = point_frame(tf, width, height)(np.array([2, 75]), np.array([50, 50]))
    assert kept.tolist() == [False, True]  # the left edge is cropped away


@pytest.mark.parametrize("method", ["attention", "rollout"])
def test_open_clip_and_transformers_towers_give_the_same_map_for_the_same_weights(tmp_path, method):
    """A random transformers CLIP, loaded as an open_clip tower here: the class token's attention
    recovered through the hook equals transformers' own attention weights (eager attention)."""
    from transformers import CLIPModel

    from test_hf_clip import hf_config

    from perceptlab.core.attention_maps import attention_maps
    from perceptlab.core.backbone import CLIPBackbone

    torch.manual_seed(0)
    config = hf_config()
    config.vision_config._attn_implementation = "eager"
    hf = CLIPModel(config).eval()
    hf.save_pretrained(tmp_path / "clip")
    tower = CLIPBackbone(None, pretrained=str(tmp_path / "clip")).eval()
    images = torch.randn(3, 3, 32, 32)
    ours_ = attention_maps(tower.visual, images, method)
    with torch.no_grad():
        weights = hf.vision_model(pixel_values=images, output_attentions=True).attentions
    if method == "attention":
        expected = weights[-1].mean(dim=1)[:, 0, 1:]
    else:
        rollout = None
        for w in weights:
            a = 0.5 * w.mean(dim=1) + 0.5 * torch.eye(w.shape[-1])
            a = a / a.sum(dim=-1, keepdim=True)
            rollout = a if rollout is None else a @ rollout
        expected = rollout[:, 0, 1:]
    assert ours_.shape == (3, 4, 4)
    torch.testing.assert_close(ours_.reshape(3, -1), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(ours_[0], ours_[1])  # the map depends on the image


def test_published_layouts_read_to_the_same_table(tiny_world, tmp_path):
    """The toy set (MIT1003's layout) rewritten as SALICON's JSON and CAT2000's .mat folders reads
    back to the same images' fixation points."""
    import shutil

    from scipy.io import savemat

    from perceptlab.datamodules.fixations import read_fixation_set

    mit = read_fixation_set(Path(tiny_world) / "fixations" / "mit1003", "mit1003")
    assert len(mit) == 24 and all(len(r.xs) for r in mit)
    salicon, cat = tmp_path / "salicon", tmp_path / "cat2000" / "trainSet"
    images, annotations = [], []
    for i, row in enumerate(mit):
        name = f"COCO_val2014_{i:012d}.jpg"
        for folder, src, dst in ((salicon / "images" / "val", row.image, name),
                                 (salicon / "maps" / "val", row.density, name.replace(".jpg", ".png")),
                                 (cat / "Stimuli" / "Toy", row.image, f"{i:03d}.jpg"),
                                 (cat / "FIXATIONMAPS" / "Toy", row.density, f"{i:03d}.jpg")):
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, folder / dst)
        images.append({"id": 100 + i, "file_name": name})
        half = len(row.xs) // 2  # two observers, 1-based [row, column]
        for part in (slice(0, half), slice(half, None)):
            annotations.append({"image_id": 100 + i, "fixations": [[int(y) + 1, int(x) + 1] for x, y in
                                                                    zip(row.xs[part], row.ys[part])]})
        locs = np.zeros((64, 85), np.uint8)
        locs[row.ys, row.xs] = 1
        (cat / "FIXATIONLOCS" / "Toy").mkdir(parents=True, exist_ok=True)
        savemat(cat / "FIXATIONLOCS" / "Toy" / f"{i:03d}.mat", {"fixLocs": locs})
    (salicon / "fixations").mkdir()
    (salicon / "fixations" / "fixations_val2014.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    for other in (read_fixation_set(salicon, "salicon", "val"), read_fixation_set(tmp_path / "cat2000", "cat2000", "trainSet")):
        assert len(other) == len(mit)
        for a, b in zip(mit, other):
            assert sorted(zip(a.xs.tolist(), a.ys.tolist())) == sorted(zip(b.xs.tolist(), b.ys.tolist()))
    with pytest.raises(FileNotFoundError, match="fixations_train2014.json is missing"):
        read_fixation_set(salicon, "salicon", "train")


def test_on_the_toy_world_a_map_on_the_object_beats_the_centre_bias_and_a_random_tower_does_not(tiny_world):
    """The known answer of the toy fixation set: a constructed map on the object (the fixation
    density itself) beats the centre-bias reference line on every metric; a randomly initialised
    tower's attention does not reach the centre bias's NSS."""
    from perceptlab.callbacks.probes.base import ProbeContext
    from perceptlab.callbacks.probes.saliency import SaliencyProbe
    from perceptlab.core.backbone import CLIPBackbone

    torch.manual_seed(0)
    tower = CLIPBackbone("perceptlab-vit-tiny-64", vision_only=True).eval()
    probe = SaliencyProbe(str(Path(tiny_world) / "fixations" / "mit1003"))
    probe.prepare(tower)
    assert probe.n_items == 24 and probe.size == 64
    on_object = probe._metrics(probe.densities)
    for metric in saliency.METRICS:
        better = on_object[metric].mean() < probe.center[metric].mean() if metric == "kld" else \
            on_object[metric].mean() > probe.center[metric].mean()
        assert better, (metric, on_object[metric].mean(), probe.center[metric].mean())
    assert probe.center["nss"].mean() > 0.3  # the centre bias is a real baseline here, not chance
    values = probe.evaluate(ProbeContext(tower))
    name = "saliency/mit1003"
    assert set(values) == {f"{name}/{m}" for m in saliency.METRICS} | {f"{name}/center_bias/{m}" for m in saliency.METRICS}
    assert values[f"{name}/nss"] < values[f"{name}/center_bias/nss"]
    assert probe.describe(f"{name}/nss").headline and probe.describe(f"{name}/center_bias/nss").reference
    assert probe.describe(f"{name}/kld").direction == "min"


def test_the_gradient_map_is_the_input_gradient_even_inside_the_suites_inference_mode():
    from perceptlab.core.attention_maps import attention_maps
    from perceptlab.core.backbone import CLIPBackbone

    torch.manual_seed(0)
    tower = CLIPBackbone("perceptlab-vit-tiny-64", vision_only=True)
    images = torch.randn(2, 3, 64, 64)
    x = images.clone().requires_grad_(True)
    tower.visual(x).pow(2).sum().backward()
    expected = x.grad.abs().amax(dim=1)
    tower.visual.zero_grad(set_to_none=True)
    with torch.inference_mode():  # as the alignment suite runs its probes
        got = attention_maps(tower.visual, images, "gradient")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert got.shape == (2, 64, 64)
    assert all(p.requires_grad and p.grad is None for p in tower.visual.parameters())  # training state untouched


def test_the_report_draws_each_centre_bias_line_in_its_own_metrics_panel_only(tmp_path):
    """A reference line names the chart of the metric it is a reference for: the saliency panel of
    NSS shows the centre bias's NSS and none of the five other centre-bias values."""
    from matplotlib.figure import Figure

    from perceptlab.callbacks import run_record
    from perceptlab.callbacks.probes.saliency import SaliencyProbe
    from perceptlab.commands.report_arms import load_arm
    from perceptlab.commands.report_plots import _draw_reference_lines

    probe = SaliencyProbe("mit1003")
    name = probe.name
    values = {f"{name}/{m}": 0.1 * i for i, m in enumerate(saliency.METRICS)}
    values.update({f"{name}/center_bias/{m}": 1 + i for i, m in enumerate(saliency.METRICS)})
    run_record.write_evaluations(tmp_path, [{"epoch": -1, "step": s, "trigger": "step", "metrics": values, "ci": {},
                                              "seconds": {}} for s in (0, 10)])
    run_record.write_summary(tmp_path, {})
    run_record.write_metric_info(tmp_path, {m: probe.describe(m) for m in values})
    arm = load_arm("run", [str(tmp_path)])
    ax = Figure().subplots()
    _draw_reference_lines(ax, [arm], f"{name}/nss")
    assert [line.get_ydata()[0] for line in ax.lines] == [1 + saliency.METRICS.index("nss")]
