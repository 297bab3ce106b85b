"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020).

Server: Flower's `FedProx` strategy: FedAvg's sampling and aggregation, and `proximal_mu`
in every fit instruction. Client (`FedProxClient`): each step minimises the paper's local
objective (eq. 2)

    h_k(w; w^t) = F_k(w) + (mu / 2) * ||w - w^t||^2,

w^t being the global model the client received. mu = 0 is FedAvg's client, bit for bit.
"""

from __future__ import annotations

from .base import ClientMethod, LocalFit, Proximal


class FedProxClient(ClientMethod):
    """Adds the proximal term (mu/2)||w - w^t||^2 over the trained parameters to every step."""

    def before_fit(self, fit: LocalFit) -> None:
        self.mu = float(fit.config.get("proximal_mu", 0.0))
        self.term = (
            Proximal(self.mu, fit.trained_params(), fit.global_trained()) if self.mu > 0 else None
        )

    def loss_term(self, model):
        return None if self.term is None else self.term.loss_term(model)
