"""Cost of the alignment suite as a share of training, measured side by side in one process.

Toy world (measured):
* ``suite`` -- one evaluation of every probe of ``experiments/toy/alignment_suite.yaml`` (its
  probe sizes and batch size) on the tiny ViT, after set-up (images decoded and cached, classical
  reference lines computed); median over ``--repeats`` evaluations.
* ``training`` -- stage-2 steps as ``experiments/toy/pretrain_random.yaml`` runs them: CLIP loss
  over both towers with its patch dropout, backward, AdamW, its batch, on the toy captioned images;
  median step time x steps per epoch of the world (training pairs / batch size). Data loading is
  left out (the loader workers prepare the next batches while the step runs).
* shares: one evaluation / one epoch (the target: at most 5 %), and the YAML's whole schedule
  (baseline, every ``every_n_steps`` up to ``every_n_steps_until``, every ``then_every_n_steps``
  after, every epoch end) over one epoch.

ViT-B/32 on YFCC15M (estimated): on this device, time per image of a ViT-B/32 inference forward
at 224 px, time per caption of a text forward, and time per image-text pair of a training
forward + backward over both towers (optimiser step excluded: at CLIP batch sizes it is amortised
over tens of thousands of pairs). The suite's image and text forwards per evaluation follow from
the probes' class defaults on the real data sets (sizes listed in the JSON); an epoch is 15M
pairs. Target: one evaluation per epoch costs at most 5% of the epoch.

    python benchmarks/bench_alignment_cost.py                  # tiny toy world written to a temp dir
    python benchmarks/bench_alignment_cost.py --world data/toyworld   # e.g. the demo's small world
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

from perceptlab.callbacks.probes.base import Probe, ProbeContext
from perceptlab.core import uncertainty
from perceptlab.core.backbone import CLIPBackbone

SUITE_YAML = REPO / "experiments" / "toy" / "alignment_suite.yaml"
STAGE2_YAML = REPO / "experiments" / "toy" / "pretrain_random.yaml"

# Real data sets the suite reads by default, their sizes and what the class defaults make of them.
REAL_SETS = {
    "nights_test_triplets": 2120,
    "tid2013_pairs": 3000, "tid2013_references": 25,
    "kadid10k_pairs": 10125, "kadid10k_references": 81,
    "koniq_images": 10073, "livec_images": 1162, "spaq_images": 11125,
    "cue_conflict_images": 1280,
    "noise_set": "CIFAR-100 test (10,000 images, 100 classes)",
}
DEFAULT_MAX_ITEMS = 1000  # every probe class's default except shape bias (all 1,280 stimuli)
SIGMAS = 3  # noise probe default (0.05, 0.1, 0.2), plus the clean pass
TEMPLATES = 7  # open_clip's SIMPLE_IMAGENET_TEMPLATES
YFCC15M_PAIRS = 15_000_000


def load_suite_yaml(path: Path) -> tuple[dict, list[Probe]]:
    """The AlignmentSuite block of the fragment and its probes, built from class_path/init_args."""
    config = yaml.safe_load(path.read_text())
    (block,) = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("AlignmentSuite")]
    args = dict(block["init_args"])
    probes = []
    for spec in args.pop("probes"):
        module, name = spec["class_path"].rsplit(".", 1)
        probes.append(getattr(importlib.import_module(module), name)(**spec.get("init_args", {})))
    return args, probes


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def toy_suite(world: Path, repeats: int, batch_size: int | None = None) -> dict:
    args, probes = load_suite_yaml(SUITE_YAML)
    if batch_size:
        args["batch_size"] = batch_size
    torch.manual_seed(0)
    backbone = CLIPBackbone("perceptlab-vit-tiny-64").eval()
    start = time.perf_counter()
    for p in probes:
        p.data_root = str(world)
        p.prepare(backbone)
    setup = time.perf_counter() - start
    ctx = ProbeContext(backbone, batch_size=args.get("batch_size", 256))
    per_probe: dict[str, list[float]] = {p.name: [] for p in probes}
    per_probe["bootstrap"] = []
    resamples = args.get("bootstrap_resamples", uncertainty.DEFAULT_RESAMPLES)

    def evaluate():  # what AlignmentSuite.run_probes does: measure, score, then the bootstrap intervals
        bootstrap = 0.0
        with torch.inference_mode():
            for p in probes:
                t = time.perf_counter()
                items = p.measure(ctx)
                p.score(items)
                per_probe[p.name].append(time.perf_counter() - t)
                t = time.perf_counter()
                if resamples:
                    idx = {g: uncertainty.resample_indices(len(next(iter(f.values()))), resamples, 0, g)
                           for g, f in items.items()}
                    uncertainty.intervals(p.resampled(items, idx))
                bootstrap += time.perf_counter() - t
        per_probe["bootstrap"].append(bootstrap)

    evaluate()  # warm-up (first-call kernel selection, classical lines' gather)
    for v in per_probe.values():
        v.clear()
    seconds = median_time(evaluate, repeats)
    images = sum(
        p.n_items * {"NightsProbe": 3, "NoiseRobustnessProbe": 1 + len(getattr(p, "sigmas", []))}.get(type(p).__name__, 1)
        + getattr(p, "n_refs", 0)
        for p in probes
    )
    return {"args": args, "setup_seconds": round(setup, 2), "seconds": seconds, "images_per_evaluation": images,
            "items": {p.name: p.n_items for p in probes},
            "per_probe_seconds": {k: round(statistics.median(v), 3) for k, v in per_probe.items()}}


def stage2_settings() -> dict:
    config = yaml.safe_load(STAGE2_YAML.read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    optim = model["optim"]
    return {"model_name": model["model_name"], "patch_dropout": model.get("patch_dropout"), "lr": optim["lr"],
            "weight_decay": optim["weight_decay"], "betas": tuple(optim["betas"]), "eps": optim["eps"],
            "warmup_steps": optim["warmup_steps"], "batch_size": data["loader"]["batch_size"]}


def toy_training_step(world: Path, repeats: int, settings: dict) -> float:
    import pandas as pd
    from open_clip import ClipLoss
    from PIL import Image

    from perceptlab.core.optim import adamw_cosine, param_groups

    torch.manual_seed(0)
    backbone = CLIPBackbone(settings["model_name"], patch_dropout=settings["patch_dropout"]).train()
    table = pd.read_csv(world / "image_text" / "pairs.csv", sep="\t").iloc[:settings["batch_size"]]
    tf = backbone.transform(train=True)
    images = torch.stack([tf(Image.open(world / "image_text" / f).convert("RGB")) for f in table["filepath"]])
    tokens = backbone.tokenize(table["title"].tolist())
    loss_fn = ClipLoss()
    optimizer = adamw_cosine(param_groups(backbone.named_parameters(), settings["weight_decay"]), settings["lr"],
                             settings["betas"], settings["eps"], settings["warmup_steps"], 1000)["optimizer"]

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(backbone.encode_image(images), backbone.encode_text(tokens), backbone.logit_scale.exp())
        loss.backward()
        optimizer.step()

    step()
    return median_time(step, repeats)


def vitb32_costs(repeats: int, batch: int) -> dict:
    """Seconds per image (inference), per caption (inference), per pair (train fwd + bwd), ViT-B/32."""
    torch.manual_seed(0)
    model = CLIPBackbone("ViT-B-32")
    images = torch.randn(batch, 3, model.image_size, model.image_size)
    tokens = model.tokenize(["a photo of a dog on the grass next to a red car"] * batch)
    from open_clip import ClipLoss

    loss_fn = ClipLoss()
    model.eval()

    def infer_images():
        with torch.inference_mode():
            model.encode_image(images)

    def infer_text():
        with torch.inference_mode():
            model.encode_text(tokens)

    model.train()

    def train():
        model.zero_grad(set_to_none=True)
        loss_fn(model.encode_image(images), model.encode_text(tokens), model.logit_scale.exp()).backward()

    train()
    t_train = median_time(train, repeats)
    model.eval()
    infer_images()
    t_img = median_time(infer_images, repeats)
    t_txt = median_time(infer_text, repeats)
    return {"image_inference": t_img / batch, "text_inference": t_txt / batch, "train_pair": t_train / batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default=None, help="toy world root (default: write a tiny one to a temp dir)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: the YAML's)")
    parser.add_argument("--vit-batch", type=int, default=8, help="batch of the ViT-B/32 timing")
    parser.add_argument("--no-vitb32", action="store_true", help="skip the ViT-B/32 measurement")
    ns = parser.parse_args()

    tmp = None
    if ns.world:
        world = Path(ns.world)
    else:
        from perceptlab.datamodules.toyworld import synthesize

        tmp = tempfile.TemporaryDirectory()
        world = Path(tmp.name)
        synthesize(world, seed=0, scale="tiny", progress=False)
    manifest = json.loads((world / "world.json").read_text())
    train_pairs = manifest["counts"]["image_text"]["train"]

    settings = stage2_settings()
    suite = toy_suite(world, ns.repeats, ns.batch_size)
    step = toy_training_step(world, ns.repeats, settings)
    steps_per_epoch = max(1, train_pairs // settings["batch_size"])
    epoch = step * steps_per_epoch
    args = suite["args"]
    n, until, then = args.get("every_n_steps"), args.get("every_n_steps_until"), args.get("then_every_n_steps")

    def step_due(s: int) -> bool:
        every = n if until is None or s <= until else then
        return bool(every) and s % every == 0

    step_evals = len([s for s in range(1, steps_per_epoch) if step_due(s)])
    first_epoch_evals = 1 + step_evals + (1 if args.get("every_n_epochs") else 0)  # baseline + steps + epoch end

    result = {
        "benchmark": "bench_alignment_cost",
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "toy": {
            "world_scale": manifest.get("scale"),
            "probe_items": suite["items"],
            "images_per_evaluation": suite["images_per_evaluation"],
            "setup_seconds_once": suite["setup_seconds"],
            "suite_batch_size": args.get("batch_size", 256),
            "evaluation_seconds": round(suite["seconds"], 3),
            "per_probe_seconds": suite["per_probe_seconds"],
            "training_step_seconds": round(step, 3),
            "batch_size": settings["batch_size"],
            "patch_dropout": settings["patch_dropout"],
            "steps_per_epoch": steps_per_epoch,
            "epoch_seconds": round(epoch, 2),
            "evaluations_in_first_epoch": first_epoch_evals,
        },
        "toy_share_per_evaluation": suite["seconds"] / epoch,
        "toy_share_first_epoch": first_epoch_evals * suite["seconds"] / epoch,
    }

    if not ns.no_vitb32:
        costs = vitb32_costs(ns.repeats, ns.vit_batch)
        images = (3 * min(DEFAULT_MAX_ITEMS, REAL_SETS["nights_test_triplets"])
                  + min(DEFAULT_MAX_ITEMS, REAL_SETS["tid2013_pairs"]) + REAL_SETS["tid2013_references"]
                  + min(DEFAULT_MAX_ITEMS, REAL_SETS["kadid10k_pairs"]) + REAL_SETS["kadid10k_references"]
                  + sum(min(DEFAULT_MAX_ITEMS, REAL_SETS[k]) for k in ("koniq_images", "livec_images", "spaq_images"))
                  + REAL_SETS["cue_conflict_images"]
                  + (1 + SIGMAS) * DEFAULT_MAX_ITEMS)
        texts = 16 * TEMPLATES + 100 * TEMPLATES + 3 * 2  # shape bias, noise (CIFAR-100), CLIP-IQA x3
        evaluation = images * costs["image_inference"] + texts * costs["text_inference"]
        epoch_b32 = YFCC15M_PAIRS * costs["train_pair"]
        result["vitb32_yfcc15m"] = {
            "assumptions": {
                "epoch_pairs": YFCC15M_PAIRS,
                "probes": "class defaults: max_items 1000 per probe (shape bias: all), 3 noise sigmas, 7 templates; "
                          "NIGHTS test, TID2013, KADID-10k, KonIQ-10k, LIVE-C, SPAQ, cue-conflict, noise on CIFAR-100",
                "real_set_sizes": REAL_SETS,
                "training_cost": "forward + backward of both towers per pair, measured at batch "
                                 f"{ns.vit_batch} on this device; optimiser step and data loading excluded",
                "evaluation_cost": "inference forwards at the same batch on the same device; image decoding is "
                                   "once per run (cached), not per evaluation",
                "same_device": "ratio of times on one device; a GPU changes both sides similarly",
            },
            "seconds_per_image_inference": costs["image_inference"],
            "seconds_per_caption_inference": costs["text_inference"],
            "seconds_per_pair_training": costs["train_pair"],
            "train_to_inference_ratio": costs["train_pair"] / costs["image_inference"],
            "images_per_evaluation": images,
            "captions_per_evaluation": texts,
            "evaluations_per_epoch_for_5pct": 0.05 * epoch_b32 / evaluation,
        }
        result["vitb32_share_per_evaluation"] = evaluation / epoch_b32
        result["vitb32_share_10_evaluations_per_epoch"] = 10 * evaluation / epoch_b32
        result["vitb32_meets_5pct_target"] = evaluation / epoch_b32 <= 0.05
    print(json.dumps(result))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
