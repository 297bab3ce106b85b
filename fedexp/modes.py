"""What each mode reads: a centralized run has no rounds or strategy, a federated run no
`centralized.*`. The run warns about settings given for the other mode, and
`fedexp-compare` leaves them blank for runs of a mode that does not read them."""

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
