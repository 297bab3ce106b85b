"""No run writes into another run's directory, including two runs started in one second."""

from __future__ import annotations

import datetime as real_datetime
import errno
import json
import os
import re
import sys
from pathlib import Path

import hydra.core.utils
import pytest
from conftest import REPO, read_results

from fedexp import command_line
from fedexp.command_line import fresh_dir
from fedexp.main import check_settings, main
from fedexp.results import ResultsExistError, RunResults


def test_a_run_directory_has_one_owner(tmp_path):
    """Two runs that pass the command line's check at the same moment: the first to claim
    the directory gets it, the other is refused before it writes anything."""
    first = RunResults(tmp_path / "run", "federated")
    with pytest.raises(ResultsExistError, match=r"already holds results\.json from another run"):
        RunResults(tmp_path / "run", "federated")
    assert read_results(first.dir)["status"] == "running"
    (tmp_path / "taken").mkdir()
    # claimed by another process, nothing written yet
    (tmp_path / "taken" / ".fedexp-run").write_text("1\n")
    with pytest.raises(ResultsExistError, match="belongs to another fedexp run"):
        RunResults(tmp_path / "taken", "federated")
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == [".fedexp-run"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.pt").write_bytes(b"a killed run's model")
    with pytest.raises(ResultsExistError, match=r"already holds model\.pt from another run"):
        RunResults(tmp_path / "old", "federated")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["model.pt"]


def test_model_files_of_equal_models_are_equal_bytes(tmp_path):
    import torch

    from fedexp.models import CNN

    torch.manual_seed(0)
    model = CNN(1, 32, 10)
    paths = [RunResults(tmp_path / name, "federated").save_model(model) for name in ("a", "b")]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert [p.name for p in (tmp_path / "a").iterdir() if p.name.endswith(".tmp")] == []


def test_two_runs_started_together_on_one_directory_one_is_refused_before_hydra_writes(
    tmp_path, monkeypatch
):
    """The command line claims an explicit run directory before Hydra writes its snapshot
    there: the second run is refused and the first run's .hydra/ stays its own."""
    from fedexp.results import CLAIM

    run_dir = tmp_path / "run"
    first = command_line.prepare([f"hydra.run.dir={run_dir}"], str(REPO / "conf"), check_settings)
    assert first.problem is None and (run_dir / CLAIM).read_text().strip() == str(os.getpid())
    (run_dir / CLAIM).write_text("1\n")  # as if another process had claimed it first
    second = command_line.prepare([f"hydra.run.dir={run_dir}"], str(REPO / "conf"), check_settings)
    assert second.problem.startswith(
        f"hydra.run.dir={run_dir} already holds {CLAIM} from another run"
    )


def test_a_full_disk_fails_the_run_in_one_line_and_leaves_no_partial_file(
    tmp_path, monkeypatch, capsys
):
    real = Path.write_bytes

    def full(self, data):
        if self.name.startswith(".model.pt"):
            real(self, data[: len(data) // 2])  # part of the file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    run_dir = tmp_path / "run"
    monkeypatch.setattr(
        sys, "argv", ["fedexp", "num_clients=2", "num_rounds=2", f"hydra.run.dir={run_dir}"]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("fedexp:")] == [
        f"fedexp: error: cannot write the run's files in {run_dir} (model.pt): No space left on device "
        f"(status: failed, if results.json could still be written)"
    ]
    res = read_results(run_dir)
    assert res["status"] == "failed" and "No space left on device" in res["error"]
    assert not (run_dir / "model.pt").exists()
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_fresh_dir_claims_a_new_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(command_line, "_CLAIMED", {})
    base = str(tmp_path / "outputs" / "12-00-00")
    assert fresh_dir(base) == base and (tmp_path / "outputs" / "12-00-00").is_dir()
    assert fresh_dir(base) == base  # Hydra resolves the name several times per run
    monkeypatch.setattr(command_line, "_CLAIMED", {})  # another process, same second
    assert fresh_dir(base) == base + "-2"
    monkeypatch.setattr(command_line, "_CLAIMED", {})
    assert fresh_dir(base) == base + "-3"


class FrozenDatetime(real_datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2026, 11, 25, 12, 0, 0)


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "multirun"])
def test_two_runs_in_the_same_second_get_their_own_directories(
    tmp_path, monkeypatch, capsys, multirun
):
    """Hydra names the directory after the second the run started; both runs keep theirs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hydra.core.utils, "datetime", FrozenDatetime)
    dirs = []
    for seed in (1, 2):
        monkeypatch.setattr(command_line, "_CLAIMED", {})  # each run is its own process
        args = ["-m"] if multirun else []
        monkeypatch.setattr(
            sys,
            "argv",
            ["fedexp", *args, "mode=centralized", "centralized.epochs=1", f"seed={seed}"],
        )
        main()
        capsys.readouterr()
    base = tmp_path / "outputs" / ("multirun" if multirun else "") / "2026-11-25"
    dirs = sorted(p for p in base.iterdir())
    assert [p.name for p in dirs] == ["12-00-00", "12-00-00-2"]
    for seed, d in zip((1, 2), dirs):
        job = d / "0" if multirun else d
        assert json.loads((job / "results.json").read_text())["seed"] == seed
        assert f"seed={seed}" in (job / ".hydra" / "overrides.yaml").read_text()


def _record(r: int) -> dict:
    return {
        "round": r,
        "fit_clients": 10,
        "fit_failures": 0,
        "evaluate_clients": 5,
        "train_loss": 1 / r,
        "distributed_accuracy": 0.5,
        "test_loss": float("nan") if r == 3 else 0.25,
        "seconds": 0.1 * r,
    }


def test_rounds_appended_in_place_give_the_files_a_whole_write_gives(tmp_path):
    """Rounds are appended to results.json in place while nothing else changes; the file
    is then the bytes a whole write of the same data gives."""
    from fedexp.results import RunResults

    results = RunResults(tmp_path / "a", "federated", info={"seed": 0})
    results.data["backend"] = "inline"  # a key changed: the next round writes the files whole
    for r in range(1, 6):
        results.add(_record(r))
        if r == 1:
            stamp = results.data["wall_seconds"]
    written = json.loads((tmp_path / "a" / "results.json").read_text())
    assert written["wall_seconds"] == stamp  # untouched since
    appended = {name: (tmp_path / "a" / name).read_bytes() for name in ("results.json",)}
    results.write()  # the same data, written whole
    for name, data in appended.items():
        whole = (tmp_path / "a" / name).read_bytes()
        if name == "results.json":
            whole = re.sub(rb'"wall_seconds": [0-9.]+', f'"wall_seconds": {stamp}'.encode(), whole)
        assert data == whole, name
    assert [r["round"] for r in json.loads(appended["results.json"])["rounds"]] == [1, 2, 3, 4, 5]
    assert json.loads(appended["results.json"])["rounds"][2]["test_loss"] is None  # NaN


@pytest.mark.slow
def test_writing_a_round_costs_the_same_at_round_10_and_at_round_10000(tmp_path):
    """docs/troubleshooting.md's figure: the median time of add() over 20 rounds after 10 and after
    10,000 rounds."""
    import statistics
    import time

    from fedexp.results import RunResults

    results = RunResults(tmp_path / "a", "federated")

    def cost(start: int) -> float:
        times = []
        for r in range(start, start + 20):
            t0 = time.perf_counter()
            results.add(_record(r))
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    for r in range(1, 11):
        results.add(_record(r))
    early = cost(11)
    for r in range(31, 10_001):
        results.steps.append(_record(r))
    results.write()
    late = cost(10_001)
    assert late < 3 * early + 0.0005, (early, late)
    assert len(json.loads((tmp_path / "a" / "results.json").read_text())["rounds"]) == 10_020
