"""End-to-end runs through the real command line: federated and centralized.

The federated run is small, so its clients run inline (simulation.backend=auto), as a
user's first run does; runs on Ray are in test_reproducibility.py, test_sweeps.py and
test_interrupts_and_divergence.py. The runs are `fedexp.main.main` in this process (as the
command calls it); the installed command's own process is test_install.py's.
"""

from __future__ import annotations

import csv
import math

import pytest
import torch
from conftest import fedexp_in_process, read_results, run_cli

ROUND_KEYS = {
    "round": int,
    "fit_clients": int,
    "fit_failures": int,
    "evaluate_clients": int,
    "distributed_loss": (float, type(None)),
    "distributed_accuracy": (float, type(None)),
    "test_loss": float,
    "test_accuracy": float,
    "seconds": float,
}


def check_contract(res: dict, mode: str) -> None:
    assert res["status"] == "completed" and res["mode"] == mode
    assert isinstance(res["wall_seconds"], float) and res["wall_seconds"] > 0
    assert set(res["final"]) >= {"test_loss", "test_accuracy"}
    assert 0 <= res["final"]["test_accuracy"] <= 1 and math.isfinite(res["final"]["test_loss"])


@pytest.fixture(scope="module")
def fed_run(tmp_path_factory):
    """3 clients, 2 rounds on digits, started from a working directory outside the repo."""
    cwd = tmp_path_factory.mktemp("user")
    run_dir = cwd / "run"
    proc = fedexp_in_process("num_clients=3", "num_rounds=2", f"hydra.run.dir={run_dir}", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_federated_run_follows_the_results_contract(fed_run):
    run_dir, proc = fed_run
    res = read_results(run_dir)
    check_contract(res, "federated")
    assert [r["round"] for r in res["rounds"]] == [1, 2]
    for r in res["rounds"]:
        for key, kind in ROUND_KEYS.items():
            assert isinstance(r[key], kind), (key, r[key])
        assert r["fit_clients"] == 3 and r["fit_failures"] == 0
        # fraction_evaluate 0.5 of 3 clients -> max(int(1.5), min_evaluate_clients=1) = 1
        assert r["evaluate_clients"] == 1
    assert res["final"]["test_accuracy"] == res["rounds"][-1]["test_accuracy"]
    assert res["data"]["clients"] == 3
    assert res["backend"] == "inline" and "clients in this process" in proc.stderr + proc.stdout
    # Round 1 waited for the clients' start-up; that wait is not in its seconds.
    assert 0 <= res["client_start_seconds"] < res["wall_seconds"]


def test_federated_run_writes_every_artifact(fed_run):
    run_dir, proc = fed_run
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    res = read_results(run_dir)
    assert [int(r["round"]) for r in rows] == [1, 2]
    assert float(rows[-1]["test_accuracy"]) == pytest.approx(res["rounds"][-1]["test_accuracy"])
    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert "conv1.weight" in state and state["fc3.weight"].shape == (10, 84)
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "results.png").stat().st_size > 1000
    # one readable line per round, without Flower's or Ray's log noise
    lines = [line for line in proc.stdout.splitlines() if line.startswith("round ")]
    assert len(lines) == 2 and "test loss" in lines[0]
    assert "DEPRECATED" not in proc.stdout + proc.stderr


def test_final_model_is_the_evaluated_global_model(fed_run):
    from omegaconf import OmegaConf

    from fedexp.data.datasets import load_digits
    from fedexp.models import CNN
    from fedexp.training import Normalizer, evaluate

    run_dir, _ = fed_run
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    model = CNN(1, 32, 10)
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    d = load_digits(32, 0.2, 0)
    s = evaluate(
        model,
        d.x_test,
        d.y_test,
        None,
        batch_size=512,
        normalize=Normalizer(cfg.dataset.mean, cfg.dataset.std, torch.device("cpu")),
    )
    assert s["accuracy"] == pytest.approx(read_results(run_dir)["final"]["test_accuracy"])


def test_centralized_run(fedexp, tmp_path):
    run_dir = tmp_path / "run"
    proc = fedexp("mode=centralized", "centralized.epochs=3", f"hydra.run.dir={run_dir}")
    assert proc.returncode in (0, None), proc.stderr[-3000:]
    res = read_results(run_dir)
    check_contract(res, "centralized")
    assert [e["epoch"] for e in res["epochs"]] == [1, 2, 3]
    for e in res["epochs"]:
        assert set(e) >= {"epoch", "train_loss", "val_loss", "val_accuracy", "seconds"}
    assert res["epochs"][-1]["train_loss"] < res["epochs"][0]["train_loss"]
    # client 0 of 10 on digits: ~129 training examples, 14 for validation
    assert (run_dir / "model.pt").is_file()


def test_a_run_never_overwrites_results(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text('{"status": "completed"}')
    proc = run_cli(
        "mode=centralized", "centralized.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "refusing to write into it" in proc.stderr
    assert (run_dir / "results.json").read_text() == '{"status": "completed"}'
