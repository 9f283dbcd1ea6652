"""Scores against published definitions and published data (model-vs-human cue-conflict files)."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from perceptlab.core import scores

# The project's shared reference data sits beside the repository (``../shared/data/reference``);
# PERCEPTLAB_REFERENCE_DATA points elsewhere.
REFERENCE = Path(os.environ.get("PERCEPTLAB_REFERENCE_DATA",
                                Path(__file__).resolve().parents[2] / "shared" / "data" / "reference")) / "cue-conflict"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference data not found: {REFERENCE}")


# --------------------------------------------------------------------------- model-vs-human
def model_vs_human_shape_bias(responses: pd.Series, imagenames: pd.Series, categories: pd.Series | None = None) -> float:
    """Shape bias written after model-vs-human's ``ShapeBias`` analysis, independently of the code
    under test: texture = last '-'-separated field of the last '_'-field, digits removed; rows with
    category == texture dropped; shape / (shape + texture) fractions."""
    df = pd.DataFrame({"object_response": responses.to_numpy(), "imagename": imagenames.to_numpy()})
    stem = df["imagename"].str.split("_").str[-1].str.split(".").str[0]
    df["texture"] = stem.str.split("-").str[-1].str.replace(r"\d", "", regex=True)
    if categories is None:
        df["category"] = stem.str.split("-").str[0].str.replace(r"\d", "", regex=True)
    else:
        df["category"] = categories.to_numpy()
    df2 = df.loc[df["category"] != df["texture"]]
    frac_shape = (df2["object_response"] == df2["category"]).sum() / len(df)
    frac_texture = (df2["object_response"] == df2["texture"]).sum() / len(df)
    return frac_shape / (frac_shape + frac_texture)


def labels_of(names) -> tuple[list[str], list[str]]:
    pairs = [scores.cue_conflict_labels(n) for n in names]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@needs_reference
def test_shape_bias_of_each_human_observer_matches_model_vs_human():
    files = sorted((REFERENCE / "human").glob("*.csv"))
    assert len(files) == 10
    biases = []
    for f in files:
        df = pd.read_csv(f)
        shape, texture = labels_of(df["imagename"])
        assert shape == df["category"].tolist(), f"{f.name}: shape labels disagree with the 'category' column"
        ours = scores.shape_bias(df["object_response"].tolist(), shape, texture)
        expected = model_vs_human_shape_bias(df["object_response"], df["imagename"], df["category"])
        assert ours == pytest.approx(expected, abs=1e-12), f.name
        biases.append(ours)
    assert np.mean(biases) == pytest.approx(0.96, abs=0.01)
    assert min(biases) > 0.9


@needs_reference
@pytest.mark.parametrize(
    "filename, column, expected_about",
    [
        ("clip_RN50_openai_None.csv", "response", 0.20),
        ("clip_RN101_openai_None.csv", "response", None),
        ("ViT_L_14_openai_None.csv", "response", None),
        ("EVA01_g_14_laion400m_s11b_b41k_None.csv", "response", None),
        ("resnet50.csv", "pred_label", 0.23),
    ],
)
def test_shape_bias_of_model_files_matches_model_vs_human(filename, column, expected_about):
    df = pd.read_csv(REFERENCE / "models" / filename)
    assert len(df) == 1280
    shape, texture = labels_of(df["image"])
    ours = scores.shape_bias(df[column].tolist(), shape, texture)
    assert ours == pytest.approx(model_vs_human_shape_bias(df[column], df["image"]), abs=1e-12)
    if expected_about is not None:
        assert ours == pytest.approx(expected_about, abs=0.01)


def test_cue_conflict_scores_counts_and_drops_same_class_items():
    predicted = ["cat", "dog", "car", "cat", "knife"]
    shape = ["cat", "cat", "cat", "cat", "knife"]
    texture = ["dog", "dog", "dog", "dog", "knife"]  # the last item has no conflict: dropped
    out = scores.cue_conflict_scores(predicted, shape, texture)
    assert out == {"shape_bias": 2 / 3, "shape_acc": 2 / 4, "texture_acc": 1 / 4}
    # Class indices work as well as names.
    idx = {"cat": 0, "dog": 1, "car": 2, "knife": 3}
    as_idx = [torch.tensor([idx[c] for c in v]) for v in (predicted, shape, texture)]
    assert scores.cue_conflict_scores(*as_idx) == out
    assert math.isnan(scores.shape_bias(["car"], ["cat"], ["dog"]))
    with pytest.raises(ValueError, match="lengths differ"):
        scores.shape_bias(["cat"], ["cat", "dog"], ["dog", "cat"])


@pytest.mark.parametrize(
    "name, expected",
    [
        ("airplane1-bicycle2.png", ("airplane", "bicycle")),
        ("airplane1-bicycle2", ("airplane", "bicycle")),
        ("cue_conflict/truck/truck10-elephant3.png", ("truck", "elephant")),
        ("0001_s5n_s01_0_bird_00_bird3-bird2.png", ("bird", "bird")),
        ("0815_s5n_s07_0_oven_00_oven2-keyboard1.png", ("oven", "keyboard")),
    ],
)
def test_cue_conflict_labels_reads_both_name_styles(name, expected):
    assert scores.cue_conflict_labels(name) == expected


def test_cue_conflict_labels_names_a_bad_file():
    with pytest.raises(ValueError, match="no_conflict_here.png"):
        scores.cue_conflict_labels("no_conflict_here.png")


@needs_reference
def test_cue_conflict_labels_agree_with_human_category_column():
    df = pd.read_csv(REFERENCE / "human" / "cue-conflict_subject-01_session_1.csv")
    for name, category in zip(df["imagename"], df["category"]):
        m = re.search(r"([a-z]+)\d+-([a-z]+)\d+\.png$", name)
        assert scores.cue_conflict_labels(name) == (m.group(1), m.group(2)) and m.group(1) == category


# ----------------------------------------------------------------------------------- 2AFC
def dreamsim_2afc(d0: np.ndarray, d1: np.ndarray, p: np.ndarray) -> float:
    """DreamSim's formula written as a loop over triplets."""
    total = 0.0
    for a, b, q in zip(d0, d1, p):
        if a < b:
            total += 1 - q
        elif b < a:
            total += q
        else:
            total += 0.5
    return total / len(d0)


def test_two_afc_matches_dreamsim_with_ties():
    g = torch.Generator().manual_seed(0)
    # Rounded distances: many exact ties, which must score 0.5.
    d0 = torch.round(torch.rand(500, generator=g) * 8) / 8
    d1 = torch.round(torch.rand(500, generator=g) * 8) / 8
    p = torch.rand(500, generator=g)
    ties = int((d0 == d1).sum())
    assert ties > 20
    expected = dreamsim_2afc(d0.numpy(), d1.numpy(), p.numpy())
    assert scores.two_afc(d0, d1, p) == pytest.approx(expected, abs=1e-6)
    # A model agreeing with the majority everywhere scores mean(max(p, 1 - p)).
    assert scores.two_afc(p, 1 - p, p) == pytest.approx(float(torch.maximum(p, 1 - p).mean()), abs=1e-6)


# ---------------------------------------------------------------------------- correlations
def test_correlations_match_scipy_with_ties_and_orientation():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    x = torch.round(torch.randn(200, generator=g) * 3)  # ties
    y = x + torch.randn(200, generator=g)
    out = scores.correlations(x, y)
    assert out["srcc"] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-6)
    assert out["plcc"] == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-6)
    assert out["krcc"] == pytest.approx(stats.kendalltau(x, y)[0], abs=1e-6)  # tau-b
    flipped = scores.correlations(-x, y)
    assert all(flipped[k] == pytest.approx(-out[k], abs=1e-6) for k in out)


def test_correlations_are_nan_when_undefined():
    assert all(math.isnan(v) for v in scores.correlations(torch.ones(10), torch.arange(10.0)).values())
    assert math.isnan(scores.srcc(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0])))


def test_embedding_distances():
    a = torch.tensor([[1.0, 0.0, 0.0, 0.0], [3.0, 4.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0, 0.0], [6.0, 8.0, 0.0, 0.0]])
    assert torch.allclose(scores.embedding_distance(a, b, "cosine"), torch.tensor([1.0, 0.0]), atol=1e-6)
    assert torch.allclose(scores.embedding_distance(a, b, "l2"), torch.tensor([2 ** 0.5, 5.0]))
    with pytest.raises(ValueError, match="manhattan"):
        scores.embedding_distance(a, b, "manhattan")
    with pytest.raises(ValueError, match="constant rescale of l2"):  # the retired name says what to use
        scores.check_distance("normalized_l2")


def authors_nights(ref: np.ndarray, left: np.ndarray, right: np.ndarray, left_vote, right_vote) -> tuple:
    """A transcription of Hernandez-Camara et al.'s Middle-NIGHTS script (the per-triplet loop
    over data.csv, vectorised): distances and hard accuracy (in percent)."""
    distances1_clip = (ref - left) ** 2
    distances2_clip = (ref - right) ** 2
    distances_means = np.array([distances1_clip.mean(axis=0), distances2_clip.mean(axis=0)]).mean(axis=0)
    d1 = np.sqrt((distances1_clip / distances_means).mean(axis=1))
    d2 = np.sqrt((distances2_clip / distances_means).mean(axis=1))
    correct = sum(1 for i in range(len(d1)) if (d1[i] > d2[i] and right_vote[i] == 1) or (d1[i] < d2[i] and left_vote[i] == 1))
    return d1, d2, 100 * correct / len(d1)


def authors_tid(ref: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Their Low-TID script: per-pair distances with every dimension divided by its mean over all pairs."""
    d = (ref - dist) ** 2
    return np.sqrt((d / d.mean(axis=0)).mean(axis=1))


def test_the_per_dimension_normalised_distance_and_hard_accuracy_equal_the_authors_scripts():
    """On constructed features whose dimensions differ in scale by 1000x (where plain L2 and the
    normalised distance rank pairs differently), scores.per_dimension_normalized and
    hard_2afc_per_item equal a transcription of the authors' NIGHTS and TID2013 scripts."""
    rng = np.random.default_rng(0)
    n, d = 400, 16
    scale = np.logspace(0, 3, d)
    ref, left, right = (rng.normal(size=(n, d)) * scale for _ in range(3))
    right_vote = rng.integers(0, 2, n).astype(float)  # NIGHTS votes: unanimous, 0 or 1
    d1, d2, accuracy = authors_nights(ref, left, right, 1 - right_vote, right_vote)
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    ours0, ours1 = scores.per_dimension_normalized(scores.squared_differences(t(ref), t(left)),
                                                   scores.squared_differences(t(ref), t(right)))
    np.testing.assert_allclose(ours0.numpy(), d1, rtol=1e-12)
    np.testing.assert_allclose(ours1.numpy(), d2, rtol=1e-12)
    hard = scores.hard_2afc_per_item(ours0, ours1, torch.from_numpy(right_vote))
    assert 100 * int(hard.sum()) / n == accuracy  # the same triplets counted right
    plain = scores.hard_2afc_per_item(scores.embedding_distance(t(ref), t(left), "l2"),
                                      scores.embedding_distance(t(ref), t(right), "l2"), torch.from_numpy(right_vote))
    assert not torch.equal(plain, hard)  # the normalisation changes decisions: not a rescale
    (tid,) = scores.per_dimension_normalized(scores.squared_differences(t(ref), t(left)))
    np.testing.assert_allclose(tid.numpy(), authors_tid(ref, left), rtol=1e-12)
    # the per-layer readout: squared differences averaged over every token before the normalisation
    tokens_a, tokens_b = rng.normal(size=(n, 5, d)), rng.normal(size=(n, 5, d))
    per_token = ((tokens_a - tokens_b) ** 2).mean(axis=1)
    np.testing.assert_allclose(scores.squared_differences(t(tokens_a), t(tokens_b)).numpy(), per_token, rtol=1e-12)
    # ties and split votes count as wrong, as in the scripts
    assert scores.hard_2afc_per_item(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 1.0]),
                                     torch.tensor([1.0, 0.5, 0.5])).tolist() == [0.0, 0.0, 0.0]


def test_antonym_probability_is_the_pairwise_softmax():
    image = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    pos, neg = (torch.nn.functional.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(s)), dim=-1)
                for s in (3, 4))
    out = scores.antonym_probability(image, pos, neg, logit_scale=100.0)
    by_hand = torch.stack([
        1 / (1 + torch.exp(100 * (image @ neg[k] - image @ pos[k]))) for k in range(2)
    ]).mean(0)
    assert torch.allclose(out, by_hand, atol=1e-6)
    # An image equal to the positive prompt of a single pair is judged good.
    assert float(scores.antonym_probability(pos[:1], pos[:1], neg[:1])) > 0.5


def test_normalized_drop():
    assert scores.normalized_drop(0.8, 0.6) == pytest.approx(0.25)
    assert scores.normalized_drop(0.5, 0.5) == 0.0
    assert math.isnan(scores.normalized_drop(0.0, 0.0))
