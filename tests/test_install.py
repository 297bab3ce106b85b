"""A non-editable install carries its configs: `fedexp` works from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_install_finds_configs_from_any_directory(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert (target / "fedexp" / "conf" / "config.yaml").is_file()
    assert (target / "fedexp" / "conf" / "strategy" / "fedavg.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fedexp, fedexp.main as m; print(fedexp.__file__); print(m.config_dir())",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    module_file, conf = probe.stdout.split()
    assert module_file.startswith(str(target)) and conf == str(target / "fedexp" / "conf")
    shown = subprocess.run(
        [sys.executable, "-m", "fedexp", "--cfg", "job", "--resolve", "experiment=tutorial"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "min_fit_clients: 10" in shown.stdout and "flwr.server.strategy.FedAvg" in shown.stdout
    assert "min_evaluate_clients: 5" in shown.stdout  # the preset's "half of the clients"
    compare = subprocess.run(
        [str(target / "bin" / "fedexp-compare"), str(elsewhere)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compare.returncode == 2 and "no results.json in it or below it" in compare.stderr
