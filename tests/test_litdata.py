"""``format: litdata``: the toy world's pairs read through litdata equal those read through
webdataset, a training stopped mid-epoch and resumed from its checkpoint sees each pair exactly
once, and a missing or truncated chunk is named before training starts."""
from __future__ import annotations

import io
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
import pytest
import torch
from PIL import Image

from perceptlab.datamodules.image_text import ImageTextDataModule
from perceptlab.datamodules.image_text.litdata_pairs import check_litdata, count_items, write_litdata
from perceptlab.datamodules.loader import Loader

MODEL = "perceptlab-vit-tiny-64"


def _jpeg(level: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (level, level, level)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _indexed(tmp_path: Path, n: int = 24, corrupt=()) -> Path:
    """Item ``i``: a flat grey image of level ``5 i`` captioned ``sample i``, 4 items a chunk."""
    items = ({"image": _jpeg(5 * i)[:200] if i in corrupt else _jpeg(5 * i), "caption": f"sample {i}"}
             for i in range(n))
    return write_litdata(items, tmp_path / "pairs", chunk_size=4)


def _module(data: str, fmt: str = "litdata", source: dict | None = None, **kw) -> ImageTextDataModule:
    from conftest import pair_source

    loading = {"batch_size": 8, "num_workers": 0}
    loading.update({k: kw.pop(k) for k in ("batch_size", "num_workers") if k in kw})
    args = dict(model_name=MODEL, shuffle=False, loader=Loader(**loading))
    args.update(kw)
    dm = ImageTextDataModule(pair_source(fmt, data, **(source or {})), **args)
    dm.setup("fit")
    return dm


def test_toy_world_pairs_read_through_litdata_equal_the_webdataset_batches(tiny_world):
    root = Path(tiny_world) / "image_text"
    fixed = dict(batch_size=32, augmentation="none")  # the eval transform: no random crop
    litdata = list(_module(str(root / "litdata" / "train"), **fixed).train_dataloader())
    wds = _module(str(root / "shards" / "*.tar"), fmt="webdataset", **fixed).train_dataloader()
    assert count_items(root / "litdata" / "train") == 256 and len(litdata) == 8
    for ours, reference in zip(litdata, wds):
        assert torch.equal(ours["image"], reference["image"])
        assert torch.equal(ours["text"], reference["text"])
    assert [b["index"].tolist() for b in litdata] == [list(range(32 * k, 32 * (k + 1))) for k in range(8)]


def test_litdata_epochs_through_two_workers_hold_every_pair_once_and_are_reshuffled(tmp_path):
    dm = _module(str(_indexed(tmp_path)), num_workers=2, batch_size=4, shuffle=True)
    loader = dm.train_dataloader()
    first = [b["index"].tolist() for b in loader]
    second = [b["index"].tolist() for b in loader]
    assert sorted(i for b in first for i in b) == sorted(i for b in second for i in b) == list(range(24))
    assert all(len(b) == 4 for b in first) and first != second


class _Seen(pl.LightningModule):
    """A one-weight module that records which pairs each training step received."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx):
        self.seen += batch["index"].tolist()
        return (self.w - batch["image"].float().mean() / 255) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_training_stopped_mid_epoch_and_resumed_sees_each_pair_exactly_once(tmp_path):
    data = str(_indexed(tmp_path, n=48))

    def trainer(**kw) -> pl.Trainer:
        return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                          default_root_dir=tmp_path, **kw)

    # A checkpoint after 5 of the epoch's 12 steps; the run goes on to step 7 and dies there
    # (what it saw after the checkpoint is lost with it).
    every5 = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    stopped = _Seen()
    trainer(max_steps=7, callbacks=[every5]).fit(
        stopped, datamodule=_module(data, num_workers=2, batch_size=4, shuffle=True, seed=3))
    resumed = _Seen()
    trainer(max_epochs=1, enable_checkpointing=False).fit(
        resumed, datamodule=_module(data, num_workers=2, batch_size=4, shuffle=True, seed=3),
        ckpt_path=tmp_path / "ckpt" / "epoch=0-step=5.ckpt")
    before = stopped.seen[:20]
    assert len(resumed.seen) == 28 and sorted(before + resumed.seen) == list(range(48))
    assert before != list(range(20))  # shuffled: the order is litdata's, not the file's


def test_an_undecodable_item_is_replaced_and_counted(tmp_path):
    batches = list(_module(str(_indexed(tmp_path, corrupt=(5,))), batch_size=8).train_dataloader())
    assert all(b["image"].shape[0] == 8 for b in batches)
    assert sum(int(b["skipped"]) for b in batches) == 1
    assert [b["index"].tolist() for b in batches][0] == list(range(8))  # item 5's slot holds item 6


def test_a_missing_or_truncated_chunk_or_wrong_field_is_named_before_training(tmp_path):
    folder = _indexed(tmp_path)
    check_litdata(folder)
    with pytest.raises(ValueError, match=r"no field 'jpg' \(image_key\).*\['caption', 'image'\]"):
        _module(str(folder), source={"image_key": "jpg"})
    chunk = sorted(folder.glob("chunk-*.bin"))[2]
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{chunk.name}: {len(data) // 2} bytes.*truncated"):
        _module(str(folder))
    chunk.unlink()
    with pytest.raises(FileNotFoundError, match=rf"1 of 6 chunks .* missing: {chunk.name}"):
        _module(str(folder))
    with pytest.raises(FileNotFoundError, match="no index.json"):
        _module(str(tmp_path))


_DDP_SCRIPT = """
import json, sys
import lightning.pytorch as pl
from test_litdata import _Seen, _module

class Dump(pl.Callback):
    def on_train_end(self, trainer, pl_module):
        with open(f"{sys.argv[2]}/rank{trainer.global_rank}.json", "w") as f:
            json.dump(pl_module.seen, f)

if __name__ == "__main__":
    dm = _module(sys.argv[1], num_workers=2, batch_size=4, shuffle=True)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, callbacks=[Dump()])
    trainer.fit(_Seen(), datamodule=dm)
"""


@pytest.mark.slow
def test_two_ranks_of_two_workers_read_disjoint_halves_of_the_epoch(tmp_path):
    """Under DDP (2 CPU processes, 2 loader workers each) litdata gives each rank its own half."""
    import json
    import os
    import subprocess
    import sys

    data = _indexed(tmp_path, n=48)
    script = tmp_path / "ddp_litdata.py"
    script.write_text(_DDP_SCRIPT)
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tests), str(tests.parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(script), str(data), str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(rank0) == len(rank1) == 24 and not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == list(range(48))
