"""ImageTextDataModule: the three formats agree, shards split without overlap, bad samples are
skipped and counted across worker processes, errors name what is wrong, CSV loaders resume exactly.

Most tests build small indexed shards here: sample ``i`` is a flat grey image of level ``5 * i``
captioned ``"sample i"``, so every batch can be checked pair by pair.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

from perceptlab.datamodules.image_text import (
    CsvPairs,
    CsvSource,
    HFSource,
    ImageTextDataModule,
    WebDatasetPairs,
    WebDatasetSource,
    count_samples,
    expand_shards,
)
from perceptlab.datamodules.loader import Loader

MODEL = "perceptlab-vit-tiny-64"


def _jpeg(level: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (level, level, level)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, indices, corrupt=(), captionless=(), empty_caption=()) -> Path:
    """img2dataset-style shard of indexed samples; the listed keys are broken on purpose."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in indices:
            key = f"{i:09d}"
            jpg = _jpeg(5 * i)
            _add(tar, f"{key}.jpg", jpg[: len(jpg) // 3] if i in corrupt else jpg)
            if i not in captionless:
                _add(tar, f"{key}.txt", b"   " if i in empty_caption else f"sample {i}".encode())
            _add(tar, f"{key}.json", b"{}")
    return path


def _tokenizer():
    return open_clip.get_tokenizer(MODEL)


def _identity_tf(image: Image.Image) -> torch.Tensor:
    """The grey level of the image, to identify the sample."""
    return torch.tensor([image.getpixel((32, 32))[0]], dtype=torch.float32)


def _indices(batch) -> list[int]:
    """Sample indices from the images (grey level / 5), checked against the captions."""
    from_images = [round(float(v) / 5) for v in batch["image"][:, 0]]
    # open_clip.decode spaces every token out ("sample 1 0"): compare without spaces.
    captions = [open_clip.decode(t).replace("<start_of_text>", "").split("<end_of_text>")[0].replace(" ", "")
                for t in batch["text"]]
    assert captions == [f"sample{i}" for i in from_images], "image and caption of a pair disagree"
    return from_images


def test_shard_pattern_matching_nothing_names_the_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope/\{00000\.\.00003\}\.tar"):
        expand_shards(str(tmp_path / "nope" / "{00000..00003}.tar"))
    with pytest.raises(FileNotFoundError, match=r"\*\.tar"):
        expand_shards(str(tmp_path / "*.tar"))
    write_shard(tmp_path / "00000.tar", range(2))
    with pytest.raises(FileNotFoundError, match="00001.tar"):  # a brace range past the last shard
        expand_shards(str(tmp_path / "{00000..00001}.tar"))
    assert expand_shards([str(tmp_path / "*.tar")]) == [str(tmp_path / "00000.tar")]
    dm = ImageTextDataModule(WebDatasetSource(str(tmp_path / "missing-{0..3}.tar")), model_name=MODEL)
    with pytest.raises(FileNotFoundError, match=r"missing-\{0\.\.3\}\.tar"):
        dm.setup("fit")


def test_shards_split_over_ranks_without_overlap_and_every_rank_runs_equal_batches(tmp_path):
    urls = [str(write_shard(tmp_path / f"{s:05d}.tar", range(10 * s, 10 * s + 10))) for s in range(4)]
    assert count_samples(urls) == 40

    def epochs(rank, buffer, n=2):
        stream = WebDatasetPairs(urls, _identity_tf, _tokenizer(), batch_size=5, epoch_batches=4, rank=rank,
                                 world_size=2, shuffle=True, shuffle_buffer=buffer, seed=3)
        out = []
        for _ in range(n):
            batches = list(stream)
            assert len(batches) == 4 and all(b["image"].shape[0] == 5 for b in batches)
            out.append([i for b in batches for i in _indices(b)])
        return out

    # Shard-order shuffling only: one epoch is an exact partition of the data over the ranks.
    (rank0, _), (rank1, _) = epochs(0, buffer=0), epochs(1, buffer=0)
    assert sorted(rank0 + rank1) == list(range(40))
    # With a sample buffer the stream reads ahead, so it is a shuffle of the rank's shards, seeded by
    # (seed, epoch): the same run gives the same order, the next epoch another one.
    first, second = epochs(0, buffer=8)
    assert first == epochs(0, buffer=8)[0] and first != second
    assert first != sorted(first)
    # Resampled (multi-node) mode: each rank draws shards with replacement, still 4 full batches.
    resampled = WebDatasetPairs(urls, _identity_tf, _tokenizer(), batch_size=5, epoch_batches=4, rank=1,
                                world_size=2, resampled=True, shuffle_buffer=0, seed=3)
    drawn = [i for b in resampled for i in _indices(b)]
    assert len(drawn) == 20 and set(drawn) <= set(range(40))


def test_validation_stream_pads_every_rank_to_the_same_length(tmp_path):
    url = str(write_shard(tmp_path / "val.tar", range(7)))
    per_rank = []
    for rank in range(2):
        stream = WebDatasetPairs([url], _identity_tf, _tokenizer(), batch_size=3, epoch_batches=None, rank=rank,
                                 world_size=2, shuffle=False, num_samples=7)
        per_rank.append([i for b in stream for i in _indices(b)])
    assert per_rank[0] == [0, 2, 4, 6] and per_rank[1] == [1, 3, 5, 1]  # one repeat pads rank 1


def test_corrupt_and_captionless_samples_are_skipped_and_counted_across_workers(tmp_path):
    # Two shards, one per worker process; the broken samples sit mid-shard so one pass meets them.
    write_shard(tmp_path / "00000.tar", range(13), corrupt={3}, captionless={6})
    write_shard(tmp_path / "00001.tar", range(13, 26), corrupt={15, 17}, empty_caption={20})
    dm = ImageTextDataModule(WebDatasetSource(str(tmp_path / "{00000..00001}.tar"), samples_per_epoch=20),
                             model_name=MODEL, shuffle=False, augmentation="none", loader=Loader(batch_size=5, num_workers=2))
    dm.setup("fit")
    dm.train_set.transform = _identity_tf  # grey level in, so each pair can be identified
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(b["image"].shape[0] == 5 for b in batches)
    assert sum(int(b["skipped"]) for b in batches) == 5  # 2 counted in one worker, 3 in the other
    worker0 = [0, 1, 2, 4, 5, 7, 8, 9, 10, 11]
    worker1 = [13, 14, 16, 18, 19, 21, 22, 23, 24, 25]
    assert sorted(i for b in batches for i in _indices(b)) == worker0 + worker1


def test_three_formats_yield_the_same_pairs(tiny_world, tmp_path):
    root = Path(tiny_world) / "image_text"
    common = {"model_name": MODEL, "loader": Loader(batch_size=16, num_workers=0), "shuffle": False, "augmentation": "none"}
    first = {}
    for fmt, source in (("webdataset", WebDatasetSource(str(root / "shards" / "*.tar"))),
                        ("csv", CsvSource(str(root / "pairs.csv"))),
                        ("hf", HFSource(str(root / "hf" / "train.parquet"), cache_dir=str(tmp_path / "hf-cache")))):
        dm = ImageTextDataModule(source, **common)
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert len(loader) == 256 // 16
        first[fmt] = next(iter(loader))
    for fmt in ("csv", "hf"):
        assert torch.equal(first[fmt]["text"], first["webdataset"]["text"]), fmt
        torch.testing.assert_close(first[fmt]["image"], first["webdataset"]["image"])
    assert first["csv"]["image"].shape == (16, 3, 64, 64) and first["csv"]["text"].shape == (16, 32)


def test_csv_errors_name_the_file_and_column(tmp_path):
    csv = tmp_path / "pairs.tsv"
    csv.write_text("path\tcaption\nimages/a.jpg\ta cat\n")
    with pytest.raises(ValueError, match=r"pairs\.tsv.*'filepath'.*\(image_key\)"):
        CsvPairs(csv, _identity_tf)
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        CsvPairs(tmp_path / "nowhere.csv", _identity_tf)


def test_csv_loader_resumes_mid_epoch_exactly(tmp_path):
    (tmp_path / "images").mkdir()
    rows = ["filepath\ttitle"]
    for i in range(24):
        Image.new("RGB", (64, 64), (5 * i,) * 3).save(tmp_path / "images" / f"{i}.png")
        rows.append(f"images/{i}.png\tsample {i}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")

    def loader():
        torch.manual_seed(0)
        dm = ImageTextDataModule(CsvSource(str(tmp_path / "pairs.csv")), model_name=MODEL,
                                 shuffle=True, loader=Loader(batch_size=4, num_workers=0))
        dm.setup("fit")
        dm.train_set.transform = _identity_tf
        return dm.train_dataloader()

    first = loader()
    it = iter(first)
    seen = [_indices(next(it)) for _ in range(2)]
    state = first.state_dict()
    rest = [_indices(b) for b in it]
    resumed = loader()
    resumed.load_state_dict(state)
    assert [_indices(b) for b in resumed] == rest
    assert sorted(i for b in seen + rest for i in b) == list(range(24))


def test_zero_shot_folder_and_templates(tiny_world):
    dm = ImageTextDataModule(model_name=MODEL, zeroshot_data=str(Path(tiny_world) / "classification"),
                             zeroshot_templates=["a photo of a {}"], loader=Loader(batch_size=32, num_workers=0))
    dm.setup("validate")
    assert len(dm.zeroshot_classnames) == 16 and dm.zeroshot_classnames[0] == "airplane"
    (loader,) = dm.val_dataloader()
    batch = next(iter(loader))
    assert batch["image"].shape == (32, 3, 64, 64) and batch["label"].tolist() == [0] * 8 + [1] * 8 + [2] * 8 + [3] * 8
    with pytest.raises(ValueError, match="no '{}'"):
        ImageTextDataModule(model_name=MODEL, zeroshot_templates=["a photo"])


def test_mocov2_augmentation_is_random_and_model_sized(tiny_world):
    dm = ImageTextDataModule(model_name=MODEL, augmentation="mocov2")
    train_tf, eval_tf, _ = dm.processing()
    image = Image.open(next((Path(tiny_world) / "classification" / "cat").iterdir()))
    torch.manual_seed(0)
    a, b = train_tf(image), train_tf(image)
    assert a.shape == b.shape == eval_tf(image).shape == (3, 64, 64)
    assert not torch.equal(a, b)


def test_hf_streaming_yields_full_batches_for_the_epoch_length(tiny_world):
    parquet = str(Path(tiny_world) / "image_text" / "hf" / "train.parquet")
    dm = ImageTextDataModule(HFSource(parquet, streaming=True, samples_per_epoch=64, shuffle_buffer=32),
                             model_name=MODEL, loader=Loader(batch_size=16, num_workers=0))
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(b["image"].shape == (16, 3, 64, 64) for b in batches)
    assert sum(int(b["skipped"]) for b in batches) == 0
    with pytest.raises(ValueError, match="samples_per_epoch"):
        ImageTextDataModule(HFSource(parquet, streaming=True), model_name=MODEL).setup("fit")


@pytest.mark.parametrize("augmentation", ["clip", "mocov2"])
def test_uint8_batches_give_the_numbers_of_float_batches_bitwise(tiny_world, augmentation):
    """The default loader sends uint8 images; the backbone converts and normalises them on its
    device with the same float ops as ToTensor + Normalize: the same pixels and embeddings, bitwise."""
    from perceptlab.core.backbone import CLIPBackbone

    torch.manual_seed(0)
    backbone = CLIPBackbone(MODEL).eval()
    shards = str(Path(tiny_world) / "image_text" / "shards" / "*.tar")
    batches = {}
    for uint8 in (True, False):
        dm = ImageTextDataModule(WebDatasetSource(shards, shards), model_name=MODEL,
                                 shuffle=False, augmentation=augmentation, uint8_images=uint8, loader=Loader(batch_size=16, num_workers=0))
        dm.setup("fit")
        torch.manual_seed(1)  # the same random crops / jitter for both
        batches[uint8] = (next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()[0])))
    for (u8, fl) in zip(batches[True], batches[False]):
        assert u8["image"].dtype == torch.uint8 and fl["image"].dtype == torch.float32
        assert u8["image"].shape == fl["image"].shape == (16, 3, 64, 64)
        assert torch.equal(u8["text"], fl["text"])
        assert torch.equal(backbone.prepare_images(u8["image"]), fl["image"])
        with torch.inference_mode():
            assert torch.equal(backbone.encode_image(u8["image"]), backbone.encode_image(fl["image"]))
    # stage 2's forward normalises uint8 batches itself: the same features, scale and loss
    from perceptlab.lightning_modules.contrastive import ContrastivePretrainModule

    torch.manual_seed(0)
    module = ContrastivePretrainModule(MODEL).eval()
    u8, fl = batches[True][0], batches[False][0]
    with torch.inference_mode():
        out_u8, out_fl = module(u8["image"], u8["text"]), module(fl["image"], fl["text"])
        assert all(torch.equal(a, b) for a, b in zip(out_u8, out_fl))
        assert torch.equal(module.contrastive_loss(*out_u8), module.contrastive_loss(*out_fl))


def test_sample_count_follows_webdatasets_own_key_rule(tmp_path):
    """Both counters (training shards and benchmark sets) count what webdataset itself yields:
    ``x.jpg`` and ``x.seg.png`` are one sample (key up to the first dot), not two."""
    import webdataset as wds

    from perceptlab.datamodules.base import tar_sample_count
    from perceptlab.datamodules.image_text.common import IMAGE_KEYS
    from perceptlab.datamodules.image_text.wds_pairs import count_samples

    path = tmp_path / "000.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("x.jpg", "x.seg.png", "x.txt", "y.z.jpg", "y.z.txt", "w.txt"):
            data = b"0"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    yielded = [s for s in wds.WebDataset(str(path), shardshuffle=False, empty_check=False)
               if any(k in IMAGE_KEYS or k.rsplit(".", 1)[-1] in IMAGE_KEYS for k in s if not k.startswith("__"))]
    assert tar_sample_count(path, IMAGE_KEYS) == count_samples([str(path)]) == len(yielded) == 2


def test_a_null_override_of_a_readers_data_is_no_data():
    """LightningCLI passes --data.init_args.pairs.init_args.val=null as the string 'None'
    (benchmarks/bench_vs_open_clip.py gives that override, through the command line, in tests/test_benchmarks.py)."""
    assert WebDatasetSource("a.tar", "None").val is None and CsvSource("null").train is None
    assert WebDatasetSource("a.tar", "b.tar").val == "b.tar"
