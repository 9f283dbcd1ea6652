"""Probes on the tiny toy world, each checked against an independent computation from the files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from perceptlab.core import scores
from perceptlab.callbacks.probes.base import ProbeContext, select_items, shard_indices, unshard
from perceptlab.callbacks.probes.iqa_fr import FullReferenceIQAProbe
from perceptlab.callbacks.probes.iqa_nr import CLIPIQAProbe
from perceptlab.callbacks.probes.nights import NightsProbe
from perceptlab.callbacks.probes.noise import NoiseRobustnessProbe
from perceptlab.callbacks.probes.shape_bias import ShapeBiasProbe
from perceptlab.core.backbone import CLIPBackbone

stats = pytest.importorskip("scipy.stats")


class PixelEmbedding(torch.nn.Module):
    """A model-free embedding with the backbone's image interface: an image's embedding is its
    pixels (no normalisation), so distances are pixel distances."""

    image_size = 64
    has_text = False

    def __init__(self) -> None:
        super().__init__()
        self.visual = torch.nn.Identity()
        self.normalize = T.Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def transform(self, train: bool = False, normalize: bool = True):
        return T.Compose([T.Resize(64, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(64), T.ToTensor()])

    def encode_image(self, x: torch.Tensor, normalize: bool = True, layer: int | None = None) -> torch.Tensor:
        flat = x.flatten(1)
        return torch.nn.functional.normalize(flat, dim=-1) if normalize else flat


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64).ravel() / 255


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return CLIPBackbone("perceptlab-vit-tiny-64").eval()


def run(probe, model, world):
    probe.data_root = str(world)
    probe.prepare(model)
    with torch.inference_mode():
        return probe.evaluate(ProbeContext(model))


# ---------------------------------------------------------------------------------- FR-IQA
def test_fr_iqa_raw_pixels_gives_sign_correct_srcc(tiny_world):
    probe = FullReferenceIQAProbe("iqa/tid2013", dataset="tid2013", distance="l2", classical=["psnr"], max_items=None)
    out = run(probe, PixelEmbedding(), tiny_world)

    root = tiny_world / "iqa" / "tid2013"
    table = pd.read_csv(root / "meta_info_TID2013Dataset.csv")
    dist = [np.linalg.norm(pixels(root / "distorted_images" / d) - pixels(root / "reference_images" / r))
            for r, d in zip(table["ref_name"], table["dist_name"])]
    expected = stats.spearmanr(-np.asarray(dist), table["mos"])[0]
    assert expected > 0.5  # more pixel change, lower MOS: the toy world's rule
    assert out["iqa_fr/tid2013/srcc"] == pytest.approx(expected, abs=1e-5)
    assert out["iqa_fr/tid2013/krcc"] == pytest.approx(stats.kendalltau(-np.asarray(dist), table["mos"])[0], abs=1e-5)
    # PSNR is -10 log10(MSE): the same ranking as the pixel distance, through pyiqa.
    assert out["iqa_fr/tid2013/psnr/srcc"] == pytest.approx(expected, abs=1e-3)

    # Declaring the MOS lower-is-better flips every sign: the direction is configuration.
    flipped = run(FullReferenceIQAProbe("iqa/tid2013", dataset="tid2013", distance="l2", classical=[],
                                        lower_better=True, max_items=None), PixelEmbedding(), tiny_world)
    assert flipped["iqa_fr/tid2013/srcc"] == pytest.approx(-expected, abs=1e-5)


def test_fr_iqa_kadid_preset_and_subset(tiny_world):
    probe = FullReferenceIQAProbe("iqa/kadid10k", dataset="kadid10k", distance="cosine", classical=[], max_items=50, seed=3)
    out = run(probe, PixelEmbedding(), tiny_world)
    root = tiny_world / "iqa" / "kadid10k"
    table = pd.read_csv(root / "meta_info_KADID10kDataset.csv")
    table = table.iloc[select_items(len(table), 50, 3)]
    cos = [1 - np.dot(a := pixels(root / "images" / d), b := pixels(root / "images" / r)) / np.linalg.norm(a) / np.linalg.norm(b)
           for r, d in zip(table["ref_name"], table["dist_name"])]
    assert probe.n_items == 50
    assert out["iqa_fr/kadid10k/srcc"] == pytest.approx(stats.spearmanr(-np.asarray(cos), table["dmos"])[0], abs=1e-5)


def test_fr_iqa_errors_name_the_problem(tiny_world, tmp_path):
    with pytest.raises(ValueError, match="lower_better"):  # not a pyiqa preset: the direction must be given
        FullReferenceIQAProbe("x", dataset="my_fr_set", meta_info_file="meta.csv")
    probe = FullReferenceIQAProbe(str(tmp_path), dataset="tid2013", classical=[])
    with pytest.raises(FileNotFoundError, match="meta_info_TID2013Dataset.csv"):
        probe.prepare(PixelEmbedding())
    (tmp_path / "meta.csv").write_text("ref_name,dist_name,quality\nI01.bmp,i01_01_1.bmp,3.0\n")
    probe = FullReferenceIQAProbe(str(tmp_path), dataset="mine", meta_info_file="meta.csv", lower_better=False,
                                  classical=[])
    with pytest.raises(ValueError, match=r"no MOS column 'mos' \(set mos_column.*quality"):
        probe.prepare(PixelEmbedding())
    (tmp_path / "meta.csv").write_text("dist_name,quality\ni01_01_1.bmp,3.0\n")
    probe = FullReferenceIQAProbe(str(tmp_path), dataset="mine", meta_info_file="meta.csv", mos_column="quality",
                                  lower_better=False, classical=[])
    with pytest.raises(ValueError, match=r"no reference column 'ref_name' \(set ref_column"):
        probe.prepare(PixelEmbedding())


def test_iqa_presets_read_pyiqa_columns_by_position_and_livec_rows(tiny_world, tmp_path):
    """Presets read the columns where pyiqa does (its files' headers vary between releases): the
    same scores from a renamed header, for a full-reference and a no-reference probe."""
    for family, folder, csv_name in (("fr", "kadid10k", "meta_info_KADID10kDataset.csv"),
                                     ("nr", "livec", "meta_info_LIVEChallengeDataset.csv")):
        original = tiny_world / "iqa" / folder
        renamed = tmp_path / folder
        renamed.mkdir()
        (renamed / "images").symlink_to(original / "images")
        table = pd.read_csv(original / csv_name)
        table.set_axis([f"Column {i}" for i in range(table.shape[1])], axis=1).to_csv(renamed / csv_name, index=False)
        probes = []
        for root in (original, renamed):
            probe = (FullReferenceIQAProbe(str(root), dataset=folder, distance="l2", classical=[], max_items=None)
                     if family == "fr" else CLIPIQAProbe(str(root), dataset=folder, max_items=None))
            probe.load_table()
            probes.append(probe)
        torch.testing.assert_close(probes[0].quality, probes[1].quality, rtol=0, atol=0)
        rows = table if family == "fr" else table.iloc[7:]  # pyiqa's LIVE-C leaves out 7 training images
        assert probes[0].quality.tolist() == rows[table.columns[2 if family == "fr" else 1]].tolist()
        if family == "fr":
            pd.testing.assert_frame_equal(probes[0].table, probes[1].table)
        else:
            assert probes[0].names == probes[1].names == rows["img_name"].astype(str).tolist()
            kept = CLIPIQAProbe(str(original), dataset=folder, max_items=None, drop_first=0)
            kept.load_table()
            assert kept.names == table["img_name"].astype(str).tolist()
    # a named score column is read by name, so a renamed header is an error naming it
    probe = CLIPIQAProbe(str(tmp_path / "livec"), dataset="livec", mos_column="mos")
    with pytest.raises(ValueError, match=r"'mos'.*Column 0"):
        probe.load_table()


# ----------------------------------------------------------------------------------- NIGHTS
def test_nights_2afc_matches_dreamsim_on_pixels(tiny_world):
    probe = NightsProbe("nights", split="test", distance="l2", max_items=None)
    out = run(probe, PixelEmbedding(), tiny_world)

    root = tiny_world / "nights"
    table = pd.read_csv(root / "data.csv")
    table = table[(table["split"] == "test") & (table["votes"] >= 6)]
    d0 = [np.linalg.norm(pixels(root / r) - pixels(root / left)) for r, left in zip(table["ref_path"], table["left_path"])]
    d1 = [np.linalg.norm(pixels(root / r) - pixels(root / right)) for r, right in zip(table["ref_path"], table["right_path"])]
    p = table["right_vote"].to_numpy()
    d0, d1 = np.asarray(d0), np.asarray(d1)
    expected = np.mean((d0 < d1) * (1 - p) + (d1 < d0) * p + (d0 == d1) * 0.5)
    hard = np.mean(((d1 < d0) & (p > 0.5)) | ((d0 < d1) & (p < 0.5)))  # the majority's choice
    assert probe.n_items == len(table)
    assert out == {"nights/2afc": pytest.approx(expected, abs=1e-6), "nights/hard_accuracy": pytest.approx(hard, abs=1e-6)}


def test_nights_as_the_texture_bias_authors_measure_it(tiny_world):
    """split: all, min_votes: 0, per_dimension_normalized_l2: every triplet of data.csv, each pixel
    dimension normalised over all of them, hard accuracy against the majority -- equal to their
    script's formulas on the same features (tests/test_scores.py transcribes the script)."""
    from test_scores import authors_nights

    probe = NightsProbe("nights", split="all", min_votes=0, distance="per_dimension_normalized_l2", max_items=None)
    out = run(probe, PixelEmbedding(), tiny_world)
    root = tiny_world / "nights"
    table = pd.read_csv(root / "data.csv")
    feats = {c: np.stack([pixels(root / f).ravel() for f in table[c]]).astype(np.float64)
             for c in ("ref_path", "left_path", "right_path")}
    p = table["right_vote"].to_numpy()
    d1, d2, _ = authors_nights(feats["ref_path"], feats["left_path"], feats["right_path"], 1 - p, p)
    hard = np.mean(((d2 < d1) & (p > 0.5)) | ((d1 < d2) & (p < 0.5)))
    assert probe.n_items == len(table) > len(table[table["split"] == "test"])
    assert out["nights/hard_accuracy"] == pytest.approx(hard, abs=1e-6)
    assert out["nights/2afc"] == pytest.approx(np.mean((d1 < d2) * (1 - p) + (d2 < d1) * p + (d1 == d2) * 0.5), abs=1e-6)


# --------------------------------------------------------------------- zero-shot probes
def zero_shot_logits(backbone, paths, classnames, templates=None):
    """Independent path: PIL -> the backbone's full eval transform -> embedding -> open_clip classifier."""
    from open_clip import build_zero_shot_classifier
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    tf = backbone.transform(train=False)
    with torch.no_grad():
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
        w = build_zero_shot_classifier(backbone.model, backbone.tokenizer, classnames, templates or SIMPLE_IMAGENET_TEMPLATES,
                                       num_classes_per_batch=None)
        return backbone.encode_image(x) @ w


def test_shape_bias_probe_matches_independent_zero_shot(tiny_world, backbone):
    probe = ShapeBiasProbe("cue_conflict", max_items=60, seed=1)
    out = run(probe, backbone, tiny_world)
    files = sorted((tiny_world / "cue_conflict").rglob("*.png"))
    files = [files[i] for i in select_items(len(files), 60, 1)]
    classes = list(probe.classes)
    predicted = [classes[i] for i in zero_shot_logits(backbone, files, classes).argmax(-1).tolist()]
    shape, texture = zip(*(scores.cue_conflict_labels(f.name) for f in files))
    # model-vs-human counting, by hand
    conflict = [(p, s, t) for p, s, t in zip(predicted, shape, texture) if s != t]
    n_shape = sum(p == s for p, s, _ in conflict)
    n_texture = sum(p == t for p, _, t in conflict)
    assert probe.n_items == len(files) and len(conflict) < len(files)
    assert out["shape_bias/cue_conflict/shape_acc"] == pytest.approx(n_shape / len(conflict))
    assert out["shape_bias/cue_conflict/texture_acc"] == pytest.approx(n_texture / len(conflict))
    if n_shape + n_texture:
        assert out["shape_bias/cue_conflict"] == pytest.approx(n_shape / (n_shape + n_texture))
    assert probe.direction("shape_bias/cue_conflict") == "max"
    assert probe.direction("shape_bias/cue_conflict/texture_acc") == "min"


def test_noise_probe_clean_accuracy_drop_and_fixed_noise(tiny_world, backbone):
    templates = ["a photo of a {}.", "a drawing of a {}."]
    probe = NoiseRobustnessProbe("classification", sigmas=[0.1, 0.5], templates=templates, max_items=32, seed=0)
    out = run(probe, backbone, tiny_world)
    files = probe.found.images(probe.kept)  # the paths of the kept images
    logits = zero_shot_logits(backbone, files, probe.classes, templates)
    expected_clean = float((logits.argmax(-1) == probe.labels).float().mean())
    assert out["noise/classification/acc@sigma=0"] == pytest.approx(expected_clean)
    for s in ("0.1", "0.5"):
        assert out[f"noise/classification/drop@sigma={s}"] == pytest.approx(
            scores.normalized_drop(expected_clean, out[f"noise/classification/acc@sigma={s}"]))
    assert out["noise/classification/drop"] == pytest.approx(
        (out["noise/classification/drop@sigma=0.1"] + out["noise/classification/drop@sigma=0.5"]) / 2)
    # The noise of an item is fixed: a second evaluation of the same model gives the same numbers.
    with torch.inference_mode():
        assert probe.evaluate(ProbeContext(backbone)) == out
    assert probe.direction("noise/classification/drop") == "min"
    assert probe.direction("noise/classification/acc@sigma=0.5") == "max"


def test_noise_probe_reads_a_hugging_face_dataset_like_the_folder(tiny_world, backbone, tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = NoiseRobustnessProbe("classification", sigmas=[0.2], templates=["a photo of a {}."], max_items=24)
    expected = run(folder, backbone, tiny_world)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=folder.classes)})
    files = folder.found.paths
    ds = datasets.Dataset.from_dict(
        {"image": files, "label": [folder.classes.index(Path(f).parent.name) for f in files]}, features=features)
    ds.to_parquet(str(tmp_path / "toy_classification.parquet"))
    hf = NoiseRobustnessProbe(hf_dataset=str(tmp_path / "toy_classification.parquet"), dataset="classification",
                              sigmas=[0.2], templates=["a photo of a {}."], max_items=24)
    assert run(hf, backbone, tiny_world) == expected
    # a save_to_disk folder whose labels are class-name strings: the same items, the same numbers
    named = datasets.Dataset.from_dict({"image": files, "label": [Path(f).parent.name for f in files]},
                                       features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")}))
    named.save_to_disk(str(tmp_path / "saved"))
    saved = NoiseRobustnessProbe(hf_dataset=str(tmp_path / "saved"), dataset="classification", sigmas=[0.2],
                                 templates=["a photo of a {}."], max_items=24)
    assert run(saved, backbone, tiny_world) == expected


def test_clip_iqa_matches_independent_computation(tiny_world, backbone):
    pairs = [["Good photo.", "Bad photo."], ["Sharp image.", "Blurry image."]]
    probe = CLIPIQAProbe("iqa/koniq", dataset="koniq", prompt_pairs=pairs, split="train", max_items=40)
    out = run(probe, backbone, tiny_world)

    root = tiny_world / "iqa" / "koniq"
    table = pd.read_csv(root / "meta_info_KonIQ10kDataset.csv")
    table = table[table["split"] == "train"].reset_index(drop=True)
    table = table.iloc[select_items(len(table), 40, 0)]
    tf = backbone.transform(train=False)
    with torch.no_grad():
        img = backbone.encode_image(torch.stack([tf(Image.open(root / "images" / n).convert("RGB")) for n in table["img_name"]]))
        txt = backbone.encode_text(backbone.tokenize([t for p in pairs for t in p]))
        logits = 100 * img @ txt.T
        prob = torch.stack([logits[:, 2 * k:2 * k + 2].softmax(-1)[:, 0] for k in range(2)]).mean(0)
    assert out["iqa_nr/koniq/srcc"] == pytest.approx(stats.spearmanr(prob.numpy(), table["mos"])[0], abs=1e-4)
    assert out["iqa_nr/koniq/plcc"] == pytest.approx(stats.pearsonr(prob.numpy(), table["mos"])[0], abs=1e-4)


# ------------------------------------------------------------------------------ layers
def test_text_space_readout_of_last_block_equals_projected_embedding(tiny_world, backbone):
    last = ShapeBiasProbe("cue_conflict", layer=-1, max_items=16)
    final = ShapeBiasProbe("cue_conflict", layer=None, max_items=16)
    for p in (last, final):
        p.data_root = str(tiny_world)
        p.prepare(backbone)
    ctx = ProbeContext(backbone)
    with torch.inference_mode():
        a = last.features(ctx, last.images, text_space=True)
        b = final.features(ctx, final.images, text_space=True)
        inner = ShapeBiasProbe("cue_conflict", layer=1, max_items=16)
        inner.data_root = str(tiny_world)
        inner.prepare(backbone)
        c = inner.features(ctx, inner.images, text_space=True)
    assert torch.allclose(a, b, atol=1e-5)
    assert c.shape == b.shape and not torch.allclose(c, b, atol=1e-3)


def test_fr_probe_inner_layer_uses_that_block(tiny_world, backbone):
    probe = FullReferenceIQAProbe("iqa/tid2013", dataset="tid2013", layer=1, distance="per_dimension_normalized_l2",
                                  classical=[], max_items=20)
    probe.data_root = str(tiny_world)
    probe.prepare(backbone)
    with torch.inference_mode():
        feats = probe.features(ProbeContext(backbone), probe.dist_images)
        direct = backbone.encode_image(backbone.normalize(probe.dist_images.float() / 255), normalize=False, layer=1)
    assert feats.shape == (20, backbone.visual.transformer.width)
    assert torch.allclose(feats, direct, atol=1e-5)


# ----------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("n, world", [(7, 3), (6, 2), (1, 2), (10, 1)])
def test_shards_cover_every_item_once_after_unshard(n, world):
    shards = [shard_indices(n, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # equal shapes for all_gather
    gathered = torch.stack([torch.tensor(s) for s in shards])
    assert unshard(gathered, n).tolist() == list(range(n))


def test_select_items_is_a_fixed_sorted_subset():
    a = select_items(100, 10, seed=0)
    assert a == select_items(100, 10, seed=0) and a == sorted(a) and len(set(a)) == 10
    assert a != select_items(100, 10, seed=1)
    assert select_items(5, None, 0) == select_items(5, 50, 0) == list(range(5))
    with pytest.raises(ValueError, match="max_items"):
        select_items(5, 0, 0)


def test_probe_roots_resolve_under_data_root(tiny_world):
    probe = ShapeBiasProbe("cue_conflict")
    probe.data_root = str(tiny_world)
    assert probe.path == tiny_world / "cue_conflict"
    absolute = ShapeBiasProbe(str(tiny_world / "cue_conflict"))
    absolute.data_root = "/elsewhere"
    assert absolute.path == tiny_world / "cue_conflict"
    missing = ShapeBiasProbe("no_such_folder")
    missing.data_root = str(tiny_world)
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        missing.prepare(PixelEmbedding())


def test_the_all_token_readout_is_transformers_hidden_state_and_feeds_the_authors_distance(tiny_world, tmp_path):
    """tokens: all reads block i's every token -- transformers' hidden_states[i + 1] for the same
    weights -- and the NIGHTS probe's per-layer distance averages each dimension's squared
    difference over those tokens before the normalisation, as the authors' per-layer scripts do."""
    from transformers import CLIPModel

    from test_hf_clip import hf_config
    from test_scores import authors_nights

    torch.manual_seed(0)
    hf = CLIPModel(hf_config()).eval()
    hf.save_pretrained(tmp_path / "clip")
    tower = CLIPBackbone(None, pretrained=str(tmp_path / "clip")).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = tower.encode_image(images, normalize=False, layer=0, tokens="all")
        theirs = hf.vision_model(pixel_values=images, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="tokens"):
        NightsProbe("nights", tokens="all")  # every token of which block?

    backbone = CLIPBackbone("perceptlab-vit-tiny-64").eval()
    probe = NightsProbe("nights", split="all", min_votes=0, layer=1, tokens="all",
                        distance="per_dimension_normalized_l2", max_items=None)
    probe.data_root = str(tiny_world)
    probe.prepare(backbone)
    with torch.inference_mode():
        items = probe.measure(ProbeContext(backbone))["nights"]
        feats = {k: backbone.encode_image(backbone.normalize(probe.images[k].float() / 255), normalize=False, layer=1,
                                          tokens="all").double() for k in ("ref", "left", "right")}
    # the authors' per-layer formula: squared differences averaged over tokens (axis 1), then normalised
    ref, left, right = (feats[k].numpy() for k in ("ref", "left", "right"))
    d_left, d_right = ((ref - left) ** 2).mean(axis=1), ((ref - right) ** 2).mean(axis=1)
    m = np.concatenate([d_left, d_right]).mean(axis=0)
    np.testing.assert_allclose(items["d0"].numpy(), np.sqrt((d_left / m).mean(axis=1)), rtol=1e-5)
    np.testing.assert_allclose(items["d1"].numpy(), np.sqrt((d_right / m).mean(axis=1)), rtol=1e-5)
    with pytest.raises(ValueError, match="only distance: per_dimension_normalized_l2"):
        NightsProbe("nights", layer=1, tokens="all", distance="cosine").pair_distances(
            ProbeContext(backbone), [(feats["ref"], feats["left"])], "cosine")
