"""The errors whose message is the whole story for the user.

fedexp prints them as one line, without a traceback (`main.exit_status`, and a sweep's
`record_failed_job`); everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

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
