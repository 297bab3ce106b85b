"""A local Ray's workers start warm: Flower's client actors are the processes Ray prestarted
with fedexp's client imported and torch's lazy set-up done, and each reported ready."""

from __future__ import annotations

import os
import sys
import tempfile
import threading

from flwr.simulation.ray_transport.ray_actor import ClientAppActor

from fedexp.federated.simulation import RaySession, ray_session


def _inside(actor_self):
    return os.getpid(), "fedexp.federated.client" in sys.modules, "torch._dynamo" in sys.modules


def test_client_actors_are_the_preloaded_workers():
    with ray_session(None, 2, None, verbose=False) as session:
        slots = session.client_slots({"num_cpus": 1, "num_gpus": 0.0})
        assert slots == 2
        assert session.client_slots({"num_cpus": 0.5, "num_gpus": 0.0}) == 4
        waited = session.wait_for_workers(slots, threading.Event(), timeout=120)
        assert waited < 120, "the workers never reported ready"
        ready = {int(name) for name in os.listdir(session.ready_dir)}
        actors = [ClientAppActor.options(num_cpus=1).remote() for _ in range(slots)]
        inside = session.ray.get([a.__ray_call__.remote(_inside) for a in actors], timeout=60)
        ready_dir = session.ready_dir
    pids = {pid for pid, _, _ in inside}
    assert len(pids) == 2 and pids <= ready, (pids, ready)
    assert all(client and dynamo for _, client, dynamo in inside), inside
    assert not os.path.exists(ready_dir)


def test_waiting_for_workers_ends_on_stop():
    stop = threading.Event()
    stop.set()
    with tempfile.TemporaryDirectory() as empty:
        assert RaySession(None, empty, tag="").wait_for_workers(3, stop, timeout=30) < 1
    assert RaySession(None, None, tag="").wait_for_workers(3, threading.Event()) == 0.0


def test_what_a_killed_drivers_ray_left_is_ended_by_the_next_start(capsys):
    """Processes carrying the session tag of a driver that no longer exists are ended, with
    one line; those of a live driver (another run's Ray) are left alone. So are ready folders."""
    import subprocess
    from pathlib import Path

    import ray  # noqa: F401  (puts Ray's bundled psutil on the path)

    from fedexp.federated.simulation import _TAG, READY_PREFIX, reap_orphans

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = os.getppid()
    sleepers = {
        owner: subprocess.Popen(["sleep", "60"], env={**os.environ, _TAG: f"{owner}-{owner}abc"})
        for owner in (gone.pid, live)
    }
    folders = {
        owner: Path(tempfile.mkdtemp(prefix=f"{READY_PREFIX}{owner}-"))
        for owner in (gone.pid, live)
    }
    try:
        assert reap_orphans() == 1
        assert sleepers[gone.pid].wait(timeout=10) == -9
        assert sleepers[live].poll() is None and folders[live].is_dir()
        assert not folders[gone.pid].exists()
        err = capsys.readouterr().err
        assert err == (
            f"fedexp: ended 1 process(es) left by the Ray of a killed fedexp run "
            f"(driver pid {gone.pid})\n"
        )
    finally:
        sleepers[live].kill()
        folders[live].rmdir()
