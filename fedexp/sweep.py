"""Hydra multiruns (`fedexp -m ...`): one failing job must not stop or lose the others.

Hydra's basic launcher runs the jobs one after another in this process. It goes on after a
job raises an Exception, but `sys.exit` (fedexp's exit 2 for a bad setting) would end the
whole sweep, and a job that failed before its results existed would leave no trace. So in
a multirun a failed job is recorded in its own results.json (`status: "failed"` and the
error), reported in one line, and the sweep goes on. When the sweep ends, `SweepSummary`
says how many jobs failed and exits with status 1 if any did.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from .errors import USER_ERRORS, ResultsExistError
from .results import read_json, record_failure

log = logging.getLogger("fedexp")


def first_line(text: str, limit: int = 200) -> str:
    """An error message as one line (some exceptions carry paragraphs)."""
    line = (str(text).strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def jobs_in_this_process() -> bool:
    """A multirun whose jobs run one after another in this process (Hydra's basic
    launcher, also under a sweeper such as Optuna's): they can share one Ray."""
    return in_multirun() and HydraConfig.get().launcher.get("_target_") == BASIC_LAUNCHER


# Launchers that run a sweep's jobs at the same time on this machine, and their setting
# that says how many at once.
CONCURRENT_LAUNCHERS = {
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher": "n_jobs",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher": "array_parallelism",
}


class SweepRay(Callback):
    """One Ray for a whole multirun (`hydra.callbacks.sweep_ray` in conf/config.yaml).

    Jobs that Hydra runs one after another in this process keep their Ray, client workers
    and actors for the next job (simulation.ray_session(keep=True)); the end of the sweep
    ends it. For a launcher that runs jobs at the same time in other processes of this
    machine (joblib, submitit_local), this process starts one local Ray before the first
    job, which every job joins with its share of the client slots (simulation.start_sweep_ray).
    Its jobs' clients then run on that Ray (simulation.uses_ray), unless the sweep asks for
    inline clients (`simulation.backend=inline`: no Ray). A sweep sent to other machines
    (Slurm) is left alone: each job starts Ray where it runs, if it needs one. Hydra builds this callback for every run, so Ray's code is imported only when a
    sweep needs it."""

    def __init__(self) -> None:
        self.head = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        launcher = config.hydra.launcher.get("_target_")
        simulation = config.get("simulation") or {}
        if (
            launcher not in CONCURRENT_LAUNCHERS
            or simulation.get("ray_address")
            or simulation.get("backend") == "inline"
            or config.get("mode") != "federated"
            or config.get("dry_run")
        ):
            return
        n_jobs = int(config.hydra.launcher.get(CONCURRENT_LAUNCHERS[launcher]) or 1)
        if n_jobs < 0:  # joblib's convention: -1 all CPUs, -2 all but one, ...
            n_jobs = max((os.cpu_count() or 1) + 1 + n_jobs, 1)
        from .federated.simulation import start_sweep_ray

        self.head = start_sweep_ray(simulation, bool(config.get("verbose")), n_jobs)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        simulation = sys.modules.get("fedexp.federated.simulation")
        if simulation is not None:
            simulation.end_sweep_ray(self.head)
            self.head = None


def record_failed_job(cfg: DictConfig, run_dir: str, error: BaseException) -> None:
    """Record `error` in the job's results.json (unless the job's run already did, or the
    directory holds another run's results) and report it in one line."""
    message = f"{type(error).__name__}: {error}"
    wrote = record_failure(run_dir, str(cfg.get("mode")), message, {"seed": cfg.get("seed")})
    if not isinstance(error, USER_ERRORS):
        log.error("job crashed:", exc_info=error)
    where = (
        f"recorded in {Path(run_dir) / 'results.json'}"
        if wrote or not isinstance(error, ResultsExistError)
        else "nothing written"
    )
    print(
        f"fedexp: error in job {HydraConfig.get().job.num}: {first_line(error)} ({where}; "
        f"the sweep goes on)",
        file=sys.stderr,
    )


def job_statuses(sweep_dir: Path) -> list[tuple[Path, str, str | None]]:
    """(job directory, status, error) of every job under `sweep_dir`, in job order."""
    jobs = sorted(
        (p.parent for p in sweep_dir.rglob(".hydra") if p.is_dir()),
        key=lambda d: [int(t) if t.isdigit() else t for t in d.relative_to(sweep_dir).parts],
    )
    out = []
    for job in jobs:
        try:
            data = read_json(job / "results.json")
            out.append((job, str(data.get("status")), data.get("error")))
        except (OSError, ValueError):
            out.append((job, "no results.json", None))
    return out


class SweepSummary(Callback):
    """At the end of a multirun: one line per failed job, the count, how to compare them."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = job_statuses(sweep_dir)
        if config.get("dry_run"):  # dry runs write no results.json: a job that failed did
            failed = [job for job, status, _ in jobs if status != "no results.json"]
            print(
                f"sweep (dry run): {len(jobs) - len(failed)} of {len(jobs)} jobs passed -> {sweep_dir}"
            )
            if failed:
                sys.exit(1)
            return
        bad = [(job, status, error) for job, status, error in jobs if status != "completed"]
        print(f"sweep: {len(jobs) - len(bad)} of {len(jobs)} jobs completed -> {sweep_dir}")
        for job, status, error in bad:
            print(
                f"  job {job.relative_to(sweep_dir)}: {status}"
                + (f": {first_line(error)}" if error else "")
            )
        print(f"compare them: fedexp-compare {sweep_dir}")
        if bad:
            sys.exit(1)
