"""What travels between server and clients: the model's arrays, then a method's extras.

Flower's `Parameters` is one flat list of arrays. fedexp's messages put the model's
`state_dict` entries first, in order and each in its own dtype, and after them whatever
arrays a method adds: SCAFFOLD's server sends its control variate with the global model,
its clients send their control-variate updates with their weights. `ModelLayout`, made
from the model on both sides, says where the model ends, which entries are trained
parameters (methods correct those, not BatchNorm's statistics) and which dtypes the global
model must keep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from flwr.common import (
    FitRes,
    Parameters,
    bytes_to_ndarray,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)


@dataclass(frozen=True)
class ModelLayout:
    """The model's state entries as exchanged: names, shapes, dtypes, and which are trained."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    trainable: tuple[bool, ...]
    batch_norm: tuple[bool, ...]  # the entry belongs to a BatchNorm layer (FedBN keeps those local)

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelLayout:
        params = {name for name, p in model.named_parameters() if p.requires_grad}
        norms = {
            name
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        }
        state = model.state_dict()
        return cls(
            tuple(state),
            tuple(tuple(v.shape) for v in state.values()),
            tuple(torch.empty(0, dtype=v.dtype).numpy().dtype for v in state.values()),
            tuple(name in params for name in state),
            tuple(name.rpartition(".")[0] in norms for name in state),
        )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def trained_indices(self) -> list[int]:
        return [i for i, t in enumerate(self.trainable) if t]

    def zeros_like_trained(self) -> list[np.ndarray]:
        """One float32 zero array per trained parameter (a control variate's start)."""
        return [np.zeros(self.shapes[i], np.float32) for i in self.trained_indices]

    def split(self, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(the model's arrays, the extras after them)."""
        if len(arrays) < len(self):
            raise ValueError(
                f"a message holds {len(arrays)} arrays; the model alone has {len(self)}"
            )
        return list(arrays[: len(self)]), list(arrays[len(self) :])

    def model_part(self, res: FitRes) -> FitRes:
        """`res` without the extras after the model's arrays (for strategies that read none)."""
        if len(res.parameters.tensors) <= len(self):
            return res
        params = Parameters(res.parameters.tensors[: len(self)], res.parameters.tensor_type)
        return FitRes(res.status, params, res.num_examples, res.metrics)

    def restore_dtypes(self, params: Parameters, results) -> Parameters:
        """The global model in the model's own dtypes, integer buffers as counters.

        Strategies do float math on every state entry: FedAdam's update turns float32
        weights into float64, FedAvg's in-place mean multiplies int64 entries by
        int(weight), which is 0 for every client when several train, so BatchNorm's
        `num_batches_tracked` would drop to 0. Float entries keep the strategy's result,
        cast back to their dtype; integer entries (counters, not weights) become the
        clients' example-weighted mean, rounded, whatever the strategy.
        """
        ints = [i for i, d in enumerate(self.dtypes) if np.issubdtype(d, np.integer)]
        arrays = parameters_to_ndarrays(params)
        if not ints and all(a.dtype == d for a, d in zip(arrays, self.dtypes)):
            return params
        counts = np.array([res.num_examples for _, res in results], dtype=np.float64)
        share = counts / counts.sum() if counts.sum() > 0 else np.full(len(counts), 1 / len(counts))
        for i in ints:
            values = [bytes_to_ndarray(res.parameters.tensors[i]) for _, res in results]
            arrays[i] = np.rint(sum(w * v for w, v in zip(share, values)))
        return ndarrays_to_parameters(
            [a.astype(d, copy=False) for a, d in zip(arrays, self.dtypes)]
        )

    @classmethod
    def of_arrays(cls, arrays: list[np.ndarray]) -> ModelLayout:
        """A layout known only from arrays (a strategy that let a client initialise the
        model): every floating entry counts as trained."""
        return cls(
            tuple(str(i) for i in range(len(arrays))),
            tuple(a.shape for a in arrays),
            tuple(a.dtype for a in arrays),
            tuple(a.dtype.kind == "f" for a in arrays),
            (False,) * len(arrays),
        )

    def under(self, prefixes) -> list[int]:
        """The entries of the layers named by `prefixes` (e.g. "fc3" holds fc3.weight, fc3.bias)."""
        return [
            i
            for i, n in enumerate(self.names)
            if any(n == p or n.startswith(f"{p}.") for p in prefixes)
        ]


def with_extras(parameters: Parameters, extras: list[np.ndarray]) -> Parameters:
    """The global model's parameters followed by `extras`, without re-serialising the model."""
    if not extras:
        return parameters
    return Parameters(
        list(parameters.tensors) + ndarrays_to_parameters(extras).tensors, parameters.tensor_type
    )
