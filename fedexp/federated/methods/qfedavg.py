"""q-FedAvg (Li et al., "Fair Resource Allocation in Federated Learning", ICLR 2020, Algorithm 2).

Each client k is weighted by its own loss F_k(w) on its own training data at the global
model w, raised to q: clients the global model serves badly pull it harder. Client
(`QFedAvgClient`): measures F_k(w) before training and reports it as `loss_before_fit`.
Server (`QFedAvg`): Flower's QFedAvg (1.42) plugs the server's test loss (`evaluate_fn`)
into the update for every client, which takes away the per-client weighting that is
q-FFL's point; this subclass reads the clients' losses instead and keeps the rest of
Flower's: its sampling, its hyperparameters (`q_param`, `qffl_learning_rate` = the
paper's 1/L) and its `aggregate_qffl` update:

    Delta_k = L (w - w_k),   h_k = q F_k^(q-1) ||Delta_k||^2 + L F_k^q,
    w <- w - sum_k F_k^q Delta_k / sum_k h_k.
"""

from __future__ import annotations

import numpy as np
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import QFedAvg as FlowerQFedAvg
from flwr.server.strategy.aggregate import aggregate_qffl

from .base import ClientMethod, LocalFit

LOSS_KEY = "loss_before_fit"


class QFedAvgClient(ClientMethod):
    """Reports F_k(w), its mean loss on its own training data at the received model."""

    def before_fit(self, fit: LocalFit) -> None:
        before = fit.evaluate_train()
        fit.metrics[LOSS_KEY] = before["loss"] if before["examples"] else 0.0


class QFedAvg(FlowerQFedAvg):
    """Flower's q-FedAvg, weighting each client by the loss it reported (see the module)."""

    def __repr__(self) -> str:
        return f"QFedAvg(q_param={self.q_param}, qffl_learning_rate={self.learning_rate}, client losses)"

    def aggregate_fit(self, server_round, results, failures):
        if not results or (failures and not self.accept_failures):
            return None, {}
        before = self.pre_weights
        deltas, hs = [], []
        for proxy, res in results:
            if LOSS_KEY not in res.metrics:
                raise RuntimeError(
                    f"q-FedAvg: client {proxy.cid} did not report '{LOSS_KEY}' "
                    "(its client half must be fedexp.federated.methods.qfedavg.QFedAvgClient)"
                )
            loss = float(res.metrics[LOSS_KEY]) + 1e-10
            # The paper's update direction: Delta w_k = L (w - w_k), L = 1 / qffl_learning_rate.
            grads = [
                (u - v) / self.learning_rate
                for u, v in zip(before, parameters_to_ndarrays(res.parameters), strict=True)
            ]
            # ||Delta w_k||^2 over the weights only: integer buffers (BatchNorm's batch
            # counters) are not part of the model's function and would swamp the norm.
            norm2 = sum(
                float(np.sum(np.square(g)))
                for g, u in zip(grads, before)
                if np.issubdtype(u.dtype, np.floating)
            )
            deltas.append([np.float_power(loss, self.q_param) * g for g in grads])
            hs.append(
                self.q_param * np.float_power(loss, self.q_param - 1) * norm2
                + np.float_power(loss, self.q_param) / self.learning_rate
            )
        weights = aggregate_qffl(before, deltas, hs)
        metrics = {}
        if self.fit_metrics_aggregation_fn:
            metrics = self.fit_metrics_aggregation_fn(
                [(r.num_examples, r.metrics) for _, r in results]
            )
        return ndarrays_to_parameters(weights), metrics
