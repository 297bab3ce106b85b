"""The global model as the run goes, and the ends of a run that cannot usefully go on."""

from __future__ import annotations

import numpy as np
from flwr.common import Parameters, parameters_to_ndarrays


class RunEnded(Exception):
    """The run cannot usefully go on; `status` is results.json's ("failed" or "diverged")."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class ClientDiverged(RuntimeError):
    """A client's local training produced a NaN/inf loss or parameters (it said so)."""


def finite(parameters: Parameters) -> bool:
    return all(
        np.isfinite(a).all() for a in parameters_to_ndarrays(parameters) if a.dtype.kind in "fc"
    )


class GlobalModel:
    """The current global model, the one before it, and the one of the last recorded
    round: a run that fails or diverges, or is interrupted mid-round, ends with the model
    its last recorded test numbers are about, never one with NaN/inf parameters."""

    def __init__(self):
        self.current: Parameters | None = None
        self.previous: Parameters | None = None
        self.kept: Parameters | None = None

    def start(self, parameters: Parameters | None) -> None:
        self.current = self.kept = parameters

    def accept(self, parameters: Parameters) -> None:
        self.previous, self.current = self.current, parameters

    def roll_back(self) -> None:
        self.current = self.previous

    def keep(self) -> None:
        """The round is recorded: its model is the one to save."""
        self.kept = self.current

    def final_weights(self) -> list[np.ndarray] | None:
        return None if self.kept is None else parameters_to_ndarrays(self.kept)


def nothing_to_aggregate(
    server_round: int, diverged: list, failures: list, reasons: list[str]
) -> RunEnded:
    """The end of a run whose round left no client result to aggregate.

    Flower's FedAvg would keep going with the old model and log a warning; a round in
    which every client failed or diverged says that the run is broken."""
    if diverged:
        example = sorted(str(r[1].metrics["diverged"]) for r in diverged)[0]
        return RunEnded(
            "diverged",
            f"round {server_round}: local training diverged on all "
            f"{len(diverged)} clients that answered ({example})",
        )
    return RunEnded(
        "failed",
        f"round {server_round}: all {len(failures)} sampled clients "
        f"failed, nothing to aggregate (e.g. {reasons[0]})",
    )
