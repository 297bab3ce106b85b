"""How the server reaches a sampled client: its partition named in every instruction,
stragglers that never answer, and calls that give up when the run is stopped."""

from __future__ import annotations

import threading

from flwr.server.client_proxy import ClientProxy

from ..faults import StragglerTimeout, stragglers
from .sampling import PartitionClientManager


class RunStopped(Exception):
    """The main thread was interrupted: the server thread stops where it is."""


class ClientLink(ClientProxy):
    """The server's handle on one sampled client for one instruction.

    - A straggler (`dropped`) never answers: its call raises `StragglerTimeout` without
      reaching the client, as Flower's proxy raises when no reply comes in time.
    - Every other call waits for the real proxy in a daemon thread and gives up when
      `stop` is set. Flower's in-memory grid polls for replies without a deadline
      (`round_timeout=None`), so after Ctrl-C, with the Ray workers gone, its server
      thread would otherwise wait forever and keep the process alive.
    """

    def __init__(
        self, inner: ClientProxy, stop: threading.Event, partition: int, dropped: bool = False
    ):
        super().__init__(inner.cid)
        self.inner, self.stop, self.partition, self.dropped = inner, stop, partition, dropped

    def _call(self, method: str, ins, timeout, group_id):
        if self.dropped:
            raise StragglerTimeout(
                f"client {self.partition} dropped out of round {group_id} (straggler: no reply)"
            )
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


class Dispatcher:
    """Turns a strategy's instructions into links: each names its client's partition
    (`partition_id` in the config), and a round's stragglers (`faults.straggler_rate`,
    seeded per round, see faults.py) are marked to drop out."""

    def __init__(
        self,
        manager: PartitionClientManager,
        stop: threading.Event,
        seed: int = 0,
        straggler_rate: float = 0.0,
    ):
        self.manager, self.stop, self.seed, self.straggler_rate = (
            manager,
            stop,
            seed,
            straggler_rate,
        )
        self.dropped: set[int] = set()

    def draw_stragglers(self, server_round: int, instructions) -> int:
        sampled = [self.manager.partition_of[proxy.cid] for proxy, _ in instructions]
        self.dropped = stragglers(self.seed, server_round, sampled, self.straggler_rate)
        return len(self.dropped)

    def links(self, instructions, ins_type) -> list:
        out = []
        for proxy, ins in instructions:
            pid = self.manager.partition_of[proxy.cid]
            link = ClientLink(proxy, self.stop, pid, dropped=pid in self.dropped)
            out.append((link, ins_type(ins.parameters, dict(ins.config, partition_id=pid))))
        return out
