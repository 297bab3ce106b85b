"""The callback list and the loggers, through the `fedexp` command (in this process)."""
from __future__ import annotations

import csv
import importlib.util
import json

import pytest

from conftest import read_results
from fedexp.callbacks import flat


@pytest.mark.slow
def test_tensorboard_and_csv_loggers_record_every_round_and_a_failing_logger_loses_nothing(tmp_path, fedexp):
    """One run: TensorBoard and metrics.csv, and a third logger whose server goes away in
    round 2 (it is warned about once, and the run and the other loggers go on)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    proc = fedexp("logger=[csv,tensorboard]", "+logger.broken._target_=broken_logger.GoneInRound2",
                  "num_rounds=3", "num_clients=2", "evaluation.all_clients_every=2", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(run_dir)["status"] == "completed"
    rounds = read_results(run_dir)["rounds"]
    warnings = [line for line in proc.stdout.splitlines() if "GoneInRound2" in line]
    assert warnings == ["GoneInRound2 failed in on_step (ConnectionError: tracking server at "
                        "http://127.0.0.1:9 stopped answering); it is left out for the rest of the run, "
                        "whose own files go on"]
    assert "round 3/3" in proc.stdout  # the progress callback went on

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("test_accuracy")] == \
        [(r["round"], pytest.approx(r["test_accuracy"])) for r in rounds]
    assert [e.step for e in events.Scalars("all_clients.mean_accuracy")] == [2, 3]
    final = read_results(run_dir)["final"]["test_accuracy"]
    assert events.Scalars("final/test_accuracy")[0].value == pytest.approx(final)

    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = {k for r in rounds for k in flat(r)}
    assert keys == set(rows[0]) and len(rows) == 3  # every key any round has, e.g. fit_stragglers
    assert {"fit_stragglers", "sampled", "all_clients.p10_accuracy"} <= keys
    assert [float(r["test_accuracy"]) for r in rows] == [r["test_accuracy"] for r in rounds]
    assert rows[0]["all_clients.mean_accuracy"] == "" and rows[1]["all_clients.mean_accuracy"] != ""


def test_a_logger_whose_extra_is_missing_is_one_line(tmp_path, fedexp, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    proc = fedexp("logger=tensorboard", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr == ("fedexp: error: logger=tensorboard needs the tensorboard package, which is not "
                           "installed: pip install -e '.[tensorboard]'\n")


def test_an_unknown_logger_option_is_one_line(fedexp):
    proc = fedexp("logger=[csv,neptune]")
    assert proc.returncode == 2
    assert proc.stderr.startswith("fedexp: error: logger=neptune is not allowed: the logger options are csv")
