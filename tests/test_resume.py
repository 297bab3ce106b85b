"""Resume: a killed, stopped or completed run continues from its last checkpoint and ends
exactly where an unbroken run ends; a sweep continues with the jobs it had not completed."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import compose_cfg, read_results, signal_this_process, when_rounds_recorded
from flwr.common import ndarrays_to_parameters
from flwr.server.strategy import FedAdam
from test_interrupts_and_divergence import start

from fedexp import checkpoints, resume
from fedexp.checks import ConfigError
from fedexp.federated.methods.base import DiskClientState
from fedexp.federated.server.state import StrategyState
from fedexp.models import CNN
from fedexp.results import ResultsExistError, take_over, without_timing


def _rounds(run_dir: Path) -> list[dict]:
    return without_timing(read_results(run_dir)["rounds"])


def _kill_after(procs: dict, rounds: int, timeout: float = 240) -> None:
    """SIGKILL each process as soon as its results.json lists `rounds` rounds."""
    deadline = time.monotonic() + timeout
    alive = dict(procs)
    while alive and time.monotonic() < deadline:
        for run_dir, proc in list(alive.items()):
            try:
                done = len(read_results(run_dir)["rounds"])
            except (OSError, ValueError, KeyError):
                done = 0
            assert proc.poll() is None, proc.communicate()
            if done >= rounds:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate(timeout=30)
                del alive[run_dir]
        time.sleep(0.02)
    assert not alive, f"no {rounds} rounds after {timeout} s"


@pytest.mark.slow
def test_a_killed_run_resumed_ends_exactly_where_an_unbroken_run_ends(tmp_path, fedexp):
    """SCAFFOLD (server and client control variates, the most state a method keeps): killed
    with SIGKILL after round 3, resumed with `fedexp resume=DIR`. The unbroken run (in
    this process) runs while the killed one starts. FedAdam's moments resume in the
    extension test below; FedAvg keeps a subset of either's state."""
    args = ["seed=5", "num_rounds=6", "num_clients=2"]
    strategies = ("scaffold",)
    killed = {s: tmp_path / f"killed-{s}" for s in strategies}
    procs = {d: start([*args, f"strategy={s}"], d) for s, d in killed.items()}
    killer = ThreadPoolExecutor(1).submit(_kill_after, procs, 3)
    straight = tmp_path / "straight"
    proc = fedexp("-m", *args, f"strategy={','.join(strategies)}", f"hydra.sweep.dir={straight}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    killer.result()
    for job, (strategy, run_dir) in enumerate(killed.items()):
        before = read_results(run_dir)
        assert before["status"] == "running" and 3 <= len(before["rounds"]) < 6, before
        assert [p.name for p in run_dir.rglob("*.tmp*")] == []
        assert set(torch.load(run_dir / "model.pt", weights_only=True)) == set(
            CNN(1, 32, 10).state_dict()
        )

        proc = fedexp(f"resume={run_dir}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        after = read_results(run_dir)
        assert after["status"] == "completed" and 2 <= after["resumed_after"][0] < 6
        assert f"resumed after round {after['resumed_after'][0]}" in proc.stdout
        assert _rounds(run_dir) == _rounds(straight / str(job)), strategy
        assert (run_dir / "model.pt").read_bytes() == (
            straight / str(job) / "model.pt"
        ).read_bytes(), strategy
        assert checkpoints.steps(run_dir) == [5, 6]  # checkpoint.keep=2
    # SCAFFOLD's clients kept their control variates in versioned files, 3 versions at most.
    versions = sorted(p.name for p in (killed["scaffold"] / "client_state" / "0").iterdir())
    assert versions == [f"scaffold.c_i.{r:06d}.npz" for r in (4, 5, 6)]


@pytest.mark.slow
def test_a_completed_run_extended_equals_a_longer_run_and_then_has_nothing_left(tmp_path, fedexp):
    args = ["num_clients=2", "strategy=fedadam", "evaluation.all_clients_every=2"]
    short, long_ = tmp_path / "short", tmp_path / "long"
    assert fedexp(*args, "num_rounds=2", f"hydra.run.dir={short}").returncode == 0
    assert fedexp(*args, "num_rounds=4", f"hydra.run.dir={long_}").returncode == 0
    proc = fedexp(f"resume={short}", "num_rounds=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _rounds(short) == _rounds(long_)
    assert (short / "model.pt").read_bytes() == (long_ / "model.pt").read_bytes()
    # clients.csv lists every client at rounds 2 and 4, as the longer run's does
    assert (short / "clients.csv").read_text() == (long_ / "clients.csv").read_text()
    assert "num_rounds=4" in yaml.safe_load((short / ".hydra" / "overrides.yaml").read_text())
    again = fedexp(f"resume={short}")
    assert again.returncode == 0
    assert (
        again.stderr
        == f"fedexp: {short} completed its 4 rounds: nothing left to do (num_rounds=N with N > 4 extends it)\n"
    )


@pytest.mark.slow
def test_an_interrupted_sweep_resumed_completes_every_job_and_runs_none_twice(tmp_path, fedexp):
    """SIGTERM (as Slurm sends at a time limit) while the sweep's second job runs; in this
    process, as `fedexp` runs a sweep's jobs one after another."""
    sweep = tmp_path / "sweep"

    stopper = when_rounds_recorded(sweep / "1", lambda: signal_this_process(signal.SIGTERM))
    proc = fedexp("-m", "seed=0,1", "num_rounds=2", "num_clients=2", f"hydra.sweep.dir={sweep}")
    stopper.result()
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert read_results(sweep / "1")["status"] == "interrupted"
    first = (sweep / "0" / "results.json").read_bytes()

    proc = fedexp(f"resume={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: 2 of 2 jobs completed" in proc.stdout
    assert (sweep / "0" / "results.json").read_bytes() == first  # completed before: not run again
    assert f"resume: {sweep / '0'} completed its 2 rounds before; skipped" in proc.stdout
    assert read_results(sweep / "1")["resumed_after"][0] >= 1
    assert all(read_results(sweep / j)["status"] == "completed" for j in "01")


def _fake_run(
    run_dir: Path, status: str = "completed", rounds: int = 5, mode: str = "federated"
) -> Path:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["num_clients=2", f"num_rounds={rounds}"])
    )
    (run_dir / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"mode": mode, "num_rounds": rounds})
    )
    steps = [{"round": r} for r in range(1, rounds + 1)]
    (run_dir / "results.json").write_text(
        json.dumps({"status": status, "mode": mode, "rounds": steps})
    )
    return run_dir


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["resume={d}", "seed=3"],
            "resume={d} continues the run as it was recorded, so seed=3 cannot be given "
            "(only num_rounds, verbose may change; num_rounds may grow)",
        ),
        (
            ["resume={d}", "num_rounds=4"],
            "num_rounds=4 is not allowed with resume={d}: it completed 5 rounds already",
        ),
        (
            ["resume={d}", "num_rounds=9"],
            "resume={d}: it has no checkpoint to continue from (it ran with checkpoint.keep=0)",
        ),
        (
            ["resume={d}/nowhere"],
            "resume={d}/nowhere: not a fedexp run or sweep directory (it needs "
            ".hydra/overrides.yaml and results.json, or multirun.yaml)",
        ),
        (
            ["resume={d}", "resume={d}"],
            "resume takes one directory: fedexp resume=DIR (a run's or a sweep's)",
        ),
    ],
)
def test_resume_refuses_what_would_not_continue_the_same_run_in_one_line(
    tmp_path, fedexp, args, expected
):
    run_dir = _fake_run(tmp_path / "run")
    proc = fedexp(*(a.format(d=run_dir) for a in args))
    assert proc.returncode == 2
    assert proc.stderr == f"fedexp: error: {expected.format(d=run_dir)}\n"
    assert read_results(run_dir)["status"] == "completed"  # untouched


def test_resume_of_a_centralized_run_is_refused(tmp_path, fedexp):
    run_dir = _fake_run(tmp_path / "run", status="interrupted", mode="centralized")
    proc = fedexp(f"resume={run_dir}")
    assert proc.returncode == 2 and "only federated runs can be resumed" in proc.stderr


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    """conf/ changed between the run and its resume: the composed config differs from the
    one the checkpoint recorded."""
    run_dir = _fake_run(tmp_path / "run", status="interrupted", rounds=2)
    cfg = compose_cfg("num_clients=2")
    from omegaconf import OmegaConf

    recorded = OmegaConf.to_container(cfg, resolve=True)
    recorded["optimizer"]["lr"] = 0.5
    checkpoints.save(run_dir, 2, {"config": recorded}, keep=2)
    with pytest.raises(
        ConfigError, match=r"^resume: optimizer.lr is 0.001 now but 0.5 in the checkpoint of"
    ):
        resume.starting_point(cfg, str(run_dir))
    recorded["optimizer"]["lr"], recorded["num_rounds"] = 0.001, 99  # num_rounds may differ
    checkpoints.save(run_dir, 2, {"config": recorded}, keep=2)
    assert resume.starting_point(cfg, str(run_dir)).after == 2


def test_checkpoints_keep_the_newest_and_a_damaged_one_is_named(tmp_path):
    for step in range(1, 5):
        checkpoints.save(tmp_path, step, {"x": step}, keep=2)
    assert checkpoints.steps(tmp_path) == [3, 4] and checkpoints.newest(tmp_path)["x"] == 4
    (tmp_path / "checkpoints" / "000004.ckpt").write_bytes(b"not a pickle")
    with pytest.raises(checkpoints.CheckpointError, match=r"000004\.ckpt cannot be read"):
        checkpoints.newest(tmp_path)


def test_strategy_state_is_what_the_rounds_changed_and_restores_into_a_new_strategy():
    weights = [np.ones((2, 3), np.float32), np.zeros(3, np.float32)]

    def build():
        return FedAdam(initial_parameters=ndarrays_to_parameters(weights), eta=0.1)

    strategy = build()
    state = StrategyState(strategy)
    assert state.capture() == {}
    strategy.m_t = [w + 1 for w in weights]
    strategy.current_weights = [w * 2 for w in weights]
    strategy.on_fit_config_fn = lambda r: {}  # not data: never saved
    saved = state.capture()
    assert sorted(saved) == ["current_weights", "m_t"]
    fresh = build()
    StrategyState(fresh).restore(saved)
    assert all(np.array_equal(a, b) for a, b in zip(fresh.m_t, strategy.m_t))
    assert fresh.v_t is None and fresh.eta == 0.1


def test_client_state_files_are_read_as_of_a_round_and_later_ones_are_forgotten(tmp_path):
    for r in (1, 3, 4, 6):
        DiskClientState(tmp_path / "0", r, keep=3).set("c", [np.full(2, r)])
    assert sorted(p.name for p in (tmp_path / "0").iterdir()) == [
        "c.000003.npz",
        "c.000004.npz",
        "c.000006.npz",
    ]
    assert DiskClientState(tmp_path / "0", 5).get("c")[0][0] == 4
    assert DiskClientState(tmp_path / "0").get("c")[0][0] == 6  # no round: the newest
    assert DiskClientState(tmp_path / "0", 2).get("c") is None
    assert DiskClientState.forget_after(tmp_path, 4) == 1
    assert DiskClientState(tmp_path / "0").get("c")[0][0] == 4


def test_a_run_directory_is_taken_over_only_from_a_process_that_ended(tmp_path):
    (tmp_path / ".fedexp-run").write_text(f"{os.getppid()}\n")  # alive: pytest's parent
    with pytest.raises(
        ResultsExistError, match=f"in use by a running fedexp \\(pid {os.getppid()}\\)"
    ):
        take_over(tmp_path)
    (tmp_path / ".fedexp-run").write_text("999999999\n")  # no such process
    take_over(tmp_path)
    assert (tmp_path / ".fedexp-run").read_text() == f"{os.getpid()}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fedexp-run"]
