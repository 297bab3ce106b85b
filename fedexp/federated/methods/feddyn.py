"""FedDyn (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021,
Algorithm 1).

Each client k keeps the gradient of its local loss at its last local model,
grad L_k(theta_k^{t-1}) (in its `Context.state`, zero before its first round), and
minimises the dynamically regularised objective

    L_k(theta) - <grad L_k(theta_k^{t-1}), theta> + (alpha/2) ||theta - theta^{t-1}||^2,

then updates its state by the first-order condition of that objective,

    grad L_k(theta_k^t) = grad L_k(theta_k^{t-1}) - alpha (theta_k^t - theta^{t-1}).

The server keeps h (zero at first) and, with P the sampled clients and m all of them,

    h^t     = h^{t-1} - alpha (1/m) sum_{k in P} (theta_k^t - theta^{t-1}),
    theta^t = (1/|P|) sum_{k in P} theta_k^t - (1/alpha) h^t.

`alpha` is sent to the clients in every fit instruction. The regulariser covers the
trained parameters; BatchNorm's statistics are averaged as in FedAvg.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from .base import ClientMethod, FedAvgBased, LocalFit, Sum, squared_distance

STATE_KEY = "feddyn.grad"


class FedDynClient(ClientMethod):
    """Adds FedDyn's linear and quadratic terms to each step; keeps its local gradient state."""

    keeps_state = True

    def before_fit(self, fit: LocalFit) -> None:
        self.alpha = float(fit.config["alpha"])
        self.params = fit.trained_params()
        self.anchor = fit.global_trained()
        stored = fit.state.get(STATE_KEY)
        self.grad = (
            fit.as_tensors(stored)
            if stored is not None
            else [torch.zeros_like(p) for p in self.params]
        )

    def loss_term(self, model):
        linear = sum((p * g).sum() for p, g in zip(self.params, self.grad))
        quadratic = squared_distance(self.params, self.anchor)
        return 0.5 * self.alpha * quadratic - linear

    def after_fit(self, fit: LocalFit) -> list[np.ndarray]:
        new = [
            g - self.alpha * (p.detach() - a)
            for g, p, a in zip(self.grad, self.params, self.anchor)
        ]
        fit.state.set(STATE_KEY, [t.cpu().numpy() for t in new])
        return []


class FedDyn(FedAvgBased):
    """FedDyn's server: FedAvg's sampling, the dynamically corrected average (see the module)."""

    settings: ClassVar[dict[str, float]] = {"alpha": 0.01}
    h: list[np.ndarray] | None = None  # the server's state h, from the first aggregation on

    def settings_for_clients(self) -> dict:
        return {"alpha": float(self.alpha)}

    def new_global(self, updates) -> list[np.ndarray]:
        x = self.global_trained()
        thetas = Sum()
        for u in updates:
            thetas.add(u.trained(self.layout))
        if self.h is None:
            self.h = [np.zeros_like(xj) for xj in x]
        m = max(self.num_clients, thetas.count)
        # sum_k (theta_k - x) = sum_k theta_k - |P| x
        self.h = [
            h - self.alpha * (t - thetas.count * xj) / m
            for h, t, xj in zip(self.h, thetas.total, x)
        ]
        return [t / thetas.count - h / self.alpha for t, h in zip(thetas.total, self.h)]
