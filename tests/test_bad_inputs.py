"""The bad-input corpus: the failures researchers meet, tried on every reader through the command line
with the shipped configs, each with the one outcome it must get.

* **refused** -- one line ``perceptlab <command>: error: ...`` naming the file and the problem,
  exit status 2, no traceback, before any training step (no checkpoint is written);
* **skipped** -- the run goes on; the bad items are left out and counted (the count is logged, and
  for a training it is in the run record: ``data/skipped``);
* **read** -- a legitimate image in an unusual mode (grey, 16-bit, CMYK, palette), read as the RGB
  image it shows (``core.images.to_rgb``).

Each case runs in a copy of the tiny toy world (only the data set it spoils is copied), from that
folder, so the shipped ``experiments/`` configs read it as ``data/toyworld``. The table in
``docs/reliability.md`` is this list: ``python tests/test_bad_inputs.py`` prints it, and a test
checks the document against it.
"""
from __future__ import annotations

import io
import json
import shutil
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "experiments" / "toy"
MARKER = "opened-me"  # the file a malicious pickle would create


@dataclass(frozen=True)
class Bad:
    reader: str
    what: str
    outcome: str  # refused | skipped | read
    make: Callable[[Path], list[str]]  # (world, the case's folder = cwd) -> the command line
    expect: str = ""  # in the error line (refused) or in the log (skipped)


# ----------------------------------------------------------------------------- file makers
def png_bomb(path: Path, side: int = 30000) -> None:
    """A PNG whose header claims side x side pixels (900 M: a decompression bomb) and holds none."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def spoil(path: Path, how: str) -> None:
    from PIL import Image

    if how == "zero-byte":
        path.write_bytes(b"")
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "not an image":
        path.write_text("<html>404 Not Found</html>\n")
    elif how == "bomb":
        png_bomb(path)
    else:  # a mode: the same picture stored another way
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        if how == "16-bit grey":
            grey = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
            Image.fromarray(grey).save(path, format="PNG")
        elif how == "CMYK":
            rgb.convert("CMYK").save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "TIFF")
        elif how == "palette":
            rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(path, format="PNG" if path.suffix == ".png" else "GIF")
        elif how == "grey":
            rgb.convert("L").save(path, format="PNG" if path.suffix == ".png" else "JPEG")
        else:
            raise AssertionError(how)


def evil_pickle(path: Path) -> Path:
    import torch

    class Opens:  # unpickling calls open(MARKER, "w"): code run by reading the file
        def __reduce__(self):
            return (open, (MARKER, "w"))

    torch.save({"state_dict": Opens(), "hyper_parameters": {"model_name": "perceptlab-vit-tiny-64"}}, path)
    return path


def plain_evil_pickle(path: Path) -> Path:
    import pickle

    class Opens:
        def __reduce__(self):
            return (open, (MARKER, "w"))

    path.write_bytes(pickle.dumps({1: {"train": [0, 1], "test": Opens()}}))
    return path


def tiny_weights(path: Path, drop: str | None = None, **changes) -> Path:
    """An open_clip state dict of the toy architecture (or another one: ``changes`` to its config)."""
    import open_clip
    import torch

    import perceptlab.core.transforms  # noqa: F401  registers perceptlab-vit-tiny-64

    name = "perceptlab-vit-tiny-64"
    if changes:
        config = open_clip.get_model_config(name)
        config["vision_cfg"].update(changes)
        model = open_clip.CLIP(**config)
    else:
        model = open_clip.create_model(name)
    state = {k: v for k, v in model.state_dict().items() if not (drop and k.startswith(drop))}
    torch.save(state, path)
    return path


def edit_csv(path: Path, sep: str = ",", **how) -> None:
    import pandas as pd

    table = pd.read_csv(path, sep=sep)
    if "drop" in how:
        table = table.drop(columns=[how["drop"]])
    if "set" in how:
        column, value = how["set"]
        table[column] = table[column].astype(object)
        table.loc[table.index[:3], column] = value
    if "duplicate" in how:
        table = pd.concat([table, table.iloc[:5]], ignore_index=True)
    if "keep_split" in how:
        column, split = how["keep_split"]
        table = table[table[column] != split]
    table.to_csv(path, sep=sep, index=False)


def nights_image(w: Path, split: str = "train") -> Path:
    import pandas as pd

    table = pd.read_csv(w / "nights" / "data.csv")
    return w / "nights" / table[table["split"] == split].iloc[0]["ref_path"]


def koniq_image(w: Path) -> Path:
    import pandas as pd

    root = w / "iqa" / "koniq"
    table = pd.read_csv(root / "meta_info_KonIQ10kDataset.csv")
    return root / "images" / str(table.iloc[0, 0])


def first(folder: Path, pattern: str) -> Path:
    return sorted(folder.rglob(pattern))[0]


# ----------------------------------------------------------------------------- command lines
FAST = ["--trainer.fast_dev_run=1", "--trainer.enable_progress_bar=false", "--data.init_args.loader.num_workers=0",
        "--runs_dir=runs"]


def fit(config: str, *extra: str) -> list[str]:
    return ["fit", "--config", str(TOY / f"{config}.yaml"), *FAST, *extra]


def stage2(fmt: str, train: str, *extra: str, **settings) -> list[str]:
    from conftest import pairs_override

    return fit("pretrain_random", pairs_override(fmt, train, **settings), "--data.init_args.zeroshot_data=null",
               "--trainer.log_every_n_steps=1", *extra)


def suite_of(probe: str, out: Path, **init_args) -> Path:
    """The shipped suite with only the probes of class ``probe`` (a bad input in one reader)."""
    import yaml

    suite = yaml.safe_load((TOY / "alignment_suite.yaml").read_text())
    block = suite["trainer"]["callbacks"][0]["init_args"]
    block["probes"] = [p for p in block["probes"] if p["class_path"].endswith(probe)][:1]
    block["probes"][0]["init_args"].update(init_args)
    path = out / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def evaluate(w: Path, probe: str, **init_args) -> list[str]:
    model = tiny_weights(w.parent.parent / "model.pt")
    return ["evaluate", str(model), "--model_name", "perceptlab-vit-tiny-64", "--config",
            str(suite_of(probe, w.parent.parent, **init_args)), "--out", "evaluated"]


def with_run(w: Path, spoil_run: Callable[[Path], None]) -> list[str]:
    """A run directory with a real alignment record (two evaluations), spoilt, given to report."""
    from perceptlab.callbacks.run_record import write_evaluations

    run = w.parent.parent / "runs" / "r" / "version_0"
    write_evaluations(run, [{"epoch": -1, "step": s, "trigger": "step", "metrics": {"nights/2afc": v}, "ci": {}}
                            for s, v in ((0, 0.6), (10, 0.7))])
    spoil_run(run)
    return ["report", str(run), "--out", "report"]


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def middle_line_bad(run: Path) -> None:
    lines = (run / "alignment.jsonl").read_text().splitlines()
    (run / "alignment.jsonl").write_text("\n".join([lines[0][:20], *lines[1:]]) + "\n")


def predict_images(w: Path, spoilt: str) -> list[str]:
    ckpt = task_checkpoint(w)
    folder = w.parent.parent / "photos"
    folder.mkdir(exist_ok=True)
    for i, path in enumerate(sorted((w / "iqa" / "koniq" / "images").iterdir())[:4]):
        shutil.copy(path, folder / f"{i}{path.suffix}")
    spoil(sorted(folder.iterdir())[0], spoilt)
    return ["predict", str(ckpt), "--images", str(folder), "--out", "predictions.csv", "--num_workers", "0",
            "--accelerator", "cpu"]


_TASK: dict[str, Path] = {}


def task_checkpoint(w: Path) -> Path:
    """A real task checkpoint (the shipped IQA config, two steps), made once per test session."""
    if "ckpt" not in _TASK:
        from perceptlab.commands.cli import main

        main(fit("perceptual_iqa", "--trainer.fast_dev_run=2", "--runs_dir=task_runs"))
        _TASK["ckpt"] = next(Path("task_runs").rglob("last.ckpt")).resolve()
    return _TASK["ckpt"]


def iqa_split_file(w: Path, content: Callable[[Path], Path]) -> list[str]:
    split = content(w.parent.parent / "split.pkl")
    return fit("perceptual_iqa", f"--data.init_args.train_set.split_file={split}", "--data.init_args.train_set.split_index=1")


def litdata_index(w: Path, change: Callable[[dict], None]) -> list[str]:
    root = w / "image_text" / "litdata" / "train"
    index = json.loads((root / "index.json").read_text())
    change(index)
    (root / "index.json").write_text(json.dumps(index))
    return stage2("litdata", str(root))


def webdataset_member(w: Path, member_suffix: str, data: bytes) -> list[str]:
    """The first shard with its first sample's ``member_suffix`` member replaced by ``data``."""
    import tarfile

    shards = w / "image_text" / "shards"
    shard = sorted(shards.glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    key = members[0][0].name.rsplit(".", 1)[0]
    with tarfile.open(shard, "w") as tar:
        for m, content in members:
            if m.name == f"{key}.{member_suffix}":
                content = data
            m.size = len(content)
            tar.addfile(m, io.BytesIO(content))
    return stage2("webdataset", str(shards / "*.tar"))


def csv_pairs(w: Path, change: Callable[[Path], None]) -> list[str]:
    pairs = w / "image_text" / "pairs.csv"
    change(pairs)
    return stage2("csv", str(pairs))


def not_utf8_captions(path: Path) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"a ", "à ".encode("latin-1"), 1) + b" \xff\xfe"
    path.write_bytes(b"\n".join(lines))


def blank_captions(path: Path) -> None:
    lines = path.read_text().split("\n")
    lines[1] = lines[1].split("\t")[0] + "\t "
    path.write_text("\n".join(lines))


# ----------------------------------------------------------------------------- the corpus
CASES: list[Bad] = [
    # model files: every command that opens one
    Bad("model file", "a pickle that runs code, to predict", "refused",
        lambda w: ["predict", str(evil_pickle(w.parent.parent / "evil.pt")), "--images", str(w / "classification")],
        "refused: reading it would run code"),
    Bad("model file", "a pickle that runs code, to evaluate", "refused",
        lambda w: ["evaluate", str(evil_pickle(w.parent.parent / "evil.pt")), "--config", str(TOY / "alignment_suite.yaml"),
                   "--out", "evaluated"], "refused: reading it would run code"),
    Bad("model file", "a pickle that runs code, to export", "refused",
        lambda w: ["export", str(evil_pickle(w.parent.parent / "evil.pt")), "--to", "open_clip", "--out", "m.safetensors"],
        "refused: reading it would run code"),
    Bad("model file", "a pickle that runs code, as fit's init_visual_from", "refused",
        lambda w: fit("pi_nights", f"--model.init_args.init_visual_from={evil_pickle(w.parent.parent / 'evil.pt')}"),
        "refused: reading it would run code"),
    Bad("model file", "a pickle that runs code, as fit's --ckpt_path", "refused",
        lambda w: fit("pi_nights", f"--ckpt_path={evil_pickle(w.parent.parent / 'evil.pt')}"),
        "refused: reading it would run code"),
    Bad("model file", "a zero-byte file", "refused",
        lambda w: ["export", str(_touch(w.parent.parent / "empty.pt")), "--to", "open_clip", "--out", "m.safetensors"],
        "empty.pt: not a readable model file"),
    Bad("model file", "a truncated file", "refused",
        lambda w: ["evaluate", str(_half(tiny_weights(w.parent.parent / "half.pt"))), "--model_name",
                   "perceptlab-vit-tiny-64", "--config", str(TOY / "alignment_suite.yaml"), "--out", "evaluated"],
        "half.pt: not a readable model file"),
    Bad("model file", "an HTML page saved as .pt", "refused",
        lambda w: ["export", str(_html(w.parent.parent / "page.pt")), "--to", "hf", "--out", "hf"],
        "page.pt: not a readable model file"),
    Bad("model file", "a truncated .safetensors", "refused",
        lambda w: ["export", str(_half(_safetensors(w.parent.parent / "m.safetensors"))), "--to", "open_clip",
                   "--out", "again.safetensors"], "m.safetensors: not a readable safetensors file"),
    Bad("model file", "another architecture (wider tower)", "refused",
        lambda w: ["export", str(tiny_weights(w.parent.parent / "wide.pt", width=96)), "--model_name",
                   "perceptlab-vit-tiny-64", "--to", "open_clip", "--out", "m.safetensors"], "shape"),
    Bad("model file", "missing keys (no vision tower)", "refused",
        lambda w: ["evaluate", str(tiny_weights(w.parent.parent / "textonly.pt", drop="visual.")), "--model_name",
                   "perceptlab-vit-tiny-64", "--config", str(TOY / "alignment_suite.yaml"), "--out", "evaluated"],
        "no CLIP weights found"),
    Bad("model file", "a stage checkpoint that is not a task model, to predict", "refused",
        lambda w: ["predict", str(_stage1_checkpoint(w)), "--images", str(w / "classification")],
        "not of a perceptual task"),
    # configs
    Bad("suite YAML", "not YAML (an unclosed bracket)", "refused",
        lambda w: ["evaluate", str(tiny_weights(w.parent.parent / "m.pt")), "--model_name", "perceptlab-vit-tiny-64",
                   "--config", str(_write(w.parent.parent / "suite.yaml", "trainer: {callbacks: [\n")), "--out", "e"],
        "suite.yaml: not YAML"),
    Bad("suite YAML", "a probe class that does not exist", "refused",
        lambda w: evaluate(w, "NightsProbe") + ["--config", str(_replace(w.parent.parent / "suite.yaml",
                                                                        "probes.nights.NightsProbe", "probes.nights.NightProbe"))],
        "NightProbe"),
    Bad("suite YAML", "an argument the probe does not take", "refused",
        lambda w: evaluate(w, "NightsProbe", max_itmes=10), "max_itmes"),
    Bad("suite YAML", "a probe data set that is not there", "refused",
        lambda w: evaluate(w, "NightsProbe", root="no_such_folder"), "no_such_folder"),
    Bad("trainer YAML", "a value of the wrong type", "refused",
        lambda w: fit("pi_nights", "--config", str(_write(w.parent.parent / "t.yaml", "trainer:\n  max_epochs: three\n"))),
        "max_epochs"),
    Bad("trainer YAML", "a config file that is not there", "refused",
        lambda w: fit("pi_nights", "--config", "experiments/toy/no_such.yaml"), "no_such.yaml"),
    # run directories read by report and evaluate
    Bad("run directory", "alignment.jsonl's last line torn by a kill", "skipped",
        lambda w: with_run(w, lambda run: append(run / "alignment.jsonl", '{"epoch": 0, "step": 2')),
        "ignored a torn last line"),
    Bad("run directory", "an alignment.jsonl line in the middle that is not JSON", "refused",
        lambda w: with_run(w, middle_line_bad), "alignment.jsonl:1: not a JSON record"),
    Bad("run directory", "an alignment_summary.json that is not JSON", "refused",
        lambda w: with_run(w, lambda run: (run / "alignment_summary.json").write_text("{")), "alignment_summary.json"),
    Bad("run directory", "a zero-byte alignment_bootstrap.npz", "refused",
        lambda w: with_run(w, lambda run: (run / "alignment_bootstrap.npz").write_bytes(b"")), "alignment_bootstrap.npz"),
    Bad("run directory", "a folder that holds no run", "refused",
        lambda w: ["report", str(w / "nights"), "--out", "report"], "has no alignment.jsonl"),
    Bad("run directory", "evaluate --watch on a folder that is not there", "refused",
        lambda w: ["evaluate", "--watch", "runs/nothing", "--config", str(TOY / "alignment_suite.yaml")], "runs/nothing"),
    # NIGHTS triplets (stage 1)
    *[Bad("NIGHTS", f"a{'n' if how[0] in 'aeiou' else ''} {how} image", "refused",
          (lambda how: lambda w: (spoil(nights_image(w), how), fit("pi_nights"))[1])(how), "unreadable NIGHTS image")
      for how in ("zero-byte", "truncated", "not an image", "bomb")],
    Bad("NIGHTS", "data.csv without the right_vote column", "refused",
        lambda w: (edit_csv(w / "nights" / "data.csv", drop="right_vote"), fit("pi_nights"))[1], "right_vote"),
    Bad("NIGHTS", "text in the left_vote column", "refused",
        lambda w: (edit_csv(w / "nights" / "data.csv", set=("left_vote", "n/a")), fit("pi_nights"))[1], "left_vote"),
    Bad("NIGHTS", "an empty split (no val rows)", "refused",
        lambda w: (edit_csv(w / "nights" / "data.csv", keep_split=("split", "val")), fit("pi_nights"))[1], "val"),
    *[Bad("NIGHTS", f"a {how} image", "read", (lambda how: lambda w: (spoil(nights_image(w), how), fit("pi_nights"))[1])(how))
      for how in ("grey", "16-bit grey", "palette")],
    # IQA tables and images (the task and the probes read them with datamodules/iqa.py)
    Bad("IQA table", "no MOS column", "refused",
        lambda w: (edit_csv(w / "iqa/koniq/meta_info_KonIQ10kDataset.csv", drop="mos"), fit("perceptual_iqa"))[1], "mos"),
    Bad("IQA table", "NaN in the MOS column", "refused",
        lambda w: (edit_csv(w / "iqa/koniq/meta_info_KonIQ10kDataset.csv", set=("mos", float("nan"))),
                   fit("perceptual_iqa"))[1], "mos"),
    Bad("IQA table", "text in the MOS column", "refused",
        lambda w: (edit_csv(w / "iqa/koniq/meta_info_KonIQ10kDataset.csv", set=("mos", "high")),
                   fit("perceptual_iqa"))[1], "mos"),
    Bad("IQA table", "duplicate rows", "skipped",
        lambda w: (edit_csv(w / "iqa/koniq/meta_info_KonIQ10kDataset.csv", duplicate=True), fit("perceptual_iqa"))[1],
        "5 duplicate rows"),
    Bad("IQA table", "a pyiqa split file that runs code", "refused",
        lambda w: iqa_split_file(w, plain_evil_pickle), "refused: reading it would run code"),
    *[Bad("IQA images", f"a{'n' if how[0] in 'aeiou' else ''} {how} image", "refused",
          (lambda how: lambda w: (spoil(koniq_image(w), how), fit("perceptual_iqa"))[1])(how), "unreadable")
      for how in ("zero-byte", "truncated", "not an image")],
    Bad("IQA images", "a CMYK image", "read",
        lambda w: (spoil(koniq_image(w), "CMYK"), fit("perceptual_iqa"))[1]),
    # image-text pairs (stage 2)
    Bad("webdataset", "a sample whose image is not one", "skipped",
        lambda w: webdataset_member(w, "jpg", b"not a jpeg"), "skipped"),
    Bad("webdataset", "a caption that is not UTF-8", "skipped",
        lambda w: webdataset_member(w, "txt", b"\xff\xfe caption"), "skipped"),
    Bad("webdataset", "a truncated shard (its sample count read from the tar)", "refused",
        lambda w: (_half(sorted((w / "image_text" / "shards").glob("*.tar"))[0]),
                   [p.unlink() for p in (w / "image_text" / "shards").glob("*_stats.json")],
                   stage2("webdataset", str(w / "image_text" / "shards" / "*.tar")))[2], "not a whole tar file"),
    Bad("webdataset", "a truncated shard (its count from _stats.json)", "skipped",
        lambda w: (_tenth(sorted((w / "image_text" / "shards").glob("*.tar"))[0]),
                   stage2("webdataset", str(w / "image_text" / "shards" / "*.tar"), "--trainer.fast_dev_run=false",
                          "--trainer.max_epochs=1"))[1], "skipped"),
    Bad("webdataset", "a shard pattern that matches nothing", "refused",
        lambda w: stage2("webdataset", str(w / "image_text" / "nothing" / "*.tar")), "nothing"),
    Bad("CSV pairs", "no caption column", "refused",
        lambda w: csv_pairs(w, lambda p: edit_csv(p, sep="\t", drop="title")), "title"),
    Bad("CSV pairs", "captions that are not UTF-8", "refused", lambda w: csv_pairs(w, not_utf8_captions),
        "pairs.csv: not UTF-8"),
    Bad("CSV pairs", "an empty caption", "skipped", lambda w: csv_pairs(w, blank_captions), "skipped"),
    Bad("CSV pairs", "an image that is not one", "skipped",
        lambda w: (spoil(first(w / "image_text" / "images" / "train", "*.jpg"), "not an image"),
                   stage2("csv", str(w / "image_text" / "pairs.csv")))[1], "skipped"),
    Bad("Hugging Face pairs", "no caption column", "refused",
        lambda w: stage2("hf", str(w / "image_text" / "hf" / "train.parquet"), caption_key="text"),
        "text"),
    Bad("litdata pairs", "a truncated chunk", "refused",
        lambda w: (_half(first(w / "image_text" / "litdata" / "train", "chunk-*.bin")),
                   stage2("litdata", str(w / "image_text" / "litdata" / "train")))[1], "truncated"),
    Bad("litdata pairs", "items stored as pickles", "refused",
        lambda w: litdata_index(w, lambda index: index["config"].__setitem__(
            "data_format", ["pickle" for _ in index["config"]["data_format"]])), "run code when read"),
    Bad("cue-conflict folder", "no images", "refused",
        lambda w: (shutil.rmtree(w / "cue_conflict"), (w / "cue_conflict").mkdir(),
                   evaluate(w, "ShapeBiasProbe"))[2], "cue_conflict"),
    Bad("noise image folder", "an image that is not one", "refused",
        lambda w: (spoil(first(w / "classification", "*.png"), "not an image"), evaluate(w, "NoiseRobustnessProbe"))[1],
        "unreadable probe image"),
    Bad("task data", "LaMem scores that are text", "refused",
        lambda w: (_lamem_text(w), fit("perceptual_memorability"))[1], "lamem"),
    Bad("task data", "an EmoSet annotation with an unknown emotion", "refused",
        lambda w: (_emoset_unknown(w), fit("perceptual_emotion"))[1], "joy"),
    Bad("images to predict", "an image that is not one", "skipped",
        lambda w: predict_images(w, "not an image"), "1 unreadable"),
    # outputs already written are never replaced unless asked
    Bad("earlier outputs", "predict --out naming an earlier result", "refused",
        lambda w: predict_images(w, "grey") + ["--out", str(_write(w.parent.parent / "earlier.csv", "path,score\n"))],
        "earlier.csv exists: give --overwrite"),
    Bad("earlier outputs", "export --out naming an earlier export", "refused",
        lambda w: ["export", str(tiny_weights(w.parent.parent / "m.pt")), "--model_name", "perceptlab-vit-tiny-64",
                   "--to", "open_clip", "--out", str(_write(w.parent.parent / "earlier.safetensors", "x"))],
        "earlier.safetensors exists: give --overwrite"),
]


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _tenth(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 10])
    return path


def _html(path: Path) -> Path:
    path.write_text("<html><body>Sign in to download</body></html>\n")
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _replace(path: Path, old: str, new: str) -> Path:
    path.write_text(path.read_text().replace(old, new))
    return path


def _safetensors(path: Path) -> Path:
    import open_clip
    from safetensors.torch import save_file

    import perceptlab.core.transforms  # noqa: F401

    model = open_clip.create_model("perceptlab-vit-tiny-64")
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(path))
    return path


def _stage1_checkpoint(w: Path) -> Path:
    from perceptlab.commands.cli import main

    main(fit("pi_nights", "--runs_dir=stage1_runs"))
    return next(Path("stage1_runs").rglob("last.ckpt"))


def _lamem_text(w: Path) -> None:
    split = sorted((w / "lamem" / "splits").glob("train_1.txt"))[0]
    lines = split.read_text().splitlines()
    lines[0] = lines[0].split()[0] + " high"
    split.write_text("\n".join(lines) + "\n")


def _emoset_unknown(w: Path) -> None:
    path = w / "emoset" / "train.json"
    rows = json.loads(path.read_text())
    rows[0][0] = "joy"
    path.write_text(json.dumps(rows))


# ----------------------------------------------------------------------------- the test
SPOILS = {"NIGHTS": "nights", "IQA table": "iqa", "IQA images": "iqa", "webdataset": "image_text", "CSV pairs": "image_text",
          "Hugging Face pairs": "image_text", "litdata pairs": "image_text", "cue-conflict folder": "cue_conflict",
          "noise image folder": "classification", "task data": ("lamem", "emoset")}


def world_for(case: Bad, tiny_world: Path, folder: Path) -> Path:
    """``folder/data/toyworld``: the tiny world's data sets linked, the one the case spoils copied."""
    w = folder / "data" / "toyworld"
    w.mkdir(parents=True)
    copied = SPOILS.get(case.reader, ())
    copied = (copied,) if isinstance(copied, str) else copied
    for entry in tiny_world.iterdir():
        if entry.name in copied:
            shutil.copytree(entry, w / entry.name)
        else:
            (w / entry.name).symlink_to(entry)
    return w


def ids(case: Bad) -> str:
    return f"{case.reader}: {case.what}"


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_a_bad_input_is_refused_in_one_line_or_skipped_and_counted(case, tiny_world, tmp_path, monkeypatch, capsys, caplog):
    import logging

    from perceptlab.commands.cli import main

    w = world_for(case, tiny_world, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the CLI rewrites sys.argv
    monkeypatch.delenv("PERCEPTLAB_TRUST_MODEL_FILES", raising=False)
    argv = case.make(w)
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        try:
            main(argv)
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
    out, err = capsys.readouterr()
    logged = out + err + caplog.text
    assert not (tmp_path / MARKER).exists(), "reading a file ran its code"
    assert "Traceback" not in err
    if case.outcome == "refused":
        assert code == 2, (argv, logged[-3000:])
        lines = [line for line in err.splitlines() if ": error:" in line]
        assert len(lines) == 1 and case.expect in lines[0], err[-2000:]
        assert not list((tmp_path / "runs").rglob("*.ckpt")), "a training step ran before the refusal"
    else:
        assert code == 0, (argv, logged[-3000:])
        assert case.expect in logged, logged[-3000:]
        if case.outcome == "skipped" and argv[0] == "fit" and case.reader in ("webdataset", "CSV pairs"):
            assert skipped_in_record(tmp_path / "runs") >= 1


def skipped_in_record(runs: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    total = 0.0
    for events in runs.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "data/skipped" in acc.Tags()["scalars"]:
            total = max(total, max(e.value for e in acc.Scalars("data/skipped")))
    return total


def test_the_corpus_covers_every_reader_with_at_least_40_inputs():
    readers = {c.reader for c in CASES}
    assert len(CASES) >= 40
    assert {"model file", "suite YAML", "trainer YAML", "run directory", "NIGHTS", "IQA table", "IQA images", "webdataset",
            "CSV pairs", "Hugging Face pairs", "litdata pairs", "cue-conflict folder", "noise image folder",
            "task data"} <= readers


def table() -> str:
    """The Markdown table of ``docs/reliability.md``."""
    counts: dict[str, int] = {}
    for c in CASES:
        counts[c.reader] = counts.get(c.reader, 0) + 1
    rows = ["| reader | bad input | outcome |", "|---|---|---|"]
    rows += [f"| {c.reader} | {c.what} | {c.outcome}{f' (`{c.expect}`)' if c.expect else ''} |" for c in CASES]
    rows += ["", f"{len(CASES)} bad inputs: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "."]
    return "\n".join(rows) + "\n"


def test_the_reliability_document_is_the_corpus():
    doc = (REPO / "docs" / "reliability.md").read_text()
    begin, end = "<!-- corpus: python tests/test_bad_inputs.py -->\n", "<!-- end of corpus -->"
    assert begin in doc and end in doc
    assert doc.split(begin, 1)[1].split(end, 1)[0] == table(), "regenerate: python tests/test_bad_inputs.py"


if __name__ == "__main__":
    print(table(), end="")
