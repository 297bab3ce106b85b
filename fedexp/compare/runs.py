"""Finding runs and reading what they left: results.json (checked against the contract in
docs/results.md) and Hydra's snapshot of the run's settings in `.hydra/`.

Only these files are read: a comparison works on results copied off a cluster or out of
an archive, without the data, the models or the code that made them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..modes import STEPS, steps_of
from ..results import read_json

MODES = ("federated", "centralized")
CONTRACT = "see docs/results.md"


class CompareError(Exception):
    """A problem with the paths or files given; the message is one line for the user."""


def _number_in(section: str, key: str) -> property:
    """`key` of the run's `section` (a dict property, e.g. `final`), or None."""
    return property(lambda run: getattr(run, section).get(key))


@dataclass
class Run:
    dir: Path
    results: dict
    config: dict  # the composed config, interpolations unresolved
    overrides: list[str]  # the command-line overrides of the run
    choices: dict[str, str]  # Hydra's record of the option picked in each config group
    name: str = ""  # short name: the directory relative to all runs' common parent

    @property
    def status(self) -> str:
        return self.results["status"]

    @property
    def mode(self) -> str:
        return self.results["mode"]

    @property
    def steps(self) -> list[dict]:
        return steps_of(self.results)

    @property
    def final(self) -> dict:
        return self.results.get("final") or {}

    final_accuracy = _number_in("final", "test_accuracy")
    final_loss = _number_in("final", "test_loss")

    @property
    def best_accuracy(self) -> float | None:
        """The best test accuracy after any round (federated) or of the final model."""
        seen = [s.get("test_accuracy") for s in self.steps] + [self.final_accuracy]
        seen = [a for a in seen if a is not None]
        return max(seen) if seen else None

    @property
    def all_clients(self) -> dict:
        """The last evaluation of every client (results.json's `all_clients`), or {}."""
        for s in reversed(self.steps):
            if isinstance(s.get("all_clients"), dict):
                return s["all_clients"]
        return {}

    clients_mean_accuracy = _number_in("all_clients", "mean_accuracy")
    clients_p10_accuracy = _number_in("all_clients", "p10_accuracy")
    clients_min_accuracy = _number_in("all_clients", "min_accuracy")

    @property
    def wall_seconds(self) -> float:
        return self.results["wall_seconds"]

    def curve(self, metric: str) -> tuple[list[int], list[float]]:
        """Test `metric` (accuracy or loss) per federated round; round 0 is the initial model."""
        points = []
        initial = (self.results.get("initial") or {}).get(f"test_{metric}")
        if initial is not None:
            points.append((0, initial))
        points += [(s["round"], s.get(f"test_{metric}")) for s in self.steps]
        points = [(x, y) for x, y in points if y is not None]
        return [x for x, _ in points], [y for _, y in points]


def _natural(path: Path) -> list:
    """Sort key: job 10 after job 9."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in path.parts]


def find_run_dirs(paths: list[str]) -> list[Path]:
    """Run directories named by `paths`: run directories, results.json files, or any
    directory above them (a sweep), searched recursively."""
    found: dict[Path, None] = {}
    for arg in paths:
        p = Path(arg)
        if not p.exists():
            raise CompareError(f"{arg}: no such file or directory")
        if p.is_file():
            if p.name != "results.json":
                raise CompareError(f"{arg}: not a run directory, sweep directory or results.json")
            dirs = [p.parent]
        elif (p / "results.json").is_file():
            dirs = [p]
        else:
            dirs = sorted((f.parent for f in p.rglob("results.json") if f.is_file()), key=_natural)
            if not dirs:
                raise CompareError(
                    f"{arg}: no results.json in it or below it (not a fedexp run or "
                    f"sweep directory, or no job has started yet)"
                )
        for d in dirs:
            found.setdefault(d.resolve(), None)
    return list(found)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_contract(data, where: str) -> None:
    """Raise CompareError unless `data` has what the table and plot read, with the types
    the results.json contract gives them (extra keys are fine: the contract may grow)."""

    def bad(what: str):
        raise CompareError(
            f"{where} does not follow the results.json contract: {what} ({CONTRACT})"
        )

    if not isinstance(data, dict):
        bad("it is not a JSON object")
    status = data.get("status")
    if not isinstance(status, str) or not status:
        bad(f"'status' is {status!r}, expected a string such as 'completed'")
    mode = data.get("mode")
    if mode not in MODES and status != "failed":  # a job can fail on a bad `mode` itself
        bad(f"'mode' is {mode!r}, expected 'federated' or 'centralized'")
    if not _number(data.get("wall_seconds")):
        bad(f"'wall_seconds' is {data.get('wall_seconds')!r}, expected a number")
    final = data.get("final")
    if final is not None and not isinstance(final, dict):
        bad(f"'final' is {final!r}, expected an object or null")
    if status == "completed" and final is None:
        bad("a completed run has no 'final' results")
    for key in ("test_loss", "test_accuracy"):
        if final and final.get(key) is not None and not _number(final[key]):
            bad(f"final.{key} is {final[key]!r}, expected a number or null")
    for key in ("data", "initial"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            bad(f"'{key}' is {data[key]!r}, expected an object")
    if not isinstance((data.get("data") or {}).get("dataset", ""), str):
        bad(f"data.dataset is {data['data']['dataset']!r}, expected a name")
    for key in ("test_loss", "test_accuracy"):
        if (
            data.get("initial")
            and data["initial"].get(key) is not None
            and not _number(data["initial"][key])
        ):
            bad(f"initial.{key} is {data['initial'][key]!r}, expected a number or null")
    if mode not in MODES:
        return
    steps_key, step_key = STEPS[mode]
    steps = data.get(steps_key)
    if not isinstance(steps, list):
        bad(f"a {mode} run needs a list '{steps_key}', found {steps!r}")
    for i, s in enumerate(steps):
        if not isinstance(s, dict) or not isinstance(s.get(step_key), int):
            bad(f"{steps_key}[{i}] has no integer '{step_key}'")
        for key in ("test_loss", "test_accuracy"):
            if s.get(key) is not None and not _number(s[key]):
                bad(f"{steps_key}[{i}].{key} is {s[key]!r}, expected a number or null")
        clients = s.get("all_clients")
        if clients is not None and not isinstance(clients, dict):
            bad(f"{steps_key}[{i}].all_clients is {clients!r}, expected an object")
        for key in ("mean_accuracy", "p10_accuracy", "min_accuracy"):
            if clients and clients.get(key) is not None and not _number(clients[key]):
                bad(
                    f"{steps_key}[{i}].all_clients.{key} is {clients[key]!r}, expected a number or null"
                )


def _yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CompareError(f"{path}: cannot be read ({type(e).__name__})") from None


def load_run(run_dir: Path) -> Run:
    path = run_dir / "results.json"
    try:
        data = read_json(path)
    except UnicodeDecodeError as e:
        raise CompareError(f"{path} is not UTF-8 text (byte {e.start}); {CONTRACT}") from None
    except json.JSONDecodeError as e:
        raise CompareError(
            f"{path} is not valid JSON ({e.msg}, line {e.lineno}); {CONTRACT}"
        ) from None
    except OSError as e:
        raise CompareError(f"{path} cannot be read ({e.strerror or type(e).__name__})") from None
    check_contract(data, str(path))
    snapshot = run_dir / ".hydra"
    if not (snapshot / "config.yaml").is_file():
        raise CompareError(
            f"{run_dir} has no .hydra/config.yaml (Hydra's record of the run's "
            f"settings), so it cannot be told apart from the other runs"
        )
    config = _yaml(snapshot / "config.yaml")
    if not isinstance(config, dict):
        raise CompareError(f"{snapshot / 'config.yaml'} does not hold a config")
    overrides = (
        _yaml(snapshot / "overrides.yaml") if (snapshot / "overrides.yaml").is_file() else []
    )
    choices = {}
    if (snapshot / "hydra.yaml").is_file():  # only for the names of default group options
        hydra_cfg = _yaml(snapshot / "hydra.yaml") or {}
        choices = ((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    return Run(run_dir, data, config, [str(o) for o in overrides or []], dict(choices))


def load_runs(paths: list[str]) -> list[Run]:
    runs = [load_run(d) for d in find_run_dirs(paths)]
    dirs = [r.dir for r in runs]
    common = Path(os.path.commonpath(dirs)) if len(dirs) > 1 else dirs[0].parent
    for r in runs:
        r.name = str(r.dir.relative_to(common)) if r.dir != common else r.dir.name
    return runs


def check_same_dataset(runs: list[Run]) -> None:
    """Test accuracies on different datasets say nothing about which setting is better."""
    counts: dict[str, int] = {}
    for r in runs:
        name = (r.results.get("data") or {}).get("dataset")
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    if len(counts) > 1:
        listed = ", ".join(f"{name}: {n} run{'s' * (n > 1)}" for name, n in sorted(counts.items()))
        raise CompareError(
            f"the runs were tested on different datasets ({listed}), so their "
            f"accuracies cannot be compared; compare each dataset's runs on their "
            f"own, or pass --mixed-datasets"
        )
