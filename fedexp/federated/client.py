"""The simulated client: a Flower NumPyClient that trains on the partition it is told.

The training arrays and all partitions' index lists reach each Ray worker once, through
Ray's object store (zero-copy for numpy), and stay cached in that worker process with the
model and what the config builds (`ClientKit`); inline clients (simulation.py's
`inline_clients`) share the driver's arrays and one kit. A client object itself is cheap
and is made anew for every message, as Flower expects. The server names the partition in each
instruction (`partition_id`), so which data a virtual client holds never depends on
Flower's random node ids (see server/sampling.py).

What every method's client does is here: injected faults, the seeded streams, the
optimizer, the training loop, divergence checks. What a method changes comes from its
client half (`strategy.client` in the config, see methods/base.py), whose hooks run inside
`fit` and `evaluate` with the client's own state (Flower's `Context.state`, or a folder
of the run directory: `simulation.client_state`).

A client whose local training diverges (NaN/inf loss or weights) does not raise: it
answers with `metrics["diverged"]` and no weights, so the server can tell divergence from
a crash, and its state stays as it was.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, RecordDict
from hydra.utils import instantiate

from ..models import get_weights, set_weights
from ..training import BatchAugment, DivergedError, Normalizer, evaluate, first_steps, train
from ..workload import loss_from
from .faults import InjectedClientFailure, fit_fails
from .methods.base import ClientMethod, ClientState, DiskClientState, LocalEvaluation, LocalFit
from .payload import ModelLayout

_WORKER: dict[str, Any] = {}  # per worker process: what `ClientKit.build` made, per run


@dataclass
class ClientSpec:
    """What every client needs; small, because Flower pickles it with each message."""

    cfg: dict  # resolved config (plain containers)
    data_ref: Any  # {"x", "y", "train", "val"}: a Ray ObjectRef of it, or (inline clients) itself
    device: str
    threads: int | None  # torch threads of a Ray worker (None: inline, the backend sets them)
    state_dir: str | None = None  # clients keep their state in files here, else in Context.state
    state_versions: int = 2  # per value kept in state_dir: one more than the checkpoints kept
    run: str = field(default_factory=lambda: uuid.uuid4().hex)  # what a worker's cache is for


def seed_for(seed: int, server_round: int, partition_id: int, salt: int = 0) -> int:
    """One independent, reproducible stream per (run seed, round, client)."""
    return int(
        np.random.SeedSequence([seed, server_round, partition_id, salt]).generate_state(1)[0]
    )


def method_factory(cfg: dict) -> Callable[[], ClientMethod]:
    """The configured client half (`strategy.client`), as a factory of fresh instances;
    FedAvg's plain client when the strategy names none (e.g. a user's own strategy)."""
    node = (cfg.get("strategy") or {}).get("client")
    if not node:
        return ClientMethod
    return instantiate(node, _partial_=True)


@dataclass
class ClientKit:
    """What a worker builds from the config once per run and every client it simulates
    shares: every message overwrites the model's weights before use."""

    model: torch.nn.Module
    layout: ModelLayout
    normalize: Normalizer
    criterion: Callable
    augment: BatchAugment | None
    new_method: Callable[[], ClientMethod]
    _spare: torch.nn.Module | None = None

    @classmethod
    def build(cls, cfg: dict, device: torch.device) -> ClientKit:
        model = instantiate(cfg["model"]).to(device)
        return cls(
            model,
            ModelLayout.of(model),
            Normalizer(cfg["dataset"]["mean"], cfg["dataset"]["std"], device),
            loss_from(cfg),
            BatchAugment.from_config(cfg["dataset"].get("augment")),
            method_factory(cfg),
        )

    def spare_model(self) -> torch.nn.Module:
        """A second model of the same shape (e.g. Ditto's personal model), made once."""
        if self._spare is None:
            self._spare = copy.deepcopy(self.model)
        return self._spare


def _worker_state(spec: ClientSpec) -> dict:
    """This worker's data and kit, made on its first message of the run."""
    if _WORKER.get("run") != spec.run:
        data = spec.data_ref
        if spec.threads is not None:  # a Ray worker
            import ray

            torch.set_num_threads(max(1, spec.threads))
            data = ray.get(data)
        _WORKER.clear()
        _WORKER.update(
            run=spec.run, data=data, kit=ClientKit.build(spec.cfg, torch.device(spec.device))
        )
    return _WORKER


def prepare(spec: ClientSpec) -> float:
    """Inline clients' start-up, before round 1 (a Ray worker's is worker.py): torch's
    lazy set-up and the run's kit. Returns the seconds it took."""
    start = time.perf_counter()
    first_steps()
    _worker_state(spec)
    return time.perf_counter() - start


class FedexpClient(NumPyClient):
    """Train/evaluate the global model on one partition, with settings sent by the server."""

    def __init__(
        self,
        spec: ClientSpec,
        data: dict,
        kit: ClientKit | None = None,
        state: RecordDict | None = None,
    ):
        """`data` holds x, y and every partition's train/val indices; a worker passes its
        cached `kit`, which is otherwise built from the config. `state` is the client's
        Flower `Context.state`, kept between the rounds it is sampled in."""
        self.spec, self.data = spec, data
        self.kit = kit or ClientKit.build(spec.cfg, torch.device(spec.device))
        self.model = self.kit.model
        self.records = state

    def _state(self, pid: int, server_round: int | None) -> ClientState:
        if self.spec.state_dir:
            return DiskClientState(
                Path(self.spec.state_dir) / str(pid), server_round, self.spec.state_versions
            )
        return ClientState(self.records)

    def get_parameters(self, config):
        return get_weights(self.model)

    def _evaluate(self, indices, batch_size: int) -> dict:
        return evaluate(
            self.model,
            self.data["x"],
            self.data["y"],
            indices,
            batch_size=batch_size,
            normalize=self.kit.normalize,
            criterion=self.kit.criterion,
        )

    def fit(self, parameters, config):
        pid, rnd, seed = (
            int(config["partition_id"]),
            int(config["server_round"]),
            int(config["seed"]),
        )
        rate = float(self.spec.cfg.get("faults", {}).get("client_failure_rate", 0.0))
        if fit_fails(seed, rnd, pid, rate):
            raise InjectedClientFailure(
                f"client {pid} failed on purpose in round {rnd} (faults.client_failure_rate={rate})"
            )
        weights, extras = self.kit.layout.split(parameters)
        set_weights(self.model, weights)
        train_idx = self.data["train"][pid]
        batch_eval = int(self.spec.cfg["eval_batch_size"])
        passes = count()

        def optimizer_for(model):
            return instantiate(self.spec.cfg["optimizer"], lr=float(config["lr"]))(
                model.parameters()
            )

        def train_locally(model, hooks, optimizer) -> dict:
            """One pass of local training with the round's settings. Each pass has seeded
            streams of its own: the first (the global model's) the ones fedexp has always
            used, a method's further passes (Ditto's personal model) others."""
            k = next(passes)
            order, init = (0, 1) if k == 0 else (10 + 2 * k, 11 + 2 * k)
            torch.manual_seed(seed_for(seed, rnd, pid, init))
            stats = train(
                model,
                self.data["x"],
                self.data["y"],
                train_idx,
                epochs=int(config["local_epochs"]),
                batch_size=int(config["batch_size"]),
                optimizer=optimizer,
                normalize=self.kit.normalize,
                generator=torch.Generator().manual_seed(seed_for(seed, rnd, pid, order)),
                criterion=self.kit.criterion,
                augment=self.kit.augment,
                hooks=hooks,
            )
            if not all(
                torch.isfinite(v).all()
                for v in model.state_dict().values()
                if v.is_floating_point()
            ):
                raise DivergedError("weights became NaN or infinite")
            return stats

        optimizer = optimizer_for(self.model)
        local = LocalFit(
            self.model,
            optimizer,
            dict(config),
            weights,
            extras,
            self._state(pid, rnd),
            self.kit.layout,
            evaluate_train=lambda: self._evaluate(train_idx, batch_eval),
            train=lambda model, hooks: train_locally(model, hooks, optimizer_for(model)),
            spare_model=self.kit.spare_model,
        )
        method = self.kit.new_method()
        method.before_fit(local)
        try:
            stats = train_locally(self.model, method, optimizer)
            local.steps = stats["steps"]
            sent = method.after_fit(local)
        except DivergedError as e:
            return [], 0, {"diverged": f"client {pid}, round {rnd}: {e}", "partition_id": pid}
        metrics = {"partition_id": pid, **local.metrics, "train_loss": stats["loss"]}
        if stats["accuracy"] is not None:
            metrics["train_accuracy"] = stats["accuracy"]
        return get_weights(self.model) + list(sent), stats["examples"], metrics

    def evaluate(self, parameters, config):
        pid = int(config["partition_id"])
        set_weights(self.model, self.kit.layout.split(parameters)[0])
        self.kit.new_method().before_evaluate(
            LocalEvaluation(
                self.model,
                dict(config),
                self._state(pid, config.get("server_round")),
                self.kit.layout,
            )
        )
        stats = self._evaluate(self.data["val"][pid], int(config["eval_batch_size"]))
        if stats["examples"] == 0:
            # A client too small to hold validation data: weight 0, and no NaN, which would
            # turn Flower's weighted average into NaN even at weight 0.
            return 0.0, 0, {"accuracy": 0.0, "partition_id": pid}
        metrics = {"partition_id": pid}
        if stats["accuracy"] is not None:
            metrics["accuracy"] = stats["accuracy"]
        return stats["loss"], stats["examples"], metrics


def make_client_app(spec: ClientSpec) -> ClientApp:
    def client_fn(context: Context):
        state = _worker_state(spec)
        return FedexpClient(spec, state["data"], state["kit"], context.state).to_client()

    return ClientApp(client_fn=client_fn)
