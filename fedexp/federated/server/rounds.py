"""The record of each round: what results.json's `rounds` hold, reported once per round."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

log = logging.getLogger("fedexp")


def failure_reason(failure) -> str:
    """One line for a Flower failure: an exception, or a (proxy, result) with a bad status.

    A client's exception reaches the server inside Flower's error text
    ("... Message: <the client's message>'>)..."); the client's own message is kept.
    """
    if isinstance(failure, tuple):
        status = failure[1].status
        return f"status {status.code.name}: {status.message}"
    text = str(failure)
    inner = re.search(r"Message: (.*?)'>", text, re.S)
    if inner:
        return inner.group(1).strip().splitlines()[-1][:300]
    # Flower's wrapping of an error of the engine, e.g. a client's worker process that died:
    # "... (reason: <class 'ray.exceptions.ActorDiedError'>:<'The actor died ...\n\t...'>)"
    engine = re.search(r"<class '(?:[\w.]+\.)?(\w+)'>:<'([^\n']*)", text)
    if engine:
        return f"{engine.group(1)}: {engine.group(2).strip()}"[:300]
    first = (text.strip().splitlines() or [""])[0]
    return f"{type(failure).__name__}: {first}"[:300]


class RoundRecorder:
    """Opens a round's record, fills it in as the round goes, closes it with the round's
    wall time and hands it to `on_round` (results files, progress line). The test-set
    numbers of round 0 (the initial model) are kept apart, as `initial`."""

    def __init__(self, on_round: Callable[[dict], None]):
        self.on_round = on_round
        self.current: dict = {}
        self.initial: dict | None = None
        self._t0 = 0.0
        self._reasons_seen: set[str] = set()

    def open(self, server_round: int) -> None:
        self._t0 = time.perf_counter()
        self.current = {
            "round": server_round,
            "fit_clients": 0,
            "fit_failures": 0,
            "evaluate_clients": 0,
            "evaluate_failures": 0,
            "train_loss": None,
            "train_accuracy": None,
            "distributed_loss": None,
            "distributed_accuracy": None,
            "test_loss": None,
            "test_accuracy": None,
            "aggregated": False,
        }

    def update(self, **values) -> None:
        self.current.update(values)

    def test_result(self, server_round: int, loss: float, accuracy) -> None:
        test = {"test_loss": float(loss), "test_accuracy": accuracy}
        if server_round == 0:
            self.initial = test
        else:
            self.current.update(test)

    def note_failures(self, failures) -> list[str]:
        """Log the first failure of each kind (numbers aside); the record counts them all.
        Sorted: Flower lists failures in the order they happened to arrive."""
        reasons = sorted(failure_reason(f) for f in failures)
        for reason in reasons:
            kind = re.sub(r"\d+(\.\d+)?", "#", reason)
            if kind not in self._reasons_seen:
                self._reasons_seen.add(kind)
                log.warning(
                    "client failure: %s (failures like it are counted in results.json, "
                    "not shown again)",
                    reason,
                )
        return reasons

    def close(self) -> None:
        self.current["seconds"] = time.perf_counter() - self._t0
        self.on_round(self.current)
