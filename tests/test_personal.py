"""Every client's accuracy, and personalised methods (FedBN, FedPer, Ditto).

In process (tests/flower_inprocess.py: fedexp's real client, method halves and server
parts, Flower's server loop): what an evaluation of all clients records and how clients
without validation data are counted; which layers FedBN and FedPer keep on the clients
and which the server averages; client state in files gives the same run as in memory.
Through Flower + Ray (one real simulation): a Ditto client's personal model differs from
the global model and stays with its client across rounds, and results.json's
`all_clients` agrees with clients.csv.
"""

from __future__ import annotations

import csv
import json

import flower_inprocess
import numpy as np
import pytest
from omegaconf import OmegaConf
from recording_methods import logged

from fedexp.compare import main as compare
from fedexp.federated.methods.base import DiskClientState
from fedexp.federated.server.evaluation import AllClientsEvaluation
from fedexp.models import CNN
from fedexp.workload import Workload


class _Proxy:
    def __init__(self, cid):
        self.cid = cid


class _Res:
    def __init__(self, loss, n, accuracy):
        self.loss, self.num_examples, self.metrics = loss, n, {"accuracy": accuracy}


def test_the_summary_of_all_clients_is_the_distribution_of_their_accuracies():
    accuracies, sizes = [0.9, 0.5, 0.7, 0.2, 1.0], [10, 30, 20, 5, 35]
    results = [
        (_Proxy(str(i)), _Res(1.0 + i, n, a)) for i, (a, n) in enumerate(zip(accuracies, sizes))
    ]
    results.append((_Proxy("5"), _Res(0.0, 0, 0.0)))  # a client without validation data
    summary, rows = AllClientsEvaluation(1, 3, None, personal=False).summarise(
        2, results, [TimeoutError("no reply")], {str(i): i for i in range(6)}
    )
    a = np.array(accuracies)
    assert summary == {
        "model": "global",
        "clients": 7,
        "without_validation": 1,
        "failed": 1,
        "mean_accuracy": pytest.approx(a.mean()),
        "weighted_accuracy": pytest.approx(a @ sizes / sum(sizes)),
        "std_accuracy": pytest.approx(a.std()),
        "min_accuracy": 0.2,
        "p10_accuracy": pytest.approx(np.percentile(a, 10)),
        "max_accuracy": 1.0,
        "mean_loss": pytest.approx(3.0),
    }
    assert [r["client"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert rows[5] == {"round": 2, "client": 5, "examples": 0, "loss": None, "accuracy": None}
    every3 = AllClientsEvaluation(3, 7, None, personal=True)
    assert [r for r in range(1, 8) if every3.due(r)] == [3, 6, 7]  # and after the last round


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_every_client_is_evaluated_and_those_without_validation_data_are_counted_apart(make_cfg):
    # Linear quantity skew over 20 clients: the smallest ones keep no validation example.
    cfg = make_cfg(
        "partitioning=linear",
        "num_clients=20",
        "num_rounds=2",
        "strategy.fraction_fit=0.25",
        "strategy.fraction_evaluate=0",
        "strategy.min_evaluate_clients=0",
        "evaluation.all_clients_every=1",
    )
    rows: list[dict] = []
    _, rounds, _ = flower_inprocess.run(cfg, client_rows=rows)
    no_val = sum(len(v) == 0 for v in Workload.build(cfg).parts.val)
    assert 0 < no_val < 20
    for r in rounds:
        a = r["all_clients"]
        assert (a["model"], a["clients"], a["without_validation"], a["failed"]) == (
            "global",
            20,
            no_val,
            0,
        )
        mine = [x for x in rows if x["round"] == r["round"]]
        assert [x["client"] for x in mine] == list(range(20))
        scored = [x["accuracy"] for x in mine if x["examples"]]
        assert a["mean_accuracy"] == pytest.approx(np.mean(scored)) and a["min_accuracy"] == min(
            scored
        )
        assert r["evaluate_clients"] == 0  # the strategy's own sample (none) keeps its meaning


def _layer(weights, cfg, name):
    model = CNN(1, 32, 10, batch_norm=True) if cfg.model.batch_norm else CNN(1, 32, 10)
    return weights[list(model.state_dict()).index(name)]


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
@pytest.mark.parametrize(
    "method,kept,shared",
    [
        ("fedbn", "bn1.running_mean", "conv1.weight"),
        ("fedper", "fc3.weight", "fc1.weight"),
    ],
)
def test_local_layers_stay_with_the_clients(make_cfg, method, kept, shared):
    cfg = make_cfg(
        f"strategy={method}",
        "model.batch_norm=true",
        "num_clients=3",
        "num_rounds=2",
        "partitioning=pathological",
        "strategy.fraction_evaluate=0",
        "strategy.min_evaluate_clients=0",
    )
    strategy, _, proxies = flower_inprocess.run(cfg)
    initial = Workload.build(cfg).new_model().state_dict()
    final = strategy.final_weights()
    # The server never averages the clients' own layers: the global model keeps its start.
    np.testing.assert_array_equal(_layer(final, cfg, kept), initial[kept].numpy())
    assert not np.array_equal(_layer(final, cfg, shared), initial[shared].numpy())
    # Each client keeps its own, different from the others'.
    key = {"fedbn": "fedbn.batch_norm", "fedper": "fedper.head"}[method]
    own = [p.state.array_records[key].to_numpy_ndarrays() for p in proxies]
    assert not np.array_equal(own[0][0], own[1][0])


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_client_state_in_files_gives_the_same_run_as_in_memory(make_cfg, tmp_path):
    cfg = make_cfg(
        "strategy=ditto",
        "num_clients=3",
        "num_rounds=2",
        "strategy.fraction_fit=0.67",
        "evaluation.all_clients_every=1",
    )
    _, in_memory, _ = flower_inprocess.run(cfg)
    _, in_files, proxies = flower_inprocess.run(cfg, state_dir=tmp_path)

    def strip(rounds):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rounds]

    assert strip(in_memory) == strip(in_files)
    assert all(len(p.state.array_records) == 0 for p in proxies)  # nothing in Context.state
    trained = sorted(int(p.name) for p in tmp_path.iterdir())
    assert len(trained) >= 2
    stored = DiskClientState(tmp_path / str(trained[0])).get("ditto.personal")
    assert stored is not None and len(stored) == len(CNN(1, 32, 10).state_dict())


def test_compare_shows_the_mean_and_the_worst_tail(tmp_path, capsys):
    for name, accs in (("a", [0.9, 0.8, 0.1]), ("b", [0.6, 0.6, 0.6])):
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(
            OmegaConf.to_yaml({"seed": 0, "strategy": name})
        )
        (run / ".hydra" / "overrides.yaml").write_text(f"- +strategy={name}\n")
        a = np.array(accs)
        all_clients = {
            "model": "personal",
            "clients": 3,
            "without_validation": 0,
            "failed": 0,
            "mean_accuracy": a.mean(),
            "weighted_accuracy": a.mean(),
            "std_accuracy": a.std(),
            "min_accuracy": a.min(),
            "p10_accuracy": np.percentile(a, 10),
            "max_accuracy": a.max(),
        }
        (run / "results.json").write_text(
            json.dumps(
                {
                    "status": "completed",
                    "mode": "federated",
                    "wall_seconds": 1.0,
                    "seed": 0,
                    "rounds": [
                        {
                            "round": 1,
                            "test_loss": 1.0,
                            "test_accuracy": 0.5,
                            "seconds": 0.1,
                            "all_clients": all_clients,
                        }
                    ],
                    "final": {"test_loss": 1.0, "test_accuracy": 0.5},
                }
            )
        )
    assert compare([str(tmp_path)]) in (None, 0)
    out = capsys.readouterr().out
    header, _, first, second = out.splitlines()[1:5]
    assert (
        "clients mean acc" in header and "clients p10 acc" in header and "clients min acc" in header
    )
    row = {line.split()[0]: line.split() for line in (first, second)}
    assert "0.6000" in row["a"] and "0.2400" in row["a"] and "0.1000" in row["a"]  # mean, p10, min
    assert row["b"].count("0.6000") == 3


def test_a_personal_model_differs_from_the_global_one_and_stays_with_its_client(
    run_inline, tmp_path
):
    """A real simulation (Flower's engine, clients inline): each Ditto client, when evaluated, uses the
    personal model it stored when it last trained, not the global model it received;
    results.json's `all_clients` covers every client every round and agrees with clients.csv.
    The clients keep their state in files (a local Ray's default; test_methods.py's SCAFFOLD
    test covers Flower's Context.state through Ray)."""
    res, run_dir = run_inline(
        "strategy=ditto",
        "num_clients=4",
        "num_rounds=3",
        "partitioning=pathological",
        "strategy.fraction_fit=0.5",
        "evaluation.all_clients_every=1",
        "simulation.client_state=disk",
        "strategy.client._target_=recording_methods.RecordingDittoClient",
        f"+strategy.client.log_dir={tmp_path}",
        name="ditto_personal",
    )
    assert res["status"] == "completed"
    events = logged(tmp_path)
    stored = {}  # partition -> digest of the personal model it left after its last fit
    for e in sorted(events, key=lambda e: (e["round"], e["kind"] == "evaluate", e["partition"])):
        if e["kind"] == "fit":
            stored[e["partition"]] = e["personal"]
        elif e["partition"] in stored:
            assert e["evaluated"] == stored[e["partition"]] != e["global"]
        else:  # never trained yet: no personal model, so the global one is evaluated
            assert e["evaluated"] == e["global"]
    assert len(stored) >= 3 and sum(e["kind"] == "evaluate" for e in events) == 12
    assert sorted(int(p.name) for p in (run_dir / "client_state").iterdir()) == sorted(stored)
    with open(run_dir / "clients.csv") as f:
        rows = list(csv.DictReader(f))
    for r in res["rounds"]:
        a = r["all_clients"]
        mine = [
            float(x["accuracy"])
            for x in rows
            if int(x["round"]) == r["round"] and x["examples"] != "0"
        ]
        assert (
            a["model"] == "personal"
            and a["clients"] == 4
            and len(mine) == 4 - a["without_validation"]
        )
        assert a["mean_accuracy"] == pytest.approx(np.mean(mine))
        assert a["p10_accuracy"] == pytest.approx(np.percentile(mine, 10))
