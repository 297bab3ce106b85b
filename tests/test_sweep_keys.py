"""Sweeps across options whose keys differ: `partitioning=iid,dirichlet partitioning.alpha=0.1`.

A key that only some of the swept options have applies to those; the jobs of the others
leave it out and record it as unused (results.json's `unused_settings`, and a blank in
fedexp-compare's table). Outside a sweep, such a key is still a one-line error, which now
names the options that have it.
"""

from __future__ import annotations

import json
import logging

import pytest

from fedexp.command_line import prepare
from fedexp.main import check_settings, config_dir


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_a_key_some_swept_options_have_is_forced_in_and_marked_for_the_others():
    line = prepare(
        [
            "-m",
            "partitioning=iid,dirichlet,pathological",
            "partitioning.alpha=0.1",
            "partitioning.num_classes_per_partition=3",
            "seed=0,1",
        ],
        config_dir(),
        check_settings,
    )
    assert line.problem is None
    assert line.argv == [
        "-m",
        "partitioning=iid,dirichlet,pathological",
        "++partitioning.alpha=0.1",
        "++partitioning.num_classes_per_partition=3",
        "seed=0,1",
    ]
    assert line.unused == {
        "partitioning=iid": ["partitioning.alpha", "partitioning.num_classes_per_partition"],
        "partitioning=dirichlet": ["partitioning.num_classes_per_partition"],
        "partitioning=pathological": ["partitioning.alpha"],
    }


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_keys_every_option_has_and_typos_are_left_alone():
    line = prepare(
        ["-m", "strategy=fedavg,fedprox", "strategy.fraction_fit=0.5"], config_dir(), check_settings
    )
    assert (line.problem, line.unused) == (None, {})
    assert line.argv == ["-m", "strategy=fedavg,fedprox", "strategy.fraction_fit=0.5"]
    typo = prepare(
        ["-m", "strategy=fedavg,fedprox", "strategy.proximal_muu=0.1"], config_dir(), check_settings
    )
    assert typo.problem.startswith("strategy.proximal_muu is not a fedexp setting (a typo?")


def test_outside_a_sweep_the_error_names_the_options_that_have_the_key():
    problem = prepare(["strategy.proximal_mu=0.1"], config_dir(), check_settings).problem
    assert problem == (
        "strategy.proximal_mu is not a setting of strategy=fedavg: only strategy=fedprox "
        "has it (in a sweep over strategy, it applies to the options that have it)"
    )


@pytest.mark.slow
def test_a_sweep_over_strategies_with_different_keys_runs_every_job(tmp_path, fedexp):
    """FedAvg's constructor would reject proximal_mu: its job must leave it out."""
    sweep = tmp_path / "sweep"
    done = fedexp(
        "-m",
        "strategy=fedavg,fedprox",
        "strategy.proximal_mu=0.3",
        "num_clients=3",
        "dry_run=true",
        f"hydra.sweep.dir={sweep}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    logs = {job: (sweep / job / "main.log").read_text() for job in ("0", "1")}
    assert "left out: strategy.proximal_mu=0.3" in logs["0"] and "strategy FedAvg" in logs["0"]
    assert "left out" not in logs["1"] and "strategy FedProx" in logs["1"]


@pytest.mark.slow  # a sweep of whole runs in this process
def test_each_job_uses_only_the_keys_its_options_have(tmp_path, monkeypatch, capsys):
    """In process, through Hydra's multirun: the iid job leaves `partitioning.alpha` out,
    the Dirichlet job partitions with alpha=0.1 (a real run also records the key in its
    results.json's `unused_settings`)."""
    import sys

    import ray

    from fedexp import main as fedexp_main
    from fedexp.federated import simulation

    def no_ray(*a, **k):
        raise AssertionError("this test stops before Ray")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.setattr(simulation, "run_engine", no_ray)
    sweep = tmp_path / "sweep"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "fedexp",
            "-m",
            "partitioning=iid,dirichlet",
            "partitioning.alpha=0.1",
            "num_clients=3",
            "dry_run=true",
            f"hydra.sweep.dir={sweep}",
        ],
    )
    logging.getLogger("fedexp").setLevel(logging.INFO)
    fedexp_main.main()  # a sweep whose jobs all pass returns
    assert "sweep (dry run): 2 of 2 jobs passed" in capsys.readouterr().out
    settings = [
        json.loads((sweep / job / "partitions.json").read_text())["settings"] for job in ("0", "1")
    ]
    assert "alpha" not in settings[0] and settings[1]["alpha"] == 0.1


@pytest.mark.parametrize(
    "args,direction",
    [
        (["hydra/sweeper=optuna", "optimizer.lr=interval(0.0005,0.01)"], "maximize"),
        (["hydra/sweeper=optuna", "objective=best_test_accuracy"], "maximize"),
        (["hydra/sweeper=optuna", "objective=final_test_loss"], "minimize"),
        (["hparams_search=optuna_lr"], "maximize"),
        (["hparams_search=optuna_lr", "objective=final_test_loss"], "minimize"),
        (["hydra/sweeper=optuna", "hydra.sweeper.direction=maximize"], None),
    ],
)
def test_optuna_optimises_the_objective_in_its_direction(args, direction):
    """Optuna minimises by default; fedexp points it at the objective's direction (an
    accuracy up, a loss down) unless the command line already does."""
    line = prepare(["-m", *args], config_dir(), check_settings)
    assert line.problem is None
    added = [a for a in line.argv if a not in args and a != "-m"]
    assert added == ([f"hydra.sweeper.direction={direction}"] if direction else [])


def test_a_contrary_direction_is_refused_in_one_line():
    line = prepare(
        ["-m", "hydra/sweeper=optuna", "hydra.sweeper.direction=minimize"],
        config_dir(),
        check_settings,
    )
    assert line.problem.startswith(
        "hydra.sweeper.direction=minimize is not allowed with objective=final_test_accuracy: "
        "fedexp maximizes it; leave hydra.sweeper.direction out"
    )
    assert "\n" not in line.problem
