"""One IQA split rule: a probe and the task data module select the same rows of a preset's table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perceptlab.callbacks.probes.iqa_nr import CLIPIQAProbe
from perceptlab.datamodules.iqa import iqa_preset
from perceptlab.datamodules.iqa import IQASet, read_iqa_set


def _table(root, preset: str, n: int = 60) -> None:
    rng = np.random.default_rng(0)
    p = iqa_preset(preset)
    table = pd.DataFrame({"img_name": [f"{i:03d}.jpg" for i in range(n)], "mos": rng.uniform(1, 100, n).round(2),
                          "std": rng.uniform(0, 1, n).round(3)})
    if preset == "koniq10k":
        # both columns, disagreeing: the preset's official split must win for both readers
        table["split"] = rng.choice(["train", "val", "test"], n)
        table["official_split"] = rng.choice(["train", "val", "test"], n)
    (root / p.image_dir).mkdir(parents=True, exist_ok=True)
    table.to_csv(root / p.meta_info_file, index=False)


@pytest.mark.parametrize("preset", ["koniq10k", "livec", "spaq"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_probe_and_data_module_select_the_same_rows(tmp_path, preset, split):
    _table(tmp_path, preset)
    expected = read_iqa_set(IQASet(name=preset, root=str(tmp_path), preset=preset), split)["file"].tolist()
    probe = CLIPIQAProbe(root=str(tmp_path), dataset=preset, split=split, max_items=None)
    probe.load_table()
    assert sorted(probe.names) == sorted(expected) and len(expected) > 0
    if preset == "livec":
        assert "000.jpg" not in expected  # pyiqa drops LIVE-C's first 7 rows, both readers do
