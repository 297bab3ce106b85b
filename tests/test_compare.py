"""fedexp-compare on run directories this test writes itself, in the layout a Hydra run
leaves (results.json, .hydra/config.yaml, overrides.yaml, hydra.yaml), with known numbers.

No simulation runs here; test_sweeps.py compares a real sweep.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from fedexp.compare import main as compare
from fedexp.main import config_dir
from fedexp.progress import duration, eta
from fedexp.results import record_failure


@functools.cache
def snapshot(overrides: tuple[str, ...]) -> tuple[str, str]:
    """Hydra's config.yaml and (the part of) hydra.yaml that a run with `overrides` writes."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        full = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    choices = OmegaConf.to_container(full.hydra.runtime.choices)
    with open_dict(full):
        del full["hydra"]
    return OmegaConf.to_yaml(full), yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}})


def write_run(path: Path, overrides: list[str], results: dict) -> Path:
    """A run directory as `fedexp OVERRIDES` would leave it, with the given results."""
    config, hydra_yaml = snapshot(tuple(overrides))
    snap = path / ".hydra"
    snap.mkdir(parents=True)
    (snap / "config.yaml").write_text(config)
    (snap / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (snap / "hydra.yaml").write_text(hydra_yaml)
    (path / "results.json").write_text(json.dumps(results))
    return path


def federated(
    accs: list[float], losses: list[float], seed=0, status="completed", dataset="digits"
) -> dict:
    rounds = [
        {
            "round": i + 1,
            "fit_clients": 2,
            "fit_failures": 0,
            "evaluate_clients": 1,
            "distributed_loss": None,
            "distributed_accuracy": None,
            "test_loss": loss,
            "test_accuracy": a,
            "seconds": 1.5,
        }
        for i, (a, loss) in enumerate(zip(accs, losses))
    ]
    return {
        "status": status,
        "mode": "federated",
        "wall_seconds": 12.5,
        "rounds": rounds,
        "final": {"test_loss": losses[-1], "test_accuracy": accs[-1]},
        "seed": seed,
        "data": {"dataset": dataset, "train_examples": 1437, "test_examples": 360, "clients": 10},
        "initial": {"test_loss": 2.30, "test_accuracy": 0.1},
    }


def centralized(acc: float, loss: float, seed=0) -> dict:
    epochs = [
        {
            "epoch": 1,
            "train_loss": 2.0,
            "train_accuracy": 0.3,
            "val_loss": 1.9,
            "val_accuracy": 0.4,
            "seconds": 1.0,
        },
        {
            "epoch": 2,
            "train_loss": 1.0,
            "train_accuracy": 0.7,
            "val_loss": 0.9,
            "val_accuracy": 0.8,
            "seconds": 1.0,
            "test_loss": loss,
            "test_accuracy": acc,
        },
    ]
    return {
        "status": "completed",
        "mode": "centralized",
        "wall_seconds": 3.0,
        "epochs": epochs,
        "final": {"test_loss": loss, "test_accuracy": acc},
        "seed": seed,
        "data": {"dataset": "digits", "train_examples": 1437, "test_examples": 360, "clients": 10},
    }


# Final test accuracy per (fraction_fit, seed): fraction 1.0 wins on average.
ACC = {
    ("0.5", 0): 0.61,
    ("0.5", 1): 0.58,
    ("0.5", 2): 0.66,
    ("1.0", 0): 0.71,
    ("1.0", 1): 0.69,
    ("1.0", 2): 0.74,
}


@pytest.fixture
def seed_sweep(tmp_path) -> Path:
    """A 2 x 3 sweep (strategy.fraction_fit x seed) laid out as Hydra's multirun does."""
    sweep = tmp_path / "multirun" / "10-00-00"
    for job, ((frac, seed), acc) in enumerate(ACC.items()):
        write_run(
            sweep / str(job),
            ["num_rounds=2", f"strategy.fraction_fit={frac}", f"seed={seed}"],
            federated([0.3, acc], [2.0, 1.0 + seed / 10], seed=seed),
        )
    return sweep


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_seed_groups_report_mean_and_sample_std(seed_sweep, tmp_path, capsys):
    out_csv = tmp_path / "table.csv"
    assert compare([str(seed_sweep), "--csv", str(out_csv)]) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 6
    # Only what differs is a column: not num_rounds (same everywhere), not hydra's paths.
    assert [c for c in rows[0] if c in ("strategy.fraction_fit", "seed", "num_rounds")] == [
        "strategy.fraction_fit",
        "seed",
    ]
    for frac in ("0.5", "1.0"):
        accs = [ACC[(frac, s)] for s in range(3)]
        group = [r for r in rows if r["strategy.fraction_fit"] == frac]
        assert len(group) == 3 and {r["seed_group"] for r in group} == {
            f"strategy.fraction_fit={frac}"
        }
        mean = float(group[0]["group_final_test_accuracy_mean"])
        std = float(group[0]["group_final_test_accuracy_std"])
        assert mean == pytest.approx(np.mean(accs))
        assert std == pytest.approx(np.std(accs, ddof=1))  # sample std, as papers report
        assert std != pytest.approx(np.std(accs, ddof=0))
        losses = [1.0 + s / 10 for s in range(3)]
        assert float(group[0]["group_final_test_loss_std"]) == pytest.approx(np.std(losses, ddof=1))
        # the printed group row carries the same numbers
        assert f"{np.mean(accs):.4f} ± {np.std(accs, ddof=1):.4f}" in text
    # runs sorted by final test accuracy, best first
    assert [float(r["final_test_accuracy"]) for r in rows] == sorted(ACC.values(), reverse=True)
    assert "seed groups" in text and "sample std" in text


def test_table_lists_each_run_with_its_numbers(seed_sweep, capsys):
    assert compare([str(seed_sweep)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[1].split()
    assert header[:3] == ["run", "strategy.fraction_fit", "seed"]
    best = lines[3].split()  # the first row under the header and its rule
    assert best[:5] == ["5", "1.0", "2", "completed", "federated"]
    assert best[5:9] == ["2", "0.7400", "0.7400", "1.2000"]


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_group_choices_show_as_options_and_unused_settings_stay_blank(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root / "a", ["optimizer=sgd", "optimizer.lr=0.05"], federated([0.5], [1.5]))
    write_run(root / "b", [], federated([0.6], [1.4]))  # the default optimizer: adam
    write_run(root / "c", ["mode=centralized", "strategy.fraction_fit=0.3"], centralized(0.8, 0.7))
    out_csv = tmp_path / "t.csv"
    assert compare([str(root), "--csv", str(out_csv)]) == 0
    rows = {r["run"]: r for r in csv.DictReader(out_csv.open())}
    assert {r["optimizer"] for r in rows.values()} == {"sgd", "adam"}
    assert rows["a"]["optimizer"] == "sgd" and rows["b"]["optimizer"] == "adam"
    assert rows["a"]["optimizer.lr"] == "0.05" and rows["b"]["optimizer.lr"] == "0.001"
    assert "optimizer._target_" not in rows["a"]  # explained by the group choice
    # fraction_fit is unused by the centralized run: blank there, and equal among the others
    assert "strategy.fraction_fit" not in rows["a"]
    assert rows["c"]["mode"] == "centralized" and rows["c"]["rounds"] == "2"
    assert list(rows) == ["c", "b", "a"]


def test_what_only_observes_a_run_is_not_a_setting(tmp_path, capsys):
    """Loggers, callbacks and checkpoints do not change a run's numbers: two seeds that
    differ only in them form one seed group."""
    root = tmp_path / "runs"
    write_run(
        root / "a",
        ["logger=[csv,tensorboard]", "checkpoint.keep=0"],
        federated([0.5], [1.5], seed=0),
    )
    write_run(root / "b", ["~callbacks.progress", "seed=1"], federated([0.7], [1.2], seed=1))
    assert compare([str(root)]) == 0
    out = capsys.readouterr().out
    assert "logger" not in out and "checkpoint" not in out and "callbacks" not in out
    assert "0.6000 ± 0.1414" in out  # one group of seeds 0 and 1


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_plot_draws_runs_groups_and_centralized_reference(seed_sweep, tmp_path, capsys):
    write_run(
        seed_sweep.parent / "central" / "0", ["mode=centralized", "seed=0"], centralized(0.9, 0.5)
    )
    png = tmp_path / "out" / "compare.png"
    assert compare([str(seed_sweep.parent), "--plot", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.shape[1] == 1100 and image.std() > 0.05  # not a blank canvas


def test_a_failed_run_is_listed_with_its_error(seed_sweep, capsys):
    job = write_run(seed_sweep / "6", ["num_clients=0"], {})
    (job / "results.json").unlink()
    assert record_failure(job, "federated", "ConfigError: num_clients=0 is not allowed")
    assert compare([str(seed_sweep)]) == 0
    text = capsys.readouterr().out
    failed = [line for line in text.splitlines() if " failed " in line]
    assert len(failed) == 1 and failed[0].split()[0] == "6"
    assert "6: ConfigError: num_clients=0 is not allowed" in text


def test_no_control_character_from_a_results_file_reaches_the_terminal(seed_sweep, capsys):
    """A status or error holding escape codes is shown escaped: a file cannot recolour, clear
    or retitle the terminal."""
    path = seed_sweep / "3" / "results.json"
    data = json.loads(path.read_text())
    path.write_text(
        json.dumps({**data, "status": "\x1b[2Jcompleted", "error": "boom\x1b]0;title\x07"})
    )
    assert compare([str(seed_sweep)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2Jcompleted" in out and "boom\\x1b]0;title\\x07" in out


def test_record_failure_never_replaces_results(tmp_path):
    (tmp_path / "results.json").write_text('{"status": "completed"}')
    assert record_failure(tmp_path, "federated", "boom") is False
    assert (tmp_path / "results.json").read_text() == '{"status": "completed"}'


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        (json.dumps({"mode": "federated", "wall_seconds": 1.0, "rounds": []}), "'status' is None"),
        (
            json.dumps(
                {
                    "status": "completed",
                    "mode": "federated",
                    "wall_seconds": 1.0,
                    "rounds": [{"round": 1, "test_accuracy": "high"}],
                    "final": {},
                }
            ),
            "rounds[0].test_accuracy is 'high'",
        ),
        (
            json.dumps(
                {"status": "completed", "mode": "federated", "wall_seconds": 1.0, "final": {}}
            ),
            "needs a list 'rounds'",
        ),
        (
            json.dumps({"status": "completed", "mode": "swarm", "wall_seconds": 1.0}),
            "'mode' is 'swarm'",
        ),
        (b'{"status": "completed \xff"}', "is not UTF-8 text (byte 22)"),
        (
            json.dumps({**federated([0.5], [1.0]), "data": "digits"}),
            "'data' is 'digits', expected an object",
        ),
        (
            json.dumps({**federated([0.5], [1.0]), "initial": {"test_loss": "low"}}),
            "initial.test_loss is 'low'",
        ),
        (
            json.dumps(federated([0.5], [1.0]) | {"rounds": [{"round": 1, "all_clients": "all"}]}),
            "rounds[0].all_clients is 'all', expected an object",
        ),
    ],
)
def test_results_that_break_the_contract_are_one_line_errors(seed_sweep, capsys, content, message):
    path = seed_sweep / "3" / "results.json"
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    assert compare([str(seed_sweep)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedexp-compare: error: ")
    assert message in err and str(seed_sweep / "3" / "results.json") in err


def test_paths_without_results_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert compare([str(tmp_path / "empty")]) == 2
    assert "no results.json in it or below it" in capsys.readouterr().err
    assert compare([str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_runs_on_different_datasets_are_not_compared(tmp_path, capsys):
    write_run(tmp_path / "a", [], federated([0.5], [1.5]))
    write_run(tmp_path / "b", ["dataset=mnist"], federated([0.9], [0.3], dataset="mnist"))
    assert compare([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "different datasets (digits: 1 run, mnist: 1 run)" in err and err.count("\n") == 1
    assert compare([str(tmp_path), "--mixed-datasets"]) == 0
    assert "dataset" in capsys.readouterr().out.splitlines()[1].split()


def test_outputs_are_not_overwritten(seed_sweep, tmp_path, capsys):
    out_csv = tmp_path / "table.csv"
    out_csv.write_text("mine")
    assert compare([str(seed_sweep), "--csv", str(out_csv)]) == 2
    assert "already exists" in capsys.readouterr().err and out_csv.read_text() == "mine"
    assert compare([str(seed_sweep), "--plot", str(seed_sweep / "0" / "results.png")]) == 2
    assert compare([str(seed_sweep), "--csv", str(out_csv), "--overwrite"]) == 0
    assert len(list(csv.reader(out_csv.open()))) == 7


def test_eta_from_the_rounds_done():
    assert eta([{"seconds": 30.0}], 5) == " | ETA 2m00s"
    # the first round (Ray's workers starting) is left out once later rounds exist
    assert eta([{"seconds": 30.0}, {"seconds": 10.0}, {"seconds": 12.0}], 5) == " | ETA 22s"
    assert eta([{"seconds": 1.0}] * 5, 5) == ""
    assert duration(7500) == "2h05m" and duration(59.4) == "59s"


def test_repeats_of_a_seed_count_once_and_show_as_repeats(tmp_path, capsys):
    """A run and its unbroken repeat (seed 0 twice) beside seed 1: the group's statistics
    are over the two distinct seeds, and the seeds cell says that 0 ran twice."""
    runs = tmp_path / "runs"
    for name, seed, acc in (("a", 0, 0.6), ("b", 0, 0.6), ("c", 1, 0.8)):
        write_run(runs / name, ["num_rounds=2", f"seed={seed}"], federated([0.3, acc], [2.0, 1.0]))
    out_csv = tmp_path / "table.csv"
    assert compare([str(runs), "--csv", str(out_csv)]) == 0
    text = capsys.readouterr().out
    (row,) = [line.split() for line in text.splitlines() if line.startswith("federated ")]
    assert row[:3] == ["federated", "0×2,1", "2"]  # mode, seeds, n: two distinct seeds
    assert f"0.7000 ± {np.std([0.6, 0.8], ddof=1):.4f}" in text  # not over 0.6, 0.6, 0.8
    assert {r["group_runs"] for r in csv.DictReader(out_csv.open())} == {"2"}
    # Repeats alone are one sample, with no spread; repeats that ended apart say so.
    (runs / "c").rename(tmp_path / "c")
    write_run(runs / "d", ["num_rounds=2", "seed=0"], federated([0.3, 0.5], [2.0, 1.0]))
    assert compare([str(runs)]) == 0
    (row,) = [
        line.split()
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("federated ")
    ]
    assert row[:4] == ["federated", "0×3", "(differ)", "1"] and "±" not in row
