"""What a run leaves behind: results.json (the contract), metrics.csv, results.png, model.pt.

results.json and metrics.csv are rewritten after every round or epoch, atomically (temp
file + rename), with `status: "running"` until the end: a killed run still leaves every
completed round on disk, and a reader never sees a half-written file. The run ends with
one of STATUSES. A run directory that already holds a results.json is never reused.
The contract (documented in the README) may gain keys; existing keys are never renamed.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
import time
from pathlib import Path

STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
STEP_KEY = {"federated": "rounds", "centralized": "epochs"}
CSV_COLUMNS = {
    "federated": ["round", "fit_clients", "fit_failures", "evaluate_clients", "train_loss",
                  "train_accuracy", "distributed_loss", "distributed_accuracy", "test_loss",
                  "test_accuracy", "seconds"],
    "centralized": ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                    "test_loss", "test_accuracy", "seconds"],
}


class ResultsExistError(RuntimeError):
    """The run directory already holds another run's results."""


def _clean(v):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def refuse_if_used(run_dir: str | Path) -> None:
    """Raise ResultsExistError when `run_dir` holds another run's results.json."""
    run_dir = Path(run_dir)
    if (run_dir / "results.json").exists():
        raise ResultsExistError(
            f"{run_dir} already holds results.json from another run; refusing to overwrite "
            f"it (choose another hydra.run.dir, or leave it unset for a fresh directory)")


class RunResults:
    """The record of one run, written to `run_dir` as it grows."""

    def __init__(self, run_dir: str | Path, mode: str, info: dict | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        refuse_if_used(self.dir)
        self.mode = mode
        self._lock = threading.Lock()
        self._start = time.perf_counter()
        self.data: dict = {"status": "running", "mode": mode, "wall_seconds": 0.0,
                           STEP_KEY[mode]: [], "final": None, **(info or {})}
        self.write()

    @property
    def steps(self) -> list[dict]:
        return self.data[STEP_KEY[self.mode]]

    def add(self, record: dict) -> None:
        self.steps.append(dict(record))
        self.write()

    def finish(self, status: str, final: dict | None = None, error: str | None = None) -> None:
        assert status in STATUSES, status
        self.data["status"] = status
        if final is not None:
            self.data["final"] = final
        if error:
            self.data["error"] = error
        self.write()

    def write(self) -> None:
        with self._lock:  # rounds are recorded from Flower's server thread
            self.data["wall_seconds"] = round(time.perf_counter() - self._start, 3)
            atomic_write(self.dir / "results.json", json.dumps(_clean(self.data), indent=2) + "\n")
            buf = io.StringIO()
            cols = CSV_COLUMNS[self.mode]
            w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for row in self.steps:
                w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in cols})
            atomic_write(self.dir / "metrics.csv", buf.getvalue())

    def save_model(self, model) -> Path:
        """model.pt: the model's state_dict, written atomically like the rest."""
        import torch

        out = self.dir / "model.pt"
        tmp = out.with_name(f".model.pt.{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, out)
        return out

    def plot(self) -> Path | None:
        """results.png: test accuracy and losses per round/epoch."""
        if not self.steps:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        key = "round" if self.mode == "federated" else "epoch"
        xs = [s[key] for s in self.steps]
        fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
        acc_key = "test_accuracy" if self.mode == "federated" else "val_accuracy"
        for name in (acc_key, "distributed_accuracy", "train_accuracy"):
            ys = [s.get(name) for s in self.steps]
            if any(y is not None for y in ys):
                ax_acc.plot(xs, [math.nan if y is None else y for y in ys], marker="o", label=name)
        for name in ("test_loss", "val_loss", "distributed_loss", "train_loss"):
            ys = [s.get(name) for s in self.steps]
            if any(y is not None for y in ys):
                ax_loss.plot(xs, [math.nan if y is None else y for y in ys], marker="o", label=name)
        for ax, title in ((ax_acc, "accuracy"), (ax_loss, "loss")):
            ax.set_xlabel(key)
            ax.set_title(title)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.suptitle(f"{self.mode} run: {self.dir.name}")
        fig.tight_layout()
        out = self.dir / "results.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out
