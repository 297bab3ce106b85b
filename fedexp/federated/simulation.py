"""The one place that starts Flower's simulation engine, and Ray.

flwr 1.41/1.42 mark `run_simulation` deprecated in favour of the `flwr run` CLI, which
packages the app, hands it to a detached local SuperLink daemon and accepts only flat
run-config values. That fits a Hydra job badly: the job would lose the run's records, its
process boundary and structured config. `run_simulation` still runs the ServerApp in a
thread of this process and the ClientApps through a backend, synchronously, so fedexp
keeps it, silences only that one deprecation message, and bounds flwr in pyproject.toml to
releases that ship it.

Two backends run the clients (`simulation.backend`, see `uses_ray`): Flower's Ray backend,
its actors working in parallel, and `inline_clients`, which runs them one after another
in this process. Starting Ray and its workers costs about 10 s on a 2-core machine, more
than a small run's training takes; the inline backend costs nothing to start. The two
give the same numbers bit for bit: each client uses `device.client_cpus` torch threads
either way, and the data arrays are row-major in both (see data/datasets.py's
`row_major`), so a run's results do not depend on which backend, launcher or cluster ran
its clients.

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

import importlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import progress


class _DropRunSimulationDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            str(record.msg).startswith("DEPRECATED FEATURE")
            and "run_simulation" in str(record.args)
        )


class _DropClientTracebacks(logging.Filter):
    """Flower's per-message error logs from its simulation workers and Ray backend."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno >= logging.ERROR
            and record.module in ("vce_api", "raybackend", "ray_actor")
        )


@dataclass
class RaySession:
    """A started (or joined) Ray, and where a local Ray's workers report that they are ready.

    In a sweep the session outlives a job (see `ray_session(keep=True)`), and so does
    `pool`, the client actors of the job before, which the next job takes over if it asks
    for actors of the same resources (see ClientPool)."""

    ray: Any
    ready_dir: str | None  # see worker.py; None for a joined cluster
    tag: str  # the _TAG value every process of a local Ray inherits
    settings: tuple = ()  # what it was started with; a job asking for others gets a new Ray
    local: bool = True  # started here (False: a cluster this process joined)
    pool: Any = None  # Flower's BasicActorPool, kept between the jobs of a sweep
    reusable: bool = True  # False once a run left it in a state the next job must not inherit

    def client_slots(self, client_resources: dict, share: int = 1) -> int:
        """How many client actors fit in Ray's resources, divided among `share` jobs that
        use this Ray at the same time (see start_sweep_ray); at least one."""
        total = self.ray.cluster_resources()
        slots = int(total.get("CPU", 0) // client_resources["num_cpus"])
        if client_resources.get("num_gpus"):
            slots = min(slots, int(total.get("GPU", 0) // client_resources["num_gpus"]))
        return max(slots // max(share, 1), 1)

    def wait_for_workers(self, count: int, stop: threading.Event, timeout: float = 60.0) -> float:
        """Wait until `count` worker processes have finished starting (imports and torch's
        lazy set-up, see worker.py), `stop` is set, or `timeout` s have passed; return the
        seconds waited. A joined cluster's workers cannot report here: no wait."""
        start = time.perf_counter()
        if self.ready_dir is None:
            return 0.0
        while (
            len(os.listdir(self.ready_dir)) < count
            and not stop.is_set()
            and time.perf_counter() - start < timeout
        ):
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

    def alive(self) -> bool:
        return self.reusable and self.ray.is_initialized()

    def fits(self, settings: tuple) -> bool:
        return self.settings == settings and self.alive()

    def close(self) -> None:
        """Shut Ray down (a joined cluster: disconnect) and end the local Ray's processes."""
        self.pool = None
        self.ray.shutdown()
        if self.local:
            _stop_leftovers(self.tag)
        if os.environ.get(_TAG) == self.tag:
            os.environ.pop(_TAG, None)
        if self.ready_dir:
            shutil.rmtree(self.ready_dir, ignore_errors=True)


def uses_ray(simulation, examples: int) -> bool:
    """Whether a run's clients run on Ray (else inline, in this process).

    `auto` uses Ray when the run joins one (`simulation.ray_address`, or the Ray of a sweep
    whose jobs run at the same time), or when it trains on more than
    `simulation.inline_max_examples` examples in all (`examples`: training examples of all
    clients x local epochs x rounds), where clients working in parallel win back Ray's
    start-up time."""
    backend = simulation.get("backend", "auto")
    if backend != "auto":
        return backend == "ray"
    address, _ = sweep_ray(simulation.get("ray_address"))
    return bool(address) or examples > int(simulation.get("inline_max_examples", 0))


_KEPT: dict[str, RaySession] = {}  # the session a sweep's jobs share, between two jobs

SWEEP_ADDRESS = "FEDEXP_SWEEP_RAY"  # the local Ray that a sweep's concurrent jobs join
SWEEP_SHARE = "FEDEXP_SWEEP_SHARE"  # how many of those jobs run at the same time


def sweep_ray(address: str | None) -> tuple[str | None, int]:
    """The Ray a job uses (None: a local one of its own) and how many jobs share it at once:
    the configured `simulation.ray_address` if any, else the sweep's (see start_sweep_ray)."""
    if address or not os.environ.get(SWEEP_ADDRESS):
        return address, 1
    return os.environ[SWEEP_ADDRESS], max(int(os.environ.get(SWEEP_SHARE, "1")), 1)


def start_sweep_ray(simulation: dict, verbose: bool, n_jobs: int) -> RaySession:
    """Start the local Ray that `n_jobs` jobs running at the same time in other processes
    of this machine join (see sweep.SweepRay); they find it through the environment they
    inherit, and each takes 1/n_jobs of its client slots (at least one), so that the
    actors of all jobs together fit in the CPUs and GPUs Ray was given."""
    head = _start(
        None,
        simulation.get("num_cpus"),
        simulation.get("num_gpus"),
        verbose,
        simulation.get("worker_niceness"),
        clients_here=False,
    )
    os.environ[SWEEP_ADDRESS] = head.ray.get_runtime_context().gcs_address
    os.environ[SWEEP_SHARE] = str(n_jobs)
    return head


def end_sweep_ray(head: RaySession | None) -> None:
    """End the Ray of a sweep: the one its jobs kept in this process, and `head`."""
    close_kept_session()
    if head is not None:
        os.environ.pop(SWEEP_ADDRESS, None)
        os.environ.pop(SWEEP_SHARE, None)
        head.close()


def kept_session_fits(
    address: str | None,
    num_cpus: int | None,
    num_gpus: float | None,
    verbose: bool,
    niceness: int | None = None,
) -> bool:
    """Whether `ray_session` with these settings will take over the Ray of the job before."""
    session = _KEPT.get("session")
    return session is not None and session.fits(
        _settings(address, num_cpus, num_gpus, verbose, niceness)
    )


def _settings(address, num_cpus, num_gpus, verbose, niceness) -> tuple:
    """What a Ray session is started with: a job asking for other settings gets a new Ray."""
    return (address, num_cpus, num_gpus, bool(verbose), niceness)


def close_kept_session() -> None:
    """End the Ray that the jobs of a sweep shared (see `ray_session(keep=True)`)."""
    session = _KEPT.pop("session", None)
    if session is not None:
        session.close()


@contextmanager
def ray_session(
    address: str | None,
    num_cpus: int | None,
    num_gpus: float | None,
    verbose: bool,
    niceness: int | None = None,
    keep: bool = False,
):
    """Start (or join, with `address`) Ray for one run and yield a RaySession.

    Without `keep` it is shut down when the run ends. With `keep` (the jobs of a sweep
    that run one after another in this process) it stays up for the next job, which takes
    it over if it asks for the same Ray settings: a sweep starts Ray and its client
    workers once. Ctrl-C, or a run that leaves the session unfit for another, ends it.

    A local Ray's workers run at `niceness`, by default this process's own: Ray's default
    of 15 makes the clients yield to any other work on the machine, which skews every
    timing of a run that shares it."""
    settings = _settings(address, num_cpus, num_gpus, verbose, niceness)
    session = _KEPT.pop("session", None)
    if session is not None and not session.fits(settings):
        session.close()
        session = None
    if session is None:
        session = _start(address, num_cpus, num_gpus, verbose, niceness)
        session.settings = settings
    try:
        yield session
    except KeyboardInterrupt:  # the sweep stops too: nothing to keep it for
        session.reusable = False
        raise
    finally:
        if keep and session.alive():
            _KEPT["session"] = session
        else:
            session.close()


def _start(
    address: str | None,
    num_cpus: int | None,
    num_gpus: float | None,
    verbose: bool,
    niceness: int | None,
    clients_here: bool = True,
) -> RaySession:
    """Start a local Ray (no `address`) or join the cluster at `address`. A local Ray
    whose driver runs no clients (`clients_here=False`: the Ray a sweep's concurrent jobs
    join from their own processes) prestarts no workers: Ray's workers serve the driver
    that started them, and the jobs' drivers are other processes."""
    # Ray >= 2.5x warns on every start that it will stop overriding CUDA_VISIBLE_DEVICES
    # for num_gpus=0; opting in to that future behaviour silences it.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray

    pythonpath = os.pathsep.join(p for p in sys.path if p)
    args = dict(
        include_dashboard=False,
        log_to_driver=verbose,
        logging_level=logging.INFO if verbose else logging.ERROR,
    )
    ready_dir = None
    if address:
        # A joined cluster's workers are started by its own raylets: they get this driver's
        # import path, and the warm-up imports, through a runtime_env.
        args.update(
            address=address,
            runtime_env={
                "env_vars": {"PYTHONPATH": pythonpath},
                "worker_process_setup_hook": "fedexp.federated.worker.warm_up",
            },
        )
    else:
        # "local": a new Ray for this run only. With no address, ray.init would join the
        # cluster of the last `ray start` on this machine (or $RAY_ADDRESS), so jobs of a
        # sweep could land on someone else's cluster. Its processes inherit this process's
        # environment (PYTHONPATH and READY_DIR below), and the workers it prestarts import
        # torch, Flower and the client at once (see worker.py); without a runtime_env,
        # Flower's actors are those prestarted workers, not processes started in round 1.
        args.update(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            _system_config={
                "preload_python_modules": ["fedexp.federated.worker"],
                "worker_niceness": os.nice(0) if niceness is None else int(niceness),
                "prestart_worker_first_driver": clients_here,
            },
        )
        reap_orphans()
        ready_dir = tempfile.mkdtemp(prefix=f"{READY_PREFIX}{os.getpid()}-")
    # Every process the local Ray starts inherits this tag, which finds them after
    # shutdown: they are not this process's children (Ray re-parents them).
    tag = f"{os.getpid()}-{uuid.uuid4().hex}"
    os.environ[_TAG] = tag
    in_main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if in_main else None
    inherited = {"PYTHONPATH": pythonpath, READY_DIR: ready_dir} if ready_dir else {}
    saved = {name: os.environ.get(name) for name in inherited}
    session = RaySession(ray, ready_dir, tag, local=not address)
    try:
        os.environ.update(inherited)
        started = time.perf_counter()
        try:
            ray.init(**args)
            progress.start_line(
                f"joined the Ray cluster at {address}"
                if address
                else f"Ray started ({time.perf_counter() - started:.1f}s)"
                + ("; client workers starting" if clients_here else "")
            )
        except SystemExit as e:  # SIGTERM while ray.init had its own handler installed
            if in_main and e.code == signal.SIGTERM:
                from ..interrupts import Interrupted

                raise Interrupted(signal.SIGTERM) from None
            raise
        finally:
            for name, value in saved.items():
                _restore_env(name, value)
        if in_main and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    except BaseException:
        session.close()
        raise
    return session


READY_DIR = "FEDEXP_READY_DIR"  # worker.py marks each started worker process here
READY_PREFIX = "fedexp-ready-"  # + the driver's pid: the ready folders in the temp directory
_TAG = "FEDEXP_RAY_SESSION"


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _tagged(tag: str) -> list:
    """The live processes (psutil's) that carry `tag`: the local Ray's of one session."""
    import psutil  # shipped with Ray (ray/thirdparty_files), importable once ray is

    found = []
    for pid, value in _tags_of_processes():
        if value == tag and pid != os.getpid():
            try:
                found.append(psutil.Process(pid))
            except psutil.Error:
                continue
    return found


def _tags_of_processes() -> list[tuple[int, str]]:
    """(pid, _TAG value) of every process of this user that has the tag: from /proc where
    there is one (no psutil needed: inline runs never import Ray; and Ray's agents retitle
    themselves, which leaves empty entries at the start of their environment block, where
    psutil's parser stops), else through psutil."""
    found = []
    if Path("/proc").is_dir():
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    block = (entry / "environ").read_bytes()
                except OSError:  # gone, or another user's
                    continue
                prefix = f"{_TAG}=".encode()
                for item in block.split(b"\0"):
                    if item.startswith(prefix):
                        found.append(
                            (int(entry.name), item[len(prefix) :].decode(errors="replace"))
                        )
        return found
    try:
        import psutil
    except ImportError:
        return found
    for proc in psutil.process_iter():
        try:
            tag = proc.environ().get(_TAG)
        except (psutil.Error, OSError):
            continue
        if tag:
            found.append((proc.pid, tag))
    return found


def _driver_gone(owner: str) -> bool:
    """Whether `owner` names a driver process (not this one) that no longer exists."""
    from ..results import pid_alive

    return owner.isdigit() and int(owner) != os.getpid() and not pid_alive(int(owner))


def reap_orphans() -> int:
    """End what the local Ray of a killed fedexp driver left running (Ray's dashboard and
    runtime-env agents outlive a `kill -9` of their driver by a minute or more), and remove
    its ready folders; say so in one line. Found by their session tag, whose first part is
    the driver's pid: only processes of drivers that no longer exist are touched, never
    another live run's or another Ray's. Every fedexp federated run calls it as it starts.
    Returns how many processes were ended."""
    orphans: dict[int, list[int]] = {}
    for pid, tag in _tags_of_processes():
        owner = tag.split("-", 1)[0]
        if pid != os.getpid() and _driver_gone(owner):
            orphans.setdefault(int(owner), []).append(pid)
    for owner, pids in orphans.items():
        for pid in pids:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        print(
            f"fedexp: ended {len(pids)} process(es) left by the Ray of a killed fedexp run "
            f"(driver pid {owner})",
            file=sys.stderr,
            flush=True,
        )
    for folder in Path(tempfile.gettempdir()).glob(f"{READY_PREFIX}*-*"):
        if _driver_gone(folder.name[len(READY_PREFIX) :].split("-", 1)[0]):
            shutil.rmtree(folder, ignore_errors=True)
    return sum(len(pids) for pids in orphans.values())


def _stop_leftovers(tag: str) -> None:
    """ray.shutdown() returns before the client actors have exited, and orphaned actors
    linger for seconds. Their run is over and they hold nothing to save, so they are
    killed at once: neither this process's exit nor the next job of a sweep waits on (or
    shares the CPU with) this run's Ray."""
    try:
        import psutil

        procs = _tagged(tag)
        for proc in procs:
            with suppress(psutil.NoSuchProcess):
                proc.kill()
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
        print(
            f"fedexp: clients still busy {KILL_AFTER:.0f} s after the signal: stopping "
            f"their {len(pids)} Ray worker(s)",
            file=sys.stderr,
            flush=True,
        )
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def client_pool(session: RaySession, actors: int):
    """Flower's Ray backend, with the two things fedexp changes: how many client actors
    the run gets (`actors`, its share of Ray's resources: jobs that run at the same time on
    one Ray never hold more actors than the CPUs and GPUs Ray was given), and who owns Ray
    and the actors when the run ends (the session: Flower's own backend shuts Ray down,
    which would make every job of a sweep start Ray and its workers again)."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor
    from ray.exceptions import RayActorError

    class ClientPool(RayBackend):
        def build(self, app_fn) -> None:
            pool, session.pool = session.pool, None
            if pool is not None and pool.client_resources != self.client_resources:
                _end_actors(pool)
                pool = None
            if pool is None:
                pool = BasicActorPool(ClientAppActor, self.client_resources, self.actor_kwargs)
            if pool.num_actors < actors:
                pool.add_actors_to_pool(actors - pool.num_actors)
            while pool.num_actors > actors:
                pool.pool.pop().terminate.remote()
                pool.num_actors -= 1
            self.pool, self.app_fn = pool, app_fn

        def process_message(self, message, context):
            try:
                return super().process_message(message, context)
            except RayActorError:  # its process died (e.g. killed for memory): Flower put the
                session.reusable = False  # dead actor back in the pool; no job may inherit it
                raise

        def terminate(self) -> None:
            pool, self.pool = self.pool, None
            if pool is None:
                return
            if len(pool.pool) == pool.num_actors:  # every actor idle: the next job's
                session.pool = pool
            else:  # work still out on some actor (the run stopped mid-round)
                _end_actors(pool)
                session.reusable = False

    return ClientPool


def _end_actors(pool) -> None:
    for actor in pool.pool:
        actor.terminate.remote()
    pool.pool.clear()
    pool.num_actors = 0


def inline_clients(threads: int):
    """A Flower simulation backend that runs each client in this process, one at a time,
    with `threads` torch threads (as a Ray actor with `device.client_cpus` CPUs has). What
    a worker process would cache for the run (client.py's ClientKit) is cached here too."""
    import torch
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.server.superlink.fleet.vce.backend.backend import Backend
    from flwr.simulation.ray_transport.ray_actor import ClientAppException

    class InlineClients(Backend):
        def __init__(self, backend_config) -> None:
            self.app_fn = None

        def build(self, app_fn) -> None:
            self.app_fn = app_fn

        @property
        def num_workers(self) -> int:
            return 1

        def is_worker_idle(self) -> bool:
            return True

        def terminate(self) -> None:
            self.app_fn = None

        def process_message(self, message, context):
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                return self.app_fn()(message=message, context=context), context
            except LoadClientAppError:
                raise
            except (
                Exception
            ) as ex:  # reported to the server as a failed client, as Ray's actor does
                raise ClientAppException(str(ex)) from ex
            finally:
                torch.set_num_threads(before)

    return InlineClients


def _prompt_queue():
    """Flower's engine threads wait on their message queues for up to 1 s before they look
    at the engine's stop flag, so every run ended about a second after its last round; and
    once they have ended, the engine waits up to 3 s for the ServerApp's context, which a
    ServerApp that raised (an interrupt, a failed run) never sends. Waiting at most
    ENGINE_POLL s at a time, both end as soon as the run has: the context of a ServerApp
    that returned is queued before the engine is told to stop."""
    import queue

    class PromptQueue(queue.Queue):
        def get(self, block=True, timeout=None):
            return super().get(block, None if timeout is None else min(timeout, ENGINE_POLL))

    return PromptQueue


ENGINE_POLL = 0.05  # seconds


@contextmanager
def _engine_backend(backend) -> Any:
    """Flower's engine with `backend` (see run_engine) and prompt queues (see _prompt_queue),
    for the length of one run: flwr 1.42's vce_api and run_simulation look them up by
    module-level name."""
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend

    # the module, which flwr.simulation's own `run_simulation` function hides as a name
    run_simulation = importlib.import_module("flwr.simulation.run_simulation")
    flowers = raybackend.RayBackend, vce_api.Queue, run_simulation.Queue
    prompt = _prompt_queue()
    raybackend.RayBackend, vce_api.Queue, run_simulation.Queue = backend, prompt, prompt
    try:
        yield
    finally:
        raybackend.RayBackend, vce_api.Queue, run_simulation.Queue = flowers


def run_engine(
    server_app,
    client_app,
    num_clients: int,
    verbose: bool,
    stop,
    backend,
    client_resources: dict | None = None,
    session: RaySession | None = None,
) -> None:
    """Run the ServerApp against `num_clients` virtual ClientApps on `backend` (a
    `client_pool` of `session`, or `inline_clients`) until it returns.

    `stop()` must make the ServerApp end soon; it is called on SIGINT/SIGTERM, after
    which this raises `Interrupted` once the engine has wound down."""
    from flwr.simulation import run_simulation

    from ..interrupts import deferred_interrupts

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
        if session is not None and session.ready_dir:  # a local Ray: its workers are known
            killer.start()

    try:
        # Flower's engine builds its backend by the name `RayBackend` in its raybackend
        # module each time it starts (flwr 1.42's vce_api; pyproject bounds flwr to such
        # releases): `backend` is put there for the length of one run.
        with deferred_interrupts(on_signal), _engine_backend(backend):
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_clients,
                backend_name="ray",
                backend_config={
                    "client_resources": client_resources or {"num_cpus": 1, "num_gpus": 0.0}
                },
                verbose_logging=verbose,
            )
    finally:
        killer.cancel()
        for drop in drops:
            flwr_logger.removeFilter(drop)
        flwr_logger.setLevel(level)
