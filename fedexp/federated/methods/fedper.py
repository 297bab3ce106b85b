"""FedPer (Arivazhagan et al., "Federated Learning with Personalization Layers", 2019).

The model is split into base layers, shared and averaged by the server as in FedAvg, and
personalisation layers (the head), which each client trains and keeps for itself. A
client's model is the shared base with its own head, which is also the model it is
evaluated with. `head` names the head's layers (module names of the model's
`state_dict`: `fc3` for `model=cnn`, `fc` for `model=resnet18`).
"""

from __future__ import annotations

from ..payload import ModelLayout
from .base import LocalLayersClient, LocalLayersFedAvg


def head_entries(layout: ModelLayout, head) -> list[int]:
    found = layout.under(list(head))
    if not found:
        top = list(dict.fromkeys(n.split(".")[0] for n in layout.names))
        raise ValueError(
            f"strategy.head={list(head)} names no layer of the model (its top-level "
            f"layers: {', '.join(top)})"
        )
    return found


class FedPerClient(LocalLayersClient):
    """Keeps its own head; the base comes from the server each round."""

    state_key = "fedper.head"

    def __init__(self, head=("fc3",)):
        self.head = list(head)

    def local_indices(self, layout: ModelLayout) -> list[int]:
        return head_entries(layout, self.head)


class FedPer(LocalLayersFedAvg):
    """FedAvg over the base layers; the head stays with the clients."""

    def __init__(self, *, head=("fc3",), **kwargs):
        super().__init__(**kwargs)
        self.head = list(head)
        if self.layout is not None:
            head_entries(self.layout, self.head)  # a head that names no layer fails now

    def __repr__(self) -> str:
        return f"FedPer(head={self.head})"

    def local_indices(self, layout: ModelLayout) -> list[int]:
        return head_entries(layout, self.head)
