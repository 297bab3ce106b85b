"""What observes a run besides results.json: the progress lines, metrics.csv and the
experiment trackers (TensorBoard, MLflow, Weights & Biases).

Each is a `Callback` with three hooks, called by the run's record (results.RunResults):
when the run starts, after each round or epoch is recorded (results.json already lists
it), and when it has ended (status, final numbers and results.png written). They are
configured as `_target_`s: the `callbacks` key of conf/config.yaml and the options of the
`logger` group, several at once (`logger=[csv,tensorboard]`), so a new logger is one
class and one YAML file.

results.json itself is not a callback: it is the contract that resume, fedexp-compare and
sweeps read, so it is always written.

A callback that raises (a tracking server that went away) is reported in one warning and
left out for the rest of the run; the run, its own files and the other callbacks go on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ..modes import STEPS, step_number

log = logging.getLogger("fedexp")


class Callback:
    """Does nothing; a callback overrides the hooks it needs. `run` is the RunResults."""

    def on_run_start(self, run) -> None:
        """The run starts (for a resumed run, `run.steps` holds the rounds kept)."""

    def on_step(self, run, record: dict) -> None:
        """A round or epoch was recorded: `record` is its entry in results.json."""

    def on_run_end(self, run) -> None:
        """The run ended: `run.data` is results.json's final data."""


class Callbacks:
    """The run's callbacks, called in order; a failing one is warned about and dropped."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.items = list(callbacks)

    def _call(self, hook: str, *args) -> None:
        for callback in list(self.items):
            try:
                getattr(callback, hook)(*args)
            except Exception as e:  # a logger must not lose the run
                self.items.remove(callback)
                log.warning(
                    "%s failed in %s (%s: %s); it is left out for the rest of the run, whose "
                    "own files go on",
                    type(callback).__name__,
                    hook,
                    type(e).__name__,
                    str(e).strip().splitlines()[0][:200] if str(e).strip() else "",
                )

    def on_run_start(self, run) -> None:
        self._call("on_run_start", run)

    def on_step(self, run, record: dict) -> None:
        self._call("on_step", run, record)

    def on_run_end(self, run) -> None:
        self._call("on_run_end", run)


# The package each logger needs, and fedexp's extra that installs it.
EXTRAS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}


# What a tracker keeps of a run.
ARTIFACTS = ("results.json", "results.png", "partitions.png", "model.pt")


def flat(record: dict, prefix: str = "") -> dict:
    """A round's record with nested objects (`all_clients`) as `all_clients.mean_accuracy`."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def numbers(record: dict) -> dict:
    """The finite numbers of a flattened record (what a tracker plots)."""
    import math

    return {
        k: float(v)
        for k, v in flat(record).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def measures(record: dict) -> tuple[int, dict]:
    """A round's (epoch's) number, and its other numbers: what a tracker logs at that step."""
    step_keys = {key for _, key in STEPS.values()}
    return step_number(record), {k: v for k, v in numbers(record).items() if k not in step_keys}


def build(cfg) -> Callbacks:
    """The configured callbacks (`callbacks`), then the loggers (`logger`), instantiated."""
    from hydra.utils import instantiate

    nodes = [*(cfg.get("callbacks") or {}).values(), *(cfg.get("logger") or {}).values()]
    return Callbacks(instantiate(node) for node in nodes if node)
