"""Building the configured Flower strategy, and fedexp's one correction to a Flower strategy.

Any class named by `strategy._target_` works, Flower's or the user's own: the config's keys
go to its constructor, and fedexp adds its server-side hooks (initial parameters, test-set
evaluation, per-round client settings, metric averaging) only where that constructor takes
them, so a Strategy subclass with a narrower signature still builds.
"""
from __future__ import annotations

import inspect
import logging

import numpy as np
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import QFedAvg as FlowerQFedAvg
from flwr.server.strategy import Strategy
from flwr.server.strategy.aggregate import aggregate_qffl
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from ..checks import ConfigError

log = logging.getLogger("fedexp")

# What each hook gives up when a strategy's constructor does not take it.
_WITHOUT = {
    "initial_parameters": "the server will ask a client for the initial model instead of using the seeded one",
    "evaluate_fn": "no server-side test evaluation (test_loss/test_accuracy stay empty)",
    "on_fit_config_fn": "clients get no per-round settings and fall back to the config",
    "on_evaluate_config_fn": "clients evaluate with the config's eval_batch_size",
    "fit_metrics_aggregation_fn": "no train_loss/train_accuracy per round",
    "evaluate_metrics_aggregation_fn": "no distributed_accuracy per round",
}


def build(node: DictConfig, **hooks) -> Strategy:
    """Instantiate `node` (the `strategy` config) with the `hooks` its constructor accepts."""
    target = node.get("_target_")
    hydra_log = logging.getLogger("hydra.utils")  # it logs the traceback we turn into one line
    level, hydra_log.level = hydra_log.level, logging.CRITICAL
    try:
        factory = get_object(target)
    except Exception as e:  # ImportError, AttributeError, ...
        cause = str(e.__cause__ or e).splitlines()[0]
        raise ConfigError(f"strategy._target_={target} cannot be imported ({cause}): name a "
                          "Strategy class by its import path, e.g. flwr.server.strategy.FedAvg") from None
    finally:
        hydra_log.setLevel(level)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no introspectable signature: offer everything
        params = {"kwargs": inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = dict(hooks)
    else:
        accepted = {k: v for k, v in hooks.items() if k in params}
    for name in sorted(set(hooks) - set(accepted)):
        log.warning("strategy %s does not take %s: %s", target, name, _WITHOUT.get(name, "not passed"))
    strategy = instantiate(node, **accepted)
    if not isinstance(strategy, Strategy):
        raise ConfigError(f"strategy._target_={target} built a {type(strategy).__name__}, "
                          "not a flwr.server.strategy.Strategy")
    return strategy


class QFedAvg(FlowerQFedAvg):
    """q-FedAvg as Li et al. (ICLR 2020, Algorithm 2) define it.

    Each client k is weighted by its own loss F_k(w) on its own training data at the global
    model w, raised to q: clients the global model serves badly pull it harder. Flower's
    QFedAvg (1.42) plugs in the server's test loss (`evaluate_fn`) for every client instead,
    which takes away the per-client weighting that is q-FFL's point. Here the clients are asked
    for F_k(w) (`report_loss_before_fit`, answered by fedexp's client as `loss_before_fit`)
    and the rest is Flower's: its sampling, its hyperparameters (`q_param`,
    `qffl_learning_rate` = the paper's 1/L) and its `aggregate_qffl` update.
    """

    LOSS_KEY = "loss_before_fit"

    def __repr__(self) -> str:
        return f"QFedAvg(q_param={self.q_param}, qffl_learning_rate={self.learning_rate}, client losses)"

    def configure_fit(self, server_round, parameters, client_manager):
        instructions = super().configure_fit(server_round, parameters, client_manager)
        return [(proxy, FitIns(ins.parameters, {**ins.config, "report_loss_before_fit": True}))
                for proxy, ins in instructions]

    def aggregate_fit(self, server_round, results, failures):
        if not results or (failures and not self.accept_failures):
            return None, {}
        before = self.pre_weights
        deltas, hs = [], []
        for proxy, res in results:
            if self.LOSS_KEY not in res.metrics:
                raise RuntimeError(f"q-FedAvg: client {proxy.cid} did not report '{self.LOSS_KEY}' "
                                   "(its fit must return its loss at the received model)")
            loss = float(res.metrics[self.LOSS_KEY]) + 1e-10
            # The paper's update direction: Delta w_k = L (w - w_k), L = 1 / qffl_learning_rate.
            grads = [(u - v) / self.learning_rate
                     for u, v in zip(before, parameters_to_ndarrays(res.parameters), strict=True)]
            # ||Delta w_k||^2 over the weights only: integer buffers (BatchNorm's batch
            # counters) are not part of the model's function and would swamp the norm.
            norm2 = sum(float(np.sum(np.square(g))) for g, u in zip(grads, before)
                        if np.issubdtype(u.dtype, np.floating))
            deltas.append([np.float_power(loss, self.q_param) * g for g in grads])
            hs.append(self.q_param * np.float_power(loss, self.q_param - 1) * norm2
                      + np.float_power(loss, self.q_param) / self.learning_rate)
        weights = aggregate_qffl(before, deltas, hs)
        metrics = {}
        if self.fit_metrics_aggregation_fn:
            metrics = self.fit_metrics_aggregation_fn([(r.num_examples, r.metrics) for _, r in results])
        return ndarrays_to_parameters(weights), metrics
