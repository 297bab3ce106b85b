"""Injected faults in real simulations, through the `fedexp` command's own function
(`fedexp.main.main`, in this process: the runs are small, so their clients run inline).

Two simulations: one with failing clients and stragglers that completes, one in which
every client fails. Divergence is covered in test_server_faults.py and
test_interrupts_and_divergence.py.
"""

from __future__ import annotations

import torch
from conftest import read_results

from fedexp.federated.faults import fit_fails, stragglers


def test_a_run_with_failures_and_stragglers_completes_and_counts_them(tmp_path, fedexp):
    run_dir = tmp_path / "run"
    proc = fedexp(
        "num_clients=4",
        "num_rounds=2",
        "faults.client_failure_rate=0.3",
        "faults.straggler_rate=0.25",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = read_results(run_dir)
    assert res["status"] == "completed"
    total_failed = total_dropped = 0
    for r in res["rounds"]:  # fraction_fit=1.0: all 4 clients are sampled every round
        dropped = stragglers(0, r["round"], [0, 1, 2, 3], 0.25)
        failed = {p for p in range(4) if p not in dropped and fit_fails(0, r["round"], p, 0.3)}
        assert r["fit_stragglers"] == len(dropped) == 1
        assert r["fit_failures"] == len(dropped) + len(failed)
        assert r["fit_clients"] == 4 - r["fit_failures"] and r["aggregated"] is True
        total_failed += len(failed)
        total_dropped += len(dropped)
    assert total_failed > 0 and total_dropped > 0  # both kinds of fault happened
    assert "failed)" in proc.stdout and "client failure: client" in proc.stdout
    assert "client failure: StragglerTimeout: client" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_round_in_which_every_client_fails_ends_the_run_as_failed(tmp_path, fedexp):
    run_dir = tmp_path / "run"
    proc = fedexp(
        "num_clients=3",
        "num_rounds=3",
        "faults.client_failure_rate=1.0",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"fedexp: run failed: round 1: all 3 sampled clients failed, nothing to aggregate (e.g. "
        f"client 0 failed on purpose in round 1 (faults.client_failure_rate=1.0)); results and the "
        f"last good model are in {run_dir}"
    )
    assert "Traceback" not in proc.stdout + proc.stderr
    res = read_results(run_dir)
    assert res["status"] == "failed" and res["error"].startswith(
        "round 1: all 3 sampled clients failed"
    )
    assert [(r["round"], r["fit_clients"], r["fit_failures"]) for r in res["rounds"]] == [(1, 0, 3)]
    assert res["final"] == res["initial"]  # the model never changed
    state = torch.load(run_dir / "model.pt", weights_only=True)
    torch.manual_seed(0)
    from fedexp.models import CNN

    initial = CNN(1, 32, 10).state_dict()
    assert all(torch.equal(state[k], initial[k]) for k in initial)
