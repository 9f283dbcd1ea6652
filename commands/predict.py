"""``perceptlab predict``: score images with a perceptual-task model or a PerceptCLIP release.

    perceptlab predict runs/iqa/version_0/checkpoints/last.ckpt --images photos/ --out predictions.csv
    perceptlab predict perceptclip_koniq.pth --images list.txt --devices 2
    perceptlab predict last.ckpt --images table.csv --column filepath --config experiments/toy/perceptual_emotion.yaml

Writes ``predictions.csv``: ``path,score`` for a regression model (memorability, quality: higher
is more), ``path,label,p_<class>...`` for a classification model (emotion). Images come from a
folder, a list file or a CSV (:mod:`perceptlab.datamodules.image_list`); an unreadable one is
skipped and listed in ``<out>.unreadable.csv`` (``path,error``), and the counts are printed. The
images go through Lightning's predict loop (``--accelerator``, ``--devices``: several GPUs score
disjoint shares, rank zero writes the file), in batches, with ``--crops`` 5 or 10 fixed crops per
image averaged (default: the config's ``data.init_args.test_crops`` when ``--config`` is given).

A PerceptCLIP release is scored with its model card's protocol by default
(:mod:`perceptlab.datamodules.protocols`: IQA resizes to 512x384, averages 15 random 224-px crops
and maps the mean to [0, 1] with the card's prediction range; the ``score`` column is the mapped
score and ``raw_score`` the head's mean), with crops that are the same in every run (``--seed``).
``--protocol NAME`` picks one for any model, ``--protocol none`` scores a release like a checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal


def load_task_model(model: str, merge_lora: bool = False):
    """A ``PerceptualTaskModule`` from a Lightning checkpoint of one, or from a PerceptCLIP release
    file (then its attribute ``release_file`` is the file's path)."""
    from perceptlab.core.safe_load import load_file, trusted
    from perceptlab.lightning_modules.perceptual_tasks import PerceptualTaskModule

    path = Path(model).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {path} (a task checkpoint or a PerceptCLIP release file)")
    raw = load_file(path, mmap=False)  # as data: a file that would run code is refused here
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a task checkpoint or a PerceptCLIP release (a {type(raw).__name__})")
    if "state_dict" in raw and "hyper_parameters" in raw:
        if (raw.get("hyper_parameters") or {}).get("task") is None:
            raise ValueError(f"{path}: a Lightning checkpoint of another stage, not of a perceptual task "
                             "(no hyper-parameter 'task'); predict scores task models")
        source = _with_optim_group(raw) or path
        return PerceptualTaskModule.load_from_checkpoint(source, map_location="cpu", weights_only=not trusted())
    module = PerceptualTaskModule(release=str(path), release_merge_lora=merge_lora)
    module.release_file = str(path)
    return module


def _with_optim_group(raw: dict):
    """A task checkpoint of an earlier version keeps lr, weight_decay, betas, eps and warmup_steps
    among its hyper-parameters; they are the ``optim`` group now. Such a checkpoint is handed to
    Lightning rewritten in memory (a file-like object); ``None`` when nothing moved."""
    import io

    import torch

    from perceptlab.core.optim import MOVED_OPTIMISER_ARGUMENTS

    hparams = dict(raw.get("hyper_parameters") or {})
    old = {k: hparams.pop(k) for k in list(hparams) if k in MOVED_OPTIMISER_ARGUMENTS}
    if not old:
        return None
    hparams["optim"] = {**dict(hparams.get("optim") or {}), **old}
    buffer = io.BytesIO()
    torch.save({**raw, "hyper_parameters": hparams}, buffer)
    buffer.seek(0)
    return buffer


def choose_protocol(module, protocol: str | None, crops: int | None):
    """The protocol to score with: the named one, the release's own by default, or none."""
    from perceptlab.datamodules.protocols import get_protocol, release_protocol

    if protocol == "none":
        return None
    if protocol is not None:
        chosen = get_protocol(protocol)
        if crops is not None:
            raise ValueError(f"--crops {crops} and --protocol {protocol}: the protocol sets its crops; give one of them")
    else:
        release = getattr(module, "release_file", None)
        if release is None or crops is not None:
            return None
        outputs = 1 if module.hparams.task == "regression" else int(module.hparams.num_classes)
        chosen = release_protocol(release, outputs)
        if chosen is None:
            print(f"{release}: which PerceptCLIP task this release is for is not in its name; scored without "
                  "a card protocol (--protocol perceptclip_iqa|perceptclip_memorability|perceptclip_emotions)")
            return None
    task = module.hparams.task
    if chosen.task != task:
        raise ValueError(f"--protocol {chosen.name} is for a {chosen.task} model; this one is {task}")
    return chosen


def class_names(module, config: dict | None, given: list[str] | None) -> list[str]:
    from perceptlab.datamodules.task_sets import EMOTIONS

    n = int(module.hparams.num_classes)
    names = given or ((config or {}).get("data", {}).get("init_args", {}) or {}).get("emotions")
    if not names and n == len(EMOTIONS):
        names = list(EMOTIONS)
    names = list(names or [f"class_{i}" for i in range(n)])
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for a model with {n} classes: {names}")
    return names


def predict(model: str, images: str, out: str = "predictions.csv", column: str | None = None,
            config: str | None = None, crops: Literal[1, 5, 10] | None = None, batch_size: int = 32, num_workers: int = 4,
            accelerator: str = "auto", devices: int | str = "auto", classes: list[str] | None = None,
            merge_lora: bool = False, protocol: str | None = None, seed: int = 0, overwrite: bool = False) -> Path:
    """Score images with a task model or a PerceptCLIP release; writes a CSV.

    Args:
        model: a PerceptualTaskModule checkpoint, or a PerceptCLIP release file.
        images: an image folder, a list file (one path a line) or a CSV.
        out: the CSV to write.
        column: the CSV's image-path column (default: the first).
        config: the task's YAML (test_crops, test_resize_ratio, class names).
        crops: fixed crops per image, averaged (default: the config's, else 1).
        batch_size: images per forward pass.
        num_workers: image-decoding workers.
        accelerator: Lightning's accelerator (auto, cpu, gpu).
        devices: Lightning's devices.
        classes: class names of a classification head, e.g. --classes '[amusement, awe]'.
        merge_lora: fold a release's LoRA adapters into the tower.
        protocol: a model card's test protocol (perceptclip_iqa, perceptclip_memorability,
            perceptclip_emotions) or none; default: the release's own for a release file.
        seed: the seed of a protocol's random crops (the same image gets the same crops in every run).
        overwrite: replace an existing --out (without it, an earlier result is never written over).
    """
    import lightning.pytorch as pl
    import pandas as pd
    import torch
    import yaml
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import DataLoader

    from perceptlab.datamodules.image_list import ImagePaths, collate_scored, read_image_list
    from perceptlab.datamodules.task_sets import multicrop_transform

    out_path = Path(out).expanduser()
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists: give --overwrite to replace it, or another --out")
    cfg = yaml.safe_load(Path(config).read_text()) if config else None
    paths = read_image_list(images, column)  # a bad path or column is named before any model is loaded
    module = load_task_model(model, merge_lora).eval()
    data = ((cfg or {}).get("data", {}) or {}).get("init_args", {}) or {}
    card = choose_protocol(module, protocol, crops)
    crops = int(crops if crops is not None else data.get("test_crops", 1))
    backbone = module.backbone
    if card is not None:
        transform = card.transform(seed)
        print(f"scoring with {card.name}: {card.crops} {'random' if card.random_crops else 'centre'} "
              f"{card.crop}-px crop(s) of the image resized to {card.resize}"
              + (f", mean mapped from {card.output_range} to (0, 1)" if card.output_range else "")
              + (f", crop seed {seed}" if card.random_crops else ""))
    else:
        transform = backbone.transform(train=False) if crops == 1 else multicrop_transform(
            backbone.image_size, backbone.image_mean, backbone.image_std, crops,
            float(data.get("test_resize_ratio", 1.15)), backbone.interpolation)
    regression = module.hparams.task == "regression"
    names = None if regression else class_names(module, cfg, classes)

    class Collect(Callback):
        """Rows and failures of this rank; rank zero writes the files once every rank is done."""

        def __init__(self) -> None:
            self.rows: list[tuple[int, list[float]]] = []
            self.failed: list[tuple[int, str]] = []

        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            values = outputs.detach().float().cpu()
            values = values.unsqueeze(-1) if values.ndim == 1 else values  # scores, or class probabilities
            self.rows += list(zip(batch["index"].tolist(), values.tolist()))
            self.failed += list(batch["failed"])

        def on_predict_end(self, trainer, pl_module) -> None:
            rows, failed = self.rows, self.failed
            if trainer.world_size > 1:
                gathered = [None] * trainer.world_size
                torch.distributed.all_gather_object(gathered, (rows, failed))
                rows = [r for part in gathered for r in part[0]]
                failed = [f for part in gathered for f in part[1]]
            if not trainer.is_global_zero:
                return
            # one row per image, in the input order (a distributed sampler repeats a few to even out ranks)
            rows, failed = sorted(dict(rows).items()), sorted(set(failed))
            out_path.parent.mkdir(parents=True, exist_ok=True)
            if regression:
                table = pd.DataFrame({"path": [paths[i] for i, _ in rows], "score": [v[0] for _, v in rows]})
                if card is not None and card.output_range is not None:
                    table["raw_score"] = table["score"]
                    table["score"] = card.map(table["raw_score"])
            else:
                table = pd.DataFrame({"path": [paths[i] for i, _ in rows],
                                      "label": [names[max(range(len(v)), key=v.__getitem__)] for _, v in rows]})
                for k, name in enumerate(names):
                    table[f"p_{name}"] = [v[k] for _, v in rows]
            partial = out_path.with_name(f".{out_path.name}.partial")
            table.to_csv(partial, index=False)
            os.replace(partial, out_path)  # whole or not at all
            bad = out_path.with_name(out_path.stem + ".unreadable.csv")
            if failed:
                pd.DataFrame({"path": [paths[i] for i, _ in failed], "error": [e for _, e in failed]}).to_csv(bad, index=False)
            elif bad.exists():
                bad.unlink()
            print(f"{len(rows)} of {len(paths)} images scored -> {out_path}"
                  + (f"; {len(failed)} unreadable, listed in {bad}" if failed else ""))

    loader = DataLoader(ImagePaths(paths, transform), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_scored)
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[Collect()], use_distributed_sampler=True)
    trainer.predict(module, loader, return_predictions=False)
    return out_path


def main(argv: list[str] | None = None) -> Path:
    from perceptlab.commands.cli import run_function

    return run_function(predict, argv, prog="perceptlab predict", positional=("model",))
