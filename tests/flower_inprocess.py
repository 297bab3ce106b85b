"""fedexp's server side and clients, run by Flower's own server loop in this process.

`run` wires exactly what `fedexp.federated.run` wires (the configured strategy with fedexp's
hooks, RecordingStrategy, the seeded PartitionClientManager, FedexpClient on the real
partitions) and hands it to `flwr.server.Server.fit`, the loop Flower's legacy ServerApp
runs. Only the transport differs: each client is called directly instead of through Ray, so
a strategy round costs about a second instead of a Ray start, and tests can look inside a
client. End-to-end runs through Ray are in test_reproducibility.py and test_runs.py.
"""
from __future__ import annotations

from flwr.common import DisconnectRes, GetPropertiesRes, Status, Code
from flwr.server import Server
from flwr.server.client_proxy import ClientProxy
from omegaconf import OmegaConf

from fedexp.federated import build_strategy
from fedexp.federated.client import ClientSpec, FedexpClient
from fedexp.federated.server import PartitionClientManager, RecordingStrategy
from fedexp.workload import Workload


class DirectProxy(ClientProxy):
    """A ClientProxy that calls a fresh client object in this process for every message,
    as Flower's simulation does in its Ray actors."""

    def __init__(self, cid: str, make_client):
        super().__init__(cid)
        self.make_client = make_client

    def get_properties(self, ins, timeout, group_id):
        return GetPropertiesRes(Status(Code.OK, ""), {})

    def get_parameters(self, ins, timeout, group_id):
        return self.make_client().to_client().get_parameters(ins)

    def fit(self, ins, timeout, group_id):
        return self.make_client().to_client().fit(ins)

    def evaluate(self, ins, timeout, group_id):
        return self.make_client().to_client().evaluate(ins)

    def reconnect(self, ins, timeout, group_id):
        return DisconnectRes("")


def run(cfg, client_cls=FedexpClient, client_cfg: dict | None = None):
    """Run `cfg`'s federated experiment; return (RecordingStrategy, list of round records).

    `client_cfg` replaces the clients' own copy of the config (to show they follow the
    server's instructions instead)."""
    work = Workload.build(cfg)
    model = work.new_model()
    manager = PartitionClientManager(cfg.seed)
    rounds: list[dict] = []
    strategy = RecordingStrategy(build_strategy(work, model), manager, lambda r: rounds.append(dict(r)))
    spec = ClientSpec(cfg=client_cfg or OmegaConf.to_container(cfg, resolve=True), data_ref=None,
                      device="cpu", threads=1)
    data = {"x": work.data.x_train, "y": work.data.y_train, "train": work.parts.train, "val": work.parts.val}
    for i in range(cfg.num_clients):
        # Flower's node ids are large random integers; the manager orders them numerically.
        manager.register(DirectProxy(str(1000 + 7 * i), lambda: client_cls(spec, data)))
    Server(client_manager=manager, strategy=strategy).fit(num_rounds=cfg.num_rounds, timeout=None)
    return strategy, rounds
