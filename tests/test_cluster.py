"""`simulation.ray_address` joins an existing Ray cluster instead of starting one.

The cluster is the session's `ray_cluster` (a Ray head on loopback, see conftest.py). A
sweep of two jobs runs against it, as the multi-machine recipe of docs/sweeps-and-clusters.md does: the sweep's
driver must show up in that cluster's logs, once (the second job keeps the first one's
connection and client actors), and no Ray of its own may start.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

from conftest import REPO, read_results


def test_a_sweep_joins_a_running_cluster(ray_cluster, tmp_path):
    sweep_dir = tmp_path / "sweep"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedexp",
            "-m",
            "num_clients=2",
            "num_rounds=1",
            "seed=0,1",
            f"simulation.ray_address={ray_cluster}",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    results = [read_results(sweep_dir / job) for job in ("0", "1")]
    assert [r["status"] for r in results] == ["completed", "completed"]
    assert results[0]["rounds"][0]["test_loss"] != results[1]["rounds"][0]["test_loss"]
    # The sweep connected one driver to the test cluster (its session logs name the pid),
    # which both jobs used ...
    drivers = glob.glob(f"/tmp/fxray*/session_2*/logs/python-core-driver-*_{proc.pid}.log")
    assert len(drivers) == 1, drivers
    assert "on the Ray of the job before" in (sweep_dir / "1" / "main.log").read_text()
    first = (sweep_dir / "0" / "main.log").read_text()
    assert f"joining the Ray cluster at {ray_cluster}" in first and "starting Ray" not in first
    # ... and started no Ray of its own.
    assert not glob.glob(f"/tmp/ray/session_2*/logs/python-core-driver-*_{proc.pid}.log")
