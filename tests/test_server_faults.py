"""Fault handling on the server and the client, without Ray: Flower's own FedAvg and
result types, fed the results and failures a simulation would deliver."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from omegaconf import OmegaConf

from fedexp.federated.client import ClientSpec, FedexpClient
from fedexp.federated.faults import InjectedClientFailure, StragglerTimeout, fit_fails, stragglers
from fedexp.federated.server import (
    ClientLink,
    PartitionClientManager,
    RunEnded,
    RunStopped,
    ServerStrategy,
)


class Proxy(ClientProxy):
    """A registered client that must not be contacted unless `answer` is given."""

    def __init__(self, cid, answer=None):
        super().__init__(cid)
        self.answer, self.calls = answer, 0

    def fit(self, ins, timeout, group_id):
        self.calls += 1
        if self.answer is None:
            raise AssertionError("client contacted")
        return self.answer(ins)

    evaluate = fit

    def get_properties(self, ins, timeout, group_id): ...
    def get_parameters(self, ins, timeout, group_id): ...
    def reconnect(self, ins, timeout, group_id): ...


def fit_res(weights, n=10, **metrics):
    return FitRes(Status(Code.OK, "Success"), ndarrays_to_parameters(weights), n, metrics)


def setup(n_clients=2, straggler_rate=0.0, accept_failures=True):
    cm = PartitionClientManager(seed=0)
    proxies = [Proxy(str(i + 1)) for i in range(n_clients)]
    for p in proxies:
        cm.register(p)
    rounds = []
    w0 = [np.zeros(3, np.float32)]
    inner = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=1,
        min_evaluate_clients=0,
        min_available_clients=n_clients,
        initial_parameters=ndarrays_to_parameters(w0),
        accept_failures=accept_failures,
    )
    strategy = ServerStrategy(inner, cm, rounds.append, seed=0, straggler_rate=straggler_rate)
    strategy.initialize_parameters(cm)
    return strategy, cm, rounds


def fit_round(strategy, cm, rnd, answers, finish=True):
    """configure_fit, aggregate the given per-partition outcomes (weights or exceptions),
    then (no client evaluation) end the round as Flower's server would."""
    instructions = strategy.configure_fit(rnd, strategy.parameters, cm)
    results, failures = [], []
    for link, _ in instructions:
        outcome = answers[link.partition]
        if isinstance(outcome, BaseException):
            failures.append(outcome)
        else:
            results.append((link, outcome))
    out = strategy.aggregate_fit(rnd, results, failures)
    if finish:
        assert strategy.configure_evaluate(rnd, strategy.parameters, cm) == []
    return out


def test_failures_are_counted_and_left_to_the_strategy():
    strategy, cm, rounds = setup(n_clients=3)
    params, _ = fit_round(
        strategy,
        cm,
        1,
        {
            0: fit_res([np.ones(3, np.float32)]),
            1: fit_res([np.full(3, 3.0, np.float32)]),
            2: ValueError("client crashed"),
        },
    )
    np.testing.assert_allclose(parameters_to_ndarrays(params)[0], 2.0)  # FedAvg of the two answers
    assert [(r["round"], r["fit_clients"], r["fit_failures"]) for r in rounds] == [(1, 2, 1)]


def test_without_accept_failures_fedavg_skips_the_round():
    strategy, cm, _ = setup(n_clients=2, accept_failures=False)
    params, _ = fit_round(
        strategy, cm, 1, {0: fit_res([np.ones(3, np.float32)]), 1: ValueError("x")}
    )
    assert params is None and strategy.recorder.current["aggregated"] is False
    np.testing.assert_array_equal(strategy.final_weights()[0], 0.0)  # unchanged global model


def test_a_round_where_every_client_fails_ends_the_run_as_failed():
    strategy, cm, rounds = setup(n_clients=2)
    with pytest.raises(RunEnded) as ended:
        fit_round(strategy, cm, 1, {0: ValueError("Message: disk full'>"), 1: ValueError("boom")})
    assert ended.value.status == "failed"
    assert (
        str(ended.value)
        == "round 1: all 2 sampled clients failed, nothing to aggregate (e.g. ValueError: boom)"
    )
    assert (
        rounds[-1]["round"] == 1
        and rounds[-1]["fit_failures"] == 2
        and rounds[-1]["fit_clients"] == 0
    )


def test_divergence_keeps_the_last_good_model():
    strategy, cm, rounds = setup(n_clients=2)
    good = [np.full(3, 0.5, np.float32)]
    fit_round(strategy, cm, 1, {0: fit_res(good), 1: fit_res(good)})
    with pytest.raises(RunEnded) as ended:
        fit_round(
            strategy, cm, 2, {0: fit_res([np.array([1, np.nan, 1], np.float32)]), 1: fit_res(good)}
        )
    assert ended.value.status == "diverged" and "NaN or infinite parameters" in str(ended.value)
    np.testing.assert_array_equal(strategy.final_weights()[0], good[0])
    assert rounds[-1]["round"] == 2


def test_clients_reporting_divergence_are_failures_and_all_diverged_ends_the_run():
    strategy, cm, _ = setup(n_clients=2)
    report = fit_res([], n=0, diverged="client 0, round 1: training loss became nan")
    params, _ = fit_round(strategy, cm, 1, {0: report, 1: fit_res([np.ones(3, np.float32)])})
    np.testing.assert_array_equal(parameters_to_ndarrays(params)[0], 1.0)  # only the finite client
    assert (
        strategy.recorder.current["fit_diverged"] == 1
        and strategy.recorder.current["fit_failures"] == 1
    )
    with pytest.raises(RunEnded) as ended:
        fit_round(strategy, cm, 2, {0: report, 1: report})
    assert ended.value.status == "diverged"
    assert "local training diverged on all 2 clients that answered" in str(ended.value)
    np.testing.assert_array_equal(strategy.final_weights()[0], 1.0)


def test_a_non_finite_test_loss_is_divergence():
    strategy, cm, _ = setup(n_clients=1)
    strategy.inner.evaluate_fn = lambda rnd, weights, config: (float("inf"), {"accuracy": 0.1})
    good = [np.ones(3, np.float32)]
    fit_round(strategy, cm, 1, {0: fit_res(good)})
    with pytest.raises(RunEnded) as ended:
        strategy.evaluate(1, strategy.parameters)
    assert ended.value.status == "diverged"
    np.testing.assert_array_equal(strategy.final_weights()[0], 0.0)  # back to the initial model


def test_stragglers_never_reach_the_client():
    strategy, cm, _ = setup(n_clients=4, straggler_rate=0.5)
    instructions = strategy.configure_fit(1, strategy.parameters, cm)
    dropped = [link for link, _ in instructions if link.dropped]
    assert {link.partition for link in dropped} == stragglers(0, 1, [0, 1, 2, 3], 0.5)
    assert len(dropped) == 2
    for link, ins in instructions:
        if link.dropped:
            with pytest.raises(
                StragglerTimeout, match=f"client {link.partition} dropped out of round 1"
            ):
                link.fit(ins, None, 1)
            assert link.inner.calls == 0


def test_an_unfinished_round_does_not_replace_the_kept_model():
    strategy, cm, rounds = setup(n_clients=1)
    fit_round(strategy, cm, 1, {0: fit_res([np.ones(3, np.float32)])})
    fit_round(strategy, cm, 2, {0: fit_res([np.full(3, 7.0, np.float32)])}, finish=False)
    strategy.stop.set()  # interrupted before round 2 was evaluated and recorded
    assert [r["round"] for r in rounds] == [1]
    np.testing.assert_array_equal(strategy.final_weights()[0], 1.0)


def test_a_stopped_run_abandons_waiting_calls_and_hooks():
    strategy, cm, _ = setup(n_clients=1)
    release = threading.Event()
    link = ClientLink(Proxy("1", answer=lambda ins: release.wait(30)), strategy.stop, 0)
    threading.Timer(0.3, strategy.stop.set).start()
    t0 = time.perf_counter()
    with pytest.raises(RunStopped):
        link.fit(None, None, 1)
    assert time.perf_counter() - t0 < 2
    with pytest.raises(RunStopped):
        strategy.configure_fit(1, strategy.parameters, cm)
    release.set()


def test_fault_draws_are_seeded_and_have_the_asked_rates():
    draws = [fit_fails(0, r, p, 0.3) for r in range(1, 51) for p in range(20)]
    assert 0.25 < np.mean(draws) < 0.35
    assert draws == [fit_fails(0, r, p, 0.3) for r in range(1, 51) for p in range(20)]
    assert draws != [fit_fails(1, r, p, 0.3) for r in range(1, 51) for p in range(20)]
    assert not any(fit_fails(0, 1, p, 0.0) for p in range(100))
    assert all(fit_fails(0, 1, p, 1.0) for p in range(100))
    assert len(stragglers(0, 3, list(range(10)), 0.3)) == 3
    assert stragglers(0, 3, list(range(10)), 0.3) != stragglers(0, 4, list(range(10)), 0.3)
    assert stragglers(0, 3, list(range(10)), 0.0) == set()


@pytest.fixture
def client_for(make_cfg):
    from hydra.utils import instantiate

    from fedexp.data import partition
    from fedexp.data.datasets import load_digits

    def build(*overrides):
        cfg = make_cfg("num_clients=3", *overrides)
        d = load_digits(32, 0.2, 0)
        parts = partition(d.y_train, instantiate(cfg.partitioning.partitioner), 0.1, 0)
        spec = ClientSpec(
            cfg=OmegaConf.to_container(cfg, resolve=True), data_ref=None, device="cpu", threads=1
        )
        client = FedexpClient(
            spec, {"x": d.x_train, "y": d.y_train, "train": parts.train, "val": parts.val}
        )
        torch.manual_seed(0)
        weights = [v.numpy() for v in client.model.state_dict().values()]
        config = {
            "partition_id": 1,
            "server_round": 1,
            "seed": 0,
            "local_epochs": 1,
            "batch_size": 32,
            "lr": float(cfg.optimizer.lr),
        }
        return client, weights, config

    return build


def test_a_diverging_client_reports_it_instead_of_weights(client_for):
    client, weights, config = client_for("optimizer=sgd", "optimizer.lr=1e6")
    out_weights, n, metrics = client.fit(weights, config)
    assert out_weights == [] and n == 0
    assert metrics["diverged"].startswith("client 1, round 1: training loss became nan")


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_an_injected_failure_raises_in_the_client(client_for):
    client, weights, config = client_for("faults.client_failure_rate=1.0")
    with pytest.raises(InjectedClientFailure, match="client 1 failed on purpose in round 1"):
        client.fit(weights, config)
    client, weights, config = client_for("faults.client_failure_rate=0.0")
    out_weights, n, metrics = client.fit(weights, config)
    assert n > 0 and "diverged" not in metrics and all(np.isfinite(w).all() for w in out_weights)
