"""The resume matrix's image-text formats (``test_resume.py`` has the rest of the matrix and its
rules): Hugging Face, litdata and webdataset pairs, each exact where it claims to be; and a
webdataset run resumed inside an epoch, the one approximate resume, which says so in its run
directory. A file of its own so that the two halves of the matrix run on different workers."""
from __future__ import annotations

import json

import pytest

from test_resume import FORMAT_CELLS, Killed, check_cell, fit, records, stage2, suite


@pytest.mark.slow
@pytest.mark.parametrize("cell", FORMAT_CELLS)
def test_a_killed_run_resumed_from_last_ends_as_the_uninterrupted_one(cell, tiny_world, tmp_path):
    check_cell(cell, tiny_world, tmp_path)


@pytest.mark.slow
def test_a_webdataset_run_resumed_inside_an_epoch_records_the_expected_redraw(tiny_world, tmp_path):
    """Killed after batch 2 of an epoch of 4 and resumed, a webdataset run redraws the epoch's
    rest: the run directory's data_resumes.jsonl says where and how many samples that repeats and
    skips (benchmarks/resume_webdataset.py measures them); the epochs after it are the
    uninterrupted run's own (their shard order does not depend on the resume)."""
    from perceptlab.datamodules.image_text.wds_pairs import RESUMES_NAME, resume_redraw_estimate

    args = stage2(tiny_world, "webdataset") + ["--config", str(suite(tiny_world, tmp_path))]
    runs = tmp_path / "runs"
    kill = json.dumps({"class_path": "faults.KillAt", "init_args": {"step": 6, "in_process": True}})
    with pytest.raises(Killed):
        fit(args, runs, "resumed", f"--trainer.callbacks+={kill}")
    run = runs / "resumed" / "version_0"
    assert not (run / RESUMES_NAME).exists()
    fit(args, runs, "resumed", "--ckpt_path", "last")
    (line,) = [json.loads(x) for x in (run / RESUMES_NAME).read_text().splitlines()]
    assert (line["step"], line["epoch"], line["batches_read"], line["epoch_batches"]) == (6, 1, 2, 4)
    assert line["expected"] == resume_redraw_estimate(256, 64, 2, 4) == {"redrawn": 128, "repeated": 64.0,
                                                                        "skipped": 64.0}
    assert [r["step"] for r in records(run)] == [0, 2, 4, 6, 8, 10, 12]  # every evaluation once
