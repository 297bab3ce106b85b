"""FedNova (Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization", NeurIPS 2020).

When clients take different numbers of local steps tau_i (different data sizes, same
epochs), FedAvg's average weights client i by p_i tau_i, so it converges to the optimum of
a skewed objective sum_i p_i tau_i F_i / sum_i p_i tau_i. FedNova normalises each client's
update by how much local work produced it (eq. 6-7):

    d_i = (x - y_i) / ||a_i||_1,     x <- x - tau_eff * sum_i p_i d_i,
    tau_eff = sum_i p_i ||a_i||_1,   p_i = n_i / sum_j n_j over the sampled clients,

and so optimises sum_i p_i F_i, the real objective. For local SGD with momentum rho
(the paper's Section 5, as in its reference code), the gradient of local step k enters
the update with weight (1 - rho^(tau_i - k)) / (1 - rho), so

    ||a_i||_1 = (tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho),

which is tau_i for rho = 0. Client (`FedNovaClient`): reports ||a_i||_1 as `fednova_a`.
Other local optimizers (Adam) are normalised by their step count, as plain SGD would be.
"""

from __future__ import annotations

import numpy as np

from .base import ClientMethod, FedAvgBased, LocalFit, Sum

A_KEY = "fednova_a"


def local_work(steps: int, momentum: float = 0.0) -> float:
    """||a_i||_1 of `steps` local SGD steps with heavy-ball `momentum`."""
    if momentum == 0:
        return float(steps)
    rho = float(momentum)
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


class FedNovaClient(ClientMethod):
    """Reports how much local work its update holds (||a_i||_1)."""

    sgd_only = (
        "FedNova's normaliser ||a_i||_1 is defined for SGD with momentum; with this "
        "optimizer each update is normalised by its number of steps (the paper and "
        "NIID-Bench use optimizer=sgd)"
    )

    def after_fit(self, fit: LocalFit) -> list[np.ndarray]:
        group = fit.optimizer.param_groups[0]
        momentum = group.get("momentum", 0.0) if "betas" not in group else 0.0
        fit.metrics[A_KEY] = local_work(fit.steps, momentum)
        return []


class FedNova(FedAvgBased):
    """FedNova's server: FedAvg's sampling, the normalised update (see the module)."""

    def new_global(self, updates) -> list[np.ndarray]:
        x = self.global_trained()
        tau_eff, direction = 0.0, Sum()
        for u in updates:
            if A_KEY not in u.metrics:
                raise RuntimeError(
                    f"FedNova: a client did not report '{A_KEY}' "
                    "(its client half must be FedNovaClient)"
                )
            a = float(u.metrics[A_KEY])
            tau_eff += u.share * a
            direction.add([xj - y for xj, y in zip(x, u.trained(self.layout))], u.share / a)
        return [xj - tau_eff * d for xj, d in zip(x, direction.total)]
