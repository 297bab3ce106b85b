"""`fedexp resume=DIR`: continue a run, or a sweep, from where it stopped.

DIR is a run directory or a sweep directory (one holding Hydra's multirun.yaml).

- A run continues from its newest checkpoint (checkpoints.py), in DIR, with the overrides
  DIR's `.hydra/overrides.yaml` recorded, so it ends exactly where an unbroken run would.
  Only settings that do not change the experiment's rounds (`MAY_CHANGE`) may be given:
  `num_rounds` may grow, which extends a run that had completed. The config composed
  now must equal the one the checkpoint recorded (conf/ may have changed since); a run
  that stopped before its first checkpoint starts again in DIR.
- A sweep runs its command again in DIR (`hydra.sweep.dir`): each job that completed is
  skipped, each job with a checkpoint resumes, the others start.

`plan` turns the command line into Hydra's; `starting_point` decides, inside a job, what
that job does. The two talk through RESUME_ENV.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import checkpoints
from .checks import ConfigError
from .modes import steps_of
from .results import read_json

log = logging.getLogger("fedexp")

RESUME_ENV = "FEDEXP_RESUME"  # the resumed run directory, or SWEEP for every job of a sweep
SWEEP = "sweep"
MAY_CHANGE = ("num_rounds", "verbose")


@dataclass
class Plan:
    """What `plan` made of a `resume=` command line: a one-line problem, a message that
    nothing is left to do, or the argv for Hydra (with RESUME_ENV to set)."""

    problem: str | None = None
    nothing_left: str | None = None
    argv: list[str] | None = None
    env: str | None = None


def requested(argv: list[str]) -> bool:
    return any(a.lstrip("+").partition("=")[0] == "resume" for a in argv if not a.startswith("-"))


def _key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def _with(recorded: list[str], given: list[str]) -> list[str]:
    """The recorded overrides, those of the same keys replaced by the given ones."""
    keys = {_key(o) for o in given}
    return [o for o in recorded if _key(o) not in keys] + given


def plan(argv: list[str]) -> Plan:
    import yaml

    flags = [a for a in argv if a.startswith("-")]
    overrides = [a for a in argv if not a.startswith("-")]
    targets = [a.partition("=")[2] for a in overrides if _key(a) == "resume"]
    given = [a for a in overrides if _key(a) != "resume"]
    if len(targets) != 1 or not targets[0]:
        return Plan(problem="resume takes one directory: fedexp resume=DIR (a run's or a sweep's)")
    target = Path(targets[0])
    bad = [o for o in given if _key(o) not in MAY_CHANGE]
    if bad or [f for f in flags if f not in ("-m", "--multirun")]:
        what = bad[0] if bad else flags[0]
        return Plan(
            problem=f"resume={target} continues the run as it was recorded, so {what} cannot be "
            f"given (only {', '.join(MAY_CHANGE)} may change; num_rounds may grow)"
        )
    rounds = [o.partition("=")[2] for o in given if _key(o) == "num_rounds"]
    if rounds and not (rounds[0].isdigit() and int(rounds[0]) >= 1):
        return Plan(problem=f"num_rounds={rounds[0]} is not allowed: an integer >= 1")
    if (target / "multirun.yaml").is_file():
        sweep = OmegaConf.load(target / "multirun.yaml").hydra
        hydra_overrides = [
            o
            for o in sweep.overrides.hydra
            if _key(o) not in ("hydra.sweep.dir", "hydra.mode", "hydra.run.dir")
        ]
        if any(
            _key(o) in ("hydra/sweeper", "hparams_search")
            for o in [*hydra_overrides, *sweep.overrides.task]
        ):
            return Plan(
                problem=f"resume={target}: this sweep used a sweeper plugin, whose jobs may differ "
                f"between runs; only sweeps of Hydra's basic sweeper can be resumed"
            )
        return Plan(
            argv=[
                "-m",
                *_with(list(sweep.overrides.task), given),
                *hydra_overrides,
                f"hydra.sweep.dir={target}",
            ],
            env=SWEEP,
        )
    if (
        not (target / ".hydra" / "overrides.yaml").is_file()
        or not (target / "results.json").is_file()
    ):
        return Plan(
            problem=f"resume={target}: not a fedexp run or sweep directory (it needs .hydra/overrides.yaml "
            f"and results.json, or multirun.yaml)"
        )
    try:
        data = read_json(target / "results.json")
        recorded_cfg = OmegaConf.load(target / ".hydra" / "config.yaml")
    except (OSError, ValueError) as e:
        return Plan(
            problem=f"resume={target}: its results.json or .hydra/config.yaml cannot be read: {e}"
        )
    done = len(data.get("rounds") or [])
    wanted = int(rounds[0]) if rounds else int(recorded_cfg.num_rounds)
    if recorded_cfg.get("mode") != "federated":
        return Plan(
            problem=f"resume={target}: only federated runs can be resumed (a centralized run "
            f"keeps no checkpoint; start it again)"
        )
    if wanted < done:
        return Plan(
            problem=f"num_rounds={wanted} is not allowed with resume={target}: it completed {done} "
            f"rounds already"
        )
    if data.get("status") == "completed" and wanted <= done:
        return Plan(
            nothing_left=f"{target} completed its {done} rounds: nothing left to do "
            f"(num_rounds=N with N > {done} extends it)"
        )
    if done and not checkpoints.steps(target):
        return Plan(
            problem=f"resume={target}: it has no checkpoint to continue from (it ran with "
            f"checkpoint.keep=0)"
        )
    recorded = yaml.safe_load((target / ".hydra" / "overrides.yaml").read_text()) or []
    return Plan(
        argv=[*_with(recorded, given), f"hydra.run.dir={target}", "hydra.output_subdir=null"],
        env=str(target.resolve()),
    )


def requested_for(run_dir: str) -> bool:
    """Whether this job resumes (see `plan`): the run directory named, or a sweep's job."""
    value = os.environ.get(RESUME_ENV)
    if not value:
        return False
    from .sweep import in_multirun

    return value == SWEEP if in_multirun() else Path(value) == Path(run_dir).resolve()


@dataclass
class Start:
    """How a resumed job starts: `skip` (the results.json data of a job that completed),
    or after step `after` (0: from the beginning, in the same directory) from `checkpoint`."""

    skip: dict | None = None
    after: int | None = None
    checkpoint: dict | None = None


def starting_point(cfg: DictConfig, run_dir: str) -> Start:
    """What the resumed job in `run_dir` does; a fresh job (nothing in its directory) gets
    an empty Start and runs as new."""
    from .results import CLAIM, outputs_in

    run_dir = Path(run_dir)
    results = run_dir / "results.json"
    if not results.is_file():
        if [
            name
            for name in outputs_in(run_dir)
            if name not in (CLAIM, "partitions.json", "partitions.png")
        ]:
            raise ConfigError(
                f"resume: {run_dir} holds run files but no results.json; move them away to start it again"
            )
        return Start(after=0) if outputs_in(run_dir) else Start()
    data = read_json(results)
    steps = steps_of(data)
    if (
        data.get("status") == "completed"
        and len(steps) >= int(cfg.get("num_rounds", 0))
        and cfg.mode == "federated"
    ):
        log.info("resume: %s completed its %d rounds before; skipped", run_dir, len(steps))
        return Start(skip=data)
    if cfg.mode != "federated":
        if steps:
            raise ConfigError(
                f"resume: {run_dir} is a centralized run, which keeps no checkpoint; "
                f"start it again in a new directory"
            )
        return Start(after=0)
    _check_client_state_kept(cfg, run_dir)
    saved = checkpoints.newest(run_dir)
    if saved is None:
        if steps:
            raise ConfigError(
                f"resume: {run_dir} has no checkpoint to continue from (checkpoint.keep=0)"
            )
        return Start(after=0)
    _check_same_experiment(cfg, saved["config"], run_dir)
    return Start(after=int(saved["step"]), checkpoint=saved)


def _check_client_state_kept(cfg: DictConfig, run_dir: Path) -> None:
    """A method whose clients keep state can resume only from state kept in files."""
    from hydra.utils import get_class

    node = cfg.strategy.get("client")
    where = cfg.simulation.get("client_state", "auto")
    in_memory = where == "memory" or (where == "auto" and cfg.simulation.get("ray_address"))
    if node and in_memory and getattr(get_class(node._target_), "keeps_state", False):
        raise ConfigError(
            f"resume: the clients of {node._target_} keep state between rounds, which "
            f"{run_dir} kept in memory (simulation.client_state={where}), so it is lost; "
            f"the run cannot continue exactly"
        )


def _check_same_experiment(cfg: DictConfig, recorded: dict, run_dir: Path) -> None:
    now = OmegaConf.to_container(cfg, resolve=True)
    for key in MAY_CHANGE:
        now.pop(key, None)
        recorded = {k: v for k, v in recorded.items() if k != key}
    difference = _first_difference(now, recorded)
    if difference is not None:
        key, value, before = difference
        raise ConfigError(
            f"resume: {key} is {value!r} now but {before!r} in the checkpoint of {run_dir} "
            f"(conf/ changed since the run); resuming would not continue the same experiment"
        )


def _first_difference(a, b, path: str = ""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _first_difference(
                a.get(key, "<absent>"),
                b.get(key, "<absent>"),
                f"{path}.{key}" if path else str(key),
            )
            if found is not None:
                return found
        return None
    return None if a == b else (path, a, b)


def record_num_rounds(run_dir: str, num_rounds: int) -> None:
    """Keep `.hydra/` true to the run when a resume changed num_rounds: the next resume
    of the run reads its overrides from there."""
    import yaml

    from .results import atomic_write

    hydra_dir = Path(run_dir) / ".hydra"
    overrides = hydra_dir / "overrides.yaml"
    if not overrides.is_file():
        return
    recorded = yaml.safe_load(overrides.read_text()) or []
    updated = _with(recorded, [f"num_rounds={num_rounds}"])
    if updated != recorded:
        atomic_write(overrides, yaml.safe_dump(updated, default_flow_style=False))
        config = hydra_dir / "config.yaml"
        if config.is_file():
            cfg = OmegaConf.load(config)
            cfg.num_rounds = num_rounds
            atomic_write(config, OmegaConf.to_yaml(cfg))
