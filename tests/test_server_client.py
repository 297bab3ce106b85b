"""Server-side initialisation, what the server sends clients each round and what they do
with it (learning rate, epochs, batch size, FedProx's mu, q-FedAvg's loss), what travels
after the model's arrays, and the dtypes of the aggregated global model."""

from __future__ import annotations

import math
from typing import ClassVar

import flower_inprocess
import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAdam, FedAvg, FedMedian
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fedexp.federated import build_strategy
from fedexp.federated import client as client_module
from fedexp.federated.client import ClientSpec, FedexpClient
from fedexp.federated.server import PartitionClientManager, ServerStrategy
from fedexp.federated.strategies import strategy_node
from fedexp.models import CNN, get_weights
from fedexp.training import Normalizer, evaluate
from fedexp.workload import Workload


def round_zero_weights(cfg) -> list[np.ndarray]:
    work = Workload.build(cfg)
    strategy = ServerStrategy(
        build_strategy(work, work.new_model()), PartitionClientManager(0), print
    )
    return parameters_to_ndarrays(strategy.initialize_parameters(client_manager=None))


def test_round_zero_parameters_are_the_seeded_model(make_cfg):
    torch.manual_seed(3)
    seeded = get_weights(CNN(channels=1, image_size=32, num_classes=10))
    got = round_zero_weights(make_cfg("seed=3"))
    assert len(got) == len(seeded)
    for a, b in zip(got, seeded):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    other = round_zero_weights(make_cfg("seed=4"))
    assert not np.array_equal(other[0], seeded[0])


def test_init_checkpoint_is_the_round_zero_model(make_cfg, tmp_path):
    torch.manual_seed(99)
    saved = CNN(channels=1, image_size=32, num_classes=10)
    torch.save(saved.state_dict(), tmp_path / "model.pt")
    got = round_zero_weights(make_cfg(f"init_checkpoint={tmp_path / 'model.pt'}", "seed=3"))
    for a, b in zip(got, get_weights(saved)):
        np.testing.assert_array_equal(a, b)


class RecordingClient(FedexpClient):
    """A client that keeps every instruction it received (in this process)."""

    received: ClassVar[list[tuple[str, dict]]] = []

    def fit(self, parameters, config):
        RecordingClient.received.append(("fit", dict(config)))
        return super().fit(parameters, config)

    def evaluate(self, parameters, config):
        RecordingClient.received.append(("evaluate", dict(config)))
        return super().evaluate(parameters, config)


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_clients_train_with_what_the_server_sends(make_cfg, monkeypatch):
    cfg = make_cfg(
        "num_clients=3",
        "num_rounds=2",
        "local_epochs=2",
        "batch_size=16",
        "optimizer=sgd",
        "optimizer.lr=0.05",
        "optimizer.momentum=0.9",
        "optimizer.weight_decay=0.001",
        "strategy=fedprox",
        "strategy.proximal_mu=0.5",
        "seed=5",
        "eval_batch_size=100",
    )
    # The clients' own copy of the config disagrees with the server: they must follow the server.
    stale = OmegaConf.to_container(cfg, resolve=True)
    stale.update(local_epochs=7, batch_size=99)
    stale["optimizer"]["lr"] = 9.0
    trained = []

    def spy_train(model, x, y, indices, **kw):
        opt = kw["optimizer"]
        trained.append(
            {
                "n": len(indices),
                "epochs": kw["epochs"],
                "batch_size": kw["batch_size"],
                "proximal_mu": kw["hooks"].mu,
                "optimizer": type(opt).__name__,
                **{k: opt.param_groups[0][k] for k in ("lr", "momentum", "weight_decay")},
            }
        )
        return real_train(model, x, y, indices, **kw)

    real_train = client_module.train
    monkeypatch.setattr(client_module, "train", spy_train)
    RecordingClient.received = []
    _strategy, rounds, _ = flower_inprocess.run(cfg, client_cls=RecordingClient, client_cfg=stale)

    fits = [c for kind, c in RecordingClient.received if kind == "fit"]
    evals = [c for kind, c in RecordingClient.received if kind == "evaluate"]
    assert [c["server_round"] for c in fits] == [1, 1, 1, 2, 2, 2]
    assert sorted(c["partition_id"] for c in fits) == [0, 0, 1, 1, 2, 2]
    for c in fits:
        assert (c["local_epochs"], c["batch_size"], c["lr"], c["seed"], c["proximal_mu"]) == (
            2,
            16,
            0.05,
            5,
            0.5,
        )
    assert [c["server_round"] for c in evals] == [1, 2] and all(
        c["eval_batch_size"] == 100 for c in evals
    )
    work = Workload.build(cfg)
    assert sorted(t["n"] for t in trained) == sorted(2 * [len(t) for t in work.parts.train])
    for t in trained:
        assert t == {
            **t,
            "epochs": 2,
            "batch_size": 16,
            "proximal_mu": 0.5,
            "optimizer": "SGD",
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 0.001,
        }
    # Clients report their training loss; rounds carry its example-weighted mean.
    assert all(math.isfinite(r["train_loss"]) and 0 <= r["train_accuracy"] <= 1 for r in rounds)


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_round_zero_evaluation_is_the_seeded_model_on_the_test_set(make_cfg):
    cfg = make_cfg("num_clients=2", "num_rounds=1", "seed=2")
    strategy, _, _ = flower_inprocess.run(cfg)
    work = Workload.build(cfg)
    s = evaluate(
        work.new_model(),
        work.data.x_test,
        work.data.y_test,
        None,
        batch_size=512,
        normalize=Normalizer(cfg.dataset.mean, cfg.dataset.std, torch.device("cpu")),
    )
    assert strategy.initial == {
        "test_loss": pytest.approx(s["loss"], abs=1e-9),
        "test_accuracy": s["accuracy"],
    }


@pytest.fixture(scope="module")
def one_client(tmp_path_factory):
    """A client's data and starting point; `spec_for(method)` gives the spec of a client
    whose half of the method is `strategy=method`'s."""
    from conftest import compose_cfg

    base = ("num_clients=4", "optimizer=sgd", "optimizer.lr=0.05")
    work = Workload.build(compose_cfg(*base))
    data = {
        "x": work.data.x_train,
        "y": work.data.y_train,
        "train": work.parts.train,
        "val": work.parts.val,
    }

    def spec_for(method: str = "fedavg") -> ClientSpec:
        return ClientSpec(
            OmegaConf.to_container(compose_cfg(*base, f"strategy={method}"), resolve=True),
            None,
            "cpu",
            1,
        )

    return work, spec_for, data, get_weights(work.new_model())


def fit_config(**extra):
    return {
        "partition_id": 1,
        "server_round": 1,
        "local_epochs": 2,
        "batch_size": 16,
        "lr": 0.05,
        "seed": 0,
        **extra,
    }


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_fedprox_mu_changes_client_updates(one_client, make_cfg):
    _work, spec_for, data, global_w = one_client
    # proximal_mu as Flower's FedProx strategy puts it into every fit instruction
    sent = instantiate(
        strategy_node(
            make_cfg("strategy=fedprox", "strategy.proximal_mu=1.0", "num_clients=1").strategy
        ),
        on_fit_config_fn=lambda rnd: fit_config(),
    )
    manager = PartitionClientManager(0)
    manager.register(flower_inprocess.DirectProxy("1", None))
    ((_, ins),) = sent.configure_fit(1, ndarrays_to_parameters(global_w), manager)
    assert ins.config["proximal_mu"] == 1.0

    def update(config, method="fedprox"):
        w, _n, _metrics = FedexpClient(spec_for(method), data).fit(global_w, config)
        return np.concatenate([(a - g).ravel() for a, g in zip(w, global_w)])

    plain, again, prox = (
        update(fit_config(), "fedavg"),
        update(fit_config(proximal_mu=0.0)),
        update(ins.config),
    )
    np.testing.assert_array_equal(plain, again)  # mu = 0 is FedAvg's client, bit for bit
    assert not np.allclose(plain, prox)
    # the proximal term pulls the client towards the global model
    assert np.linalg.norm(prox) < 0.9 * np.linalg.norm(plain)


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_qfedavgs_client_reports_its_loss_before_training(one_client):
    work, spec_for, data, global_w = one_client
    _, _, plain = FedexpClient(spec_for("fedavg"), data).fit(global_w, fit_config())
    assert "loss_before_fit" not in plain
    _, _, asked = FedexpClient(spec_for("qfedavg"), data).fit(global_w, fit_config())
    s = evaluate(
        work.new_model(),
        data["x"],
        data["y"],
        data["train"][1],
        batch_size=512,
        normalize=work.normalizer(),
    )
    assert asked["loss_before_fit"] == pytest.approx(s["loss"])
    assert asked["train_loss"] == plain["train_loss"]  # asking does not change the training


def _fit_res(weights, n=10):
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), n, {})


@pytest.mark.parametrize("inner", ["fedavg", "fedadam", "fedmedian"])
def test_aggregated_model_keeps_the_models_dtypes(inner):
    """Strategies do float math on every entry (FedAdam returns float64 weights; FedAvg's
    in-place mean multiplies int64 entries by int(0.5) = 0). The server's global model keeps
    the model's dtypes, and integer buffers (BatchNorm's batch counter) become the clients'
    example-weighted mean, rounded."""
    init = [np.zeros(3, np.float32), np.array(0, np.int64)]
    cls = {"fedavg": FedAvg, "fedadam": FedAdam, "fedmedian": FedMedian}[inner]
    strategy = ServerStrategy(
        cls(initial_parameters=ndarrays_to_parameters(init)), PartitionClientManager(0), print
    )
    strategy.initialize_parameters(client_manager=None)
    strategy.recorder.open(1)  # normally opened by configure_fit
    results = [
        (
            flower_inprocess.DirectProxy(str(i), None),
            _fit_res([np.full(3, 0.5 * (i + 1), np.float32), np.array(3 + 2 * i, np.int64)], n),
        )
        for i, n in enumerate([10, 30])
    ]
    params, _ = strategy.aggregate_fit(1, results, [])
    weights = parameters_to_ndarrays(params)
    assert [w.dtype for w in weights] == [np.float32, np.int64]
    assert int(weights[1]) == 4  # (10 * 3 + 30 * 5) / 40 = 4.5, rounded to even
    if inner == "fedavg":
        np.testing.assert_allclose(weights[0], 0.875)
    assert [w.dtype for w in strategy.final_weights()] == [np.float32, np.int64]


def test_a_float_only_model_passes_through_untouched():
    init = [np.zeros(3, np.float32)]
    strategy = ServerStrategy(
        FedAvg(initial_parameters=ndarrays_to_parameters(init)), PartitionClientManager(0), print
    )
    strategy.initialize_parameters(client_manager=None)
    strategy.recorder.open(1)
    results = [(flower_inprocess.DirectProxy("0", None), _fit_res([np.ones(3, np.float32)]))]
    params, _ = strategy.aggregate_fit(1, results, [])
    assert params.tensors == results[0][1].parameters.tensors
