"""Which Flower node is which data partition, and which partitions a round samples."""

from __future__ import annotations

import random

from flwr.server.client_manager import SimpleClientManager


class PartitionClientManager(SimpleClientManager):
    """Samples partitions with a seeded RNG; maps each Flower node to one partition.

    Flower's simulation gives nodes random ids and registers them in set order, and its
    SimpleClientManager samples with the global `random` module: neither repeats between
    runs. Here the nodes, sorted by id, are numbered 0..N-1 once, and sampling draws
    partition numbers from `random.Random(seed)`, so the same seed samples the same data.
    A node keeps its partition for the whole run, so its Flower `Context` (a client's
    state between rounds) belongs to one partition too.
    """

    def __init__(self, seed: int, expected: int = 0):
        super().__init__()
        self.rng = random.Random(seed)
        self.expected = expected
        self.partition_of: dict[str, int] = {}
        self._proxy_of: dict[int, object] = {}

    def num_available(self) -> int:
        """Counted once all `expected` clients have registered. Flower's simulation
        registers its nodes while the server starts; a strategy that sizes round 1's sample
        from a count taken earlier (FedAvg's fraction of `num_available()`) would sample
        fewer clients on a busy machine, and the run would not repeat."""
        if self.expected and len(self.clients) < self.expected:
            self.wait_for(self.expected, timeout=120)
        return super().num_available()

    def _assign(self) -> None:
        if len(self.partition_of) != len(self.clients):
            ordered = sorted(self.clients, key=int)
            self.partition_of = {cid: i for i, cid in enumerate(ordered)}
            self._proxy_of = {i: self.clients[cid] for i, cid in enumerate(ordered)}

    def sample(self, num_clients, min_num_clients=None, criterion=None):
        self.wait_for(num_clients if min_num_clients is None else min_num_clients)
        self._assign()
        available = [
            p for p, proxy in self._proxy_of.items() if criterion is None or criterion.select(proxy)
        ]
        if num_clients > len(available):
            return []
        chosen = sorted(self.rng.sample(available, num_clients))
        return [self._proxy_of[p] for p in chosen]

    def in_partition_order(self, results: list) -> list:
        """`results` ((proxy, result) pairs) sorted by partition: Flower lists them in the
        order Ray workers finished, and float sums must not depend on that."""
        return sorted(results, key=lambda r: self.partition_of.get(r[0].cid, 0))
