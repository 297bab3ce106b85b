"""What a user reads while a run runs and when it ends: every step of the start said, no
warning about a setting the user never gave, numbers as the round lines show them, and
one line for settings the run's mode does not read."""

from __future__ import annotations

import re

import matplotlib
import pytest
import torch
from conftest import read_results

matplotlib.use("Agg")


def _lines(proc) -> list[str]:
    return (proc.stdout + proc.stderr).splitlines()


def _index(lines: list[str], start: str) -> int:
    return next(i for i, line in enumerate(lines) if line.startswith(start))


@pytest.mark.slow  # a whole run through the command line
def test_a_one_client_run_says_what_it_does(fedexp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proc = fedexp(
        "num_clients=1", "num_rounds=1", "device=auto", "centralized.epochs=3", "hydra.run.dir=run"
    )
    assert proc.returncode in (0, None), proc.stderr[-2000:]
    lines, res = _lines(proc), read_results(tmp_path / "run")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"device=auto: training on {device}" in lines and res["device"] == device
    # the start, step by step, before round 1
    order = [
        _index(lines, s)
        for s in (
            "federated: 1 round, 1 client,",
            "initial model |",
            "clients ready (",
            "round 1/1 |",
        )
    ]
    assert order == sorted(order)
    assert re.search(r"fit 1 client, .* eval 1 client, ", lines[order[-1]])
    # the default minimum of 1 client is not a setting the user gave: no warning about it
    assert not any("min_evaluate_clients" in line or "min_fit_clients" in line for line in lines)
    assert (
        "mode=federated does not read centralized.epochs: they are settings of mode=centralized"
        in lines
    )
    final = next(line for line in lines if "final test accuracy" in line)
    accuracy, loss = res["final"]["test_accuracy"], res["final"]["test_loss"]
    assert f"final test accuracy {accuracy:.4f}, test loss {loss:.4f} (" in final


@pytest.mark.slow  # a whole run through the command line
def test_a_centralized_run_says_it_does_not_read_num_rounds(fedexp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proc = fedexp("mode=centralized", "num_rounds=1", "centralized.epochs=1", "hydra.run.dir=run")
    assert proc.returncode in (0, None), proc.stderr[-2000:]
    assert (
        "mode=centralized does not read num_rounds: it trains 1 epoch (centralized.epochs)"
        in _lines(proc)
    )
    assert len(read_results(tmp_path / "run")["epochs"]) == 1


def test_a_long_title_is_wrapped_to_the_figure():
    import matplotlib.pyplot as plt

    from fedexp.results import fitted_title

    fig = plt.figure(figsize=(10, 4))
    path = "dataset.path=/" + "/".join(f"folder-{i:03d}" for i in range(40))
    title = fitted_title(f"federated run, completed: {path} seed=3", fig)
    plt.close(fig)
    width = int(10 * fig.dpi / 8)
    assert all(len(line) <= width for line in title.splitlines())
    assert len(title.splitlines()) == 3 and title.endswith("...")
    assert title.startswith("federated run, completed: dataset.path=/folder-000/")
    short = "federated run, completed: seed=3"
    assert fitted_title(short, plt.figure(figsize=(10, 4))) == short


@pytest.mark.slow  # a whole run through the command line
def test_a_personalised_run_says_which_model_its_numbers_are_for(fedexp, tmp_path, monkeypatch):
    """The final test numbers are the global model's; where every client was evaluated,
    their own models' mean and p10 are on the round's and the final line; without that,
    a personalised method is told how to see them."""
    monkeypatch.chdir(tmp_path)
    common = ("num_clients=3", "num_rounds=1", "partitioning=pathological")
    proc = fedexp("strategy=ditto", "evaluation.all_clients_every=1", *common, "hydra.run.dir=a")
    assert proc.returncode in (0, None), proc.stderr[-2000:]
    lines, res = _lines(proc), read_results(tmp_path / "a")
    clients = res["rounds"][-1]["all_clients"]
    assert clients["model"] == "personal"
    told = (
        f"all 3 clients, own models: acc mean {clients['mean_accuracy']:.4f} "
        f"p10 {clients['p10_accuracy']:.4f}"
    )
    final = next(line for line in lines if "final test accuracy" in line)
    assert "(global model, server's test set); " + told in final
    assert told in next(line for line in lines if line.startswith("round 1/1 |"))
    assert not any("trains a model per client" in line for line in lines)
    proc = fedexp("strategy=fedbn", *common, "hydra.run.dir=b")
    assert proc.returncode in (0, None), proc.stderr[-2000:]
    lines = _lines(proc)
    assert "(global model, server's test set) (" in next(
        line for line in lines if "final test accuracy" in line
    )
    assert any(
        line.startswith("strategy=fedbn trains a model per client")
        and "evaluation.all_clients_every=K" in line
        for line in lines
    )
