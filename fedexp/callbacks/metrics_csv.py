"""metrics.csv: one row per round or epoch, a column for every key that any of them has
(nested objects flattened: `all_clients.mean_accuracy`), in the order keys first appear.

Rows are appended, one write each; a round that brings a new key rewrites the file whole
(atomically) with the new column, so the file never has rows of different widths."""

from __future__ import annotations

import csv
import io

from ..results import atomic_write, write_at
from . import Callback, flat


class MetricsCSV(Callback):
    def __init__(self, filename: str = "metrics.csv"):
        self.filename = filename
        self.columns: list[str] = []

    def _row(self, record: dict) -> str:
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore").writerow(
            {k: ("" if v is None else v) for k, v in flat(record).items()}
        )
        return buf.getvalue()

    def _write_whole(self, run) -> None:
        self.columns = []
        for step in run.steps:
            self.columns += [k for k in flat(step) if k not in self.columns]
        text = ",".join(self.columns) + "\r\n" + "".join(self._row(s) for s in run.steps)
        atomic_write(run.dir / self.filename, text)

    def on_run_start(self, run) -> None:  # a resumed run: the rounds it kept
        self._write_whole(run)

    def on_step(self, run, record: dict) -> None:
        if any(k not in self.columns for k in flat(record)):
            self._write_whole(run)
        else:
            write_at(run.dir / self.filename, None, self._row(record).encode())

    def on_run_end(self, run) -> None:  # the last epoch gains the test numbers at the end
        self._write_whole(run)
