"""Every option of every config group composes and builds its object."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.server.strategy import Strategy
from hydra.utils import instantiate

from fedexp.federated.strategies import strategy_node
from fedexp.main import config_dir

CONF = Path(config_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("name", options("model"))
@pytest.mark.parametrize("dataset", ["digits", "cifar10", "mnist"])
def test_models_build_for_every_dataset(make_cfg, name, dataset):
    cfg = make_cfg(f"model={name}", f"dataset={dataset}")
    model = instantiate(cfg.model)
    x = torch.zeros(2, cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
    assert model(x).shape == (2, cfg.dataset.num_classes)


@pytest.mark.parametrize("name", options("strategy"))
def test_strategies_build(make_cfg, name):
    from fedexp.federated.strategies import build

    cfg = make_cfg(f"strategy={name}")
    # FedAdam, FedYogi and FedAdagrad need the initial model, which fedexp always passes
    assert isinstance(build(cfg, instantiate(cfg.model)), Strategy)


@pytest.mark.parametrize("name", options("optimizer"))
def test_optimizers_build(make_cfg, name):
    cfg = make_cfg(f"optimizer={name}")
    opt = instantiate(cfg.optimizer)(torch.nn.Linear(2, 2).parameters())
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr


@pytest.mark.parametrize("name", options("partitioning"))
def test_partitioners_build(make_cfg, name):
    from flwr_datasets.partitioner import Partitioner

    cfg = make_cfg(f"partitioning={name}", "num_clients=7")
    # (most partitioners can only count their partitions once they hold a dataset)
    assert isinstance(instantiate(cfg.partitioning.partitioner), Partitioner)
    assert cfg.partitioning.partitioner.num_partitions == 7


@pytest.mark.parametrize("name", options("dataset"))
def test_datasets_declare_what_models_need(make_cfg, name):
    cfg = make_cfg(f"dataset={name}")
    d = cfg.dataset
    assert d.channels in (1, 3) and d.image_size > 0 and d.num_classes > 1
    assert len(d.mean) == len(d.std) == d.channels
    assert "_target_" in d.loader


@pytest.mark.parametrize("name", options("device"))
def test_devices(make_cfg, name):
    from fedexp.workload import resolve_device

    cfg = make_cfg(f"device={name}")
    assert cfg.device.client_cpus >= 1
    if name != "cuda":
        assert resolve_device(cfg.device.type).type in ("cpu", "cuda")


def test_tutorial_experiment_sets_the_tutorial(make_cfg):
    cfg = make_cfg("experiment=tutorial")
    assert cfg.dataset.name == "cifar10" and cfg.model._target_ == "fedexp.models.CNN"
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.batch_size == 32
    assert (cfg.num_clients, cfg.num_rounds, cfg.local_epochs) == (10, 5, 1)
    s = cfg.strategy
    assert (s.fraction_fit, s.fraction_evaluate) == (1.0, 0.5)
    assert (s.min_fit_clients, s.min_evaluate_clients, s.min_available_clients) == (10, 5, 10)
    assert (cfg.centralized.epochs, cfg.centralized.partition) == (5, 0)


def test_command_line_wins_over_experiment(make_cfg):
    cfg = make_cfg(
        "experiment=tutorial", "num_rounds=2", "strategy.min_fit_clients=3", "dataset=digits"
    )
    assert (
        cfg.num_rounds == 2 and cfg.strategy.min_fit_clients == 3 and cfg.dataset.name == "digits"
    )


def test_fraction_fit_is_not_a_no_op_by_default(make_cfg):
    """Flower samples max(int(n * fraction_fit), min_fit_clients) clients."""
    cfg = make_cfg("strategy.fraction_fit=0.5")
    strategy = instantiate(strategy_node(cfg.strategy))
    assert strategy.num_fit_clients(cfg.num_clients)[0] == 5
    assert strategy.num_evaluation_clients(cfg.num_clients)[0] == 5
    assert instantiate(strategy_node(make_cfg().strategy)).num_fit_clients(10)[0] == 10


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_auto_backend_runs_small_runs_inline_and_the_rest_on_ray(make_cfg, monkeypatch):
    from fedexp.federated import examples_trained
    from fedexp.federated.simulation import SWEEP_ADDRESS, uses_ray
    from fedexp.workload import Workload

    monkeypatch.delenv(SWEEP_ADDRESS, raising=False)
    cfg = make_cfg()
    examples = examples_trained(cfg, Workload.build(cfg))
    assert examples == sum(len(t) for t in Workload.build(cfg).parts.train) * cfg.num_rounds
    assert not uses_ray(cfg.simulation, examples)  # the default run: inline
    assert uses_ray(make_cfg("simulation.inline_max_examples=100").simulation, examples)
    assert uses_ray(make_cfg("simulation.ray_address=auto").simulation, examples)
    assert uses_ray(make_cfg("simulation.backend=ray").simulation, 0)
    assert not uses_ray(make_cfg("simulation.backend=inline").simulation, 10**9)
    assert (
        examples_trained(make_cfg("local_epochs=3", "num_rounds=2"), Workload.build(cfg))
        == examples * 3 * 2 // 5
    )
    monkeypatch.setenv(SWEEP_ADDRESS, "127.0.0.1:1")  # the Ray of a sweep whose jobs run at once
    assert uses_ray(cfg.simulation, examples)
