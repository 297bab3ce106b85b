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
ended by killing this run's client actors (local Ray only; Ray then prints one line per
killed worker), so that their `ray.get` fails at once. Only when those threads have
ended does Flower shut Ray down; then the signal is raised as `Interrupted`.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
import threading
from contextlib import contextmanager


class _DropRunSimulationDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("DEPRECATED FEATURE")
                    and "run_simulation" in str(record.args))


class _DropClientTracebacks(logging.Filter):
    """Flower's per-message error logs from its simulation workers and Ray backend."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR
                    and record.module in ("vce_api", "raybackend", "ray_actor"))


@contextmanager
def ray_session(address: str | None, num_cpus: int | None, num_gpus: float | None, verbose: bool):
    """Start (or join, with `address`) Ray for one run; always shut it down."""
    # Ray >= 2.5x warns on every start that it will stop overriding CUDA_VISIBLE_DEVICES
    # for num_gpus=0; opting in to that future behaviour silences it.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray

    pythonpath = os.pathsep.join(p for p in sys.path if p)
    args = dict(include_dashboard=False, log_to_driver=verbose,
                logging_level=logging.INFO if verbose else logging.ERROR,
                runtime_env={"env_vars": {"PYTHONPATH": pythonpath},
                             "worker_process_setup_hook": "fedexp.federated.worker.warm_up"})
    if address:
        args["address"] = address
    else:
        # "local": a new Ray for this run only. With no address, ray.init would join the
        # cluster of the last `ray start` on this machine (or $RAY_ADDRESS), so jobs of a
        # sweep could land on someone else's cluster.
        args.update(address="local", num_cpus=num_cpus, num_gpus=num_gpus)
    # Every process the local Ray starts inherits this tag, which finds them after
    # shutdown: they are not this process's children (Ray re-parents them).
    tag = f"{os.getpid()}-{uuid.uuid4().hex}"
    os.environ[_TAG] = tag
    in_main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if in_main else None
    try:
        ray.init(**args)
        if in_main and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
        yield ray
    finally:
        ray.shutdown()
        if not address:
            _stop_leftovers(tag)
        os.environ.pop(_TAG, None)


_TAG = "FEDEXP_RAY_SESSION"


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


def _stop_leftovers(tag: str, grace: float = 1.0) -> None:
    """ray.shutdown() returns before the client actors have exited, and orphaned actors
    linger for seconds; give them a moment, then kill them, so that neither this process's
    exit nor the next job of a sweep waits on (or shares the CPU with) this run's Ray."""
    try:
        import psutil

        procs = _tagged(tag)
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
    except ImportError:  # no psutil: the processes still end by themselves, later
        pass


KILL_AFTER = 5.0  # seconds the clients' current work may take after Ctrl-C


def _kill_client_actors() -> None:
    """SIGKILL this job's live actors (local Ray only): pending `ray.get`s fail at once."""
    try:
        import ray
        from ray._private import state

        if not ray.is_initialized():
            return
        job = ray.get_runtime_context().get_job_id()
        pids = [int(info["Pid"]) for info in state.actors().values()
                if info.get("JobID") == job and info.get("State") == "ALIVE" and info.get("Pid")]
        if pids:
            print(f"fedexp: clients still busy {KILL_AFTER:.0f} s after the signal: stopping "
                  f"their {len(pids)} Ray worker(s)", file=sys.stderr, flush=True)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    except Exception:  # best effort: Flower then waits for the running tasks instead
        pass


def run_engine(server_app, client_app, num_clients: int, client_resources: dict, verbose: bool,
               stop, local_ray: bool = True) -> None:
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

    killer = threading.Timer(KILL_AFTER, _kill_client_actors)
    killer.daemon = True

    def on_signal(signum):
        stop()
        if local_ray:
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
