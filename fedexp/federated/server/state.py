"""What the server has learned over the rounds, as data a checkpoint can hold.

Flower's strategies have no save or load method: they keep what they learn in plain
attributes (FedAdam's, FedYogi's and FedAdagrad's `m_t`, `v_t` and `current_weights`,
FedAvgM's `momentum_vector`, SCAFFOLD's `c`, FedDyn's `h`). A resumed run builds its
strategy from the same config, so everything a strategy was built with is already as it
was; what a checkpoint must add is what the rounds changed. `StrategyState` therefore
keeps a copy of the strategy's data attributes as built and, at each checkpoint, saves
every data attribute whose value differs from that copy, or that the rounds added. This
covers a user's own strategy the same way, as long as it keeps its state in data
(numbers, strings, arrays, tensors, Parameters, and lists, tuples and dicts of them);
state held in other objects is not saved.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from flwr.common import Parameters
from flwr.server.strategy import Strategy

_LEAVES = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    np.ndarray,
    np.generic,
    torch.Tensor,
    Parameters,
)


def is_data(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(is_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and is_data(v) for k, v in value.items())
    return isinstance(value, _LEAVES)


def same(a, b) -> bool:
    """Equal in type, shape and every bit (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        a, b = a.detach().cpu().numpy(), b.detach().cpu().numpy()
    if isinstance(a, (np.ndarray, np.generic)):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and np.asarray(a).tobytes() == np.asarray(b).tobytes()
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b or (a != a and b != b)
    return a == b


class StrategyState:
    """The data attributes a strategy's rounds changed (see the module)."""

    def __init__(self, strategy: Strategy):
        self.strategy = strategy
        self.built = {k: copy.deepcopy(v) for k, v in vars(strategy).items() if is_data(v)}

    def capture(self) -> dict:
        return {
            k: v
            for k, v in vars(self.strategy).items()
            if is_data(v) and (k not in self.built or not same(v, self.built[k]))
        }

    def restore(self, saved: dict) -> None:
        for name, value in saved.items():
            setattr(self.strategy, name, value)
