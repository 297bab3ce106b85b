"""`fedexp`: compose the config, check it, then run one centralized or federated experiment.

Data flows one way: config -> checks -> data (load, partition) -> model -> training loops ->
`federated` (Flower simulation) or `centralized` -> results in Hydra's run directory.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from . import callbacks, checks, progress, resume
from .command_line import UNUSED_ENV, fresh_dir, prepare, signature_of_job
from .errors import BAD_INPUT, OutputError
from .interrupts import signals_as_interrupts
from .modes import ignored_overrides, steps_of
from .results import DISK_ERRNOS, RunResults
from .sweep import in_multirun, jobs_in_this_process, record_failed_job

log = logging.getLogger("fedexp")
OmegaConf.register_new_resolver("fedexp.fresh_dir", fresh_dir, replace=True)
# int(n * fraction): how many of n clients a fraction samples, as Flower counts them
# (conf/experiment/tutorial.yaml: min_evaluate_clients is "half of the clients").
OmegaConf.register_new_resolver("fedexp.share", lambda n, fraction: int(n * fraction), replace=True)


def config_dir() -> str:
    """The YAML configs: `conf/` beside the package in a checkout or editable install,
    `fedexp/conf/` inside a built wheel (pyproject.toml maps one onto the other)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"fedexp's conf/ folder is missing (looked in {here} and {here.parent})"
    )


def run(cfg: DictConfig, run_dir: str, info: dict | None = None) -> dict:
    """Run the experiment `cfg` describes, writing into `run_dir`; return results.json's data.

    Bad settings raise ConfigError before any data is loaded (or, for the checks that need
    the data, before Ray starts). The runners write model.pt and end results.json with
    "completed", "failed" or "diverged"; an exception ends it with "failed", an interrupt
    (KeyboardInterrupt, see interrupts.py) with "interrupted".
    """
    from . import centralized, federated, partition_report
    from .workload import Workload

    check_settings(cfg)
    if cfg.get("dry_run"):
        return dry_run(cfg, run_dir)
    start = resume.starting_point(cfg, run_dir) if resume.requested_for(run_dir) else resume.Start()
    if start.skip is not None:
        return start.skip
    results = RunResults(
        run_dir,
        cfg.mode,
        info={"seed": cfg.seed, **(info or {})},
        resume_after=start.after,
        callbacks=callbacks.build(cfg),
        config=OmegaConf.to_container(cfg, resolve=True),
        sweep=HydraConfig.get().sweep.dir if in_multirun() else None,
    )
    if start.after is not None and not in_multirun():
        resume.record_num_rounds(run_dir, cfg.num_rounds)
    try:
        work = Workload.build(cfg)
        results.data["data"] = {
            "dataset": cfg.dataset.name,
            "train_examples": len(work.data.y_train),
            "test_examples": len(work.data.y_test),
            "clients": len(work.parts),
        }
        results.data["device"] = report_device(cfg, work.device)
        partition_report.write(
            run_dir, work.data.y_train, work.parts, work.data.classes, cfg.partitioning
        )
        results.start()
        if cfg.mode == "federated":
            federated.run(work, results, resume=start.checkpoint, keep_ray=jobs_in_this_process())
        else:
            centralized.run(work, results)
    except BaseException as e:
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            e = OutputError.of(e, run_dir)
        if results.data["status"] == "running":
            try:
                if isinstance(e, KeyboardInterrupt):
                    # stopped before the run had a model
                    if not (results.dir / "model.pt").exists():
                        from .workload import initial_model

                        results.save_model(initial_model(cfg))
                    results.finish("interrupted", error=str(e) or "interrupted")
                else:
                    results.finish("failed", error=f"{type(e).__name__}: {e}")
            except OSError:  # the disk is full: results.json keeps the rounds it had
                pass
        if isinstance(e, OutputError):
            raise e from None
        raise
    finally:
        results.plot()
        results.end()
    return results.data


def check_settings(cfg: DictConfig) -> None:
    """Every setting, before any data is loaded: checks.py's, then, federated, both halves
    of the method, built as the run builds them (federated/strategies.py). Raises the
    first problem as a one-line ConfigError."""
    model = checks.check(cfg)
    if cfg.mode == "federated":
        from .federated.strategies import check_method

        check_method(cfg, model)


def report_device(cfg: DictConfig, device) -> str:
    """The torch device the run uses (results.json's `device`), said on the console when
    `device=auto` picked it."""
    if cfg.device.type == "auto":
        log.info("device=auto: training on %s", device)
    return str(device)


def dry_run(cfg: DictConfig, run_dir: str) -> dict:
    """Everything a run does before it trains, and nothing after: the settings, loading and
    partitioning the data (partitions.json/png are written), the model and, federated, both
    halves of the method as the server and a client worker would build them. It stops
    where a federated run would start Ray; no results.json is written."""
    from . import partition_report
    from .results import claim
    from .workload import Workload

    claim(run_dir)
    work = Workload.build(cfg)
    report_device(cfg, work.device)
    partition_report.write(
        run_dir, work.data.y_train, work.parts, work.data.classes, cfg.partitioning
    )
    model = work.new_model()
    built = f"model {type(model).__name__}"
    if cfg.mode == "federated":
        from .federated import build_strategy
        from .federated.client import ClientKit

        strategy = build_strategy(work, model)
        kit = ClientKit.build(OmegaConf.to_container(cfg, resolve=True), work.device)
        built += (
            f", strategy {type(strategy).__name__} with client {type(kit.new_method()).__name__}"
        )
    log.info(
        "dry run: %d training examples in %d partitions, %s; stopped before training -> %s",
        len(work.data.y_train),
        len(work.parts),
        built,
        run_dir,
    )
    return {"status": "dry_run"}


def drop_unused_settings(cfg: DictConfig) -> dict[str, object]:
    """In a sweep over options whose keys differ, remove from this job's config the keys
    its options do not have (see command_line.prepare); return them with their values."""
    unused = (
        json.loads(os.environ.get(UNUSED_ENV, "{}")).get(signature_of_job(), [])
        if in_multirun()
        else []
    )
    dropped = {}
    for key in unused:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is not None and leaf in node:
            dropped[key] = OmegaConf.select(cfg, key)
            with open_dict(node):
                del node[leaf]
    if dropped:
        log.info(
            "not used by this job's options, so left out: %s",
            ", ".join(f"{k}={v}" for k, v in dropped.items()),
        )
    return dropped


def run_sweep_job(cfg: DictConfig, run_dir: str, unused: dict | None = None) -> dict | None:
    """One job of a multirun: a failure is recorded in the job's results.json and the sweep
    goes on (see sweep.py); None tells main that this job failed. `unused`: the sweep's
    settings this job's options do not have, recorded in its results.json."""
    try:
        return run(cfg, run_dir, {"unused_settings": sorted(unused)} if unused else None)
    except Exception as e:
        record_failed_job(cfg, run_dir, e)
        if cfg.get("verbose"):
            raise
        return None


def exit_status(error: BaseException, run_dir: str) -> int | None:
    """The exit status for an error the user can act on, after one line on stderr; None
    for anything else (a bug: Hydra prints the traceback)."""
    if isinstance(error, BAD_INPUT):
        print(f"fedexp: error: {error}", file=sys.stderr)
        return 2
    if isinstance(error, OutputError):
        print(
            f"fedexp: error: {error} (status: failed, if results.json could still be written)",
            file=sys.stderr,
        )
        return 1
    if isinstance(error, KeyboardInterrupt):
        print(
            f"fedexp: {error or 'interrupted'}: the results so far are in {run_dir} "
            f"(status: interrupted)",
            file=sys.stderr,
        )
        return getattr(error, "exit_code", 130)
    return None


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def job(cfg: DictConfig) -> float | None:
    """One Hydra job (a run, or one run of a sweep)."""
    run_dir = HydraConfig.get().runtime.output_dir
    unused = drop_unused_settings(cfg)
    ignored = ignored_overrides(str(cfg.mode), list(HydraConfig.get().overrides.task))
    if ignored:
        log.warning(
            "mode=%s does not read %s: %s",
            cfg.mode,
            ", ".join(ignored),
            f"it trains {progress.count(cfg.centralized.epochs, 'epoch')} (centralized.epochs)"
            if cfg.mode == "centralized"
            else "they are settings of mode=centralized",
        )
    try:
        with signals_as_interrupts():
            data = run_sweep_job(cfg, run_dir, unused) if in_multirun() else run(cfg, run_dir)
    except BaseException as e:
        status = exit_status(e, run_dir)
        if status is None:
            raise
        if cfg.get("verbose") and not isinstance(e, KeyboardInterrupt):
            traceback.print_exception(e)  # the whole story, with the exit status of its kind
        sys.exit(status)
    if data is not None and data["status"] == "dry_run":
        return None
    if data is None or data["status"] != "completed":
        if data is not None:
            print(
                f"fedexp: run {data['status']}: {data.get('error')}; results and the last good "
                f"model are in {run_dir}",
                file=sys.stderr,
            )
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(1)
        return float("nan")  # a sweep goes on with its next job; Optuna records a failed trial
    log.info(progress.final_line(data, run_dir))
    if cfg.mode == "federated" and progress.last_all_clients(data) is None:
        from .federated.strategies import is_personal

        if is_personal(cfg):
            log.info(progress.PERSONAL_NOTE.format(name=HydraConfig.get().runtime.choices.strategy))
    return objective(cfg, data)


def objective(cfg: DictConfig, data: dict) -> float:
    """The value a run returns to Hydra, named by `objective` (see checks.OBJECTIVES), from
    its results: what a sweeper such as Optuna optimises (NaN when the run has none, e.g.
    accuracy for a regression loss: Optuna then records a failed trial)."""
    name = cfg.get("objective", "final_test_accuracy")
    if name == "best_test_accuracy":
        steps = steps_of(data, str(cfg.mode))
        scores = [s["test_accuracy"] for s in steps if isinstance(s.get("test_accuracy"), float)]
        return max(scores) if scores else float("nan")
    value = (data.get("final") or {}).get(name.removeprefix("final_"))
    return float("nan") if value is None else value


def main() -> None:
    """The `fedexp` command: the command line is checked before Hydra touches any run
    directory (see command_line.py), then Hydra composes and runs `job`."""
    argv = sys.argv[1:]
    os.environ.pop(resume.RESUME_ENV, None)
    if resume.requested(argv):
        plan = resume.plan(argv)
        if plan.nothing_left:
            print(f"fedexp: {plan.nothing_left}", file=sys.stderr)
            sys.exit(0)
        if plan.problem:
            print(f"fedexp: error: {plan.problem}", file=sys.stderr)
            sys.exit(2)
        argv = plan.argv
        os.environ[resume.RESUME_ENV] = plan.env
    line = prepare(argv, config_dir(), check_settings)
    if line.problem:
        print(f"fedexp: error: {line.problem}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = line.argv
    if line.unused:
        os.environ[UNUSED_ENV] = json.dumps(line.unused)
    else:
        os.environ.pop(UNUSED_ENV, None)
    try:
        job()
    finally:  # a sweep that ended early (Ctrl-C, exit) never reached SweepRay's end
        os.environ.pop(resume.RESUME_ENV, None)
        simulation = sys.modules.get("fedexp.federated.simulation")
        if simulation is not None:
            simulation.close_kept_session()


def cli() -> None:
    """The installed `fedexp` command and `python -m fedexp`: `main`, then a quick exit.

    When `main` returns, the run's files are written and closed and Ray is shut down, yet
    the interpreter's teardown of torch, Ray and Flower still takes about 2 s on a 2-core
    machine. So the command flushes its output and logs and ends the process at once, with
    `main`'s exit status."""
    try:
        main()
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    cli()
