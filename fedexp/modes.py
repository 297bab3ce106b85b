"""What each mode reads and records: a centralized run has no rounds or strategy, a
federated run no `centralized.*`. The run warns about settings given for the other mode,
and `fedexp-compare` leaves them blank for runs of a mode that does not read them. A
federated run records rounds, a centralized one epochs (`STEPS`): results.json, the
trackers, resume and fedexp-compare read them through the names below."""

from __future__ import annotations

UNUSED_BY_MODE = {
    "centralized": ("strategy", "num_rounds", "local_epochs", "simulation", "evaluation"),
    "federated": ("centralized",),
}


def unused_by_mode(mode: str, key: str) -> bool:
    """Whether `key` (dotted, e.g. "strategy.fraction_fit") is one `mode` never reads."""
    return any(key == p or key.startswith(p + ".") for p in UNUSED_BY_MODE.get(mode, ()))


def ignored_overrides(mode: str, overrides: list[str]) -> list[str]:
    """The command line's `key=value` overrides that `mode` does not read."""
    keys = (o.lstrip("+~").partition("=")[0] for o in overrides)
    return [k for k in keys if unused_by_mode(mode, k)]


STEPS = {"federated": ("rounds", "round"), "centralized": ("epochs", "epoch")}


def steps_of(data: dict, mode: str | None = None) -> list[dict]:
    """The rounds (federated) or epochs (centralized) of a results.json's `data`."""
    return data.get(STEPS.get(mode or data.get("mode"), STEPS["federated"])[0]) or []


def step_number(record: dict) -> int | None:
    """A round's or an epoch's number."""
    return record.get("round", record.get("epoch"))
