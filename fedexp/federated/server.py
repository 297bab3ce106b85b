"""Server side: seeded client sampling, per-round instructions, recording every round.

`RecordingStrategy` wraps whichever Flower strategy the config names (any
`flwr.server.strategy.Strategy`) and leaves every decision to it; around it, it
- names each sampled client's data partition in its instructions,
- orders results by partition before aggregation, so float sums do not depend on which
  Ray worker finished first (runs repeat bit for bit),
- keeps the aggregated global model in the model's own dtypes (integer buffers as counters),
- records each round (clients, failures, losses, accuracies, seconds) and reports it.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable

import numpy as np
from flwr.common import (EvaluateIns, FitIns, Parameters, bytes_to_ndarray, ndarrays_to_parameters,
                         parameters_to_ndarrays)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.strategy import Strategy


class PartitionClientManager(SimpleClientManager):
    """Samples partitions with a seeded RNG; maps each Flower node to one partition.

    Flower's simulation gives nodes random ids and registers them in set order, and its
    SimpleClientManager samples with the global `random` module: neither repeats between
    runs. Here the nodes, sorted by id, are numbered 0..N-1 once, and sampling draws
    partition numbers from `random.Random(seed)`, so the same seed samples the same data.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.rng = random.Random(seed)
        self.partition_of: dict[str, int] = {}
        self._proxy_of: dict[int, object] = {}

    def _assign(self) -> None:
        if len(self.partition_of) != len(self.clients):
            ordered = sorted(self.clients, key=int)
            self.partition_of = {cid: i for i, cid in enumerate(ordered)}
            self._proxy_of = {i: self.clients[cid] for i, cid in enumerate(ordered)}

    def sample(self, num_clients, min_num_clients=None, criterion=None):
        self.wait_for(num_clients if min_num_clients is None else min_num_clients)
        self._assign()
        available = [p for p, proxy in self._proxy_of.items()
                     if criterion is None or criterion.select(proxy)]
        if num_clients > len(available):
            return []
        chosen = sorted(self.rng.sample(available, num_clients))
        return [self._proxy_of[p] for p in chosen]


def weighted_mean(metrics: list[tuple[int, dict]]) -> dict:
    """Average each numeric metric over clients, weighted by their example counts."""
    total = sum(n for n, _ in metrics)
    keys = {k for _, m in metrics for k, v in m.items() if k != "partition_id"
            and isinstance(v, (int, float))}
    if total == 0:
        return {}
    return {k: sum(n * float(m[k]) for n, m in metrics if k in m) / total for k in sorted(keys)}


class RecordingStrategy(Strategy):
    """Delegates to `inner`; adds partition ids, deterministic order and round records."""

    def __init__(self, inner: Strategy, client_manager: PartitionClientManager,
                 on_round: Callable[[dict], None]):
        self.inner, self.cm, self.on_round = inner, client_manager, on_round
        self.parameters: Parameters | None = None
        self.dtypes: list[np.dtype] | None = None  # the model's own, one per state_dict entry
        self.initial: dict | None = None
        self._round: dict = {}
        self._t0 = 0.0

    def __repr__(self) -> str:
        return f"RecordingStrategy({self.inner!r})"

    def _with_partition(self, instructions, ins_type):
        out = []
        for proxy, ins in instructions:
            config = dict(ins.config, partition_id=self.cm.partition_of[proxy.cid])
            out.append((proxy, ins_type(ins.parameters, config)))
        return out

    def _by_partition(self, results):
        return sorted(results, key=lambda r: self.cm.partition_of.get(r[0].cid, 0))

    def initialize_parameters(self, client_manager):
        self.parameters = self.inner.initialize_parameters(client_manager)
        if self.parameters is not None:
            self.dtypes = [a.dtype for a in parameters_to_ndarrays(self.parameters)]
        return self.parameters

    def _in_model_dtypes(self, params: Parameters, results) -> Parameters:
        """The global model in the model's own dtypes, integer buffers as counters.

        Strategies do float math on every state entry: FedAdam's update turns float32 weights
        into float64, FedAvg's in-place mean multiplies int64 entries by int(weight), which is
        0 for every client when several train, so BatchNorm's `num_batches_tracked` would
        drop to 0. Float entries keep the strategy's result, cast back to their dtype;
        integer entries (counters, not weights) become the clients' example-weighted mean,
        rounded, whatever the strategy.
        """
        if self.dtypes is None:  # the strategy let a client initialise the model
            self.dtypes = [a.dtype for a in parameters_to_ndarrays(results[0][1].parameters)]
        ints = [i for i, d in enumerate(self.dtypes) if np.issubdtype(d, np.integer)]
        arrays = parameters_to_ndarrays(params)
        if not ints and all(a.dtype == d for a, d in zip(arrays, self.dtypes)):
            return params
        counts = np.array([res.num_examples for _, res in results], dtype=np.float64)
        share = counts / counts.sum() if counts.sum() > 0 else np.full(len(counts), 1 / len(counts))
        for i in ints:
            values = [bytes_to_ndarray(res.parameters.tensors[i]) for _, res in results]
            arrays[i] = np.rint(sum(w * v for w, v in zip(share, values)))
        return ndarrays_to_parameters([a.astype(d, copy=False) for a, d in zip(arrays, self.dtypes)])

    def configure_fit(self, server_round, parameters, client_manager):
        self._t0 = time.perf_counter()
        self._round = {"round": server_round, "fit_clients": 0, "fit_failures": 0,
                       "evaluate_clients": 0, "evaluate_failures": 0, "train_loss": None,
                       "train_accuracy": None, "distributed_loss": None,
                       "distributed_accuracy": None}
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        self._round["sampled"] = len(instructions)
        return self._with_partition(instructions, FitIns)

    def aggregate_fit(self, server_round, results, failures):
        results = self._by_partition(results)
        self._round.update(fit_clients=len(results), fit_failures=len(failures))
        params, metrics = self.inner.aggregate_fit(server_round, results, failures)
        self._round.update(train_loss=metrics.get("train_loss"),
                           train_accuracy=metrics.get("train_accuracy"))
        if params is not None:
            params = self._in_model_dtypes(params, results)
            self.parameters = params
        return params, metrics

    def evaluate(self, server_round, parameters):
        out = self.inner.evaluate(server_round, parameters)
        if out is not None:
            loss, metrics = out
            test = {"test_loss": float(loss), "test_accuracy": metrics.get("accuracy")}
            if server_round == 0:
                self.initial = test
            else:
                self._round.update(test)
        return out

    def configure_evaluate(self, server_round, parameters, client_manager):
        instructions = self.inner.configure_evaluate(server_round, parameters, client_manager)
        if not instructions:
            self._finish_round()
        return self._with_partition(instructions, EvaluateIns)

    def aggregate_evaluate(self, server_round, results, failures):
        # A client without validation data (tiny partitions) has nothing to report, and
        # Flower's example-weighted average would divide by zero if all were empty.
        results = [r for r in self._by_partition(results) if r[1].num_examples > 0]
        loss, metrics = (self.inner.aggregate_evaluate(server_round, results, failures)
                         if results else (None, {}))
        self._round.update(evaluate_clients=len(results), evaluate_failures=len(failures),
                           distributed_loss=loss, distributed_accuracy=metrics.get("accuracy"))
        self._finish_round()
        return loss, metrics

    def _finish_round(self) -> None:
        self._round["seconds"] = time.perf_counter() - self._t0
        self.on_round(self._round)

    def final_weights(self) -> list[np.ndarray] | None:
        return None if self.parameters is None else parameters_to_ndarrays(self.parameters)
