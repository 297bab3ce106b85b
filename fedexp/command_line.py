"""The command line, checked before Hydra creates or writes into a run directory.

Hydra itself reports an unknown group option or setting, but over several lines, with
its config search path and exit status 1; and it creates the run directory and writes
`.hydra/` into it before fedexp's own code runs, so a typo would leave an empty run
directory behind, and a run pointed at a finished run's directory would overwrite that
run's config snapshot before fedexp could refuse. `check_command_line` catches these,
and every bad setting `fedexp.checks.check` finds, first, in one line.

`fresh_dir` names the default run directory (`outputs/<date>/<time>`, see
conf/config.yaml): two runs started in the same second get `<time>` and `<time>-2`
instead of sharing one directory.
"""
from __future__ import annotations

import os
import re
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


def _values(override) -> list[str] | None:
    """The values an override sets (all of a sweep's), or None when not enumerable."""
    if not override.is_sweep_override():
        value = override.value()
        return None if value is None else [str(value)]
    if override.is_discrete_sweep() and override.value_type.name != "GLOB_CHOICE_SWEEP":
        return list(override.sweep_string_iterator())
    return None


def _output_dir_problem(override, multirun: bool) -> str | None:
    key, value = override.key_or_group, override.value()
    if not isinstance(value, str) or "${" in value:
        return None
    if key == "hydra.run.dir" and not multirun and (Path(value) / "results.json").exists():
        return (f"hydra.run.dir={value} already holds results.json from another run; refusing "
                f"to overwrite it (choose another directory, or leave hydra.run.dir unset for "
                f"a fresh one)")
    if key == "hydra.sweep.dir" and multirun and any(Path(value).glob("*/results.json")):
        return (f"hydra.sweep.dir={value} already holds another sweep's results; refusing to "
                f"overwrite them (choose another directory, or leave hydra.sweep.dir unset)")
    return None


def _composition_problem(error: Exception) -> str:
    from hydra.errors import MissingConfigException

    if isinstance(error, MissingConfigException) and error.options and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return f"{group}={option} is not allowed: the {group} options are {', '.join(error.options)}"
    text = f"{error} {error.__cause__ or ''}"
    key = re.search(r"Could not override '([^']+)'", text)
    if key and "not in struct" in text:
        return (f"{key.group(1)} is not a fedexp setting (a typo? `fedexp --cfg job` lists every "
                f"setting; +{key.group(1)}=VALUE adds a new key)")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith(("full_key:", "object_type")))


def check_command_line(argv: list[str], conf_dir: str) -> str | None:
    """One line describing what is wrong with `argv`, or None when Hydra may go ahead.

    Checks every value of every group option (sweeps included) against the YAML files of
    that group, refuses an explicit run or sweep directory that holds results, and
    composes the config once (each sweep at its first value) to catch unknown settings;
    without sweeps, that config then goes through `check` (its warnings are left to the
    run). Anything it cannot judge (syntax errors, custom config paths, help) is left to
    Hydra.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    args, _ = get_args_parser().parse_known_args(argv)
    if (args.help or args.hydra_help or args.info or args.shell_completion or args.config_path
            or args.config_dir or args.config_name or args.experimental_rerun):
        return None
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except Exception:  # Hydra reports syntax errors itself, with the position
        return None
    conf = Path(conf_dir)
    to_compose = []
    for o in overrides:
        if o.is_hydra_override():
            problem = _output_dir_problem(o, args.multirun)
            if problem:
                return problem
            continue
        values = _values(o)
        options = _options(conf, o.key_or_group)
        if options is not None and values is not None and not o.is_delete():
            for v in values:
                if v not in options and v != "null":
                    return (f"{o.key_or_group}={v} is not allowed: the {o.key_or_group} options "
                            f"are {', '.join(options)}")
        if not o.is_sweep_override():
            to_compose.append(o.input_line)
        elif values:
            to_compose.append(f"{o.get_key_element()}={values[0]}")
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name="config", overrides=to_compose)
    except OverrideParseException:  # a sweep value this reconstruction mangled: Hydra's call
        return None
    except (HydraException, OmegaConfBaseException) as e:
        return _composition_problem(e)
    if not any(o.is_sweep_override() for o in overrides) and not cfg.get("verbose"):
        return _settings_problem(cfg)  # with verbose, the run raises it with its traceback
    return None


def _settings_problem(cfg) -> str | None:
    import logging

    from .checks import ConfigError, check
    from .data import DatasetError

    logger = logging.getLogger("fedexp")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the run itself logs the warnings, into main.log too
    try:
        check(cfg)
    except (ConfigError, DatasetError) as e:
        return str(e)
    except Exception:  # e.g. an interpolation that needs Hydra's runtime: the run checks again
        return None
    finally:
        logger.setLevel(level)
    return None
