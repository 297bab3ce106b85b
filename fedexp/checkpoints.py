"""Per-round checkpoints: what `fedexp resume=DIR` continues a run from (see resume.py).

After each completed round the run writes `checkpoints/NNNNNN.ckpt` (the round in six
digits) next to results.json, after results.json lists the round: the global model, the strategy's own
state (federated/server/state.py), the sampling stream's state, the initial model's test
numbers, and the config the run had. What else a resumed round needs is either in
results.json (the records of rounds 1..R, which a resumed run truncates to R), in the
clients' state files (versioned per round, see methods/base.py's DiskClientState), or
derived from (seed, round, client) anew (every client's streams). Only the newest
`checkpoint.keep` files stay.

A checkpoint is a pickle: load only checkpoints of runs you trust.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

from .results import atomic_write

log = logging.getLogger("fedexp")

FOLDER = "checkpoints"
VERSION = 1  # of the checkpoint's layout; a newer layout is refused by an older fedexp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the run."""


def _files(run_dir: Path) -> list[tuple[int, Path]]:
    folder = Path(run_dir) / FOLDER
    found = (
        [(int(p.stem), p) for p in folder.glob("*.ckpt") if p.stem.isdigit()]
        if folder.is_dir()
        else []
    )
    return sorted(found)


def save(run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write the checkpoint of `step` (atomically) and remove all but the newest `keep`."""
    folder = Path(run_dir) / FOLDER
    folder.mkdir(exist_ok=True)
    path = folder / f"{step:06d}.ckpt"
    atomic_write(path, pickle.dumps({"version": VERSION, "step": step, **state}, protocol=5))
    for _, old in _files(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def newest(run_dir: Path) -> dict | None:
    """The newest checkpoint's content, or None when the run has none."""
    files = _files(run_dir)
    if not files:
        return None
    step, path = files[-1]
    try:
        state = pickle.loads(path.read_bytes())
    except Exception as e:  # written atomically, so only a damaged disk or a hand edit gets here
        raise CheckpointError(
            f"{path} cannot be read ({type(e).__name__}: {e}); remove it to resume "
            f"from the checkpoint before it"
        ) from None
    if not isinstance(state, dict) or state.get("version") != VERSION or state.get("step") != step:
        raise CheckpointError(
            f"{path} is not a checkpoint this fedexp writes (layout version "
            f"{state.get('version') if isinstance(state, dict) else '?'}, expected {VERSION})"
        )
    return state


def steps(run_dir: Path) -> list[int]:
    return [step for step, _ in _files(run_dir)]
