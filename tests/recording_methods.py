"""Client halves that log what they find in their state, for tests of real simulations.

Named by `strategy.client._target_=recording_methods.RecordingScaffoldClient` with
`+strategy.client.log_dir=DIR`: every fit, in whichever Ray worker runs it, appends one
line to DIR/<pid>.jsonl with the client's partition, the round, and digests of the
control variate it found in its state and of the one it left there. RecordingClient
(FedAvg's client) logs which worker process, of which Ray job (driver), ran each fit, and
when. CrashingClient's worker process dies in client 0's fit, as one killed for memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from fedexp.federated.methods.base import ClientMethod
from fedexp.federated.methods.ditto import STATE_KEY as PERSONAL
from fedexp.federated.methods.ditto import DittoClient
from fedexp.federated.methods.scaffold import STATE_KEY, ScaffoldClient
from fedexp.models import get_weights


def append(log_dir: Path, line: dict) -> None:
    """One JSON line to this worker process's log file in `log_dir`."""
    with open(Path(log_dir) / f"{os.getpid()}.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def logged(log_dir: Path) -> list[dict]:
    """Every line the workers logged in `log_dir`."""
    return [
        json.loads(line)
        for f in Path(log_dir).glob("*.jsonl")
        for line in f.read_text().splitlines()
    ]


def digest(arrays) -> str | None:
    if arrays is None:
        return None
    return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()


class RecordingClient(ClientMethod):
    def __init__(self, log_dir: str):
        self.log_dir = Path(log_dir)

    def before_fit(self, fit):
        super().before_fit(fit)
        self.start = time.time()

    def after_fit(self, fit):
        sent = super().after_fit(fit)
        import ray

        append(
            self.log_dir,
            {
                "pid": os.getpid(),
                "ray_job": ray.get_runtime_context().get_job_id(),
                "partition": int(fit.config["partition_id"]),
                "start": self.start,
                "end": time.time(),
            },
        )
        return sent


class CrashingClient(ClientMethod):
    """Client 0 ends its worker process (as the kernel's OOM killer would) when the run's
    seed is `crash_seed`."""

    def __init__(self, crash_seed: int):
        self.crash_seed = crash_seed

    def before_fit(self, fit):
        super().before_fit(fit)
        if int(fit.config["seed"]) == self.crash_seed and int(fit.config["partition_id"]) == 0:
            os._exit(1)


class RecordingScaffoldClient(ScaffoldClient):
    def __init__(self, log_dir: str):
        self.log_dir = Path(log_dir)

    def before_fit(self, fit):
        super().before_fit(fit)
        self.found = digest(fit.state.get(STATE_KEY))

    def after_fit(self, fit):
        sent = super().after_fit(fit)
        line = {
            "partition": int(fit.config["partition_id"]),
            "round": int(fit.config["server_round"]),
            "found": self.found,
            "left": digest(fit.state.get(STATE_KEY)),
            "nonzero": bool(any(a.any() for a in fit.state.get(STATE_KEY))),
        }
        append(self.log_dir, line)
        return sent


class RecordingDittoClient(DittoClient):
    """Logs, per fit, the personal model it leaves; per evaluation, the global model it
    received and the model it is evaluated with."""

    def __init__(self, log_dir: str):
        self.log_dir = Path(log_dir)

    def after_fit(self, fit):
        sent = super().after_fit(fit)
        append(
            self.log_dir,
            {
                "kind": "fit",
                "partition": int(fit.config["partition_id"]),
                "round": int(fit.config["server_round"]),
                "personal": digest(fit.state.get(PERSONAL)),
            },
        )
        return sent

    def before_evaluate(self, evaluation):
        received = digest(get_weights(evaluation.model))
        super().before_evaluate(evaluation)
        append(
            self.log_dir,
            {
                "kind": "evaluate",
                "partition": int(evaluation.config["partition_id"]),
                "round": int(evaluation.config["server_round"]),
                "global": received,
                "evaluated": digest(get_weights(evaluation.model)),
            },
        )
