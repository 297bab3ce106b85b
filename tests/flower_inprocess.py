"""fedexp's server side and clients, run by Flower's own server loop in this process.

`run` wires exactly what `fedexp.federated.run` wires (the configured strategy with fedexp's
hooks, ServerStrategy, the seeded PartitionClientManager, FedexpClient with the method's
client half on the real partitions) and hands it to `flwr.server.Server.fit`, the loop
Flower's legacy ServerApp runs. Only the transport differs: each client is called directly
instead of through Ray, with its own state (a `RecordDict`, as Flower's `Context.state` of
its node), so a strategy round costs about a second instead of a Ray start, and tests can
look inside a client. End-to-end runs through Ray are in test_reproducibility.py and
test_runs.py.
"""

from __future__ import annotations

from flwr.common import Code, DisconnectRes, GetPropertiesRes, RecordDict, Status
from flwr.server import Server
from flwr.server.client_proxy import ClientProxy
from omegaconf import OmegaConf

from fedexp.federated import all_clients_evaluation, build_strategy
from fedexp.federated.client import ClientKit, ClientSpec, FedexpClient
from fedexp.federated.payload import ModelLayout
from fedexp.federated.server import PartitionClientManager, ServerStrategy
from fedexp.workload import Workload


class DirectProxy(ClientProxy):
    """A ClientProxy that calls a fresh client object in this process for every message,
    as Flower's simulation does in its Ray actors."""

    def __init__(self, cid: str, make_client):
        super().__init__(cid)
        self.make_client = make_client
        self.state = RecordDict()  # this node's Context.state

    def get_properties(self, ins, timeout, group_id):
        return GetPropertiesRes(Status(Code.OK, ""), {})

    def get_parameters(self, ins, timeout, group_id):
        return self.make_client(self.state).to_client().get_parameters(ins)

    def fit(self, ins, timeout, group_id):
        return self.make_client(self.state).to_client().fit(ins)

    def evaluate(self, ins, timeout, group_id):
        return self.make_client(self.state).to_client().evaluate(ins)

    def reconnect(self, ins, timeout, group_id):
        return DisconnectRes("")


def run(
    cfg,
    client_cls=FedexpClient,
    client_cfg: dict | None = None,
    work: Workload | None = None,
    state_dir=None,
    client_rows: list | None = None,
):
    """Run `cfg`'s federated experiment; return (ServerStrategy, list of round records,
    the clients' proxies, each with its `state`).

    `client_cfg` replaces the clients' own copy of the config (to show they follow the
    server's instructions instead); `work` replaces the data `cfg` would load; with
    `state_dir` the clients keep their state in files there; `client_rows` receives the
    per-client rows of every evaluation of all clients (clients.csv's)."""
    work = work or Workload.build(cfg)
    model = work.new_model()
    manager = PartitionClientManager(cfg.seed)
    rounds: list[dict] = []
    strategy = ServerStrategy(
        build_strategy(work, model),
        manager,
        lambda r: rounds.append(dict(r)),
        seed=cfg.seed,
        layout=ModelLayout.of(model),
        all_clients=all_clients_evaluation(cfg),
        on_clients=(client_rows if client_rows is not None else []).extend,
    )
    spec = ClientSpec(
        cfg=client_cfg or OmegaConf.to_container(cfg, resolve=True),
        data_ref=None,
        device="cpu",
        threads=1,
        state_dir=str(state_dir) if state_dir else None,
    )
    data = {
        "x": work.data.x_train,
        "y": work.data.y_train,
        "train": work.parts.train,
        "val": work.parts.val,
    }
    proxies = []
    for i in range(cfg.num_clients):
        # Flower's node ids are large random integers; the manager orders them numerically.
        # Flower calls the clients from a thread pool: each gets its own kit (model), as
        # each Ray worker has its own.
        kit = ClientKit.build(spec.cfg, work.device)
        proxies.append(
            DirectProxy(
                str(1000 + 7 * i), lambda state, kit=kit: client_cls(spec, data, kit, state)
            )
        )
        manager.register(proxies[-1])
    Server(client_manager=manager, strategy=strategy).fit(num_rounds=cfg.num_rounds, timeout=None)
    return strategy, rounds, proxies
