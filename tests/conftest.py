"""Shared test helpers: composing fedexp's real config, running the real CLI, one Ray cluster."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from fedexp.main import config_dir

REPO = Path(__file__).resolve().parent.parent

# Tests share few cores with Ray workers (one thread each) and other processes; torch's
# default of one intra-op thread per core then makes small in-process training many times
# slower, not faster.
torch.set_num_threads(1)


# Modules whose tests start Ray or fedexp processes: all of them are `slow`. Tests that use
# the session's Ray cluster are marked too (pytest_collection_modifyitems), so that
# `python -m pytest -m "not slow"` is the fast tier.
SLOW_MODULES = {
    "test_sweeps",
    "test_cluster",
    "test_runs",
    "test_engine_start",
    "test_interrupts_and_divergence",
    "test_install",
    "test_faults_runs",
    "test_run_dirs",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__ in SLOW_MODULES or {
            "ray_cluster",
            "run_on_cluster",
            "run_inline",
        } & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


_COMPOSED: dict[tuple[str, ...], object] = {}


def compose_cfg(*overrides: str):
    """The config as `fedexp ARGS` composes it: a copy of its own for each caller (Hydra's
    compose costs a tenth of a second, and many tests compose the same overrides)."""
    if overrides not in _COMPOSED:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            _COMPOSED[overrides] = compose(config_name="config", overrides=list(overrides))
    return copy.deepcopy(_COMPOSED[overrides])


@pytest.fixture
def make_cfg():
    """Compose the config as `fedexp` would, from a list of command-line overrides."""
    return compose_cfg


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m fedexp ARGS` in `cwd`, as a user would from a shell."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-m", "fedexp", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def fedexp(monkeypatch, capsys):
    """`fedexp ARGS`, in this process (`fedexp.main.main` with a patched argv; small runs
    have their clients inline): (exit status, stdout, stderr) as `proc`'s fields."""
    from types import SimpleNamespace

    from fedexp.main import main

    def run(*args: str):
        monkeypatch.setattr(sys, "argv", ["fedexp", *args])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


def when_rounds_recorded(run_dir: Path, action, timeout: float = 240):
    """In a thread: `action()` as soon as `run_dir`'s results.json lists a round (or after
    `timeout` s). Returns the thread's future; for stopping a run, or what it talks to,
    mid-run while this process runs it."""
    from concurrent.futures import ThreadPoolExecutor

    def wait_then_act():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if read_results(run_dir)["rounds"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        action()

    return ThreadPoolExecutor(1).submit(wait_then_act)


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """The address of one local Ray head shared by this session's simulations.

    Starting Ray costs 10-20 s per run here; runs given `simulation.ray_address=<this>` join
    this cluster instead. The head runs in its own process session with its own temp dir:
    its address file stays out of /tmp/ray (so no other Ray user on the machine joins it by
    accident), and teardown stops exactly its processes (`ray stop` would stop every Ray on
    the machine).
    """
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="fxray", dir="/tmp")  # short: Ray's socket paths are limited
    env = dict(os.environ, RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0")
    head = subprocess.Popen(
        [
            shutil.which("ray") or "ray",
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not list(Path(temp).glob("session_*/sockets/raylet")):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the test Ray head did not start (exit code {head.poll()})")
            time.sleep(0.5)
        yield address
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def run_inline(tmp_path_factory):
    """Run fedexp in this process with its clients inline (simulation.backend=inline): a
    real simulation through Flower's engine without a Ray start. `_run(*overrides)` returns
    (results.json's data, run directory)."""
    from fedexp.main import run

    def _run(*overrides: str, name: str = "run"):
        cfg = compose_cfg("simulation.backend=inline", *overrides)
        run_dir = tmp_path_factory.mktemp(name)
        return run(cfg, str(run_dir)), run_dir

    return _run


@pytest.fixture(scope="session")
def run_on_cluster(ray_cluster, tmp_path_factory):
    """Run fedexp in this process on the shared Ray cluster: `_run(*overrides)` returns
    (results.json's data, run directory)."""
    from fedexp.main import run

    def _run(*overrides: str, name: str = "run"):
        cfg = compose_cfg(f"simulation.ray_address={ray_cluster}", *overrides)
        run_dir = tmp_path_factory.mktemp(name)
        return run(cfg, str(run_dir)), run_dir

    return _run
