"""Stages: named steps whose results live in files, so that a run resumes where it stopped.

A stage is *done* when every file it declares exists. :meth:`Stages.run` then loads the result
instead of computing it (a file whose sha256 differs from the manifest's record, or that cannot be
read, is renamed ``*.corrupt`` and the stage recomputed); otherwise it computes it, and the
compute function writes the files atomically (:mod:`workbench.artifacts`), the file that marks
the stage done last. Either way the stage's wall time, whether it was reused and the sha256 of its
files are recorded: in :attr:`Stages.seconds` and, once one is attached, in the run's
:class:`~workbench.artifacts.Manifest`. Stages may run inside stages (the selection stage runs the
prompt-filter and Arditi-score stages); each is recorded under its own name, and
:meth:`Stages.top_level` gives the times that add up.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pandas as pd

from .artifacts import Manifest, atomic_write_text

__all__ = ["Stages", "save_tables", "load_tables", "table_files"]

T = TypeVar("T")


class Stages:
    """Runs and records the stages of one run folder (see the module docs)."""

    def __init__(self, *, manifest: Manifest | None = None, progress: bool = False, label: str = "workbench"):
        self.manifest, self.progress, self.label = manifest, progress, label
        self.seconds: dict[str, float] = {}
        self.reused: dict[str, bool] = {}
        self._top: list[str] = []
        self._depth = 0

    def run(self, name: str, files: Sequence[Path], compute: Callable[[], T], load: Callable[[], T]) -> T:
        """``load()`` when every file in ``files`` exists, else ``compute()`` (which writes them).

        A stage asked for again after this run recorded it is loaded without a second record, so the
        manifest keeps whether the run computed it."""
        done = bool(files) and all(Path(f).exists() for f in files)
        if done and name in self.seconds:  # recorded earlier in this run: loading again changes nothing
            return load()
        if done and self.manifest is not None and (changed := self.manifest.mismatched(name, files)):
            done = self._set_aside(name, changed, "differs from the sha256 the manifest recorded")
        t0 = time.perf_counter()
        self._depth += 1
        try:
            if done:
                try:
                    value = load()
                except Exception as err:  # noqa: BLE001 - a truncated or unreadable cache file: recompute it
                    done = self._set_aside(name, files, f"cannot be read ({type(err).__name__}: {err})")
            if not done:
                value = compute()
        finally:
            self._depth -= 1
        self.record(name, time.perf_counter() - t0, files, reused=done)
        return value

    def _set_aside(self, name: str, files: Sequence[Path], why: str) -> bool:
        """Rename damaged stage files to ``*.corrupt`` (kept for a look, never read) and say so."""
        for f in map(Path, files):
            if f.exists():
                f.replace(f.with_name(f.name + ".corrupt"))
                print(f"[{self.label}] {name}: {f} {why}; moved it to {f.name}.corrupt, recomputing", file=sys.stderr)
        return False

    def record(self, name: str, seconds: float, files: Sequence[Path] = (), *, reused: bool = False) -> None:
        """Record a stage timed elsewhere (e.g. loading the model, before the run folder is known)."""
        seconds = max(0.0, round(seconds, 1))  # never "-0.0"
        self.seconds[name], self.reused[name] = seconds, reused
        if self._depth == 0 and name not in self._top:
            self._top.append(name)
        if self.manifest is not None:
            self.manifest.stage(name, seconds, list(files), reused=reused)
        if self.progress:
            print(f"[{self.label}] {name} {'reused' if reused else 'done'} ({seconds} s)", flush=True)

    def top_level(self) -> dict[str, float]:
        """Wall seconds of the stages not run inside another stage, in the order they ran."""
        return {name: self.seconds[name] for name in self._top}


def table_files(folder: Path, name: str) -> list[Path]:
    """A table stage's files: the per-prompt table, then the summary (whose presence marks it done)."""
    return [folder / f"{name}_per_prompt.csv", folder / f"{name}.csv"]


def save_tables(files: Sequence[Path], tables: tuple[pd.DataFrame, ...]) -> tuple[pd.DataFrame, ...]:
    """Write each table as CSV to its file, in order (so the last file marks the stage done)."""
    for path, table in zip(files, tables, strict=True):
        atomic_write_text(path, table.to_csv(index=False))
    return tables


def load_tables(files: Sequence[Path]) -> tuple[pd.DataFrame, ...]:
    return tuple(pd.read_csv(path) for path in files)
