"""FedBN (Li et al., "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization", ICLR 2021, Algorithm 1).

Every client keeps its BatchNorm layers (their weights, biases and running statistics)
to itself; the server averages everything else as FedAvg does (eq. 2 restricted to the
non-BatchNorm parameters). A client's model is the shared layers with its own
BatchNorm, which is also the model it is evaluated with. It needs a model with
BatchNorm: conf/strategy/fedbn.yaml sets `model.batch_norm=true`.
"""

from __future__ import annotations

from ..payload import ModelLayout
from .base import LocalLayersClient, LocalLayersFedAvg


def batch_norm_entries(layout: ModelLayout) -> list[int]:
    return [i for i, bn in enumerate(layout.batch_norm) if bn]


class FedBNClient(LocalLayersClient):
    """Keeps its own BatchNorm layers; the rest comes from the server each round."""

    state_key = "fedbn.batch_norm"

    def local_indices(self, layout: ModelLayout) -> list[int]:
        return batch_norm_entries(layout)

    def check_model(self, layout: ModelLayout) -> str | None:
        if not batch_norm_entries(layout):
            return (
                "it has no BatchNorm layer for FedBN to keep local (strategy=fedbn sets "
                "model.batch_norm=true; leave it so)"
            )
        return None


class FedBN(LocalLayersFedAvg):
    """FedAvg over every layer but BatchNorm."""

    def __repr__(self) -> str:
        return "FedBN()"

    def local_indices(self, layout: ModelLayout) -> list[int]:
        return batch_norm_entries(layout)
