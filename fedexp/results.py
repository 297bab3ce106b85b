"""What a run leaves behind: results.json (the contract), results.png, model.pt; and the
run's record, which tells the run's callbacks (metrics.csv, progress, loggers: see
fedexp/callbacks) about every round.

results.json holds every completed round or epoch, with `status: "running"` until the
end, so a killed run still leaves them on disk. It is written whole, atomically (temp
file + rename), when the run starts, ends or changes a key other than its rounds; in
between, each round is appended in place, with one write at the end of the file, so that
writing a round costs the same at round 10 and at round 10,000 (a reader that reads while
that write happens may see the file cut short, and reads it again: see `read_json`). The
run ends with one of STATUSES. A run directory belongs to one run: the run claims it (CLAIM, created
exclusively), and a directory that holds any run's output is never written into.
The contract (docs/results.md) may gain keys; existing keys are never renamed.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import math
import os
import threading
import time
from pathlib import Path

from .errors import ResultsExistError
from .modes import STEPS

log = logging.getLogger(__name__)

STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
CLIENT_COLUMNS = ["round", "client", "examples", "loss", "accuracy"]


# The contract's steps by mode: the list that holds them, and the key that numbers each.
def is_timing_key(key: str) -> bool:
    """Keys that measure time (`seconds`, `wall_seconds`, `client_start_seconds`, ...): the
    only ones two runs of the same config may differ in (the reproducibility contract)."""
    return key == "seconds" or key.endswith("_seconds")


def without_timing(value):
    """`value` (results.json's data, or a part of it) without its timing keys, at any depth."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if not is_timing_key(k)}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}  # what OutputError covers


CLAIM = ".fedexp-run"  # created, exclusively, by the run a directory belongs to
RUN_OUTPUTS = (
    CLAIM,
    "results.json",
    "model.pt",
    "metrics.csv",
    "clients.csv",
    "partitions.json",
    "partitions.png",
    "results.png",
    "client_state",
    "checkpoints",
)


def outputs_in(run_dir: str | Path) -> list[str]:
    """The names in `run_dir` that a fedexp run writes (a run's claim among them)."""
    return [name for name in RUN_OUTPUTS if (Path(run_dir) / name).exists()]


def _claimant(run_dir: Path) -> int | None:
    try:
        return int((run_dir / CLAIM).read_text().strip())
    except (OSError, ValueError):
        return None


def claim(run_dir: str | Path) -> None:
    """Make `run_dir` this run's, or raise ResultsExistError: it holds another run's output,
    or another run started at the same moment claimed it first (O_EXCL decides)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    created = False
    try:
        fd = os.open(run_dir / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if _claimant(run_dir) != os.getpid():  # else: claimed by this process's command line
            raise ResultsExistError(
                f"{run_dir} belongs to another fedexp run (it holds {CLAIM}); "
                f"refusing to write into it (choose another hydra.run.dir, or leave "
                f"it unset for a fresh directory)"
            ) from None
    else:
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        created = True
    others = [name for name in outputs_in(run_dir) if name != CLAIM]
    if others:
        if created:
            (run_dir / CLAIM).unlink()
        raise ResultsExistError(
            f"{run_dir} already holds {others[0]} from another run; refusing to "
            f"write into it (choose another hydra.run.dir, or leave it unset for a "
            f"fresh directory)"
        )


def take_over(run_dir: str | Path) -> None:
    """Make `run_dir`, which an earlier run claimed, this run's (`fedexp resume=DIR`), or
    raise ResultsExistError while that run's process is still alive. Of two resumes started
    at once, the one whose rename of the old claim succeeds gets it."""
    run_dir = Path(run_dir)
    owner = _claimant(run_dir)
    if owner is not None and owner != os.getpid() and pid_alive(owner):
        raise ResultsExistError(
            f"{run_dir} is in use by a running fedexp (pid {owner}); "
            f"resume it once that process has ended"
        )
    if owner != os.getpid():
        moved = run_dir / f"{CLAIM}.{os.getpid()}"
        try:
            os.rename(run_dir / CLAIM, moved)
        except FileNotFoundError:
            if owner is not None:  # another resume renamed it first
                raise ResultsExistError(f"{run_dir} is being resumed by another fedexp") from None
        try:
            fd = os.open(run_dir / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise ResultsExistError(f"{run_dir} is being resumed by another fedexp") from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        moved.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _clean(v):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def atomic_write(path: Path, content: str | bytes) -> None:
    """Write `path` whole or not at all: a temporary file, renamed over it. A failed write
    (a full disk) leaves no partial file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content)
        os.replace(tmp, path)
    except OSError as e:  # named by the file it was for, not the temporary one
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_JSON_END = "\n  ]\n}\n"  # what follows the last step in results.json


def write_at(path: Path, offset: int | None, data: bytes) -> None:
    """One write of `data` at `offset` (None: the end) of `path`: a step appended in place."""
    fd = os.open(path, os.O_WRONLY | (os.O_APPEND if offset is None else 0))
    try:
        if offset is None:
            os.write(fd, data)
        else:
            os.pwrite(fd, data, offset)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        os.close(fd)


def read_json(path: Path, attempts: int = 5):
    """results.json's data. A run appends each round in place (see RunResults.add); a read
    that overlaps that write can see the file cut short, so it is read again."""
    for attempt in range(attempts):
        try:
            return json.loads(Path(path).read_bytes().decode("utf-8"))
        except json.JSONDecodeError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)


class RunResults:
    """The record of one run, written to `run_dir` as it grows."""

    def __init__(
        self,
        run_dir: str | Path,
        mode: str,
        info: dict | None = None,
        resume_after: int | None = None,
        callbacks=None,
        config: dict | None = None,
        sweep: str | None = None,
    ):
        """A new run's record; with `resume_after` R, the record of the run in `run_dir`
        continued after its step R (see resume.py): steps after R are dropped, since the
        resumed run computes them again from R's checkpoint. `callbacks` (fedexp.callbacks)
        observe the run; they see its resolved `config` and, in a multirun, the `sweep`
        directory (loggers group a sweep's runs by it)."""
        from .callbacks import Callbacks

        self.dir = Path(run_dir)
        self.mode = mode
        self.callbacks = callbacks if callbacks is not None else Callbacks()
        self.config, self.sweep = config or {}, sweep
        self._lock = threading.Lock()
        self._json_steps: list[str] = []  # rounds/epochs serialised
        self._json_tail: int | None = None  # where results.json's closing _JSON_END begins
        self._written: tuple[str, int] | None = None  # (head, steps) the files hold, if appendable
        self._start = time.perf_counter()
        if resume_after is None:
            claim(self.dir)
            self.data: dict = {
                "status": "running",
                "mode": mode,
                "wall_seconds": 0.0,
                STEPS[mode][0]: [],
                "final": None,
                **(info or {}),
            }
        else:
            take_over(self.dir)
            self.data = json.loads((self.dir / "results.json").read_text())
            self.data[STEPS[mode][0]] = [
                s for s in self.steps if s.get(STEPS[mode][1], 0) <= resume_after
            ]
            self.data.pop("error", None)
            self.data.update(status="running", final=None)
            self.data["resumed_after"] = [*self.data.get("resumed_after", []), resume_after]
            self._start -= float(self.data.get("wall_seconds") or 0.0)
            self._drop_client_rows_after(resume_after)
        self.write()

    def _drop_client_rows_after(self, step: int) -> None:
        path = self.dir / "clients.csv"
        if not path.exists():
            return
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CLIENT_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(r for r in rows if int(r["round"]) <= step)
        atomic_write(path, buf.getvalue())

    @property
    def steps(self) -> list[dict]:
        return self.data[STEPS[self.mode][0]]

    def add(self, record: dict) -> None:
        """Record a completed round or epoch (appended to results.json when nothing else in
        it changed since it was written, else results.json is written whole), then tell
        the callbacks."""
        self.steps.append(dict(record))
        with self._lock:
            appendable = (
                self._written is not None
                and self._written[1] == len(self.steps) - 1
                and self._written[0] == self._head(wall_seconds=False)
            )
        if appendable:
            self._append()
        else:
            self.write()
        self.callbacks.on_step(self, self.steps[-1])

    def start(self) -> None:
        """Tell the callbacks that the run starts (once its data is known)."""
        self.callbacks.on_run_start(self)

    def end(self) -> None:
        """Tell the callbacks that the run has ended (results.json and results.png written)."""
        self.callbacks.on_run_end(self)

    def _head(self, wall_seconds: bool = True) -> str:
        """results.json's keys other than the steps, as the file writes them."""
        key = STEPS[self.mode][0]
        return json.dumps(
            _clean(
                {
                    k: v
                    for k, v in self.data.items()
                    if k != key and (wall_seconds or k != "wall_seconds")
                }
            ),
            indent=2,
        )

    def _append(self) -> None:
        with self._lock:
            step = self.steps[-1]
            self._json_steps.append(self._step_json(step))
            piece = f",\n    {self._json_steps[-1]}"
            write_at(self.dir / "results.json", self._json_tail, (piece + _JSON_END).encode())
            self._json_tail += len(piece.encode())
            self._written = (self._written[0], len(self.steps))

    def finish(self, status: str, final: dict | None = None, error: str | None = None) -> None:
        assert status in STATUSES, status
        self.data["status"] = status
        if final is not None:
            self.data["final"] = final
        if error:
            self.data["error"] = error
        self.write()

    def write(self) -> None:
        """Write results.json whole (atomically). A round or epoch is
        serialised once (only the last may still change, and is serialised again), so a
        whole write costs copying the text, not encoding every round again."""
        with self._lock:  # rounds are recorded from Flower's server thread
            self.data["wall_seconds"] = round(time.perf_counter() - self._start, 3)
            key, steps = STEPS[self.mode][0], self.steps
            del self._json_steps[len(steps) - 1 :]
            for step in steps[len(self._json_steps) :]:
                self._json_steps.append(self._step_json(step))
            head = self._head()
            if self._json_steps:
                text = (
                    f"{head[:-2]},\n  {json.dumps(key)}: [\n    "
                    + ",\n    ".join(self._json_steps)
                    + _JSON_END
                )
            else:
                text = f"{head[:-2]},\n  {json.dumps(key)}: []\n}}\n"
            atomic_write(self.dir / "results.json", text)
            # Appending goes on from here only while the file ends with a step.
            self._json_tail = len(text.encode()) - len(_JSON_END) if self._json_steps else None
            self._written = (
                (self._head(wall_seconds=False), len(steps)) if self._json_steps else None
            )

    @staticmethod
    def _step_json(step: dict) -> str:
        return json.dumps(_clean(step), indent=2).replace("\n", "\n    ")

    def add_clients(self, rows: list[dict]) -> None:
        """Append one evaluation of all clients to clients.csv (round, client, examples,
        loss, accuracy; empty where a client had no validation data). Appended, not
        rewritten: the file grows by one block of rows per evaluation."""
        path = self.dir / "clients.csv"
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CLIENT_COLUMNS, extrasaction="ignore")
        if not path.exists():
            w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CLIENT_COLUMNS})
        with self._lock, open(path, "a") as f:
            f.write(buf.getvalue())

    def save_model(self, model) -> Path:
        """model.pt: the model's state_dict, written atomically like the rest."""
        import torch

        # Saved to memory first: saved to a file, the archive would record the file's
        # (temporary, per-process) name, and identical runs would differ in their bytes.
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        out = self.dir / "model.pt"
        atomic_write(out, buffer.getvalue())
        return out

    def plot(self) -> Path | None:
        """results.png: accuracy and loss per round/epoch, on the test set (server side, with
        the initial model as round 0), the clients' validation data and their training."""
        if not self.steps:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        key = STEPS[self.mode][1]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        for ax, metric in zip(axes, ("accuracy", "loss")):
            for source, label in PLOT_SERIES[self.mode]:
                points = [(s[key], s.get(f"{source}_{metric}")) for s in self.steps]
                initial = (self.data.get("initial") or {}).get(f"test_{metric}")
                if source == "test" and self.mode == "federated" and initial is not None:
                    points.insert(0, (0, initial))
                points = [(x, y) for x, y in points if y is not None]
                if points:
                    ax.plot(*zip(*points), marker="o", label=label)
            if metric == "accuracy":
                self._plot_all_clients(ax, key)
            ax.set_xlabel(key)
            ax.set_title(metric)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        title = f"{self.mode} run, {self.data['status']}: {self._describe()}"
        fig.suptitle(fitted_title(title, fig), fontsize=10)
        fig.tight_layout()
        out = self.dir / "results.png"
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=100, format="png")
        plt.close(fig)
        try:
            atomic_write(out, buffer.getvalue())
        except (
            OSError
        ) as e:  # the results themselves are on disk: the picture is not worth a failed run
            log.warning("results.png not written: %s", e.strerror or e)
            return None
        return out

    def _plot_all_clients(self, ax, key: str) -> None:
        """Every client's accuracy, where all clients were evaluated: the mean, the 10th
        percentile and the band from the worst to the best client."""
        evaluated = [
            (s[key], s["all_clients"])
            for s in self.steps
            if (s.get("all_clients") or {}).get("mean_accuracy") is not None
        ]
        if not evaluated:
            return
        x = [r for r, _ in evaluated]
        model = evaluated[0][1].get("model", "global")
        ax.fill_between(
            x,
            [a["min_accuracy"] for _, a in evaluated],
            [a["max_accuracy"] for _, a in evaluated],
            alpha=0.15,
            color="tab:purple",
            label=f"all clients ({model} models): worst to best",
        )
        ax.plot(
            x,
            [a["mean_accuracy"] for _, a in evaluated],
            color="tab:purple",
            marker="s",
            label="all clients: mean",
        )
        ax.plot(
            x,
            [a["p10_accuracy"] for _, a in evaluated],
            color="tab:purple",
            linestyle="--",
            label="all clients: 10th percentile",
        )

    def _describe(self) -> str:
        """The run's command-line overrides (Hydra's snapshot), else its directory."""
        overrides = self.dir / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            import yaml

            shown = [
                o for o in yaml.safe_load(overrides.read_text()) or [] if not o.startswith("hydra.")
            ]
            if shown:
                return " ".join(shown)
        return str(self.dir)


def fitted_title(text: str, fig, max_lines: int = 3) -> str:
    """`text` in lines as wide as `fig` (long paths broken too), at most `max_lines` of
    them, the last ending in "..." if cut: a title that would run off both edges of the
    picture otherwise."""
    import textwrap

    width = int(fig.get_figwidth() * fig.dpi / 8)  # characters of a 10 pt font, with margin
    lines = textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1][: width - 3] + "..."]
    return "\n".join(lines)


# Per mode: (record key prefix, legend label) of the curves in results.png.
PLOT_SERIES = {
    "federated": [
        ("test", "test set (global model)"),
        ("distributed", "clients' validation"),
        ("train", "clients' training"),
    ],
    "centralized": [
        ("val", "validation"),
        ("train", "training"),
        ("test", "test set (final model)"),
    ],
}


def record_failure(run_dir: str | Path, mode: str, error: str, info: dict | None = None) -> bool:
    """Write results.json for a run that failed before it had a RunResults (a bad setting in
    one job of a sweep), so that every job directory says what happened to it. Never
    replaces an existing results.json; returns whether it wrote one."""
    path = Path(run_dir) / "results.json"
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "status": "failed",
        "mode": mode,
        "wall_seconds": 0.0,
        STEPS.get(mode, STEPS["federated"])[0]: [],
        "final": None,
        **(info or {}),
        "error": error,
    }
    atomic_write(path, json.dumps(_clean(data), indent=2) + "\n")
    return True
