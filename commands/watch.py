"""What ``perceptlab evaluate --watch`` watches: the checkpoints a running training writes.

A *target* is a run directory (``runs/<experiment>/version_<n>``, whose ``checkpoints/`` holds the
files; an ``open_clip_train`` log folder works the same) or a folder of checkpoints. Every poll
lists its ``*.ckpt`` and ``*.pt`` files, except moving aliases of some step (``last.ckpt``,
``epoch_latest.pt``, the suite's peak checkpoint: ``core.checkpoints.ALIAS_CHECKPOINTS``). A file
is *ready* once its size and modification time are the same as at the previous poll and it is at
least ``settle`` seconds old, so a checkpoint still being written is left for a later poll; an
end-of-fit export (stage 2's ``open_clip_model.pt``) waits for the training's end, which gives its
step. The training's end is ``core.checkpoints.FIT_END_NAME`` in the run directory, which
``perceptlab fit`` writes when it returns normally; trainings without it (open_clip_train) end by
the idle time-out.

:meth:`Watcher.place` puts each ready file at its own training step, whatever poll it settled in:
a Lightning checkpoint's ``global_step``, an end-of-fit export's last step, an open_clip_train
epoch (times ``--steps_per_epoch`` where given). A file with no step is left out with one line,
and an export at a step already measured (the final step's checkpoint) is not measured again.

Written by hand: nothing in Lightning, open_clip or CLIP_benchmark watches a folder for
checkpoints, knows their aliases or a run's end.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from perceptlab.core.checkpoints import ALIAS_CHECKPOINTS, END_OF_FIT_FILES, ModelSource, place_series, read_fit_end

PATTERNS = ("*.ckpt", "*.pt")


@dataclass
class Watcher:
    target: Path
    settle: float = 10.0
    _seen: dict[str, tuple[int, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.target = Path(self.target).expanduser()
        if not self.target.is_dir():
            raise FileNotFoundError(f"--watch {self.target}: no such folder (a run directory or a folder of checkpoints)")

    @property
    def folder(self) -> Path:
        inner = self.target / "checkpoints"
        return inner if inner.is_dir() or not any(self.target.glob(p) for p in PATTERNS) else self.target

    @property
    def run_dir(self) -> Path:
        return self.target.parent if self.target.name == "checkpoints" else self.target

    def files(self) -> list[Path]:
        folder = self.folder
        if not folder.is_dir():
            return []  # the training has not written its first checkpoint yet
        found = {p for pattern in PATTERNS for p in folder.glob(pattern) if p.is_file() and p.name not in ALIAS_CHECKPOINTS}
        return sorted(found)

    def poll(self, done: set[str]) -> tuple[list[str], int]:
        """(files ready to measure that are not in ``done``, files seen but not settled yet)."""
        now = time.time()
        ready, pending = [], 0
        for path in self.files():
            spec = str(path)
            if spec in done:
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # deleted between listing and looking (a top-k checkpoint replaced)
                continue
            signature = (stat.st_size, stat.st_mtime)
            settled = self._seen.get(spec) == signature and now - stat.st_mtime >= self.settle
            self._seen[spec] = signature
            if path.name in END_OF_FIT_FILES and self.ended() is None:
                settled = False  # its step is the run's last, known once the training has written its end
            if settled:
                ready.append(spec)
            else:
                pending += 1
        return ready, pending

    def ended(self) -> dict | None:
        """The training's end marker (``{"step", "epoch"}``), or ``None`` while it may write more."""
        return read_fit_end(self.run_dir)

    def place(self, ready: list[str], taken: dict[int, str], model_name: str | None = None,
              steps_per_epoch: int | None = None) -> tuple[list[str], list[str]]:
        """(the ready files to measure, one line each for those left out): every file at its own
        step (``core.checkpoints.place_series``); a file that records no step or epoch is left out
        (a poll would otherwise place it by its position among the files that settled with it);
        an alias of a step in ``taken`` (step -> model measured) is not measured again."""
        notes, sources = [], []
        for spec in ready:
            source = ModelSource.read(spec, model_name)
            if source.step is None and not (source.kind == "open_clip_train" and source.epoch is not None):
                notes.append(f"{spec}: records no training step; left out of the watched series "
                             "(measure it with perceptlab evaluate FILE)")
            else:
                sources.append(source)
        kept, placed = place_series(sources, steps_per_epoch, taken)
        return [s.spec for s in kept], notes + [n for n in placed if not n.startswith("series placed")]
