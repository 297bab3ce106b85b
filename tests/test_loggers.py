"""The callback list and the loggers, through the `fedexp` command (in this process)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal

import pytest
from conftest import read_results, when_rounds_recorded

from fedexp.callbacks import flat


def test_a_logger_whose_extra_is_missing_is_one_line(tmp_path, fedexp, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboard" else find_spec(name, *a),
    )
    proc = fedexp("logger=tensorboard", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr == (
        "fedexp: error: logger=tensorboard needs the tensorboard package, which is not "
        "installed: pip install -e '.[tensorboard]'\n"
    )


def test_an_unknown_logger_option_is_one_line(fedexp):
    proc = fedexp("logger=[csv,neptune]")
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "fedexp: error: logger=neptune is not allowed: the logger options are csv"
    )


@pytest.mark.slow
def test_loggers_record_every_round_and_a_tracking_server_going_away_loses_nothing(
    tmp_path, fedexp, mlflow_server
):
    """A sweep with the csv, TensorBoard and MLflow loggers, MLflow logging to a real
    `mlflow server` on localhost (conftest.py's, started as the session begins). Job 0 logs
    fully; the server is killed in job 1's first round: one warning, and the job and its
    other loggers go on."""
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri, store, server = mlflow_server
    sweep = tmp_path / "sweep"
    stopper = when_rounds_recorded(sweep / "1", lambda: os.killpg(server.proc.pid, signal.SIGKILL))
    proc = fedexp(
        "-m",
        "logger=[csv,tensorboard,mlflow]",
        "seed=0,1",
        "num_rounds=3",
        "num_clients=2",
        "evaluation.all_clients_every=2",
        f"logger.mlflow.tracking_uri={uri}",
        f"hydra.sweep.dir={sweep}",
    )
    stopper.result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stdout.splitlines() if "MLflowLogger failed" in line]
    assert len(warnings) == 1 and "it is left out for the rest of the run" in warnings[0]
    assert all(read_results(sweep / j)["status"] == "completed" for j in "01")
    assert "round 3/3" in proc.stdout.split("#1 :")[-1]  # job 1's progress lines went on
    for job in ("0", "1"):
        rounds = read_results(sweep / job)["rounds"]
        _check_tensorboard(sweep / job, rounds, EventAccumulator)
        _check_csv(sweep / job, rounds)
    # what the server stored: its database, and its artifact folder
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"fedexp sweep {sweep}")
    runs = {r.data.params["seed"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["0", "1"]
    for seed in ("0",):
        run = runs[seed]
        assert (
            run.info.status == "FINISHED"
            and run.data.params["strategy._target_"] == "flwr.server.strategy.FedAvg"
        )
        history = client.get_metric_history(run.info.run_id, "test_accuracy")
        expected = read_results(sweep / seed)["rounds"]
        assert [(m.step, m.value) for m in history] == [
            (r["round"], pytest.approx(r["test_accuracy"])) for r in expected
        ]
        stored = store / "artifacts" / experiment.experiment_id / run.info.run_id / "artifacts"
        assert {p.name for p in stored.iterdir()} == {
            "results.json",
            "results.png",
            "partitions.png",
            "model.pt",
        }


def _check_tensorboard(run_dir, rounds, EventAccumulator):
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("test_accuracy")] == [
        (r["round"], pytest.approx(r["test_accuracy"])) for r in rounds
    ]
    assert [e.step for e in events.Scalars("all_clients.mean_accuracy")] == [2, 3]
    final = read_results(run_dir)["final"]["test_accuracy"]
    assert events.Scalars("final/test_accuracy")[0].value == pytest.approx(final)


def _check_csv(run_dir, rounds):
    """metrics.csv: every key that any round has (fit_stragglers, sampled, the nested
    all_clients ones), a row per round."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = {k for r in rounds for k in flat(r)}
    assert keys == set(rows[0]) and len(rows) == 3
    assert {"fit_stragglers", "sampled", "all_clients.p10_accuracy"} <= keys
    assert [float(r["test_accuracy"]) for r in rows] == [r["test_accuracy"] for r in rounds]
    assert rows[0]["all_clients.mean_accuracy"] == "" and rows[1]["all_clients.mean_accuracy"] != ""


def _wandb_records(path):
    """The protobuf records of a .wandb file (what `wandb sync` uploads): a LevelDB-style
    log of 32 KiB blocks after a 7-byte header."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


@pytest.mark.slow
def test_wandb_runs_offline_and_leaves_a_run_that_wandb_sync_reads(tmp_path, fedexp):
    run_dir = tmp_path / "run"
    proc = fedexp("logger=wandb", "num_rounds=2", "num_clients=2", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    [log] = offline.glob("run-*.wandb")
    records = list(_wandb_records(log))
    history = [
        (
            r.history.step.num,
            {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item},
        )
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    rounds = read_results(run_dir)["rounds"]
    assert [(step, h["test_accuracy"]) for step, h in history] == [
        (r["round"], r["test_accuracy"]) for r in rounds
    ]
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["seed"] == 0 and config["num_rounds"] == 2
    assert {"results.json", "model.pt", "results.png", "partitions.png"} <= {
        p.name for p in (offline / "files").iterdir()
    }
    assert not (
        run_dir / "metrics.csv"
    ).exists()  # logger=wandb alone: the csv logger is not chosen
