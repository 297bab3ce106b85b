"""Ctrl-C / SIGTERM keep the results so far; a diverging run keeps its last good model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import REPO, read_results, signal_this_process, when_rounds_recorded

from fedexp.models import CNN


def start(args, run_dir: Path) -> subprocess.Popen:
    """`python -m fedexp ARGS` in its own session, as a shell starts a foreground job."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.Popen(
        [sys.executable, "-m", "fedexp", *args, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_steps(run_dir: Path, key: str, proc: subprocess.Popen, timeout=240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((run_dir / "results.json").read_text())[key]:
                return
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"no {key} after {timeout} s")


def wait_for_line(run_dir: Path, text: str, proc: subprocess.Popen, timeout=120) -> float:
    """Wait until main.log holds `text`; return the deadline, for waits that follow."""
    deadline = time.monotonic() + timeout
    while text not in _text(run_dir / "main.log") and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    return deadline


def session_processes(sid: int) -> list[str]:
    """Live processes of session `sid` (zombies awaiting their reaper do not count)."""
    out = subprocess.run(
        ["ps", "-o", "stat=,args=", "-s", str(sid)], capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if line.strip() and not line.lstrip().startswith("Z")]


def test_ctrl_c_keeps_the_rounds_so_far(fedexp, tmp_path):
    """Inline clients, in this process (the SIGTERM tests below stop clients on Ray, and
    check that no process is left)."""
    run_dir = tmp_path / "run"
    stopper = when_rounds_recorded(run_dir, lambda: signal_this_process(signal.SIGINT))
    t0 = time.monotonic()
    proc = fedexp(
        "num_clients=3", "num_rounds=50", "simulation.backend=inline", f"hydra.run.dir={run_dir}"
    )
    stopper.result()
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert time.monotonic() - t0 < 120
    assert (
        f"fedexp: interrupted by SIGINT: the results so far are in {run_dir} (status: interrupted)"
        in proc.stderr
    )
    assert "Traceback" not in proc.stdout + proc.stderr
    res = read_results(run_dir)
    assert res["status"] == "interrupted" and res["error"] == "interrupted by SIGINT"
    assert res["rounds"][0]["round"] == 1 and len(res["rounds"]) < 50
    assert res["final"]["test_accuracy"] == res["rounds"][-1]["test_accuracy"]
    assert (run_dir / "model.pt").is_file() and (run_dir / "metrics.csv").is_file()


def test_sigterm_to_the_group_while_ray_starts_is_an_interrupt(tmp_path):
    """`timeout`, `kill -- -PGID` and Slurm signal the whole process group. During
    `ray.init`, Ray's own SIGTERM handler is in place; the run still ends as interrupted."""
    run_dir = tmp_path / "run"
    proc = start(["num_clients=2", "num_rounds=3", "simulation.backend=ray"], run_dir)
    wait_for_line(run_dir, "starting Ray", proc)
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    res = read_results(run_dir)
    assert res["status"] == "interrupted" and res["error"] == "interrupted by SIGTERM", res
    assert (run_dir / "model.pt").is_file() and "Traceback" not in out + err
    deadline = time.monotonic() + 20
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert session_processes(proc.pid) == []


def test_sigterm_during_long_client_work_stops_the_client_workers(tmp_path):
    """`kill PID` reaches only the driver: the clients' fit (minutes of local epochs) is
    cut short by stopping their Ray workers KILL_AFTER seconds later, not waited for."""
    run_dir = tmp_path / "run"
    proc = start(["num_clients=2", "num_rounds=2", "local_epochs=400"], run_dir)
    deadline = wait_for_line(run_dir, "starting Ray", proc)
    # Ray names a worker's process after the actor method it runs: both clients are fitting
    while (
        sum("ray::ClientAppActor.run" in p for p in session_processes(proc.pid)) < 2
        and time.monotonic() < deadline
    ):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    time.sleep(1)
    assert proc.poll() is None and not read_results(run_dir)["rounds"]
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    _out, err = proc.communicate(timeout=120)
    stopped_after = time.monotonic() - t0
    assert proc.returncode == 143, err[-3000:]
    assert "stopping their 2 Ray worker(s)" in err, err[-3000:]
    assert stopped_after < 30, stopped_after
    res = read_results(run_dir)
    assert res["status"] == "interrupted" and res["rounds"] == []
    deadline = time.monotonic() + 20
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert session_processes(proc.pid) == []


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_sigterm_stops_a_centralized_run_with_143(fedexp, tmp_path):
    """In this process, as test_resume.py's interrupted sweep."""
    run_dir = tmp_path / "run"
    stopper = when_rounds_recorded(
        run_dir, lambda: signal_this_process(signal.SIGTERM), steps="epochs"
    )
    proc = fedexp("mode=centralized", "centralized.epochs=500", f"hydra.run.dir={run_dir}")
    stopper.result()
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "fedexp: interrupted by SIGTERM" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    res = read_results(run_dir)
    assert res["status"] == "interrupted" and 1 <= len(res["epochs"]) < 500
    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())


def test_a_diverging_run_ends_as_diverged_and_keeps_the_last_good_model(fedexp, tmp_path):
    run_dir = tmp_path / "run"
    proc = fedexp(
        "mode=centralized", "optimizer=sgd", "optimizer.lr=1e6", f"hydra.run.dir={run_dir}"
    )
    assert proc.returncode == 1
    assert (
        "fedexp: run diverged: epoch 1: training loss became nan; model.pt holds the initial model"
        in proc.stderr
    )
    assert "Traceback" not in proc.stdout + proc.stderr
    res = read_results(run_dir)
    assert res["status"] == "diverged" and res["epochs"] == []
    state = torch.load(run_dir / "model.pt", weights_only=True)
    torch.manual_seed(0)
    initial = CNN(1, 32, 10).state_dict()
    assert all(torch.equal(state[k], initial[k]) for k in initial)
    assert res["final"]["test_accuracy"] is not None and 0 <= res["final"]["test_accuracy"] <= 1
