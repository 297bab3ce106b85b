"""Shared test helpers: composing fedexp's real config, running the real CLI, one Ray cluster."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
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


def fedexp_in_process(*args: str, cwd: Path | None = None):
    """`fedexp ARGS` run from `cwd` in this process, for fixtures wider than one test (the
    `fedexp` fixture's capsys is a test's own): (exit status, stdout, stderr) as the
    fields of a CompletedProcess. A process of its own costs seconds of imports; what
    `fedexp` does is the same in this one (`fedexp.main.main`, as the command calls it)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from fedexp.main import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["fedexp", *args])
        if cwd is not None:
            patch.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code
    return subprocess.CompletedProcess(["fedexp", *args], code or 0, out.getvalue(), err.getvalue())


def when_rounds_recorded(run_dir: Path, action, timeout: float = 240, steps: str = "rounds"):
    """In a thread: `action()` as soon as `run_dir`'s results.json lists a round (or, with
    `steps="epochs"`, an epoch; or after `timeout` s). Returns the thread's future; for
    stopping a run, or what it talks to, mid-run while this process runs it."""
    from concurrent.futures import ThreadPoolExecutor

    def wait_then_act():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if read_results(run_dir)[steps]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        action()

    return ThreadPoolExecutor(1).submit(wait_then_act)


def signal_this_process(signum: int) -> None:
    """Send `signum` to this process as the kernel delivers a signal from outside: to its
    main thread (from another thread, `os.kill` may leave it with the sender, and the main
    thread sees it only once its wait for the engine's threads ends)."""
    signal.pthread_kill(threading.main_thread().ident, signum)


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A process some tests need: a server they talk to (a Ray head, an MLflow tracking
    server) or a command whose results they read (a sweep with a launcher of its own). It
    starts in its own process session, in `folder`, as soon as the collected tests show
    that one of them needs it (see `early`), and runs on the second core while the tests
    before it run: most tests use one core. `stop` ends exactly its processes and removes
    its folder."""

    def __init__(self, args: list[str], folder: str, env: dict | None = None):
        self.folder = folder
        with (
            open(Path(folder) / "stdout.txt", "w") as out,
            open(Path(folder) / "stderr.txt", "w") as err,
        ):
            self.proc = subprocess.Popen(
                args, cwd=folder, env=env, start_new_session=True, stdout=out, stderr=err
            )

    def output(self, timeout: float = 600) -> tuple[int, str, str]:
        """A command's exit status, stdout and stderr, once it has ended."""
        status = self.proc.wait(timeout=timeout)
        folder = Path(self.folder)
        return status, (folder / "stdout.txt").read_text(), (folder / "stderr.txt").read_text()

    def wait_until(self, ready, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not start (exit code {self.proc.poll()})")
            time.sleep(0.2)

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=60)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(self.folder, ignore_errors=True)


def _ray_head() -> tuple[Service, str]:
    """A Ray head on loopback with its own temp dir: its address file stays out of /tmp/ray
    (so no other Ray user on the machine joins it by accident), and stopping it stops
    exactly its processes (`ray stop` would stop every Ray on the machine)."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="fxray", dir="/tmp")  # short: Ray's socket paths are limited
    args = [
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
    ]
    env = dict(os.environ, RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0")
    return Service(args, temp, env), f"127.0.0.1:{port}"


def _mlflow_server() -> tuple[Service, str]:
    """`mlflow server` on localhost with a SQLite store and an artifact folder in its own
    folder (it takes 10 s or more to answer here)."""
    port = _free_port()
    folder = tempfile.mkdtemp(prefix="fxmlflow")
    args = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{folder}/mlflow.db",
        "--artifacts-destination",
        f"{folder}/artifacts",
        "--workers",
        "1",
    ]
    return Service(args, folder), f"http://127.0.0.1:{port}"


_SERVICES = {"ray_cluster": _ray_head, "mlflow_server": _mlflow_server}
_STARTED: dict[str, tuple[Service, str]] = {}


def early(fixture: str):
    """Register `start() -> (Service, what the fixture needs of it)` for the fixture
    `fixture`: it starts as the session's tests begin if a selected test uses the fixture,
    which then takes it with `service(fixture)`. For a test module's own commands."""

    def register(start):
        _SERVICES[fixture] = start
        return start

    return register


def pytest_collection_finish(session):
    """Start the services the selected tests use, before the first test runs."""
    used = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    for name in sorted(used & set(_SERVICES)):
        _STARTED[name] = _SERVICES[name]()


def pytest_sessionfinish(session):
    while _STARTED:
        _STARTED.popitem()[1][0].stop()


def service(name: str) -> tuple[Service, str]:
    """The service of fixture `name`, started now if it has not been yet."""
    return _STARTED.get(name) or _STARTED.setdefault(name, _SERVICES[name]())


@pytest.fixture(scope="session")
def ray_cluster():
    """The address of one local Ray head shared by this session's simulations.

    Starting Ray costs 10-20 s per run here; runs given `simulation.ray_address=<this>` join
    this cluster instead (see _ray_head)."""
    head, address = service("ray_cluster")
    head.wait_until(
        lambda: list(Path(head.folder).glob("session_*/sockets/raylet")), "the test Ray head"
    )
    yield address
    _STARTED.pop("ray_cluster", (head,))[0].stop()


@pytest.fixture
def mlflow_server():
    """(tracking URI, the server's folder with mlflow.db and artifacts/, its Service) of
    an MLflow tracking server for one test, which may stop it."""
    import urllib.request

    server, uri = service("mlflow_server")

    def answers() -> bool:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1)
            return True
        except OSError:
            return False

    server.wait_until(answers, "mlflow server")
    yield uri, Path(server.folder), server
    _STARTED.pop("mlflow_server", (server,))[0].stop()


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


# The reproducibility experiment (test_reproducibility.py): Dirichlet(0.1) label skew, SCAFFOLD
# (client state and extra arrays sent with the model), half the clients sampled per round.
REPRODUCED = (
    "partitioning=dirichlet",
    "partitioning.alpha=0.1",
    "strategy=scaffold",
    "optimizer=sgd",
    "num_clients=4",
    "num_rounds=3",
    "strategy.fraction_fit=0.5",
)


def driver_logs(root: str) -> set[str]:
    """The Ray driver logs under `root` that name this process (a Ray session's logs name
    each driver by its pid)."""
    import glob

    return set(glob.glob(f"{root}/session_2*/logs/python-core-driver-*_{os.getpid()}.log"))


@pytest.fixture(scope="session")
def cluster_sweep(ray_cluster, tmp_path_factory):
    """`fedexp -m` over seeds 7 and 8 of the reproducibility experiment on the session's
    Ray cluster, in this process: (sweep dir, the command's CompletedProcess, the driver
    logs it added to the cluster's and to a local Ray's sessions). Job 0 is
    test_reproducibility.py's run on Ray; test_cluster.py checks how the sweep joined."""
    cwd = tmp_path_factory.mktemp("cluster_user")
    before = driver_logs("/tmp/fxray*"), driver_logs("/tmp/ray")
    proc = fedexp_in_process(
        "-m",
        *REPRODUCED,
        "seed=7,8",
        f"simulation.ray_address={ray_cluster}",
        "hydra.sweep.dir=sweep",
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    added = driver_logs("/tmp/fxray*") - before[0], driver_logs("/tmp/ray") - before[1]
    return cwd / "sweep", proc, added


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
