"""IQA formats in one place: the probes and the task data module read a data set the same way."""
from __future__ import annotations

import pytest
import yaml

from perceptlab.callbacks.probes.iqa_fr import FullReferenceIQAProbe
from perceptlab.callbacks.probes.iqa_nr import CLIPIQAProbe
from perceptlab.datamodules.iqa import iqa_preset, pyiqa_registry
from perceptlab.datamodules.iqa import IQASet, read_iqa_set


def test_presets_are_pyiqa_registry_entries():
    import pyiqa  # noqa: F401  (only to locate the file this test reads independently)
    from importlib.resources import files

    registry = yaml.safe_load(files("pyiqa").joinpath("default_dataset_configs.yml").read_text())
    assert pyiqa_registry() == registry
    for name in ("koniq10k", "livec", "spaq", "tid2013", "kadid10k"):
        preset, entry = iqa_preset(name), registry[name]
        assert preset.lower_better == entry["lower_better"]
        assert preset.mos_range == tuple(float(v) for v in entry["mos_range"])
        assert preset.meta_info_file == entry["meta_info_file"].rsplit("/", 1)[-1]
        assert preset.full_reference == (entry["type"] == "GeneralFRDataset")
    assert iqa_preset("livec").drop_first == 7 and iqa_preset("spaq").drop_first == 0
    assert iqa_preset("koniq10k").split_column == "official_split"
    assert iqa_preset("koniq") == iqa_preset("koniq10k")  # the suite's metric name is pyiqa's koniq10k
    with pytest.raises(ValueError, match="unknown pyiqa preset 'koniq1k'.*koniq10k"):
        iqa_preset("koniq1k")


def test_probe_and_task_data_read_the_same_rows_and_scores(tiny_world):
    """The CLIP-IQA probe and the IQA data module, given only the preset, read one LIVE-C CSV
    identically: same rows (pyiqa's first 7 left out) and the same MOS, higher-is-better."""
    root = tiny_world / "iqa" / "livec"
    probe = CLIPIQAProbe(str(root), dataset="livec", max_items=None)
    probe.load_table()
    rows = read_iqa_set(IQASet(name="livec", root=str(root), preset="livec", subset="all"), "test")
    assert probe.names == rows["file"].tolist()
    assert probe.quality.tolist() == rows["mos"].tolist()
    for alias in ("koniq", "koniq10k"):
        p = CLIPIQAProbe(str(tiny_world / "iqa" / "koniq"), dataset=alias, max_items=None)
        assert p.iqa.preset == alias and p.name == f"iqa_nr/{alias}"
        p.load_table()
        assert p.names == probe_rows(tiny_world)  # the alias reads the preset's CSV


def probe_rows(world) -> list[str]:
    rows = read_iqa_set(IQASet(name="koniq", root=str(world / "iqa" / "koniq"), preset="koniq10k", subset="all"), "test")
    return rows["file"].tolist()


def test_a_probe_refuses_a_preset_of_the_other_kind(tmp_path):
    with pytest.raises(ValueError, match="tid2013 is a full-reference set; use FullReferenceIQAProbe"):
        CLIPIQAProbe(str(tmp_path), dataset="tid2013")
    with pytest.raises(ValueError, match="koniq10k is a no-reference set; use CLIPIQAProbe"):
        FullReferenceIQAProbe(str(tmp_path), dataset="koniq")
