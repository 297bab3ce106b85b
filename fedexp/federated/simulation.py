"""The one place that starts Flower's simulation engine.

flwr 1.41/1.42 mark `run_simulation` deprecated in favour of the `flwr run` CLI, which
packages the app, hands it to a detached local SuperLink daemon and accepts only flat
run-config values. That fits a Hydra job badly: the job would lose the run's records, its
process boundary and structured config. `run_simulation` still runs the ServerApp in a
thread of this process and the ClientApps in Ray actors, synchronously, so fedexp keeps
it, silences only that one deprecation message, and bounds flwr in pyproject.toml to
releases that ship it.

Ray is started here (not inside Flower) so that the training data can be put into Ray's
object store before the clients exist, and so that `simulation.ray_address` can join an
existing cluster. `ray.init` installs its own SIGTERM handler (`sys.exit`); fedexp puts
back the one it had, so SIGTERM stops a run the way Ctrl-C does (see interrupts.py).

On Ctrl-C or SIGTERM during the engine (see interrupts.py), `run_engine` asks the
ServerApp to stop (`stop`): no new client work starts, and Flower's worker threads end
when the clients' current work does. Work still running after `KILL_AFTER` seconds is
ended by killing this run's client workers (local Ray only, found by the ready marks of
worker.py; Ray then prints one line per killed worker), so that their `ray.get` fails at
once. Only when those threads have ended does Flower shut Ray down; then the signal is
raised as `Interrupted`.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


class _DropRunSimulationDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("DEPRECATED FEATURE")
                    and "run_simulation" in str(record.args))


class _DropClientTracebacks(logging.Filter):
    """Flower's per-message error logs from its simulation workers and Ray backend."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR
                    and record.module in ("vce_api", "raybackend", "ray_actor"))


@dataclass
class RaySession:
    """A started (or joined) Ray, and where a local Ray's workers report that they are ready."""

    ray: Any
    ready_dir: str | None  # see worker.py; None for a joined cluster
    tag: str               # the _TAG value every process of a local Ray inherits

    def client_slots(self, client_resources: dict) -> int:
        """How many client actors Flower's pool will hold: as many as the resources fit."""
        total = self.ray.cluster_resources()
        slots = int(total.get("CPU", 0) // client_resources["num_cpus"])
        if client_resources.get("num_gpus"):
            slots = min(slots, int(total.get("GPU", 0) // client_resources["num_gpus"]))
        return max(slots, 1)

    def wait_for_workers(self, count: int, stop: threading.Event, timeout: float = 60.0) -> float:
        """Wait until `count` worker processes have finished starting (imports and torch's
        lazy set-up, see worker.py), `stop` is set, or `timeout` s have passed; return the
        seconds waited. A joined cluster's workers cannot report here: no wait."""
        start = time.perf_counter()
        if self.ready_dir is None:
            return 0.0
        while (len(os.listdir(self.ready_dir)) < count and not stop.is_set()
               and time.perf_counter() - start < timeout):
            stop.wait(0.05)
        return time.perf_counter() - start

    def worker_pids(self) -> list[int]:
        """The local Ray's live worker processes that have started (Flower's client actors
        among them); a pid counts only while its process still carries this run's tag."""
        if not self.ready_dir:
            return []
        marked = {int(name) for name in os.listdir(self.ready_dir)}
        try:
            return sorted(proc.pid for proc in _tagged(self.tag) if proc.pid in marked)
        except ImportError:  # no psutil (it ships with Ray): trust the marks
            return sorted(marked)


@contextmanager
def ray_session(address: str | None, num_cpus: int | None, num_gpus: float | None, verbose: bool,
                niceness: int | None = None):
    """Start (or join, with `address`) Ray for one run, yield a RaySession; always shut it down.

    A local Ray's workers run at `niceness`, by default this process's own: Ray's default
    of 15 makes the clients yield to any other work on the machine, which skews every
    timing of a run that shares it."""
    # Ray >= 2.5x warns on every start that it will stop overriding CUDA_VISIBLE_DEVICES
    # for num_gpus=0; opting in to that future behaviour silences it.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray

    pythonpath = os.pathsep.join(p for p in sys.path if p)
    args = dict(include_dashboard=False, log_to_driver=verbose,
                logging_level=logging.INFO if verbose else logging.ERROR)
    ready_dir = None
    if address:
        # A joined cluster's workers are started by its own raylets: they get this driver's
        # import path, and the warm-up imports, through a runtime_env.
        args.update(address=address, runtime_env={
            "env_vars": {"PYTHONPATH": pythonpath},
            "worker_process_setup_hook": "fedexp.federated.worker.warm_up"})
    else:
        # "local": a new Ray for this run only. With no address, ray.init would join the
        # cluster of the last `ray start` on this machine (or $RAY_ADDRESS), so jobs of a
        # sweep could land on someone else's cluster. Its processes inherit this process's
        # environment (PYTHONPATH and READY_DIR below), and the workers it prestarts import
        # torch, Flower and the client at once (see worker.py); without a runtime_env,
        # Flower's actors are those prestarted workers, not processes started in round 1.
        args.update(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                    _system_config={"preload_python_modules": ["fedexp.federated.worker"],
                                    "worker_niceness": os.nice(0) if niceness is None else int(niceness)})
        ready_dir = tempfile.mkdtemp(prefix="fedexp-ready-")
    # Every process the local Ray starts inherits this tag, which finds them after
    # shutdown: they are not this process's children (Ray re-parents them).
    tag = f"{os.getpid()}-{uuid.uuid4().hex}"
    os.environ[_TAG] = tag
    in_main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if in_main else None
    inherited = {"PYTHONPATH": pythonpath, READY_DIR: ready_dir} if ready_dir else {}
    saved = {name: os.environ.get(name) for name in inherited}
    try:
        os.environ.update(inherited)
        try:
            ray.init(**args)
        finally:
            for name, value in saved.items():
                _restore_env(name, value)
        if in_main and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
        yield RaySession(ray, ready_dir, tag)
    finally:
        ray.shutdown()
        if not address:
            _stop_leftovers(tag)
        os.environ.pop(_TAG, None)
        if ready_dir:
            shutil.rmtree(ready_dir, ignore_errors=True)


READY_DIR = "FEDEXP_READY_DIR"  # worker.py marks each started worker process here
_TAG = "FEDEXP_RAY_SESSION"


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _tagged(tag: str) -> list:
    import psutil  # shipped with Ray (ray/thirdparty_files), importable once ray is

    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(_TAG) == tag:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _stop_leftovers(tag: str) -> None:
    """ray.shutdown() returns before the client actors have exited, and orphaned actors
    linger for seconds. Their run is over and they hold nothing to save, so they are
    killed at once: neither this process's exit nor the next job of a sweep waits on (or
    shares the CPU with) this run's Ray."""
    try:
        import psutil

        procs = _tagged(tag)
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        # A killed worker is a zombie until the process it was re-parented to reaps it
        # (on some machines only every few seconds); a zombie holds no CPU or memory.
        deadline = time.monotonic() + 5
        while not all(_ended(proc) for proc in procs) and time.monotonic() < deadline:
            time.sleep(0.02)
    except ImportError:  # no psutil: the processes still end by themselves, later
        pass


def _ended(proc) -> bool:
    import psutil

    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


KILL_AFTER = 5.0  # seconds the clients' current work may take after Ctrl-C


def _kill_workers(pids: list[int]) -> None:
    """SIGKILL the client workers still alive KILL_AFTER s after the signal: their pending
    `ray.get`s in Flower's threads then fail at once."""
    if pids:
        print(f"fedexp: clients still busy {KILL_AFTER:.0f} s after the signal: stopping "
              f"their {len(pids)} Ray worker(s)", file=sys.stderr, flush=True)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_engine(server_app, client_app, num_clients: int, client_resources: dict, verbose: bool,
               stop, session: RaySession) -> None:
    """Run the ServerApp against `num_clients` virtual ClientApps until it returns.

    `stop()` must make the ServerApp end soon; it is called on SIGINT/SIGTERM, after
    which this raises `Interrupted` once the engine has wound down."""
    from ..interrupts import deferred_interrupts
    from flwr.simulation import run_simulation

    flwr_logger = logging.getLogger("flwr")
    drops = [_DropRunSimulationDeprecation()] + ([] if verbose else [_DropClientTracebacks()])
    for drop in drops:
        flwr_logger.addFilter(drop)
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)

    killer = threading.Timer(KILL_AFTER, lambda: _kill_workers(session.worker_pids()))
    killer.daemon = True

    def on_signal(signum):
        stop()
        if session.ready_dir:  # a local Ray: its workers are known (a cluster's are not ours)
            killer.start()

    try:
        with deferred_interrupts(on_signal):
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_clients,
                backend_name="ray",
                backend_config={"client_resources": client_resources},
                verbose_logging=verbose,
            )
    finally:
        killer.cancel()
        for drop in drops:
            flwr_logger.removeFilter(drop)
        flwr_logger.setLevel(level)
