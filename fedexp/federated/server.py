"""Server side: seeded client sampling, per-round instructions, recording every round.

`RecordingStrategy` wraps whichever Flower strategy the config names (any
`flwr.server.strategy.Strategy`) and leaves every decision to it; around it, it
- names each sampled client's data partition in its instructions,
- orders results by partition before aggregation, so float sums do not depend on which
  Ray worker finished first (runs repeat bit for bit),
- keeps the aggregated global model in the model's own dtypes (integer buffers as counters),
- records each round (clients, failures, losses, accuracies, seconds) and reports it,
- drops the round's stragglers (`faults.straggler_rate`, see faults.py),
- ends the run (`RunEnded`) when a round leaves nothing to aggregate (every client
  failed) or the model stops being finite (diverged), keeping the last good parameters:
  Flower's FedAvg would otherwise keep going with the old model and log a warning,
- stops, and lets Flower's server thread end within a second, once `stop` is set (on
  Ctrl-C, see simulation.py): every hook then raises RunStopped; see also `ClientLink`.
"""
from __future__ import annotations

import functools
import logging
import random
import re
import threading
import time
from collections.abc import Callable

import numpy as np
from flwr.common import (EvaluateIns, FitIns, Parameters, bytes_to_ndarray, ndarrays_to_parameters,
                         parameters_to_ndarrays)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from .faults import StragglerTimeout, stragglers

log = logging.getLogger("fedexp")


class RunEnded(Exception):
    """The run cannot usefully go on; `status` is results.json's ("failed" or "diverged")."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class RunStopped(Exception):
    """The main thread was interrupted: the server thread stops where it is."""


class ClientDiverged(RuntimeError):
    """A client's local training produced a NaN/inf loss or parameters (it said so)."""


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


class ClientLink(ClientProxy):
    """The server's handle on one sampled client for one instruction.

    - A straggler (`dropped`) never answers: its call raises `StragglerTimeout` without
      reaching the client, as Flower's proxy raises when no reply comes in time.
    - Every other call waits for the real proxy in a daemon thread and gives up when
      `stop` is set. Flower's in-memory grid polls for replies without a deadline
      (`round_timeout=None`), so after Ctrl-C, with the Ray workers gone, its server
      thread would otherwise wait forever and keep the process alive.
    """

    def __init__(self, inner: ClientProxy, stop: threading.Event, partition: int,
                 dropped: bool = False):
        super().__init__(inner.cid)
        self.inner, self.stop, self.partition, self.dropped = inner, stop, partition, dropped

    def _call(self, method: str, ins, timeout, group_id):
        if self.dropped:
            raise StragglerTimeout(f"client {self.partition} dropped out of round {group_id} "
                                   f"(straggler: no reply)")
        box: dict = {}
        done = threading.Event()

        def target():
            try:
                box["result"] = getattr(self.inner, method)(ins, timeout, group_id)
            except BaseException as e:  # handed to Flower as this client's failure
                box["error"] = e
            finally:
                done.set()

        threading.Thread(target=target, daemon=True, name=f"fedexp-client-{self.partition}").start()
        while not done.wait(0.2):
            if self.stop.is_set():
                raise RunStopped("run interrupted")
        if "error" in box:
            raise box["error"]
        return box["result"]

    def fit(self, ins, timeout, group_id):
        return self._call("fit", ins, timeout, group_id)

    def evaluate(self, ins, timeout, group_id):
        return self._call("evaluate", ins, timeout, group_id)

    def get_properties(self, ins, timeout, group_id):
        return self.inner.get_properties(ins, timeout, group_id)

    def get_parameters(self, ins, timeout, group_id):
        return self.inner.get_parameters(ins, timeout, group_id)

    def reconnect(self, ins, timeout, group_id):
        return self.inner.reconnect(ins, timeout, group_id)


def weighted_mean(metrics: list[tuple[int, dict]]) -> dict:
    """Average each numeric metric over clients, weighted by their example counts."""
    total = sum(n for n, _ in metrics)
    keys = {k for _, m in metrics for k, v in m.items() if k != "partition_id"
            and isinstance(v, (int, float))}
    if total == 0:
        return {}
    return {k: sum(n * float(m[k]) for n, m in metrics if k in m) / total for k in sorted(keys)}


def failure_reason(failure) -> str:
    """One line for a Flower failure: an exception, or a (proxy, result) with a bad status.

    A client's exception reaches the server inside Flower's error text
    ("... Message: <the client's message>'>)..."); the client's own message is kept.
    """
    if isinstance(failure, tuple):
        status = failure[1].status
        return f"status {status.code.name}: {status.message}"
    text = str(failure)
    inner = re.search(r"Message: (.*?)'>", text, re.S)
    if inner:
        return inner.group(1).strip().splitlines()[-1][:300]
    return f"{type(failure).__name__}: {text}"[:300]


def _finite(parameters: Parameters) -> bool:
    return all(np.isfinite(a).all() for a in parameters_to_ndarrays(parameters) if a.dtype.kind in "fc")


def _hook(method):
    """Run a strategy hook unless the run has been stopped."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if self.stop.is_set():
            raise RunStopped("run interrupted")
        return method(self, *args, **kwargs)

    return guarded


class RecordingStrategy(Strategy):
    """Delegates to `inner`; adds partition ids, deterministic order, faults and records."""

    def __init__(self, inner: Strategy, client_manager: PartitionClientManager,
                 on_round: Callable[[dict], None], *, seed: int = 0,
                 straggler_rate: float = 0.0):
        self.inner, self.cm, self.on_round = inner, client_manager, on_round
        self.seed, self.straggler_rate = seed, straggler_rate
        self.parameters: Parameters | None = None
        self.dtypes: list[np.dtype] | None = None  # the model's own, one per state_dict entry
        self._previous: Parameters | None = None
        self._kept: Parameters | None = None  # the global model as of the last recorded round
        self.initial: dict | None = None
        self.stop = threading.Event()
        self._round: dict = {}
        self._dropped: set[int] = set()
        self._reasons_seen: set[str] = set()
        self._t0 = 0.0
        # Set by the engine: blocks until the clients' worker processes are up, returns
        # the seconds that took (recorded as client_start_seconds, outside every round).
        self.wait_for_clients: Callable[[], float] | None = None
        self.client_start_seconds: float | None = None

    def __repr__(self) -> str:
        return f"RecordingStrategy({self.inner!r})"

    def _with_partition(self, instructions, ins_type):
        out = []
        for proxy, ins in instructions:
            pid = self.cm.partition_of[proxy.cid]
            link = ClientLink(proxy, self.stop, pid, dropped=pid in self._dropped)
            out.append((link, ins_type(ins.parameters, dict(ins.config, partition_id=pid))))
        return out

    def _by_partition(self, results):
        return sorted(results, key=lambda r: self.cm.partition_of.get(r[0].cid, 0))

    def _note_failures(self, failures) -> list[str]:
        """Log the first failure of each kind (numbers aside); results.json counts them all.
        Sorted: Flower lists failures in the order they happened to arrive."""
        reasons = sorted(failure_reason(f) for f in failures)
        for reason in reasons:
            kind = re.sub(r"\d+(\.\d+)?", "#", reason)
            if kind not in self._reasons_seen:
                self._reasons_seen.add(kind)
                log.warning("client failure: %s (failures like it are counted in results.json, "
                            "not shown again)", reason)
        return reasons

    @_hook
    def initialize_parameters(self, client_manager):
        self.parameters = self._kept = self.inner.initialize_parameters(client_manager)
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

    @_hook
    def configure_fit(self, server_round, parameters, client_manager):
        if self.client_start_seconds is None and self.wait_for_clients is not None:
            # A real federation's server waits for its clients to connect before round 1.
            # Simulated clients are registered at once while their worker processes are
            # still importing torch: that wait is start-up, so round 1's clock starts after it.
            self.client_start_seconds = self.wait_for_clients()
        self._t0 = time.perf_counter()
        self._round = {"round": server_round, "fit_clients": 0, "fit_failures": 0,
                       "evaluate_clients": 0, "evaluate_failures": 0, "train_loss": None,
                       "train_accuracy": None, "distributed_loss": None,
                       "distributed_accuracy": None, "test_loss": None, "test_accuracy": None,
                       "aggregated": False}
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        sampled = [self.cm.partition_of[proxy.cid] for proxy, _ in instructions]
        self._dropped = stragglers(self.seed, server_round, sampled, self.straggler_rate)
        self._round.update(sampled=len(instructions), fit_stragglers=len(self._dropped))
        return self._with_partition(instructions, FitIns)

    @_hook
    def aggregate_fit(self, server_round, results, failures):
        results = self._by_partition(results)
        diverged = [r for r in results if r[1].metrics.get("diverged")]
        results = [r for r in results if not r[1].metrics.get("diverged")]
        failures = list(failures) + [ClientDiverged(str(r[1].metrics["diverged"])) for r in diverged]
        reasons = self._note_failures(failures)
        self._round.update(fit_clients=len(results), fit_failures=len(failures),
                           fit_diverged=len(diverged))
        if not results:
            self._finish_round()
            if diverged:
                example = sorted(str(r[1].metrics["diverged"]) for r in diverged)[0]
                raise RunEnded("diverged", f"round {server_round}: local training diverged on all "
                                           f"{len(diverged)} clients that answered ({example})")
            raise RunEnded("failed", f"round {server_round}: all {len(failures)} sampled clients "
                                     f"failed, nothing to aggregate (e.g. {reasons[0]})")
        params, metrics = self.inner.aggregate_fit(server_round, results, failures)
        self._round.update(aggregated=params is not None, train_loss=metrics.get("train_loss"),
                           train_accuracy=metrics.get("train_accuracy"))
        if params is not None:
            if not _finite(params):
                self._finish_round()
                raise RunEnded("diverged", f"round {server_round}: the aggregated model has "
                                           f"NaN or infinite parameters")
            params = self._in_model_dtypes(params, results)
            self._previous, self.parameters = self.parameters, params
        return params, metrics

    @_hook
    def evaluate(self, server_round, parameters):
        out = self.inner.evaluate(server_round, parameters)
        if out is not None:
            loss, metrics = out
            test = {"test_loss": float(loss), "test_accuracy": metrics.get("accuracy")}
            if server_round == 0:
                self.initial = test
            else:
                self._round.update(test)
            if not np.isfinite(float(loss)):
                if server_round > 0:
                    self.parameters = self._previous
                    self._finish_round()
                raise RunEnded("diverged", f"round {server_round}: the global model's test "
                                           f"loss is {float(loss)}")
        return out

    @_hook
    def configure_evaluate(self, server_round, parameters, client_manager):
        instructions = self.inner.configure_evaluate(server_round, parameters, client_manager)
        if not instructions:
            self._finish_round()
        return self._with_partition(instructions, EvaluateIns)

    @_hook
    def aggregate_evaluate(self, server_round, results, failures):
        # A client without validation data (tiny partitions) has nothing to report, and
        # Flower's example-weighted average would divide by zero if all were empty.
        results = [r for r in self._by_partition(results) if r[1].num_examples > 0]
        self._note_failures(failures)
        loss, metrics = (self.inner.aggregate_evaluate(server_round, results, failures)
                         if results else (None, {}))
        self._round.update(evaluate_clients=len(results), evaluate_failures=len(failures),
                           distributed_loss=loss, distributed_accuracy=metrics.get("accuracy"))
        self._finish_round()
        return loss, metrics

    def _finish_round(self) -> None:
        self._round["seconds"] = time.perf_counter() - self._t0
        self._kept = self.parameters
        self.on_round(self._round)

    def final_weights(self) -> list[np.ndarray] | None:
        """The global model of the last recorded round (the one its test numbers are
        about), never one with NaN/inf parameters, nor one of an unfinished round."""
        return None if self._kept is None else parameters_to_ndarrays(self._kept)
