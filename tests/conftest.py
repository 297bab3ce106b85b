"""Shared test helpers: composing fedexp's real config and running the real CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from fedexp.main import config_dir

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def make_cfg():
    """Compose the config as `fedexp` would, from a list of command-line overrides."""

    def _make(*overrides: str):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _make


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m fedexp ARGS` in `cwd`, as a user would from a shell."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "fedexp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())
