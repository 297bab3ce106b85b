"""The same config gives the same numbers, bit for bit, whichever backend runs its clients
(Ray actors of a joined cluster, or inline in the fedexp process); another seed gives other
numbers.

Three real federated runs through Flower's engine, one on the session's shared Ray cluster
(joined through `simulation.ray_address`, in a sweep) and two with inline clients, under Dirichlet(0.1)
label skew with SCAFFOLD and half the clients sampled per round, so that partitioning,
model initialisation, client sampling, data order, training, the clients' state kept
between rounds and the extra arrays sent with the model all have to repeat. Only the keys
that measure time may differ. The seed's effect is checked with Flower's server loop in
this process (tests/flower_inprocess.py).
"""

from __future__ import annotations

import json

import flower_inprocess
import numpy as np
import pytest
import torch
from conftest import REPRODUCED, read_results

from fedexp.results import without_timing
from fedexp.workload import Workload

CONFIG = REPRODUCED


@pytest.fixture(scope="module")
def runs(cluster_sweep, run_inline):
    """The experiment on the session's Ray cluster (job 0 of `cluster_sweep`, a sweep
    joining the cluster), then twice with its clients inline: (results, run dir) each."""
    ray_run = cluster_sweep[0] / "0"
    return [
        (read_results(ray_run), ray_run),
        *(run_inline(*CONFIG, "seed=7", name=f"inline{i}") for i in range(2)),
    ]


def test_runs_complete_on_the_shared_cluster(runs):
    for (res, run_dir), backend in zip(runs, ("ray", "inline", "inline"), strict=True):
        assert res["status"] == "completed" and [r["round"] for r in res["rounds"]] == [1, 2, 3]
        assert res["backend"] == backend
        assert all(r["fit_clients"] == 2 and r["fit_failures"] == 0 for r in res["rounds"])
        assert (run_dir / "partitions.json").is_file() and (run_dir / "partitions.png").is_file()


@pytest.mark.parametrize("other", [1, 2], ids=["inline-ray", "inline-inline"])
def test_the_same_config_repeats_bit_for_bit(runs, other):
    """Whichever backend runs the clients: Ray's workers get row-major copies of the data
    from the object store, inline clients the driver's arrays, which are row-major too
    (conv kernels round differently on arrays whose strides also read as channels-last,
    see data/datasets.py's row_major)."""
    (a, dir_a), (b, dir_b) = runs[0] if other == 1 else runs[1], runs[other]
    # byte-identical results.json, once the keys that measure time are set aside
    on_disk = [json.loads((d / "results.json").read_text()) for d in (dir_a, dir_b)]
    for data in on_disk:  # which backend ran the clients
        del data["backend"]
    assert "seconds" in on_disk[0]["rounds"][0] and "wall_seconds" in on_disk[0]
    assert json.dumps(without_timing(on_disk[0])) == json.dumps(without_timing(on_disk[1]))
    assert without_timing(a["rounds"]) == without_timing(b["rounds"])  # floats compared with ==
    assert a["initial"] == b["initial"] and a["final"] == b["final"]
    assert (dir_a / "partitions.json").read_bytes() == (dir_b / "partitions.json").read_bytes()
    assert (dir_a / "model.pt").read_bytes() == (dir_b / "model.pt").read_bytes()
    ma, mb = (torch.load(d / "model.pt", weights_only=True) for d in (dir_a, dir_b))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_another_seed_gives_other_numbers(make_cfg):
    (sa, a, _), (sc, c, _) = (
        flower_inprocess.run(make_cfg(*CONFIG, f"seed={seed}")) for seed in (7, 8)
    )
    assert sa.initial["test_loss"] != sc.initial["test_loss"]  # model initialisation
    for ra, rc in zip(a, c):
        assert ra["train_loss"] != rc["train_loss"] and ra["test_loss"] != rc["test_loss"]
    pa, pc = (Workload.build(make_cfg(*CONFIG, f"seed={seed}")).parts for seed in (7, 8))
    assert any(not np.array_equal(x, y) for x, y in zip(pa.train, pc.train))  # partitioning


def test_dirichlet_skew_is_in_partitions_json(runs):
    _, run_dir = runs[0]
    p = json.loads((run_dir / "partitions.json").read_text())
    assert p["scheme"] == "dirichlet" and p["num_clients"] == 4 and p["unassigned"] == 0
    counts = np.array([c["train_label_counts"] for c in p["clients"]], float)
    shares = counts / counts.sum(1, keepdims=True)
    assert shares.max(1).mean() > 0.3  # alpha = 0.1: clients are dominated by few classes
