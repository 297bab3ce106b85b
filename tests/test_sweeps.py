"""Real Hydra multiruns through the command line, then fedexp-compare on their directories.

The 2 x 3 federated sweep starts Ray for its six jobs (one round each on digits with 2
clients), once, and once more after a job whose client process died; the failure sweep is
centralized and fails fast. Sweeps whose jobs run one after another run in this process,
as `fedexp -m` runs them (`fedexp.main.main`); launchers that start processes of their own
(joblib, submitit) run from the command line.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Service, early, fedexp_in_process, read_results, service
from recording_methods import logged

from fedexp.results import without_timing

TAG = "FEDEXP_TEST_PROCESS_TAG"
# Small runs would have their clients inline (simulation.backend=auto): these sweeps are
# about sharing Ray, so their clients run on it.
SMALL = ("num_rounds=1", "num_clients=2", "simulation.backend=ray")


def _environment() -> dict:
    """The environment of a command run as a user would run it, with tests/ importable
    (for the recording clients)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    return env


def run(module: str, *args: str, cwd: Path, timeout: float = 600):
    """`python -m MODULE ARGS` as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tagged_processes(tag: str) -> list[tuple[int, str]]:
    """(pid, program) of the live processes started with `tag` in their environment (Ray's
    GCS, raylet and workers inherit it; /proc shows a process's environment as it started,
    so not this one's, whose tag is set later)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if f"{TAG}={tag}".encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(
                    (int(pid), Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())
                )
        except OSError:
            pass
    return found


# In the sweep, client 0's worker process dies in the jobs of seed 0 with fraction_fit 1.0
# (with fraction_fit 0.5, seed 0 samples only client 1): jobs 3 and 5.
CRASHED = (3, 5)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The 2 x 3 sweep (seed 0 twice), whose jobs 3 and 5 lose a client's process, run in
    this process (`fedexp.main.main`, as the command runs it). As each job after the first
    starts, the processes left from the jobs before it are listed (Ray's processes inherit
    a tag from this process's environment)."""
    from fedexp import main as fedexp_main

    cwd = tmp_path_factory.mktemp("user")
    sweep_dir = cwd / "sweep"
    tag = uuid.uuid4().hex
    leftovers = {}
    run_job = fedexp_main.run_sweep_job

    def listing_leftovers(cfg, run_dir, unused=None):
        job = int(Path(run_dir).name)
        if job > 0 and Path("/proc/self/environ").exists():
            leftovers[job] = tagged_processes(tag)
        return run_job(cfg, run_dir, unused)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TAG, tag)
        patch.setattr(fedexp_main, "run_sweep_job", listing_leftovers)
        proc = fedexp_in_process(
            "-m",
            *SMALL,
            "strategy.client._target_=recording_methods.CrashingClient",
            "+strategy.client.crash_seed=0",
            "strategy.fraction_fit=0.5,1.0",
            "seed=0,1,0",
            "hydra.sweep.dir=sweep",
            cwd=cwd,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir, proc.stdout, tag, leftovers


def test_every_job_writes_its_full_results(sweep):
    sweep_dir, stdout, _, _ = sweep
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1", "2", "3", "4", "5"]
    seen = set()
    for job in jobs:
        res = read_results(job)
        assert res["status"] == "completed" and len(res["rounds"]) == 1
        fraction, seed = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())[
            len(SMALL) + 2 :
        ]
        seen.add((fraction, seed))
        crashed = int(job.name) in CRASHED
        assert res["rounds"][0]["fit_clients"] == (
            1 if "fraction_fit=0.5" in fraction or crashed else 2
        )
        assert res["rounds"][0]["fit_failures"] == crashed
        assert res["backend"] == "ray"
        for name in ("metrics.csv", "model.pt", ".hydra/config.yaml", "main.log"):
            assert (job / name).is_file(), (job, name)
        assert (job / "results.png").stat().st_size > 10_000
    assert len(seen) == 4
    assert stdout.count("round 1/1 |") == 6 and "sweep: 6 of 6 jobs completed" in stdout


def test_the_jobs_share_one_ray_and_nothing_else(sweep):
    """Ray starts once for jobs 0 to 3: each of them after the first finds the same Ray
    processes (its GCS, its raylet, the client workers). Job 3 loses a client's process,
    and Flower puts the dead actor back in its pool: job 4 does not inherit that Ray but
    starts its own, which job 5 takes over. None is left when the sweep ends. A job
    inherits nothing of the jobs before it: the same settings later in the sweep, on warm
    workers or on a new Ray, give the same results."""
    sweep_dir, stdout, tag, leftovers = sweep
    assert stdout.count("starting Ray") == 2 and stdout.count("Ray of the job before") == 4
    assert stdout.count("Ray started (") == 2 and stdout.count("clients ready (") == 6
    assert "starting Ray" in (sweep_dir / "4" / "main.log").read_text()
    if Path("/proc/self/environ").exists():
        assert sorted(leftovers) == [1, 2, 3, 4, 5]
        programs = {program.rsplit("/", 1)[-1] for _, program in leftovers[1]}
        assert {"gcs_server", "raylet"} <= programs, programs
        assert leftovers[2] == leftovers[3] == leftovers[1]
        assert not set(leftovers[5]) & set(leftovers[1])  # a Ray of other processes
        assert {"gcs_server", "raylet"} <= {p.rsplit("/", 1)[-1] for _, p in leftovers[5]}
        assert tagged_processes(tag) == []
    by_settings = results_by_settings(sweep_dir)
    intact = by_settings[("strategy.fraction_fit=0.5", "seed=0")]
    assert len(intact) == 2 and intact[0] == intact[1]
    # Where a client's process died, Flower may hand the round's evaluation to the dead
    # actor or to the live one: the training, the global model and its test are the same.
    crashed = [
        {**res, "rounds": [_training(r) for r in res["rounds"]]}
        for res in by_settings[("strategy.fraction_fit=1.0", "seed=0")]
    ]
    assert len(crashed) == 2 and crashed[0] == crashed[1]


def _training(record: dict) -> dict:
    """A round's record without what the clients' evaluation reported."""
    return {k: v for k, v in record.items() if not k.startswith(("evaluate", "distributed"))}


def results_by_settings(sweep_dir: Path) -> dict[tuple[str, str], list[dict]]:
    """Each job's results without timing keys, by its (strategy.fraction_fit, seed) overrides."""
    out = {}
    for job in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        key = tuple(
            next(o for o in overrides if o.startswith(f"{name}="))
            for name in ("strategy.fraction_fit", "seed")
        )
        out.setdefault(key, []).append(without_timing(read_results(job)))
    return out


@early("parallel_sweep")
def _parallel_sweep() -> tuple[Service, Path]:
    folder = Path(tempfile.mkdtemp(prefix="fxparallel"))
    (folder / "fits").mkdir()
    args = [
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "simulation.num_cpus=2",
        *SMALL,
        "strategy.fraction_fit=0.5,1.0",
        "seed=1",
        "strategy.client._target_=recording_methods.RecordingClient",
        f"+strategy.client.log_dir={folder / 'fits'}",
        "hydra.sweep.dir=sweep",
    ]
    return Service([sys.executable, "-m", "fedexp", *args], str(folder), _environment()), folder


@pytest.fixture(scope="module")
def parallel_sweep():
    """Two jobs of the 2 x 3 sweep again, at the same time with Hydra's joblib launcher, on
    a sweep Ray of 2 CPUs, from the command line (started as the session begins, see
    conftest.early). Every fit logs its worker process, its Ray job and when it ran."""
    command, folder = service("parallel_sweep")
    status, _, stderr = command.output()
    assert status == 0, stderr[-3000:]
    return folder / "sweep", folder / "fits"


def test_parallel_jobs_give_the_results_of_the_sequential_sweep(sweep, parallel_sweep):
    sequential, parallel = results_by_settings(sweep[0]), results_by_settings(parallel_sweep[0])
    assert len(parallel) == 2 and all(len(runs) == 1 for runs in parallel.values())
    for settings, runs in parallel.items():
        assert runs[0]["status"] == "completed" and runs[0] == sequential[settings][0], settings
    for job in parallel_sweep[0].iterdir():
        if job.is_dir() and (job / ".hydra").is_dir():
            assert "joining the sweep's Ray" in (job / "main.log").read_text()


def test_parallel_jobs_hold_no_more_client_actors_than_rays_cpus(parallel_sweep):
    """Two jobs at once on 2 CPUs: each job gets one client actor (the same worker process
    for all its fits), and no more than 2 fits ever run at the same moment."""
    fits = logged(parallel_sweep[1])
    assert len(fits) == 1 + 2  # 1 round, fraction_fit 0.5 and 1.0 of 2 clients
    by_job = {}
    for fit in fits:
        by_job.setdefault(fit["ray_job"], set()).add(fit["pid"])
    assert len(by_job) == 2 and all(len(pids) == 1 for pids in by_job.values()), by_job
    events = sorted([(f["start"], 1) for f in fits] + [(f["end"], -1) for f in fits])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak <= 2


@early("submitit_sweep")
def _submitit_sweep() -> tuple[Service, Path]:
    folder = Path(tempfile.mkdtemp(prefix="fxsubmitit"))
    args = [
        "-m",
        "hydra/launcher=submitit_local",
        "mode=centralized",
        "centralized.epochs=1",
        "seed=0,1",
        "hydra.sweep.dir=sweep",
    ]
    return Service([sys.executable, "-m", "fedexp", *args], str(folder), _environment()), folder


@pytest.fixture
def submitit_sweep():
    return service("submitit_sweep")


def test_submitit_local_runs_the_jobs_of_a_sweep(submitit_sweep):
    """submitit's local executor, as the Slurm option uses it on a cluster: each job in a
    process of its own (centralized, so that this test starts no Ray; sharing the sweep's
    Ray is the joblib tests' part). From the command line, started as the session begins."""
    command, folder = submitit_sweep
    status, _, stderr = command.output()
    assert status == 0, stderr[-3000:]
    sweep_dir = folder / "sweep"
    runs = [read_results(sweep_dir / job) for job in ("0", "1")]
    assert [(r["status"], r["seed"]) for r in runs] == [("completed", 0), ("completed", 1)]
    assert runs[0]["epochs"][0]["train_loss"] != runs[1]["epochs"][0]["train_loss"]
    assert len(list((sweep_dir / ".submitit").iterdir())) >= 2  # submitit's own job folders


def test_the_slurm_option_composes(fedexp):
    proc = fedexp("--cfg", "hydra", "hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert (
        launcher["_target_"]
        == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    )
    assert (launcher["partition"], launcher["cpus_per_task"], launcher["timeout_min"]) == (
        "gpu",
        8,
        120,
    )


def test_optuna_reports_the_best_trial(fedexp, tmp_path):
    """A bare Optuna sweep (the plugin's own default direction is `minimize`) over
    optimizer.lr, three trials; each returns its final test accuracy (`objective`), and the
    best trial is the one with the highest. Centralized runs, so that the test starts no
    Ray: federated trials share one Ray as any sweep in this process does
    (test_the_jobs_share_one_ray_and_nothing_else). In this process, as the sweeps of
    test_sweep_keys.py run."""
    sweep_dir = tmp_path / "sweep"
    proc = fedexp(
        "-m",
        "hydra/sweeper=optuna",
        "optimizer.lr=interval(0.0001,0.1)",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=0",
        "mode=centralized",
        "centralized.epochs=1",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert proc.returncode in (0, None), proc.stderr[-3000:]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    trials = {}
    for job in sweep_dir.iterdir():
        if (job / ".hydra").is_dir():
            overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
            lr = float(
                next(o for o in overrides if o.startswith("optimizer.lr=")).partition("=")[2]
            )
            trials[lr] = read_results(job)["final"]["test_accuracy"]
    assert len(trials) == 3 and all(1e-4 <= lr <= 1e-1 for lr in trials)
    assert len(set(trials.values())) > 1  # the trials differ, so the direction shows
    assert best["best_value"] == max(trials.values())
    assert trials[best["best_params"]["optimizer.lr"]] == best["best_value"]


def test_compare_the_sweep(sweep, tmp_path):
    sweep_dir = sweep[0]
    out_csv, png = tmp_path / "table.csv", tmp_path / "compare.png"
    proc = run(
        "fedexp.compare", str(sweep_dir), "--csv", str(out_csv), "--plot", str(png), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 6
    columns = list(rows[0])
    assert columns[:3] == ["run", "strategy.fraction_fit", "seed"]  # what differs, nothing else
    for row in rows:
        res = read_results(sweep_dir / row["run"])
        overrides = yaml.safe_load(
            (sweep_dir / row["run"] / ".hydra" / "overrides.yaml").read_text()
        )
        assert f"strategy.fraction_fit={row['strategy.fraction_fit']}" in overrides
        assert f"seed={row['seed']}" in overrides
        assert float(row["final_test_accuracy"]) == res["final"]["test_accuracy"]
        assert float(row["wall_seconds"]) == res["wall_seconds"] and row["status"] == "completed"
    accs = [float(r["final_test_accuracy"]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    # printed: 4 run rows, then one seed group per fraction
    lines = proc.stdout.splitlines()
    assert (
        lines[0].startswith("6 runs")
        and len([line for line in lines[3:9] if "completed" in line]) == 6
    )
    assert sum(line.count(" ± ") == 3 for line in lines) == 2
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000


def test_a_failed_job_leaves_the_others_intact(fedexp, capsys, tmp_path):
    """num_clients=2000 passes the settings check every job gets before the sweep starts,
    and fails in its jobs once the data is loaded (digits has 1437 training examples); the
    other jobs complete (a sweep in this process: centralized jobs start no Ray)."""
    from fedexp.compare import main as compare

    sweep_dir = tmp_path / "sweep"
    proc = fedexp(
        "-m",
        "mode=centralized",
        "centralized.epochs=1",
        "num_clients=2000,3",
        "seed=0,1",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # the sweep ran to its end, then says so
    results = {j: read_results(sweep_dir / str(j)) for j in range(4)}
    assert [results[j]["status"] for j in range(4)] == [
        "failed",
        "failed",
        "completed",
        "completed",
    ]
    too_many = "num_clients=2000 is not allowed: at most the 1437 training examples"
    for j in (0, 1):
        assert too_many in results[j]["error"] and not results[j].get("epochs")
    for j in (2, 3):
        assert (sweep_dir / str(j) / "model.pt").is_file()
        assert results[j]["final"]["test_accuracy"] > 0
    assert f"fedexp: error in job 0: {too_many}" in proc.stderr
    assert "sweep: 2 of 4 jobs completed" in proc.stdout
    assert compare([str(sweep_dir)]) == 0
    compared = capsys.readouterr().out
    assert compared.count(" failed ") == 2 and "0: ConfigError: num_clients=2000" in compared


def test_help_lists_groups_options_and_examples(fedexp):
    proc = fedexp("--help")
    assert proc.returncode == 0, proc.stderr
    conf = REPO / "conf"
    for group in (
        "dataset",
        "model",
        "optimizer",
        "strategy",
        "partitioning",
        "device",
        "experiment",
    ):
        options = ", ".join(sorted(p.stem for p in (conf / group).glob("*.yaml")))
        assert f"{group}: {options}" in proc.stdout
    assert "fedexp -m " in proc.stdout and "fedexp-compare " in proc.stdout
    assert "num_rounds: 5" in proc.stdout  # and the composed config
