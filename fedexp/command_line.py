"""The command line, checked before Hydra creates or writes into a run directory.

Hydra itself reports an unknown group option or setting, but over several lines, with
its config search path and exit status 1; and it creates the run directory and writes
`.hydra/` into it before fedexp's own code runs, so a typo would leave an empty run
directory behind, and a run pointed at a finished run's directory would overwrite that
run's config snapshot before fedexp could refuse. `prepare` catches these, and every bad
setting of every job of a sweep, first, in one line. It also points a sweeper that
optimises the run's `objective` (Optuna) in the objective's direction.

`fresh_dir` names the default run directory (`outputs/<date>/<time>`, see
conf/config.yaml): two runs started in the same second get `<time>` and `<time>-2`
instead of sharing one directory.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_CLAIMED: dict[str, str] = {}


def fresh_dir(path: str) -> str:
    """`path`, or `path-2`, `path-3`, ... : the first that did not exist, created here
    (`mkdir` is atomic, so concurrent runs cannot pick the same one). Hydra resolves the
    directory more than once per process; each resolution returns the same answer."""
    if path not in _CLAIMED:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        candidate, n = path, 1
        while True:
            try:
                os.mkdir(candidate)
                break
            except FileExistsError:
                n += 1
                candidate = f"{path}-{n}"
        _CLAIMED[path] = candidate
    return _CLAIMED[path]


def _options(conf: Path, group: str) -> list[str] | None:
    folder = conf / group
    if not folder.is_dir():
        return None
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _is_list_group(conf: Path, group: str) -> bool:
    """Whether config.yaml's defaults pick a list of `group`'s options (e.g. `logger`)."""
    import yaml

    defaults = yaml.safe_load((conf / "config.yaml").read_text()).get("defaults", [])
    return any(isinstance(d, dict) and isinstance(d.get(group), list) for d in defaults)


def _values(override) -> list[str] | None:
    """The values an override sets (all of a sweep's), or None when not enumerable."""
    if not override.is_sweep_override():
        value = override.value()
        return None if value is None else [str(value)]
    if override.is_discrete_sweep() and override.value_type.name != "GLOB_CHOICE_SWEEP":
        return list(override.sweep_string_iterator())
    return None


def _output_dir_problem(override, multirun: bool) -> str | None:
    from .resume import RESUME_ENV

    key, value = override.key_or_group, override.value()
    if not isinstance(value, str) or "${" in value or os.environ.get(RESUME_ENV):
        return None  # resume writes into its run's directory (see resume.py)
    from .results import outputs_in

    if key == "hydra.run.dir" and not multirun and outputs_in(value):
        return (
            f"hydra.run.dir={value} already holds {outputs_in(value)[0]} from another run; "
            f"refusing to write into it (choose another directory, or leave hydra.run.dir "
            f"unset for a fresh one)"
        )
    if key == "hydra.sweep.dir" and multirun and any(outputs_in(job) for job in _subdirs(value)):
        return (
            f"hydra.sweep.dir={value} already holds another sweep's results; refusing to "
            f"overwrite them (choose another directory, or leave hydra.sweep.dir unset)"
        )
    return None


def _subdirs(path: str) -> list[Path]:
    return [p for p in Path(path).iterdir() if p.is_dir()] if Path(path).is_dir() else []


def _owners(conf: Path, key: str) -> list[str]:
    """The options of `key`'s group (its first part) whose YAML has the key, e.g.
    ["dirichlet"] for partitioning.alpha."""
    from omegaconf import OmegaConf

    group, _, rest = key.partition(".")
    found = []
    for option in _options(conf, group) or []:
        try:
            node = OmegaConf.load(conf / group / f"{option}.yaml")
        except Exception:
            continue
        if "@package _global_" in (conf / group / f"{option}.yaml").read_text().split("\n", 1)[0]:
            rest_key = key
        else:
            rest_key = rest
        if rest_key and OmegaConf.select(node, rest_key, default=_ABSENT) is not _ABSENT:
            found.append(option)
    return found


_ABSENT = object()


def _default_option(conf: Path, group: str) -> str:
    """The option conf/config.yaml's defaults list picks for `group`."""
    from omegaconf import OmegaConf

    for entry in OmegaConf.load(conf / "config.yaml").get("defaults", []):
        if isinstance(entry, dict) or OmegaConf.is_dict(entry):
            for key, value in entry.items():
                if key == group:
                    return str(value)
    return "its default"


# Hydra plugins behind options fedexp offers: option -> (the plugin's module, fedexp's extra).
PLUGINS = {
    "hydra/launcher/joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "hydra/launcher/submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/launcher/submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/launcher/slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/sweeper/optuna": ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
}


def plugin_problem(option: str) -> str | None:
    """The one-line error for a Hydra option (`hydra/launcher/joblib` or
    `hydra/launcher=joblib`) whose plugin is not installed; None if it is, or unknown."""
    import importlib.util

    option = option.replace("=", "/")
    if option not in PLUGINS:
        return None
    module, extra = PLUGINS[option]
    try:
        if importlib.util.find_spec(module) is not None:
            return None
    except ImportError:
        pass
    group, _, name = option.rpartition("/")
    return (
        f"{group}={name} needs a Hydra plugin that is not installed: pip install -e '.[{extra}]' "
        f"(the extra '{extra}'; '.[all]' installs every extra)"
    )


def _first(problems) -> str | None:
    """The first problem found, if any (the rest are not computed)."""
    return next((problem for problem in problems if problem), None)


def _plugin_of_option(conf: Path, group: str, option: str) -> str | None:
    """The missing-plugin error for a group option whose YAML picks a Hydra plugin (e.g.
    hparams_search=optuna_lr: `override /hydra/sweeper: optuna`), else None."""
    path = conf / group / f"{option}.yaml"
    if not path.is_file():
        return None
    found = re.findall(r"override\s+/?(hydra/(?:launcher|sweeper))\s*:\s*(\w+)", path.read_text())
    problem = _first(plugin_problem(f"{group_name}={name}") for group_name, name in found)
    return f"{group}={option}: {problem}" if problem else None


def _composition_problem(
    error: Exception, conf: Path | None = None, choices: dict | None = None
) -> str:
    from hydra.errors import MissingConfigException

    text = f"{error} {error.__cause__ or ''}"
    problem = _first(plugin_problem(option) for option in PLUGINS if option in text)
    if problem:
        return problem
    if isinstance(error, MissingConfigException) and error.options and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return (
            f"{group}={option} is not allowed: the {group} options are {', '.join(error.options)}"
        )
    key = re.search(r"Could not override '([^']+)'", text)
    if key and "not in struct" in text:
        name = key.group(1)
        owners = _owners(conf, name) if conf else []
        if owners:
            group = name.partition(".")[0]
            chosen = (choices or {}).get(group) or _default_option(conf, group)
            return (
                f"{name} is not a setting of {group}={chosen}: only {group}="
                f"{','.join(owners)} {'has' if len(owners) == 1 else 'have'} it (in a sweep over "
                f"{group}, it applies to the options that have it)"
            )
        return (
            f"{name} is not a fedexp setting (a typo? `fedexp --cfg job` lists every "
            f"setting; +{name}=VALUE adds a new key)"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith(("full_key:", "object_type")))


@dataclass
class CommandLine:
    """What `prepare` made of the command line: the one-line problem, if any, the argv
    for Hydra, and per combination of swept group options the keys it does not have."""

    problem: str | None
    argv: list[str]
    unused: dict[str, list[str]] = field(default_factory=dict)


UNUSED_ENV = "FEDEXP_UNUSED_SETTINGS"  # how the sweep's jobs learn `CommandLine.unused`


def _signature(choices: dict[str, str]) -> str:
    return ",".join(f"{g}={v}" for g, v in sorted(choices.items()))


def signature_of_job() -> str:
    """This job's combination of swept group options, as `prepare` keyed it: from the
    job's own overrides (a group appears there when the sweep set it)."""
    from hydra.core.hydra_config import HydraConfig

    unused = os.environ.get(UNUSED_ENV)
    if not unused:
        return ""
    import json

    groups = {part.split("=", 1)[0] for sig in json.loads(unused) for part in sig.split(",")}
    choices = {}
    for line in HydraConfig.get().overrides.task:
        key, _, value = line.partition("=")
        if key in groups:
            choices[key] = value
    return _signature(choices)


def _keys_by_option(
    conf: Path, overrides, group_values: dict[str, list[str]]
) -> dict[str, list[str]]:
    """For a sweep over group options whose keys differ: per combination of the swept
    options, the command line's keys that the combination's config does not have."""
    import itertools

    from hydra import compose
    from hydra.core.override_parser.types import OverrideType
    from omegaconf import OmegaConf

    keys = [
        o.key_or_group
        for o in overrides
        if not o.is_hydra_override()
        and o.type == OverrideType.CHANGE
        and _options(conf, o.key_or_group) is None
    ]
    groups = sorted(group_values)
    missing: dict[str, list[str]] = {}
    for values in itertools.islice(itertools.product(*(group_values[g] for g in groups)), 256):
        choices = dict(zip(groups, values))
        cfg = compose(config_name="config", overrides=[f"{g}={v}" for g, v in choices.items()])
        absent = [k for k in keys if OmegaConf.select(cfg, k, default=_ABSENT) is _ABSENT]
        if absent:
            missing[_signature(choices)] = absent
    return missing


def prepare(argv: list[str], conf_dir: str, check_settings: Callable) -> CommandLine:
    """Check the command line (see `_check`), and with `check_settings` (main's, which
    raises ConfigError) the settings of the run or of every job of a sweep; in a sweep over
    group options whose keys differ (`partitioning=iid,dirichlet partitioning.alpha=0.1`),
    a key that some of the options have is forced in (`++key`) for all, and each job drops
    it again when its options lack it (main.job, which records it as unused)."""
    from hydra import initialize_config_dir

    conf = Path(conf_dir)
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        line = _check(argv, conf, check_settings)
    from .resume import RESUME_ENV

    if line.problem is None and not os.environ.get(RESUME_ENV):  # a resume takes its claim over
        line.problem = _claim_run_dir(line.argv)
    return line


# Hydra's flags that ask for something other than a run (help, shell completion, ...).
_NO_RUN = ("help", "hydra_help", "info", "shell_completion", "experimental_rerun")


def _any_flag(args, *names: str) -> bool:
    return any(getattr(args, name) for name in names)


def _claim_run_dir(argv: list[str]) -> str | None:
    """Claim an explicit `hydra.run.dir` for this run before Hydra writes its snapshot
    there (see results.claim): of two runs started at once on one directory, one gets it
    and the other is refused here, before it writes anything."""
    from hydra._internal.utils import get_args_parser

    from .results import ResultsExistError, claim

    args, _ = get_args_parser().parse_known_args(argv)
    if _any_flag(args, "multirun", "cfg", *_NO_RUN):  # no single run: nothing to claim
        return None
    for arg in args.overrides:
        key, _, value = arg.lstrip("+").partition("=")
        if key == "hydra.run.dir" and value and "${" not in value:
            try:
                claim(value)
            except ResultsExistError as e:
                return f"hydra.run.dir={e}"
    return None


def _check(argv: list[str], conf: Path, check_settings: Callable) -> CommandLine:
    """One line describing what is wrong with `argv`, or None when Hydra may go ahead.

    Checks every value of every group option (sweeps included) against the YAML files of
    that group, refuses an explicit run or sweep directory that holds results, and
    composes the config once (each sweep at its first value) to catch unknown settings.
    That config then goes through `check_settings` (its warnings are left to the run); in a
    multirun, so does every job's (`_jobs_problem`), and a sweeper that optimises the
    objective is pointed in its direction (`_direction`). Anything it cannot judge (syntax
    errors, custom config paths, help) is left to Hydra.
    """
    from hydra import compose
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    args, _ = get_args_parser().parse_known_args(argv)
    if _any_flag(args, "config_path", "config_dir", "config_name", *_NO_RUN):
        return CommandLine(None, argv)
    if args.multirun and args.cfg:
        return CommandLine(
            f"-m and --cfg {args.cfg} cannot go together: --cfg prints the config of one run; "
            f"drop -m and give each key one value",
            argv,
        )
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except Exception:  # Hydra reports syntax errors itself, with the position
        return CommandLine(None, argv)
    to_compose, group_values, choices = [], {}, {}
    for o in overrides:
        if o.is_hydra_override():
            problem = _output_dir_problem(o, args.multirun) or _first(
                plugin_problem(f"{o.key_or_group}={v}") for v in _values(o) or []
            )
            if problem:
                return CommandLine(problem, argv)
            continue
        values = _values(o)
        options = _options(conf, o.key_or_group)
        if options is not None and o.value() is None and _is_list_group(conf, o.key_or_group):
            return CommandLine(
                f"{o.key_or_group}=null is not allowed: {o.key_or_group}=[] chooses none of "
                f"its options ({', '.join(options)})",
                argv,
            )
        # a list of options, e.g. logger=[csv,tensorboard]
        several = not o.is_sweep_override() and isinstance(o.value(), list)
        if several:
            values = [str(v) for v in o.value()]
        if options is not None and values is not None and not o.is_delete():
            for v in values:
                if v not in options and v != "null":
                    return CommandLine(
                        f"{o.key_or_group}={v} is not allowed: the {o.key_or_group} "
                        f"options are {', '.join(options)}",
                        argv,
                    )
                problem = _plugin_of_option(conf, o.key_or_group, v)
                if problem:
                    return CommandLine(problem, argv)
            if not several:
                group_values[o.key_or_group] = values
                choices[o.key_or_group] = values[0]
        if not o.is_sweep_override():
            to_compose.append(o.input_line)
        elif values:
            to_compose.append(f"{o.get_key_element()}={values[0]}")
    unused: dict[str, list[str]] = {}
    if args.multirun and any(len(v) > 1 for v in group_values.values()):
        try:
            unused = _keys_by_option(conf, overrides, group_values)
        except (HydraException, OmegaConfBaseException):
            unused = {}
        forced = {k for keys in unused.values() for k in keys}
        everywhere_absent = [
            k
            for k in forced
            if all(k in keys for keys in unused.values())
            and len(unused) == _combinations(group_values)
        ]
        forced -= set(everywhere_absent)
        unused = {sig: [k for k in keys if k in forced] for sig, keys in unused.items()}
        unused = {sig: keys for sig, keys in unused.items() if keys}
        if forced:
            rewritten = {
                o.input_line: f"++{o.input_line}" for o in overrides if o.key_or_group in forced
            }
            argv = [rewritten.get(a, a) for a in argv]
            to_compose = [rewritten.get(a, a) for a in to_compose]
    try:
        cfg = compose(config_name="config", overrides=to_compose)
    except OverrideParseException:  # a sweep value this reconstruction mangled: Hydra's call
        return CommandLine(None, argv, unused)
    except (HydraException, OmegaConfBaseException) as e:
        return CommandLine(_composition_problem(e, conf, choices), argv, unused)
    if not args.multirun:
        # With verbose the run raises a bad setting itself, with its traceback; a sweep
        # without -m is Hydra's to refuse.
        if cfg.get("verbose") or any(o.is_sweep_override() for o in overrides):
            return CommandLine(None, argv, unused)
        return CommandLine(_settings_problem(cfg, check_settings), argv)
    problem, direction = _direction(overrides, to_compose, cfg.get("objective"))
    problem = problem or _jobs_problem(conf, overrides, group_values, unused, check_settings)
    return CommandLine(problem, argv + direction, unused)


def _direction(overrides, to_compose: list[str], objective) -> tuple[str | None, list[str]]:
    """A sweeper that optimises the run's `objective` (one with a `direction`: Optuna's,
    whose own default is to minimise) must maximise an accuracy and minimise a loss
    (checks.OBJECTIVES). Returns (the problem with a direction the command line gives, the
    override that sets the right one where the command line gives none)."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .checks import OBJECTIVES

    want = OBJECTIVES.get(objective) if isinstance(objective, str) else None
    if want is None:
        return None, []  # a bad objective is the settings check's to report
    hydra_lines = [o.input_line for o in overrides if o.is_hydra_override()]
    try:
        full = compose(
            config_name="config", overrides=hydra_lines + to_compose, return_hydra_config=True
        )
    except (HydraException, OmegaConfBaseException):
        return None, []  # Hydra reports it
    if "direction" not in full.hydra.sweeper:
        return None, []
    key = "hydra.sweeper.direction"
    given = [o for o in overrides if o.key_or_group.lstrip("+") == key]
    if not given:
        return None, [f"{key}={want}"]
    value = given[-1].value()
    if str(value).lower() == want:
        return None, []
    return (
        f"{key}={value} is not allowed with objective={objective}: fedexp {want}s it; "
        f"leave {key} out (fedexp sets {want}), or choose another objective "
        f"({', '.join(f'{name}: {way}' for name, way in OBJECTIVES.items())})",
        [],
    )


def _jobs_problem(
    conf: Path,
    overrides,
    group_values: dict,
    unused: dict[str, list[str]],
    check_settings: Callable,
) -> str | None:
    """The first job of a multirun whose settings `check_settings` refuses, in one line
    that names the job and its swept values: every job is checked before the first starts.
    The jobs are the basic sweeper's (every combination of the swept values); a sweep whose
    values a sweeper draws itself (Optuna's `interval`) is left to its trials, each checked
    as it starts. Jobs that share group options are composed once and get their other
    values set on a copy."""
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        jobs = BasicSweeper.split_arguments(
            [o for o in overrides if not o.is_hydra_override()], None
        )[0]
    except HydraException:
        return None
    swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}

    def composed_by_hydra(o) -> bool:  # a group option, or an override that adds or deletes
        return _options(conf, o.key_or_group) is not None or o.get_key_element() != o.key_or_group

    parser = OverridesParser.create()
    composed: dict[tuple, object] = {}
    for number, job in enumerate(jobs):
        parsed = parser.parse_overrides(job)
        choices = {o.key_or_group: str(o.value()) for o in parsed if o.key_or_group in group_values}
        drop = set(unused.get(_signature(choices), ()))
        parsed = [o for o in parsed if o.key_or_group not in drop]
        base = tuple(o.input_line for o in parsed if composed_by_hydra(o))
        try:
            if base not in composed:
                composed[base] = compose(config_name="config", overrides=list(base))
            cfg = copy.deepcopy(composed[base])
            for o in parsed:
                if not composed_by_hydra(o):
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=False)
        except (HydraException, OmegaConfBaseException) as e:
            problem = _composition_problem(e)
        else:
            problem = _settings_problem(cfg, check_settings)
        if problem:
            values = ", ".join(o.input_line for o in parsed if o.get_key_element() in swept)
            return (
                f"job {number} of the sweep" + (f" ({values})" if values else "") + f": {problem}"
            )
    return None


def _combinations(group_values: dict[str, list[str]]) -> int:
    n = 1
    for values in group_values.values():
        n *= len(values)
    return min(n, 256)


def _settings_problem(cfg, check_settings: Callable) -> str | None:
    import logging

    from .errors import ConfigError, DatasetError

    logger = logging.getLogger("fedexp")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the run itself logs the warnings, into main.log too
    try:
        check_settings(cfg)
    except (ConfigError, DatasetError) as e:
        return str(e)
    except Exception:  # e.g. an interpolation that needs Hydra's runtime: the run checks again
        return None
    finally:
        logger.setLevel(level)
    return None
