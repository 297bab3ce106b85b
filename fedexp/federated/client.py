"""The simulated client: a Flower NumPyClient that trains on the partition it is told.

The training arrays and all partitions' index lists reach each Ray worker once, through
Ray's object store (zero-copy for numpy), and stay cached in that worker process; a
client object itself is cheap and is made anew for every message, as Flower expects.
The server names the partition in each instruction (`partition_id`), so which data a
virtual client holds never depends on Flower's random node ids (see server.py).

A fit call may fail on purpose (`faults.client_failure_rate`, see faults.py). A client
whose local training diverges (NaN/inf loss or weights) does not raise: it answers with
`metrics["diverged"]` and no weights, so the server can tell divergence from a crash.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context
from hydra.utils import instantiate

from ..models import get_weights, set_weights
from ..training import DivergedError, Normalizer, evaluate, train
from .faults import InjectedClientFailure, fit_fails

_WORKER: dict[str, Any] = {}  # per worker process: data fetched once, threads set once


@dataclass
class ClientSpec:
    """What every client needs; small, because Flower pickles it with each message."""

    cfg: dict           # resolved config (plain containers)
    data_ref: Any       # Ray ObjectRef of {"x", "y", "train", "val"}
    device: str
    threads: int


def seed_for(seed: int, server_round: int, partition_id: int, salt: int = 0) -> int:
    """One independent, reproducible stream per (run seed, round, client)."""
    return int(np.random.SeedSequence([seed, server_round, partition_id, salt]).generate_state(1)[0])


def _worker_state(spec: ClientSpec) -> dict:
    """This worker's data, model and normaliser, made on its first message of the run.

    Every message overwrites the model's weights before use, so one model object per
    worker serves every client it simulates.
    """
    key = spec.data_ref.hex()
    if _WORKER.get("key") != key:
        import ray

        torch.set_num_threads(max(1, spec.threads))
        device = torch.device(spec.device)
        _WORKER.clear()
        _WORKER.update(
            key=key, data=ray.get(spec.data_ref),
            model=instantiate(spec.cfg["model"]).to(device),
            normalize=Normalizer(spec.cfg["dataset"]["mean"], spec.cfg["dataset"]["std"], device))
    return _WORKER


class FedexpClient(NumPyClient):
    """Train/evaluate the global model on one partition, with settings sent by the server."""

    def __init__(self, spec: ClientSpec, data: dict, model: torch.nn.Module | None = None,
                 normalize: Normalizer | None = None):
        """`data` holds x, y and every partition's train/val indices; a worker passes its
        cached `model` and `normalize`, which are otherwise built from the config."""
        self.spec, self.data = spec, data
        device = torch.device(spec.device)
        self.model = model if model is not None else instantiate(spec.cfg["model"]).to(device)
        self.normalize = normalize or Normalizer(spec.cfg["dataset"]["mean"], spec.cfg["dataset"]["std"], device)

    def get_parameters(self, config):
        return get_weights(self.model)

    def fit(self, parameters, config):
        pid, rnd, seed = int(config["partition_id"]), int(config["server_round"]), int(config["seed"])
        rate = float(self.spec.cfg.get("faults", {}).get("client_failure_rate", 0.0))
        if fit_fails(seed, rnd, pid, rate):
            raise InjectedClientFailure(f"client {pid} failed on purpose in round {rnd} "
                                        f"(faults.client_failure_rate={rate})")
        set_weights(self.model, parameters)
        metrics = {"partition_id": pid}
        if config.get("report_loss_before_fit"):
            # q-FedAvg weights each client by its loss at the global model, on its own data.
            before = evaluate(self.model, self.data["x"], self.data["y"], self.data["train"][pid],
                              batch_size=int(self.spec.cfg["eval_batch_size"]), normalize=self.normalize)
            metrics["loss_before_fit"] = before["loss"] if before["examples"] else 0.0
        torch.manual_seed(seed_for(seed, rnd, pid, 1))
        optimizer = instantiate(self.spec.cfg["optimizer"], lr=float(config["lr"]))(self.model.parameters())
        try:
            stats = train(
                self.model, self.data["x"], self.data["y"], self.data["train"][pid],
                epochs=int(config["local_epochs"]), batch_size=int(config["batch_size"]),
                optimizer=optimizer, normalize=self.normalize,
                generator=torch.Generator().manual_seed(seed_for(seed, rnd, pid)),
                proximal_mu=float(config.get("proximal_mu", 0.0)),
            )
            if not all(torch.isfinite(v).all() for v in self.model.state_dict().values()
                       if v.is_floating_point()):
                raise DivergedError("weights became NaN or infinite")
        except DivergedError as e:
            return [], 0, {"diverged": f"client {pid}, round {rnd}: {e}", "partition_id": pid}
        metrics.update(train_loss=stats["loss"], train_accuracy=stats["accuracy"])
        return get_weights(self.model), stats["examples"], metrics

    def evaluate(self, parameters, config):
        pid = int(config["partition_id"])
        set_weights(self.model, parameters)
        stats = evaluate(self.model, self.data["x"], self.data["y"], self.data["val"][pid],
                         batch_size=int(config["eval_batch_size"]), normalize=self.normalize)
        if stats["examples"] == 0:
            # A client too small to hold validation data: weight 0, and no NaN, which would
            # turn Flower's weighted average into NaN even at weight 0.
            return 0.0, 0, {"accuracy": 0.0, "partition_id": pid}
        return stats["loss"], stats["examples"], {"accuracy": stats["accuracy"], "partition_id": pid}


def make_client_app(spec: ClientSpec) -> ClientApp:
    def client_fn(context: Context):
        state = _worker_state(spec)
        return FedexpClient(spec, state["data"], state["model"], state["normalize"]).to_client()

    return ClientApp(client_fn=client_fn)
