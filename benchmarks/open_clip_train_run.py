"""open_clip's own trainer (``open_clip_train``, shipped in the open_clip wheel), able to train
perceptlab's architectures on webdataset shards with webdataset 1.x.

    python benchmarks/open_clip_train_run.py --model perceptlab-vit-tiny-64 --device cpu \\
        --train-data 'data/toyworld/image_text/shards/{00000..00007}.tar' --dataset-type webdataset \\
        --train-num-samples 8000 --batch-size 64 --workers 2 --epochs 1 --precision fp32 --logs /tmp/oc

It is ``open_clip_train.main.main`` with two additions before it runs:

* our model configs are registered with open_clip (importing ``perceptlab.core.transforms`` does
  that), so ``--model`` can name them;
* the end-of-shard fix: webdataset 1.0's ``tar_file_expander`` yields an end-of-shard marker
  (``eof_value={}``) that open_clip_train's ``group_by_keys_nothrow`` reads as a file and fails on
  (``KeyError: 'fname'``). Its ``tarfile_to_samples_nothrow`` is replaced by the same three steps
  with ``eof_value=None`` (no marker), the fix webdataset's maintainers give for callers of
  ``tar_file_expander``. Nothing else of open_clip_train changes; this is the reference
  ``bench_vs_open_clip.py`` runs perceptlab against.
"""
from __future__ import annotations

import sys


def tarfile_to_samples_without_eof(src, handler=None):
    """open_clip_train's ``tarfile_to_samples_nothrow`` with ``eof_value=None``."""
    from open_clip_train import data
    from webdataset.tariterators import tar_file_expander, url_opener

    handler = handler or data.log_and_continue
    streams = url_opener(src, handler=handler)
    files = tar_file_expander(streams, handler=handler, eof_value=None)
    return data.group_by_keys_nothrow(files, handler=handler)


def install() -> None:
    """Register perceptlab's model configs and apply the end-of-shard fix (idempotent)."""
    from open_clip_train import data

    import perceptlab.core.transforms  # noqa: F401  (registers perceptlab's model configs with open_clip)

    data.tarfile_to_samples_nothrow = tarfile_to_samples_without_eof


def main(argv: list[str] | None = None) -> int:
    from open_clip_train.main import main as open_clip_train_main

    install()
    open_clip_train_main(sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
