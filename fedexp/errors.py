"""The errors whose message is the whole story for the user, and the helpers that turn a
setting's failure into one.

fedexp prints them as one line, without a traceback (`main.exit_status`, and a sweep's
`record_failed_job`); everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path


class ConfigError(ValueError):
    """A setting is out of range; the message is meant for the user as it is."""


class DatasetError(RuntimeError):
    """A dataset cannot be loaded (missing files, failed download); the message says why."""


class ResultsExistError(RuntimeError):
    """The run directory already holds another run's results."""


class OutputError(RuntimeError):
    """The run's files cannot be written (a full disk, a quota, a read-only file system)."""

    @classmethod
    def of(cls, error: OSError, run_dir) -> OutputError:
        where = f" ({Path(error.filename).name})" if error.filename else ""
        return cls(f"cannot write the run's files in {run_dir}{where}: {error.strerror or error}")


# Bad input: the command exits with status 2.
BAD_INPUT = (ConfigError, DatasetError, ResultsExistError)
# Reported in one line: bad input, and files that cannot be written (exit status 1).
USER_ERRORS = (*BAD_INPUT, OutputError)


def need(ok: bool, setting: str, value, allowed: str) -> None:
    """Raise the one-line ConfigError that names `setting`, its value and what is allowed."""
    if not ok:
        raise ConfigError(f"{setting}={value} is not allowed: {allowed}")


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def first_line(error: BaseException) -> str:
    """The innermost cause's first line: Hydra wraps errors in paragraphs of its own."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def importable(setting: str, target) -> object:
    """The object `_target_` names, or one ConfigError line saying why it cannot be imported."""
    from hydra.utils import get_object

    hydra_log = logging.getLogger("hydra.utils")  # it logs the traceback we turn into one line
    level, hydra_log.level = hydra_log.level, logging.CRITICAL
    try:
        return get_object(target)
    except Exception as e:
        raise ConfigError(
            f"{setting}._target_={target} cannot be imported ({first_line(e)})"
        ) from None
    finally:
        hydra_log.setLevel(level)


def build(setting: str, node, context: str = "", **kwargs):
    """`instantiate(node)`, any failure turned into one ConfigError line naming `setting`."""
    from hydra.utils import instantiate

    importable(setting, node.get("_target_"))
    try:
        return instantiate(node, **kwargs)
    except Exception as e:
        raise ConfigError(
            f"{setting} ({node.get('_target_')}) cannot be built{context}: {first_line(e)}"
        ) from None
