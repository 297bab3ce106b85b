"""Real Hydra multiruns through the command line, then fedexp-compare on their directories.

The 2 x 2 federated sweep is the only one that starts Ray (four times, one round each on
digits with 2 clients); the failure sweep is centralized and fails fast.
"""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import REPO, read_results

TAG = "FEDEXP_TEST_PROCESS_TAG"


def run(module: str, *args: str, cwd: Path, timeout: float = 600):
    """`python -m MODULE ARGS` as a user would run it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tagged_processes(tag: str, but: int = 0) -> list[str]:
    """Live processes whose environment carries `tag` (Ray's GCS, raylet and workers inherit
    it), except process `but`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == but:
            continue
        try:
            if f"{TAG}={tag}".encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The 2 x 2 sweep. As each job after the first starts, the processes left from the
    jobs before it are listed (Ray's processes inherit a tag from the sweep's environment)."""
    cwd = tmp_path_factory.mktemp("user")
    sweep_dir = cwd / "sweep"
    tag = uuid.uuid4().hex
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{TAG: tag})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    args = ["-m", "num_rounds=1", "num_clients=2", "strategy.fraction_fit=0.5,1.0", "seed=0,1",
            f"hydra.sweep.dir={sweep_dir}"]
    leftovers, lines = {}, []
    with (cwd / "stderr.txt").open("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fedexp", *args], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        for line in proc.stdout:
            lines.append(line)
            job = re.search(r"\[HYDRA\]\s+#(\d+) : ", line)
            if job and int(job.group(1)) > 0 and Path("/proc/self/environ").exists():
                leftovers[int(job.group(1))] = tagged_processes(tag, but=proc.pid)
        returncode = proc.wait(timeout=600)
        err.seek(0)
        stderr = err.read()
    assert returncode == 0, stderr[-3000:]
    return sweep_dir, "".join(lines), tag, leftovers


def test_every_job_writes_its_full_results(sweep):
    sweep_dir, stdout, _, _ = sweep
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        res = read_results(job)
        assert res["status"] == "completed" and len(res["rounds"]) == 1
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        seen.add((overrides[2], overrides[3]))
        assert res["rounds"][0]["fit_clients"] == (1 if "fraction_fit=0.5" in overrides[2] else 2)
        for name in ("metrics.csv", "model.pt", ".hydra/config.yaml", "main.log"):
            assert (job / name).is_file(), (job, name)
        assert (job / "results.png").stat().st_size > 10_000
    assert len(seen) == 4
    assert stdout.count("round 1/1 |") == 4 and "sweep: 4 of 4 jobs completed" in stdout


def test_jobs_leave_no_ray_process_behind(sweep):
    """Each job's Ray has stopped, all its processes gone, before the next job starts."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc")
    _, _, tag, leftovers = sweep
    assert leftovers == {1: [], 2: [], 3: []}
    assert tagged_processes(tag) == []


def test_compare_the_sweep(sweep, tmp_path):
    sweep_dir = sweep[0]
    out_csv, png = tmp_path / "table.csv", tmp_path / "compare.png"
    proc = run("fedexp.compare", str(sweep_dir), "--csv", str(out_csv), "--plot", str(png), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 4
    columns = list(rows[0])
    assert columns[:3] == ["run", "strategy.fraction_fit", "seed"]   # what differs, nothing else
    for row in rows:
        res = read_results(sweep_dir / row["run"])
        overrides = yaml.safe_load((sweep_dir / row["run"] / ".hydra" / "overrides.yaml").read_text())
        assert f"strategy.fraction_fit={row['strategy.fraction_fit']}" in overrides
        assert f"seed={row['seed']}" in overrides
        assert float(row["final_test_accuracy"]) == res["final"]["test_accuracy"]
        assert float(row["wall_seconds"]) == res["wall_seconds"] and row["status"] == "completed"
    accs = [float(r["final_test_accuracy"]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    # printed: 4 run rows, then one seed group per fraction
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("4 runs") and len([l for l in lines[3:7] if "completed" in l]) == 4
    assert sum(l.count(" ± ") == 3 for l in lines) == 2
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000


def test_a_failed_job_leaves_the_others_intact(tmp_path):
    """num_clients=0 and a corrupt init_checkpoint each fail their check in the job."""
    bad_checkpoint = tmp_path / "not-a-model.pt"
    bad_checkpoint.write_text("garbage")
    sweep_dir = tmp_path / "sweep"
    proc = run("fedexp", "-m", "mode=centralized", "centralized.epochs=1", "num_clients=0,3",
               f"init_checkpoint=null,{bad_checkpoint}", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]        # the sweep ran to its end, then says so
    results = {j: read_results(sweep_dir / str(j)) for j in range(4)}
    assert [results[j]["status"] for j in range(4)] == ["failed", "failed", "completed", "failed"]
    for j in (0, 1):
        assert results[j]["error"] == ("ConfigError: num_clients=0 is not allowed: an integer >= 1")
    assert "init_checkpoint" in results[3]["error"] and not results[3].get("epochs")
    assert (sweep_dir / "2" / "model.pt").is_file() and results[2]["final"]["test_accuracy"] > 0
    assert "fedexp: error in job 0: num_clients=0 is not allowed" in proc.stderr
    assert "sweep: 1 of 4 jobs completed" in proc.stdout
    compared = run("fedexp.compare", str(sweep_dir), cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    assert compared.stdout.count(" failed ") == 3 and "0: ConfigError: num_clients=0" in compared.stdout


def test_help_lists_groups_options_and_examples(tmp_path):
    proc = run("fedexp", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    conf = REPO / "conf"
    for group in ("dataset", "model", "optimizer", "strategy", "partitioning", "device", "experiment"):
        options = ", ".join(sorted(p.stem for p in (conf / group).glob("*.yaml")))
        assert f"{group}: {options}" in proc.stdout
    assert "fedexp -m " in proc.stdout and "fedexp-compare " in proc.stdout
    assert "num_rounds: 5" in proc.stdout     # and the composed config
