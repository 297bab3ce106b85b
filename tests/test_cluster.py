"""`simulation.ray_address` joins an existing Ray cluster instead of starting one.

The cluster is the session's `ray_cluster` (a Ray head on loopback, see conftest.py). A
sweep of two jobs runs against it (conftest.py's `cluster_sweep`, in this process), as the
multi-machine recipe of docs/sweeps-and-clusters.md does: its driver must show up in that
cluster's logs once (the second job keeps the first one's connection and client actors),
and no Ray of its own may start.
"""

from __future__ import annotations

from conftest import read_results


def test_a_sweep_joins_a_running_cluster(cluster_sweep, ray_cluster):
    sweep_dir, proc, (on_cluster, on_local_ray) = cluster_sweep
    results = [read_results(sweep_dir / job) for job in ("0", "1")]
    assert [r["status"] for r in results] == ["completed", "completed"]
    assert [r["backend"] for r in results] == ["ray", "ray"]
    assert results[0]["rounds"][0]["test_loss"] != results[1]["rounds"][0]["test_loss"]
    # The sweep connected one driver to the test cluster, which both jobs used ...
    assert len(on_cluster) == 1, on_cluster
    assert "on the Ray of the job before" in (sweep_dir / "1" / "main.log").read_text()
    first = (sweep_dir / "0" / "main.log").read_text()
    assert f"joining the Ray cluster at {ray_cluster}" in first and "starting Ray" not in first
    # ... and started no Ray of its own.
    assert not on_local_ray and "starting Ray" not in proc.stdout + proc.stderr
