"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020, Algorithm 1 with option II).

The server keeps a control variate c, each client i its own c_i (in its `Context.state`,
zero before its first round). The server sends (x, c) to the sampled clients S; each
corrects every local gradient step by the drift between the two (line 10),

    y_i <- y_i - eta_l (g_i(y_i) - c_i + c),

and after K local steps updates its variate with option II (line 12),

    c_i+ = c_i - c + (x - y_i) / (K eta_l),

and sends back y_i and Delta c_i = c_i+ - c_i. The server then moves (lines 16-17)

    x <- x + eta_g * (1/|S|) sum_{i in S} (y_i - x),
    c <- c + (1/N) sum_{i in S} Delta c_i,

N being the number of clients. eta_g is `server_learning_rate`; eta_l the clients'
`optimizer.lr`. The correction is applied to the weights after each optimizer step,
y_i <- y_i - eta_l (c - c_i), as NIID-Bench's and Flower's reference code do: with plain
SGD that is line 10 exactly; with momentum, c_i (estimated from the momentum steps) already
carries the momentum's scale, and correcting the gradient instead would amplify it again
(measured: SCAFFOLD under NIID-Bench's SGD with momentum 0.9 diverged in round 3 that way).
Control variates cover the trained parameters; BatchNorm's statistics are averaged as in
FedAvg.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from .base import ClientMethod, FedAvgBased, LocalFit, Sum

STATE_KEY = "scaffold.c_i"


class ScaffoldClient(ClientMethod):
    """Corrects each local step by c - c_i; updates c_i (option II) and sends Delta c_i."""

    keeps_state = True
    sgd_only = (
        "option II's c_i = c_i - c + (x - y_i)/(K lr) is the mean gradient only for "
        "SGD steps; with this optimizer it is an estimate (the paper and NIID-Bench use "
        "optimizer=sgd)"
    )

    def before_fit(self, fit: LocalFit) -> None:
        self.lr = fit.lr
        self.params = fit.trained_params()
        zeros = [torch.zeros_like(p) for p in self.params]
        self.c = fit.as_tensors(fit.server_extras) if fit.server_extras else zeros
        stored = fit.state.get(STATE_KEY)
        self.c_i = fit.as_tensors(stored) if stored is not None else zeros
        self.correction = [c - ci for c, ci in zip(self.c, self.c_i, strict=True)]

    @torch.no_grad()
    def after_step(self, model) -> None:
        for p, d in zip(self.params, self.correction):
            p.add_(d, alpha=-self.lr)

    def after_fit(self, fit: LocalFit) -> list[np.ndarray]:
        scale = 1.0 / (fit.steps * fit.lr)
        c_i_new = [
            ci - c + (x - y.detach()) * scale
            for ci, c, x, y in zip(self.c_i, self.c, fit.global_trained(), self.params)
        ]
        fit.state.set(STATE_KEY, [t.cpu().numpy() for t in c_i_new])
        return [(new - old).cpu().numpy() for new, old in zip(c_i_new, self.c_i)]


class Scaffold(FedAvgBased):
    """SCAFFOLD's server: FedAvg's sampling, the controlled update of x and c (see the module)."""

    settings: ClassVar[dict[str, float]] = {"server_learning_rate": 1.0}
    c: list[np.ndarray] | None = None  # the server's control variate, from round 1 on

    def extras_for_clients(self) -> list[np.ndarray]:
        if self.c is None:
            self.c = [z.astype(np.float64) for z in self.layout.zeros_like_trained()]
        return [c.astype(np.float32) for c in self.c]

    def new_global(self, updates) -> list[np.ndarray]:
        x = self.global_trained()
        step, dc = Sum(), Sum()
        for u in updates:
            if len(u.extras) != len(self.c):
                raise RuntimeError(
                    f"SCAFFOLD: a client sent {len(u.extras)} control-variate arrays, "
                    f"expected {len(self.c)} (its client half must be ScaffoldClient)"
                )
            step.add([y - xj for y, xj in zip(u.trained(self.layout), x)])
            dc.add(u.extras)
        n = max(self.num_clients, dc.count)
        self.c = [c + d / n for c, d in zip(self.c, dc.total)]
        return [xj + self.server_learning_rate * s for xj, s in zip(x, step.mean())]
