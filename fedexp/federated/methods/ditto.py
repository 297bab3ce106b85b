"""Ditto (Li et al., "Ditto: Fair and Robust Federated Learning Through Personalization",
ICML 2021, Algorithm 1).

The global model w is trained as in FedAvg. Besides, each client k keeps a personal model
v_k (in its state) and, whenever it is sampled, trains it on its own data for the same
local epochs on the personal objective (eq. 2)

    h_k(v_k; w^t) = F_k(v_k) + (lambda / 2) ||v_k - w^t||^2,

w^t being the global model it received. lambda (`lam`) ties the personal models to the
global one: 0 is purely local training, large lambda is FedAvg's model. A client is
evaluated with its personal model. A client that has never been sampled has no personal
model yet and is evaluated with the global model, which is where its v_k would start.
"""

from __future__ import annotations

import numpy as np
from flwr.common import FitIns
from flwr.server.strategy import FedAvg

from ...models import get_weights, set_weights
from .base import ClientMethod, LocalEvaluation, LocalFit, Proximal

STATE_KEY = "ditto.personal"


class DittoClient(ClientMethod):
    """Trains the global model as FedAvg's client does, then its own personal model."""

    personal = True
    keeps_state = True

    def after_fit(self, fit: LocalFit) -> list[np.ndarray]:
        personal = fit.spare_model()
        set_weights(personal, fit.state.get(STATE_KEY) or fit.global_weights)
        stats = fit.train(
            personal,
            Proximal(float(fit.config["lam"]), fit.trained_params(personal), fit.global_trained()),
        )
        fit.state.set(STATE_KEY, get_weights(personal))
        fit.metrics["personal_train_loss"] = stats["loss"]
        return []

    def before_evaluate(self, evaluation: LocalEvaluation) -> None:
        stored = evaluation.state.get(STATE_KEY)
        if stored is not None:
            set_weights(evaluation.model, stored)


class Ditto(FedAvg):
    """FedAvg's server; it sends lambda (`lam`) with every fit instruction."""

    def __init__(self, *, lam: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.lam = lam

    def __repr__(self) -> str:
        return f"Ditto(lam={self.lam})"

    def configure_fit(self, server_round, parameters, client_manager):
        return [
            (proxy, FitIns(ins.parameters, {**ins.config, "lam": float(self.lam)}))
            for proxy, ins in super().configure_fit(server_round, parameters, client_manager)
        ]
