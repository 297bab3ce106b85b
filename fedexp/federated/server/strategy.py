"""`ServerStrategy`: the configured Flower strategy with fedexp's server-side parts around it.

The configured strategy (any `flwr.server.strategy.Strategy`) takes every decision:
sampling fractions, aggregation, evaluation. Around it, each part has one job:

- `Dispatcher` (links.py): names each sampled client's partition in its instructions and
  drops the round's stragglers;
- `PartitionClientManager.in_partition_order` (sampling.py): results in partition order,
  so float sums do not depend on which Ray worker finished first;
- `ModelLayout` (payload.py): splits what clients send into the model's arrays and a
  method's extras, and keeps the global model in the model's own dtypes;
- `RoundRecorder` (rounds.py): each round's record, reported when the round ends;
- `AllClientsEvaluation` (evaluation.py): every K rounds, every client evaluates, and the
  round records the distribution of their accuracies;
- `GlobalModel` and `nothing_to_aggregate` (guard.py): the last good model, and the end
  of a run whose round failed on every client or whose model stopped being finite;
- `StrategyState` (state.py): what the inner strategy's rounds changed, for checkpoints;
  a resumed run (`restore`) continues at round R + 1: Flower counts its rounds from 1
  again, and every hook adds `offset` (R) to the round it is given;
- `stop`: once set (on Ctrl-C, see simulation.py) every hook raises `RunStopped`, so that
  Flower's server thread ends within a second.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import numpy as np
from flwr.common import EvaluateIns, FitIns, Parameters, parameters_to_ndarrays
from flwr.server.strategy import Strategy

from ... import progress
from ..payload import ModelLayout
from .evaluation import AllClientsEvaluation
from .guard import ClientDiverged, GlobalModel, RunEnded, finite, nothing_to_aggregate
from .links import Dispatcher, RunStopped
from .rounds import RoundRecorder
from .sampling import PartitionClientManager
from .state import StrategyState


def _hook(method):
    """Run a strategy hook unless the run has been stopped."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if self.stop.is_set():
            raise RunStopped("run interrupted")
        return method(self, *args, **kwargs)

    return guarded


class ServerStrategy(Strategy):
    """Delegates every decision to `inner`; see the module for what it adds."""

    def __init__(
        self,
        inner: Strategy,
        client_manager: PartitionClientManager,
        on_round: Callable[[dict], None],
        *,
        seed: int = 0,
        straggler_rate: float = 0.0,
        layout: ModelLayout | None = None,
        all_clients: AllClientsEvaluation | None = None,
        on_clients: Callable[[list[dict]], None] | None = None,
    ):
        self.inner, self.manager = inner, client_manager
        self.stop = threading.Event()
        self.dispatcher = Dispatcher(client_manager, self.stop, seed, straggler_rate)
        self.recorder = RoundRecorder(on_round)
        self.model = GlobalModel()
        self.layout = layout
        self.all_clients = all_clients
        self.on_clients = on_clients or (lambda rows: None)
        self._evaluating_all = False
        # Set by the engine: blocks until the clients' worker processes are up, returns
        # the seconds that took (recorded as client_start_seconds, outside every round).
        self.wait_for_clients: Callable[[], float] | None = None
        self.client_start_seconds: float | None = None
        self.learned = StrategyState(inner)
        self.offset = 0  # rounds completed before this process (a resumed run)
        self._resumed: Parameters | None = None

    def __repr__(self) -> str:
        return f"ServerStrategy({self.inner!r})"

    @property
    def parameters(self) -> Parameters | None:
        """The current global model (the one the next round starts from)."""
        return self.model.current

    @property
    def initial(self) -> dict | None:
        """Test loss and accuracy of the initial global model (round 0)."""
        return self.recorder.initial

    def final_weights(self) -> list[np.ndarray] | None:
        """The global model of the last recorded round."""
        return self.model.final_weights()

    def checkpoint(self) -> dict:
        """What a resumed run needs from the server side after the round just recorded."""
        return {
            "parameters": self.model.kept,
            "strategy": self.learned.capture(),
            "sampling": self.manager.rng.getstate(),
            "initial": self.recorder.initial,
        }

    def restore(self, saved: dict) -> None:
        """Continue after the checkpoint `saved` (of round `saved["step"]`)."""
        self.offset = int(saved["step"])
        self._resumed = saved["parameters"]
        self.learned.restore(saved["strategy"])
        self.manager.rng.setstate(saved["sampling"])
        self.recorder.initial = saved["initial"]

    @_hook
    def initialize_parameters(self, client_manager):
        if self._resumed is not None:
            self.model.start(self._resumed)
            return self._resumed
        parameters = self.inner.initialize_parameters(client_manager)
        self.model.start(parameters)
        if parameters is not None and self.layout is None:
            self.layout = ModelLayout.of_arrays(parameters_to_ndarrays(parameters))
        return parameters

    @_hook
    def configure_fit(self, server_round, parameters, client_manager):
        if self.client_start_seconds is None and self.wait_for_clients is not None:
            # A real federation's server waits for its clients to connect before round 1.
            # Simulated clients are registered at once while their worker processes are
            # still importing torch: that wait is start-up, so round 1's clock starts after it.
            self.client_start_seconds = self.wait_for_clients()
            progress.start_line(f"clients ready ({self.client_start_seconds:.1f}s)")
        server_round += self.offset
        self.recorder.open(server_round)
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        dropped = self.dispatcher.draw_stragglers(server_round, instructions)
        self.recorder.update(sampled=len(instructions), fit_stragglers=dropped)
        return self.dispatcher.links(instructions, FitIns)

    def _model_part(self, results):
        """What the inner strategy reads: the clients' extras only if it is a method that
        reads them (see methods/base.py), otherwise the model's arrays alone."""
        if self.layout is None:  # the strategy let a client initialise the model
            self.layout = ModelLayout.of_arrays(parameters_to_ndarrays(results[0][1].parameters))
        if getattr(self.inner, "reads_extras", False):
            return results
        return [(proxy, self.layout.model_part(res)) for proxy, res in results]

    @_hook
    def aggregate_fit(self, server_round, results, failures):
        server_round += self.offset
        results = self.manager.in_partition_order(results)
        diverged = [r for r in results if r[1].metrics.get("diverged")]
        results = [r for r in results if not r[1].metrics.get("diverged")]
        failures = list(failures) + [
            ClientDiverged(str(r[1].metrics["diverged"])) for r in diverged
        ]
        reasons = self.recorder.note_failures(failures)
        self.recorder.update(
            fit_clients=len(results), fit_failures=len(failures), fit_diverged=len(diverged)
        )
        if not results:
            self._close_round()
            raise nothing_to_aggregate(server_round, diverged, failures, reasons)
        results = self._model_part(results)
        params, metrics = self.inner.aggregate_fit(server_round, results, failures)
        self.recorder.update(
            aggregated=params is not None,
            train_loss=metrics.get("train_loss"),
            train_accuracy=metrics.get("train_accuracy"),
        )
        if params is not None:
            if not finite(params):
                self._close_round()
                raise RunEnded(
                    "diverged",
                    f"round {server_round}: the aggregated model has NaN or infinite parameters",
                )
            params = self.layout.restore_dtypes(params, results)
            self.model.accept(params)
        return params, metrics

    @_hook
    def evaluate(self, server_round, parameters):
        if server_round == 0 and self.offset:  # the initial model was tested before the resume
            return None
        server_round += self.offset
        out = self.inner.evaluate(server_round, parameters)
        if out is not None:
            loss, metrics = out
            self.recorder.test_result(server_round, loss, metrics.get("accuracy"))
            if server_round == 0:
                progress.start_line(
                    f"initial model | test loss {progress.number(loss)} "
                    f"acc {progress.number(metrics.get('accuracy'))}"
                )
            if not np.isfinite(float(loss)):
                if server_round > 0:
                    self.model.roll_back()
                    self._close_round()
                raise RunEnded(
                    "diverged",
                    f"round {server_round}: the global model's test loss is {float(loss)}",
                )
        return out

    @_hook
    def configure_evaluate(self, server_round, parameters, client_manager):
        server_round += self.offset
        instructions = self.inner.configure_evaluate(server_round, parameters, client_manager)
        self._evaluating_all = self.all_clients is not None and self.all_clients.due(server_round)
        if self._evaluating_all:
            instructions = self.all_clients.instructions(
                server_round, parameters, self.manager, instructions
            )
        if not instructions:
            self._close_round()
        return self.dispatcher.links(instructions, EvaluateIns)

    @_hook
    def aggregate_evaluate(self, server_round, results, failures):
        server_round += self.offset
        # A client without validation data (tiny partitions) has nothing to report, and
        # Flower's example-weighted average would divide by zero if all were empty.
        results = self.manager.in_partition_order(results)
        if self._evaluating_all:
            summary, rows = self.all_clients.summarise(
                server_round, results, failures, self.manager.partition_of
            )
            self.recorder.update(all_clients=summary)
            self.on_clients(rows)
            results = self.all_clients.of_sample(results)
        results = [r for r in results if r[1].num_examples > 0]
        self.recorder.note_failures(failures)
        loss, metrics = (
            self.inner.aggregate_evaluate(server_round, results, failures)
            if results
            else (None, {})
        )
        self.recorder.update(
            evaluate_clients=len(results),
            evaluate_failures=len(failures),
            distributed_loss=loss,
            distributed_accuracy=metrics.get("accuracy"),
        )
        self._close_round()
        return loss, metrics

    def _close_round(self) -> None:
        self.model.keep()
        self.recorder.close()
