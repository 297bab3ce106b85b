"""Every strategy option runs a round on digits; a user's own Strategy class works by its
import path; q-FedAvg weights clients by the losses they report."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import flower_inprocess
import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import QFedAvg as FlowerQFedAvg
from hydra.utils import get_class

from fedexp.checks import ConfigError
from fedexp.federated import strategies
from fedexp.federated.methods.qfedavg import QFedAvg
from fedexp.main import config_dir
from fedexp.models import CNN

STRATEGIES = sorted(p.stem for p in (Path(config_dir()) / "strategy").glob("*.yaml"))
SAMPLING = {
    "fraction_fit": 1.0,
    "fraction_evaluate": 0.5,
    "min_fit_clients": 1,
    "min_evaluate_clients": 1,
    "accept_failures": True,
}


def test_the_issues_ask_for_these_strategies():
    """Flower's strategies, the methods with a client half, and the personalised ones."""
    assert set(STRATEGIES) >= {
        "fedavg",
        "fedprox",
        "scaffold",
        "fednova",
        "feddyn",
        "fedbn",
        "fedper",
        "ditto",
        "fedadam",
        "fedyogi",
        "fedadagrad",
        "fedavgm",
        "fedmedian",
        "fedtrimmedavg",
        "krum",
        "qfedavg",
    }


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_has_the_same_sampling_keys(make_cfg, name):
    s = make_cfg(f"strategy={name}", "num_clients=7").strategy
    assert {k: s[k] for k in SAMPLING} == SAMPLING and s.min_available_clients == 7


@pytest.mark.parametrize(
    "override,attribute,value",
    [
        ("strategy=fedprox strategy.proximal_mu=0.3", "proximal_mu", 0.3),
        ("strategy=fedadam strategy.eta=0.02", "eta", 0.02),
        ("strategy=fedadam strategy.beta_2=0.9", "beta_2", 0.9),
        ("strategy=fedyogi strategy.tau=0.01", "tau", 0.01),
        ("strategy=fedadagrad strategy.eta=0.5", "eta", 0.5),
        ("strategy=fedavgm strategy.server_momentum=0.5", "server_momentum", 0.5),
        ("strategy=fedavgm strategy.server_learning_rate=0.7", "server_learning_rate", 0.7),
        ("strategy=fedtrimmedavg strategy.beta=0.1", "beta", 0.1),
        ("strategy=krum strategy.num_malicious_clients=1", "num_malicious_clients", 1),
        ("strategy=krum strategy.num_clients_to_keep=2", "num_clients_to_keep", 2),
        ("strategy=qfedavg strategy.q_param=1.5", "q_param", 1.5),
        ("strategy=qfedavg strategy.qffl_learning_rate=0.05", "learning_rate", 0.05),
        ("strategy=scaffold strategy.server_learning_rate=0.5", "server_learning_rate", 0.5),
        ("strategy=feddyn strategy.alpha=0.1", "alpha", 0.1),
    ],
)
def test_strategy_settings_reach_flower(make_cfg, override, attribute, value):
    cfg = make_cfg(*override.split())
    strategy = strategies.build(cfg, CNN(1, 32, 10))
    assert getattr(strategy, attribute) == value


def test_adaptive_strategies_mirror_the_clients_learning_rate(make_cfg):
    for name in ("fedadam", "fedyogi", "fedadagrad"):
        assert (
            make_cfg(f"strategy={name}", "optimizer=sgd", "optimizer.lr=0.05").strategy.eta_l
            == 0.05
        )


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n == "fedavg" else pytest.mark.slow) for n in STRATEGIES]
)
def test_every_strategy_runs_a_round_on_digits(make_cfg, name):
    cfg = make_cfg(f"strategy={name}", "num_clients=4", "num_rounds=1")
    strategy, rounds, _ = flower_inprocess.run(cfg)
    assert type(strategy.inner) is get_class(cfg.strategy._target_)
    (r,) = rounds
    assert (r["fit_clients"], r["fit_failures"], r["evaluate_clients"]) == (4, 0, 2)
    assert math.isfinite(r["train_loss"]) and math.isfinite(r["distributed_loss"])
    assert math.isfinite(r["test_loss"]) and 0 <= r["test_accuracy"] <= 1
    # The round's aggregate replaced the global model. Whether one round on 4 tiny clients
    # raises the test accuracy depends on rounding (FedBN's global model keeps its initial
    # BatchNorm); learning is checked over several rounds, with margins, in test_methods.
    before = parameters_to_ndarrays(strategy.model.previous)
    after = strategy.final_weights()
    assert len(before) == len(after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    assert all(np.isfinite(a).all() for a in after if a.dtype.kind == "f")


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_a_users_own_strategy_by_import_path(make_cfg, caplog):
    """`strategy._target_=custom_strategy.FrozenFedAvg` (tests/custom_strategy.py), with its
    own key added by `+strategy.frozen=true`."""
    cfg = make_cfg(
        "strategy._target_=custom_strategy.FrozenFedAvg",
        "+strategy.frozen=true",
        "num_clients=3",
        "num_rounds=2",
    )
    with caplog.at_level(logging.WARNING, logger="fedexp"):
        strategy, rounds, _ = flower_inprocess.run(cfg)
    assert type(strategy.inner).__name__ == "FrozenFedAvg" and strategy.inner.fit_rounds == [1, 2]
    # It never moves the global model: every round tests the seeded initial model.
    assert [r["test_loss"] for r in rounds] == [strategy.initial["test_loss"]] * 2
    # It takes no fit_metrics_aggregation_fn: fedexp said so, and there is no train loss.
    assert "does not take fit_metrics_aggregation_fn" in caplog.text
    assert [r["train_loss"] for r in rounds] == [None, None]


def test_a_strategy_target_that_is_not_a_strategy(make_cfg):
    with pytest.raises(ConfigError, match=r"strategy._target_=nowhere.Strategy cannot be imported"):
        strategies.build(make_cfg("strategy._target_=nowhere.Strategy"), CNN(1, 32, 10))
    with pytest.raises(ConfigError, match=r"not a flwr\.server\.strategy\.Strategy"):
        strategies.build(make_cfg("strategy._target_=builtins.dict"), CNN(1, 32, 10))


class _Proxy:
    def __init__(self, cid):
        self.cid = cid


def _fit_res(weights, loss):
    return FitRes(
        Status(Code.OK, ""), ndarrays_to_parameters(weights), 10, {"loss_before_fit": loss}
    )


def test_qfedavg_weights_clients_by_their_own_loss(make_cfg):
    """Two clients move the model in orthogonal directions; the one the model serves worse
    (loss 4 vs 1) pulls harder when q > 0, and q = 0 is the plain average."""
    w0 = [np.zeros(2)]
    results = [
        (_Proxy("a"), _fit_res([np.array([0.1, 0.0])], 4.0)),
        (_Proxy("b"), _fit_res([np.array([0.0, 0.1])], 1.0)),
    ]

    def step(q, cls=QFedAvg, **kw):
        s = cls(q_param=q, qffl_learning_rate=0.1, **kw)
        s.pre_weights = w0
        return parameters_to_ndarrays(s.aggregate_fit(1, results, [])[0])[0]

    np.testing.assert_allclose(step(0.0), [0.05, 0.05])
    toward_a, toward_b = step(2.0)
    assert toward_a > 3 * toward_b > 0
    # Flower's own class gives every client the server's loss, so both pull equally.
    flower = step(2.0, FlowerQFedAvg, evaluate_fn=lambda rnd, w, cfg: (1.0, {}))
    assert flower[0] == pytest.approx(flower[1])
