"""Imported by every Ray worker process as it starts, before it takes any work.

A local Ray prestarts one worker per CPU as `ray.init` returns and loads this module into
each (Ray's `preload_python_modules`), while the driver puts the data into the object
store, builds Flower's engine and evaluates the initial model. Flower then turns those same
processes into its client actors, so the first instruction finds torch, Flower and
fedexp's client imported and torch's lazy set-up done. (A `runtime_env`, even one holding
only a setup hook, would stop Ray from handing prestarted workers to actors; it is used
only to join a cluster.)

When done, a worker of a local Ray marks itself ready in the run's READY_DIR: round 1 waits
for every client slot's worker, so that worker start-up, a fixed cost, is not counted as
training time (see simulation.RaySession.wait_for_workers).
"""

import contextlib
import os
from pathlib import Path


def _mark_ready() -> None:
    # simulation.READY_DIR, spelled out: importing fedexp.federated could itself be what
    # failed, and this must run even then.
    ready_dir = os.environ.get("FEDEXP_READY_DIR")
    if ready_dir:
        with contextlib.suppress(OSError):  # the run is over and its directory gone
            Path(ready_dir, str(os.getpid())).touch()


try:
    import flwr.simulation.ray_transport.ray_actor  # noqa: F401  (the actor class Flower uses)

    from ..training import first_steps
    from . import client  # noqa: F401

    first_steps()
finally:  # even a failed import: the driver must not wait for this worker
    _mark_ready()


def warm_up() -> None:
    """`worker_process_setup_hook` for workers of a joined cluster: importing this module
    did the work."""
