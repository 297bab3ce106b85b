"""Evaluating every client, not only the sampled ones: the distribution of accuracy over
clients (its mean, spread and worst tail), which a sampled, example-weighted average
cannot show.

Every `every` rounds, and after the last round, the round's client evaluation goes to all
clients instead of the strategy's sample. The strategy still aggregates its own sample
(results.json's `distributed_*` keep their meaning); all clients' results are summarised
in the round's `all_clients` object, and each client's numbers become rows of
clients.csv. Each client evaluates what it would use: the global model, or its own model
for a personalised method.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.common import EvaluateIns

from .sampling import PartitionClientManager


class AllClientsEvaluation:
    """Decides the rounds, sends the evaluation to every client, summarises what comes back."""

    def __init__(
        self,
        every: int,
        num_rounds: int,
        evaluate_config: Callable[[int], dict] | None,
        personal: bool,
    ):
        self.every, self.num_rounds = every, num_rounds
        self.evaluate_config = evaluate_config or (lambda server_round: {})
        self.model = "personal" if personal else "global"
        self.sampled: set[str] = set()

    def due(self, server_round: int) -> bool:
        return self.every > 0 and (
            server_round % self.every == 0 or server_round == self.num_rounds
        )

    def instructions(
        self, server_round: int, parameters, manager: PartitionClientManager, sampled
    ) -> list:
        """An evaluation instruction for every client; `sampled` (the strategy's own
        instructions) is remembered so that the strategy aggregates only those."""
        self.sampled = {proxy.cid for proxy, _ in sampled}
        ins = EvaluateIns(parameters, self.evaluate_config(server_round))
        return [
            (proxy, ins)
            for proxy, _ in manager.in_partition_order(
                [(proxy, None) for proxy in manager.all().values()]
            )
        ]

    def of_sample(self, results: list) -> list:
        return [r for r in results if r[0].cid in self.sampled]

    def summarise(
        self, server_round: int, results: list, failures: list, partition_of
    ) -> tuple[dict, list[dict]]:
        """(the round's `all_clients` object, one clients.csv row per client that answered)."""
        rows = [
            {
                "round": server_round,
                "client": partition_of[proxy.cid],
                "examples": res.num_examples,
                "loss": float(res.loss) if res.num_examples else None,
                "accuracy": res.metrics.get("accuracy") if res.num_examples else None,
            }
            for proxy, res in results
        ]
        rows.sort(key=lambda r: r["client"])
        scored = [r for r in rows if r["examples"] > 0 and r["accuracy"] is not None]
        acc = np.array([r["accuracy"] for r in scored], dtype=np.float64)
        n = np.array([r["examples"] for r in scored], dtype=np.float64)
        summary = {
            "model": self.model,
            "clients": len(results) + len(failures),
            "without_validation": sum(1 for r in rows if r["examples"] == 0),
            "failed": len(failures),
        }
        if len(acc):
            summary.update(
                mean_accuracy=float(acc.mean()),
                weighted_accuracy=float(acc @ n / n.sum()),
                std_accuracy=float(acc.std()),
                min_accuracy=float(acc.min()),
                p10_accuracy=float(np.percentile(acc, 10)),
                max_accuracy=float(acc.max()),
                mean_loss=float(np.mean([r["loss"] for r in scored])),
            )
        return summary, rows
