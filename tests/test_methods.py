"""The methods on problems whose answers are known, with the real client and strategy code.

Federated least squares: each client holds rows (a, b) of its own regression problem and
trains `torch.nn.Linear` with MSE through fedexp's own client (`FedexpClient`, the
method's client half, the training loop) and strategy (`ServerStrategy` around the
method's strategy), run by Flower's server loop in this process (tests/flower_inprocess.py).
Full-batch steps make local training plain gradient descent, so where each method must
end can be computed in closed form:

- FedAvg with several local steps on clients whose Hessians differ converges to a fixed
  point that is not the global optimum ("client drift"); SCAFFOLD and FedDyn remove the
  drift and reach the optimum.
- When clients take different numbers of local steps, FedAvg weights client i by
  p_i * tau_i and so optimises a skewed objective; FedNova normalises and optimises the
  real one, sum_i p_i F_i.
"""

from __future__ import annotations

import itertools

import flower_inprocess
import numpy as np
import pytest
import torch
from flwr.common import (
    Code,
    FitRes,
    RecordDict,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.strategy import FedAvg
from recording_methods import logged

from fedexp.data import ImageData, Partitions
from fedexp.federated.methods.base import ClientState
from fedexp.federated.methods.fednova import local_work
from fedexp.federated.payload import ModelLayout, with_extras
from fedexp.federated.server import PartitionClientManager, ServerStrategy
from fedexp.workload import Workload

LINEAR = (
    "model._target_=torch.nn.Linear",
    "~model.channels",
    "~model.image_size",
    "~model.batch_norm",
    "~model.num_classes",
    "+model.in_features=2",
    "+model.out_features=1",
    "+model.bias=false",
    "loss._target_=torch.nn.MSELoss",
    "optimizer=sgd",
    "batch_size=1000",
    "strategy.fraction_evaluate=0",
    "strategy.min_evaluate_clients=0",
)


def least_squares(make_cfg, blocks, *overrides):
    """(cfg, Workload) of a federated least-squares problem: client i holds blocks[i] = (A, b)."""
    cfg = make_cfg(*LINEAR, f"num_clients={len(blocks)}", *overrides)
    x = np.concatenate([a for a, _ in blocks]).astype(np.float32)
    y = np.concatenate([b for _, b in blocks]).astype(np.float32)[:, None]
    ends = np.cumsum([len(b) for _, b in blocks])
    train = [np.arange(e - len(b), e) for e, (_, b) in zip(ends, blocks)]
    parts = Partitions(train, [np.array([], dtype=np.int64) for _ in blocks])
    return cfg, Workload(cfg, ImageData(x, y, x, y, []), parts, torch.device("cpu"))


def final_weights(cfg, work) -> np.ndarray:
    strategy, rounds, _ = flower_inprocess.run(cfg, work=work)
    assert len(rounds) == cfg.num_rounds and all(
        r["fit_clients"] == cfg.num_clients for r in rounds
    )
    return strategy.final_weights()[0].ravel().astype(np.float64)


@pytest.fixture(scope="module")
def drift_problem():
    """Four clients, same size, different feature scales (Hessians) and local optima."""
    rng = np.random.default_rng(0)
    scales = [(3.0, 0.5), (0.5, 3.0), (1.0, 1.0), (2.0, 0.3)]
    optima = [(1.0, -1.0), (-2.0, 1.0), (0.5, 2.0), (3.0, 0.0)]
    blocks = []
    for s, w in zip(scales, optima):
        a = rng.normal(size=(10, 2)) * np.array(s)
        blocks.append((a, a @ np.array(w) + 0.1 * rng.normal(size=10)))
    # MSELoss: F_i(w) = |A_i w - b_i|^2 / n_i; the global objective is their mean.
    hessians = [2 * a.T @ a / len(b) for a, b in blocks]
    local = [np.linalg.lstsq(a, b, rcond=None)[0] for a, b in blocks]
    optimum = np.linalg.solve(sum(hessians), sum(h @ w for h, w in zip(hessians, local)))
    return blocks, hessians, local, optimum


LR, STEPS = 0.02, 10


def fedavg_fixed_point(hessians, local) -> np.ndarray:
    """Where FedAvg's iteration x <- mean_i [M_i^K x + (I - M_i^K) w_i] stops, M_i = I - lr H_i."""
    drift = [np.eye(2) - np.linalg.matrix_power(np.eye(2) - LR * h, STEPS) for h in hessians]
    return np.linalg.solve(sum(drift), sum(d @ w for d, w in zip(drift, local)))


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_fedavg_stops_at_a_biased_point(make_cfg, drift_problem):
    blocks, hessians, local, optimum = drift_problem
    cfg, work = least_squares(
        make_cfg,
        blocks,
        "strategy=fedavg",
        f"optimizer.lr={LR}",
        f"local_epochs={STEPS}",
        "num_rounds=40",
    )
    w = final_weights(cfg, work)
    expected = fedavg_fixed_point(hessians, local)
    np.testing.assert_allclose(w, expected, atol=1e-5)
    assert np.linalg.norm(expected - optimum) > 0.2  # the drift is real, not rounding


@pytest.mark.slow  # tens of rounds of the real client and strategy code
@pytest.mark.parametrize(
    "method,extra,rounds,tolerance",
    [
        ("scaffold", (), 60, 1e-5),
        ("feddyn", ("strategy.alpha=1.0",), 100, 1e-3),  # converges linearly, more slowly
    ],
)
def test_scaffold_and_feddyn_reach_the_global_optimum(
    make_cfg, drift_problem, method, extra, rounds, tolerance
):
    blocks, _, _, optimum = drift_problem
    cfg, work = least_squares(
        make_cfg,
        blocks,
        f"strategy={method}",
        *extra,
        f"optimizer.lr={LR}",
        f"local_epochs={STEPS}",
        f"num_rounds={rounds}",
    )
    np.testing.assert_allclose(final_weights(cfg, work), optimum, atol=tolerance)


@pytest.fixture(scope="module")
def steps_problem():
    """Two clients of one feature: 80 rows with b = +1 and 20 rows with b = -1. Every row
    of a client is the same, so each batch of 10 gives the client's exact gradient, and
    with 10 local epochs client 0 takes tau_0 = 80 steps and client 1 tau_1 = 20."""
    blocks = [
        (np.ones((80, 2)) * [1.0, 0.0], np.ones(80)),
        (np.ones((20, 2)) * [1.0, 0.0], -np.ones(20)),
    ]
    p, tau, b = np.array([0.8, 0.2]), np.array([80, 20]), np.array([1.0, -1.0])
    return blocks, p, tau, b


@pytest.mark.slow  # tens of rounds of the real client and strategy code
def test_fedavg_optimises_a_skewed_objective_and_fednova_the_real_one(make_cfg, steps_problem):
    blocks, p, tau, b = steps_problem
    lr = 0.001
    # One step moves x to b_i + (1 - 2 lr)(x - b_i): after tau_i steps the share of x left is q_i.
    q = (1 - 2 * lr) ** tau
    right = float(p @ b)  # argmin sum_i p_i F_i
    skewed = float(p * tau @ b / (p @ tau))  # argmin sum_i p_i tau_i F_i
    fedavg_point = float(p * (1 - q) @ b / (p @ (1 - q)))  # FedAvg's exact fixed point
    fednova_point = float(p * (1 - q) / tau @ b / (p @ ((1 - q) / tau)))  # FedNova's
    assert abs(fedavg_point - skewed) < 0.05 and abs(fednova_point - right) < 0.05
    common = (f"optimizer.lr={lr}", "local_epochs=10", "batch_size=10", "num_rounds=60")
    results = {}
    for method in ("fedavg", "fednova"):
        cfg, work = least_squares(make_cfg, blocks, f"strategy={method}", *common)
        results[method] = final_weights(cfg, work)[0]
    assert results["fedavg"] == pytest.approx(fedavg_point, abs=1e-3)
    assert results["fednova"] == pytest.approx(fednova_point, abs=1e-3)
    assert abs(results["fednova"] - right) < 0.05 < 0.2 < abs(results["fedavg"] - right)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_fednova_local_work_is_the_momentum_weighted_step_count(momentum):
    """With a constant gradient g (a linear loss), tau SGD steps with heavy-ball momentum
    move the weights by exactly lr * g * ||a||_1: FedNova's normaliser."""
    w = torch.nn.Parameter(torch.zeros(3))
    g = torch.tensor([1.0, -2.0, 0.5])
    opt = torch.optim.SGD([w], lr=0.1, momentum=momentum)
    for _ in range(17):
        opt.zero_grad()
        (w * g).sum().backward()
        opt.step()
    np.testing.assert_allclose(
        (-w.detach() / (0.1 * g)).numpy(), local_work(17, momentum), rtol=1e-5
    )
    assert local_work(17, 0.0) == 17


def test_client_state_round_trips_named_arrays():
    records = RecordDict()
    state = ClientState(records)
    assert state.get("scaffold.c_i") is None
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5])]
    state.set("scaffold.c_i", arrays)
    again = ClientState(records).get("scaffold.c_i")  # a later call sees the same Context.state
    assert [a.dtype for a in again] == [np.float32, np.float64]
    for a, b in zip(arrays, again):
        np.testing.assert_array_equal(a, b)
    assert state.nbytes() >= arrays[0].nbytes + arrays[1].nbytes


def test_layout_marks_trained_parameters_not_buffers():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    layout = ModelLayout.of(model)
    assert layout.names == tuple(model.state_dict())
    trained = [n for n, t in zip(layout.names, layout.trainable) if t]
    assert trained == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert layout.dtypes[layout.names.index("1.num_batches_tracked")] == np.int64
    weights = [np.ones(s, d) for s, d in zip(layout.shapes, layout.dtypes)]
    model_part, extras = layout.split([*weights, np.zeros(2)])
    assert len(model_part) == len(layout) and len(extras) == 1
    with pytest.raises(ValueError, match="the model alone has"):
        layout.split(weights[:-1])


def test_a_strategy_that_reads_no_extras_gets_the_model_alone():
    """A client half may send arrays after the weights; Flower's FedAvg must average the
    model only (its own result would otherwise carry the extras along)."""
    init = [np.zeros(3, np.float32)]
    strategy = ServerStrategy(
        FedAvg(initial_parameters=ndarrays_to_parameters(init)),
        PartitionClientManager(0),
        lambda r: None,
    )
    strategy.initialize_parameters(client_manager=None)
    strategy.recorder.open(1)
    sent = with_extras(ndarrays_to_parameters([np.ones(3, np.float32)]), [np.full(5, 9.0)])
    res = FitRes(Status(Code.OK, ""), sent, 10, {})
    params, _ = strategy.aggregate_fit(1, [(flower_inprocess.DirectProxy("0", None), res)], [])
    (weights,) = parameters_to_ndarrays(params)
    np.testing.assert_array_equal(weights, np.ones(3, np.float32))


def test_a_clients_state_carries_over_between_the_rounds_it_is_sampled_in(run_inline, tmp_path):
    """A real simulation through Flower's engine: each SCAFFOLD client finds in its state,
    at the start of a round, exactly the control variate it left at the end of the last
    round it was sampled in; a client's first round finds none. Clients inline; that Ray's
    workers hand the same state on is test_reproducibility.py's part (SCAFFOLD, half the
    clients per round, on the shared cluster: results bit-identical to inline clients')."""
    res, _ = run_inline(
        "strategy=scaffold",
        "optimizer=sgd",
        "num_clients=4",
        "num_rounds=4",
        "strategy.fraction_fit=0.5",
        "strategy.fraction_evaluate=0",
        "strategy.min_evaluate_clients=0",
        "strategy.client._target_=recording_methods.RecordingScaffoldClient",
        f"+strategy.client.log_dir={tmp_path}",
        name="scaffold_state",
    )
    assert res["status"] == "completed"
    fits = logged(tmp_path)
    assert len(fits) == 8 and len({f["partition"] for f in fits}) >= 3
    gaps = []
    for partition in {f["partition"] for f in fits}:
        mine = sorted((f for f in fits if f["partition"] == partition), key=lambda f: f["round"])
        assert mine[0]["found"] is None
        for before, after in itertools.pairwise(mine):
            assert after["found"] == before["left"] and before["nonzero"]
            gaps.append(after["round"] - before["round"])
    assert gaps and max(gaps) >= 2  # kept across a round in which the client was not sampled
