"""The two halves every method is made of, and what they share.

A method is a server strategy (a Flower `Strategy`) and a `ClientMethod`, written side by
side in one module of this package and configured together in `conf/strategy/NAME.yaml`:
`_target_` names the strategy, `client._target_` the client half. fedexp's generic client
(`client.py`) does everything methods have in common (faults, seeded streams, the
optimizer, the training loop, divergence checks) and calls the client half's hooks where
methods differ:

- `before_fit(fit)`: after the global model is loaded, before the first step;
- `loss_term(model)` and `after_backward(model)`: inside every step (`TrainingHooks`);
- `after_fit(fit)`: after the last step; it returns the extra arrays sent back with the
  weights, and may update the client's state.

`fit.state` is the client's own memory between the rounds it is sampled in (Flower's
`Context.state` of its node); `fit.server_extras` are the arrays the strategy sent after
the global model. On the server, `FedAvgBased` reads each client's result as a
`ClientUpdate` (its weights and extras apart) and hands them to the method's `new_global`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from flwr.common import (
    ArrayRecord,
    FitIns,
    RecordDict,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.strategy import FedAvg

from ...training import TrainingHooks
from ..payload import ModelLayout, with_extras


class ClientState:
    """Named lists of arrays that one client keeps across rounds, in Flower's `Context.state`.

    Flower's simulation keeps each node's context in the server process and ships it to
    the worker with every message for that node, so what a client stores here is there
    again the next time the same client is sampled, whichever worker runs it.
    """

    def __init__(self, records: RecordDict | None = None):
        self.records = records if records is not None else RecordDict()

    def get(self, name: str) -> list[np.ndarray] | None:
        records = self.records.array_records
        return records[name].to_numpy_ndarrays() if name in records else None

    def set(self, name: str, arrays: list[np.ndarray]) -> None:
        self.records[name] = ArrayRecord(numpy_ndarrays=[np.ascontiguousarray(a) for a in arrays])

    def nbytes(self) -> int:
        return sum(
            len(a.data) for record in self.records.array_records.values() for a in record.values()
        )


class DiskClientState(ClientState):
    """The same, kept in files (one folder per client) instead of the server's memory: with
    1,000 clients that each keep a whole model (Ditto), the server process holds none of
    them. The workers must see the folder: a local Ray's always do.

    Each value is written once per round, as `<name>.<round>.npz`, and read as the newest
    version up to the current round, so that a run resumed from the checkpoint of round R
    (see fedexp/checkpoints.py) finds its clients as they were after round R: the versions
    of rounds after R are removed (`forget_after`). The newest `keep` versions of each value
    stay, enough for every checkpoint the run keeps."""

    def __init__(self, directory: Path, server_round: int | None = None, keep: int = 2):
        """`server_round` None: read the newest version (an instruction that names no round)."""
        self.dir, self.keep = Path(directory), max(int(keep), 1)
        self.round = None if server_round is None else int(server_round)

    def _versions(self, name: str) -> list[tuple[int, Path]]:
        found = []
        for path in self.dir.glob(f"{name}.*.npz"):
            stem = path.name[len(name) + 1 : -len(".npz")]
            if stem.isdigit():
                found.append((int(stem), path))
        return sorted(found)

    def get(self, name: str) -> list[np.ndarray] | None:
        usable = [path for r, path in self._versions(name) if self.round is None or r <= self.round]
        if not usable:
            return None
        with np.load(usable[-1]) as stored:
            return [stored[f"arr_{i}"] for i in range(len(stored.files))]

    def set(self, name: str, arrays: list[np.ndarray]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.{os.getpid()}.tmp.npz"
        np.savez(tmp, *arrays)
        os.replace(tmp, self.dir / f"{name}.{self.round or 0:06d}.npz")
        for _, old in self._versions(name)[: -self.keep]:
            old.unlink(missing_ok=True)

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("*.npz")) if self.dir.is_dir() else 0

    @staticmethod
    def forget_after(root: Path, server_round: int) -> int:
        """Remove every client's versions written after `server_round` under `root` (one
        folder per client); returns how many files went."""
        gone = 0
        for path in Path(root).glob("*/*.npz"):
            stem = path.name[: -len(".npz")].rpartition(".")[2]
            if stem.isdigit() and int(stem) > server_round:
                path.unlink(missing_ok=True)
                gone += 1
        return gone


@dataclass
class LocalFit:
    """One client's `fit` call, as a method's hooks see it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    config: dict  # the server's instructions for this round
    global_weights: list[np.ndarray]  # the model's arrays as received
    server_extras: list[np.ndarray]  # what the strategy sent after them
    state: ClientState
    layout: ModelLayout
    evaluate_train: Callable[[], dict]  # the model as it is now, on this client's training data
    # train(model, hooks): the same local training again (same data, epochs, batches and
    # optimizer settings, its own seeded stream) for another model, e.g. a personal one
    train: Callable[[torch.nn.Module, TrainingHooks], dict]
    spare_model: Callable[[], torch.nn.Module]  # a second model of the same shape, for that
    steps: int = 0  # optimizer steps taken (known after training)
    metrics: dict = field(default_factory=dict)  # reported back with the fit result

    @property
    def lr(self) -> float:
        return float(self.config["lr"])

    def trained_params(self, model: torch.nn.Module | None = None) -> list[torch.nn.Parameter]:
        """The trained parameters of the model (or of another of the same shape), in the
        payload's order."""
        named = dict((model or self.model).named_parameters())
        return [named[self.layout.names[i]] for i in self.layout.trained_indices]

    def global_trained(self) -> list[torch.Tensor]:
        """The received (global) values of `trained_params`, as tensors beside them."""
        return self.as_tensors([self.global_weights[i] for i in self.layout.trained_indices])

    def as_tensors(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        device = next(self.model.parameters()).device
        return [torch.as_tensor(np.asarray(a, dtype=np.float32), device=device) for a in arrays]


def squared_distance(params, anchor) -> torch.Tensor:
    """||w - anchor||^2 over lists of tensors (differentiable in `params`)."""
    return sum((p - a).pow(2).sum() for p, a in zip(params, anchor))


class Proximal(TrainingHooks):
    """(mu/2) ||w - anchor||^2 added to every step's loss: FedProx's local objective, and
    Ditto's personal one."""

    def __init__(self, mu: float, params, anchor):
        self.mu, self.params, self.anchor = mu, params, anchor

    def loss_term(self, model):
        return 0.5 * self.mu * squared_distance(self.params, self.anchor)


@dataclass
class LocalEvaluation:
    """One client's `evaluate` call, as a method's hook sees it."""

    model: torch.nn.Module  # holds the received global model
    config: dict
    state: ClientState
    layout: ModelLayout


class ClientMethod(TrainingHooks):
    """The client half of a method. This base class is FedAvg's client: plain local training."""

    # What changes when the clients' optimizer is not SGD, for methods whose math assumes
    # local SGD steps (the setting checks print it once); None for methods that do not.
    sgd_only: str | None = None
    # True for personalised methods: each client evaluates a model of its own (what
    # `before_evaluate` loads), not the global one.
    personal: bool = False
    # True for methods whose clients keep state between rounds (`fit.state`): a resumed
    # run needs that state as it was at its checkpoint (see resume.py).
    keeps_state: bool = False

    def before_fit(self, fit: LocalFit) -> None:
        """Called with the global model loaded, before the first local step."""

    def after_fit(self, fit: LocalFit) -> list[np.ndarray]:
        """Called after the last local step; returns the arrays sent after the weights."""
        return []

    def before_evaluate(self, evaluation: LocalEvaluation) -> None:
        """Called with the global model loaded, before the client evaluates it; a
        personalised method puts the client's own model (or its own layers) in its place."""

    def check_model(self, layout: ModelLayout) -> str | None:
        """Why this method cannot work with a model of this layout, or None (the setting
        checks ask before any data is loaded)."""
        return None


class LocalLayersClient(ClientMethod):
    """The client half of methods that keep some of the model's entries on the client
    (FedBN's BatchNorm layers, FedPer's head): before training and before evaluating, the
    client's own values replace the received ones; after training they are kept. A client
    that has never trained has none: it uses the global model's values."""

    personal = True
    keeps_state = True
    state_key = "local_layers"

    def local_indices(self, layout: ModelLayout) -> list[int]:
        raise NotImplementedError

    def check_model(self, layout: ModelLayout) -> str | None:
        try:
            return (
                None
                if self.local_indices(layout)
                else "it has no layer that this method keeps local"
            )
        except ValueError as e:
            return str(e)

    def _load_own(self, model: torch.nn.Module, layout: ModelLayout, state: ClientState) -> None:
        stored = state.get(self.state_key)
        if stored is not None:
            names = [layout.names[i] for i in self.local_indices(layout)]
            model.load_state_dict(
                {n: torch.from_numpy(np.array(a)) for n, a in zip(names, stored)}, strict=False
            )

    def before_fit(self, fit: LocalFit) -> None:
        self._load_own(fit.model, fit.layout, fit.state)

    def after_fit(self, fit: LocalFit) -> list[np.ndarray]:
        state = fit.model.state_dict()
        fit.state.set(
            self.state_key,
            [
                state[fit.layout.names[i]].detach().cpu().numpy()
                for i in self.local_indices(fit.layout)
            ],
        )
        return []

    def before_evaluate(self, evaluation: LocalEvaluation) -> None:
        self._load_own(evaluation.model, evaluation.layout, evaluation.state)


@dataclass
class ClientUpdate:
    """One client's fit result, split into the model's arrays and the method's extras.
    `share` is its fraction of the round's training examples (FedAvg's weight)."""

    weights: list[np.ndarray]
    extras: list[np.ndarray]
    num_examples: int
    metrics: dict
    share: float

    def trained(self, layout: ModelLayout) -> list[np.ndarray]:
        """The trained parameters, in float64 for the server's arithmetic."""
        return [np.asarray(self.weights[i], np.float64) for i in layout.trained_indices]


class Sum:
    """Running float64 sums of lists of arrays: a round's results are read one client at a
    time, so aggregating 1,000 clients holds one client's arrays, not 1,000."""

    def __init__(self):
        self.total: list[np.ndarray] | None = None
        self.count = 0

    def add(self, arrays, weight: float = 1.0) -> None:
        arrays = [weight * np.asarray(a, np.float64) for a in arrays]
        self.total = arrays if self.total is None else [t + a for t, a in zip(self.total, arrays)]
        self.count += 1

    def mean(self) -> list[np.ndarray]:
        return [t / self.count for t in self.total]


class FedAvgBased(FedAvg):
    """The server half of methods that keep FedAvg's sampling and instructions and replace
    only the update of the global model (`new_global`) and, if they need to, what is sent
    with it (`extras_for_clients`, `settings_for_clients`).

    `model_layout` is passed by fedexp (see strategies.py): it says which arrays are
    trained parameters. Those get the method's update; BatchNorm's running statistics
    and other buffers get FedAvg's example-weighted mean.
    """

    reads_extras = True  # fedexp hands this strategy the clients' extras too
    # The method's own constructor keys (conf/strategy/NAME.yaml) with their defaults: each
    # becomes an attribute, and repr names them (the run's log).
    settings: ClassVar[dict[str, float]] = {}

    def __init__(self, *, model_layout: ModelLayout | None = None, **kwargs):
        own = {key: kwargs.pop(key, default) for key, default in self.settings.items()}
        super().__init__(**kwargs)
        vars(self).update(own)
        self.layout = model_layout
        self.global_weights: list[np.ndarray] | None = None
        self.num_clients = 0

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={getattr(self, k)}" for k in self.settings)
        return f"{type(self).__name__}({settings})"

    def configure_fit(self, server_round, parameters, client_manager):
        self.global_weights = parameters_to_ndarrays(parameters)
        if self.layout is None:
            self.layout = ModelLayout.of_arrays(self.global_weights)
        self.num_clients = client_manager.num_available()
        extras = self.extras_for_clients()
        settings = self.settings_for_clients()
        return [
            (proxy, FitIns(with_extras(ins.parameters, extras), {**ins.config, **settings}))
            for proxy, ins in super().configure_fit(server_round, parameters, client_manager)
        ]

    def extras_for_clients(self) -> list[np.ndarray]:
        """Arrays sent to every sampled client after the global model."""
        return []

    def settings_for_clients(self) -> dict:
        """Settings added to every fit instruction (the method's own keys)."""
        return {}

    def aggregate_fit(self, server_round, results, failures):
        if not results or (failures and not self.accept_failures):
            return None, {}
        buffers = [i for i, trained in enumerate(self.layout.trainable) if not trained]
        buffer_mean = Sum()

        def updates():
            total = sum(res.num_examples for _, res in results)
            for _, res in results:
                weights, extras = self.layout.split(parameters_to_ndarrays(res.parameters))
                share = res.num_examples / total if total else 1 / len(results)
                buffer_mean.add([weights[i] for i in buffers], share)
                yield ClientUpdate(weights, extras, res.num_examples, dict(res.metrics), share)

        new = [None] * len(self.layout)
        for i, value in zip(self.layout.trained_indices, self.new_global(updates())):
            new[i] = value
        for i, value in zip(buffers, buffer_mean.total or []):
            new[i] = value
        metrics = {}
        if self.fit_metrics_aggregation_fn:
            metrics = self.fit_metrics_aggregation_fn(
                [(r.num_examples, r.metrics) for _, r in results]
            )
        return ndarrays_to_parameters(new), metrics

    def new_global(self, updates) -> list[np.ndarray]:
        """The new values of the trained parameters (in `layout.trained_indices` order),
        from `updates`: the round's ClientUpdates, to be read once, one at a time."""
        raise NotImplementedError

    def global_trained(self) -> list[np.ndarray]:
        return [np.asarray(self.global_weights[i], np.float64) for i in self.layout.trained_indices]


class LocalLayersFedAvg(FedAvg):
    """The server half of `LocalLayersClient` methods: FedAvg over the shared entries; the
    entries the clients keep (`local_indices`) stay in the global model as they were."""

    def __init__(self, *, model_layout: ModelLayout | None = None, **kwargs):
        super().__init__(**kwargs)
        self.layout = model_layout
        self.global_weights: list[np.ndarray] | None = None

    def local_indices(self, layout: ModelLayout) -> list[int]:
        raise NotImplementedError

    def configure_fit(self, server_round, parameters, client_manager):
        self.global_weights = parameters_to_ndarrays(parameters)
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        params, metrics = super().aggregate_fit(server_round, results, failures)
        if params is None:
            return params, metrics
        arrays = parameters_to_ndarrays(params)
        layout = self.layout or ModelLayout.of_arrays(self.global_weights)
        for i in self.local_indices(layout):
            arrays[i] = self.global_weights[i]
        return ndarrays_to_parameters(arrays), metrics
