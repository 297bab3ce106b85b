"""Every fedexp command the documentation shows works as written (README.md, docs/*.md).

A command is a line of a ```bash block that calls `fedexp`, `python -m fedexp` or
`fedexp-compare`. Each runs through the real entry point (`fedexp.main.main` in this
process, in a fresh directory) in the cheapest form that still checks it:
- `--cfg job`, which runs fedexp's command-line and setting checks (every key, option and
  value; the method built as the run builds it) and prints the config;
- a command that sets what decides whether the data can be split (`partitioning`,
  `num_clients`) on the offline digits data: also a dry run, which loads and partitions
  the data and builds the model and both halves of the method;
- a sweep: fedexp's check of the whole sweep (every value of every option and key, before
  Hydra starts), then its first job as above (each option on its own passes a dry run
  in test_every_option.py); a sweep over the split's settings dry-runs every split;
- `--help`, `--cfg ...` and the like: as written.
A command that needs what a test cannot give (runs to compare or resume, a cluster, the
network, files of your own) says so in a `# needs: ...` comment and is not run.

The README's commands that train (its runs, and each setting of its sweeps at the sweep's
first seed) run for real instead, on the offline digits data, and must end above 0.3
test accuracy (chance is 0.1): an example a reader copies must visibly learn.

Transcripts, `$ fedexp ...` lines in plain blocks followed by what the command prints, run
too, and must print the line shown below them.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A command, after any environment assignments (PYTHONPATH=. fedexp ...).
FEDEXP = re.compile(r"^(?:[A-Z_]+=\S* )*(fedexp|fedexp-compare|python -m fedexp)(\s|$)")


def _blocks(text: str):
    """(language, lines) of each fenced block."""
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        yield m.group(1), m.group(2).splitlines()


def _commands(lines: list[str]) -> list[tuple[str, str]]:
    """(command, its comment) of a bash block: continuation lines joined, `&&` chains split,
    the block's `VAR=value` assignments substituted. A `# needs: ...` line on its own is
    the comment of every command of the block."""
    joined, variables, out, block_note = [], {}, [], ""
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        else:
            joined.append(line.strip())
    for line in joined:
        if line.startswith("# needs:"):
            block_note = line[2:]
            continue
        code, _, comment = line.partition(" #")
        for part in code.split("&&"):
            part = part.strip()
            assignment = re.fullmatch(r"([A-Z_]+)=(\S+)", part)
            if assignment:
                variables[assignment.group(1)] = assignment.group(2)
                continue
            for name, value in variables.items():
                part = part.replace(f"${name}", value)
            if FEDEXP.match(part):
                out.append((part, block_note or comment.strip()))
    return out


def _documented():
    """The commands (each once, where it first appears) and the transcripts of the docs."""
    commands, transcripts, seen = [], [], set()
    for page in PAGES:
        text = page.read_text()
        for language, lines in _blocks(text):
            where = page.relative_to(ROOT).as_posix()
            if language == "bash":
                for command, note in _commands(lines):
                    if command not in seen:
                        seen.add(command)
                        commands.append((where, command, note))
            elif not language:
                for i, line in enumerate(lines[:-1]):
                    if line.startswith("$ fedexp "):
                        transcripts.append((where, line[2:], lines[i + 1]))
    return commands, transcripts


COMMANDS, TRANSCRIPTS = _documented()


def test_the_docs_show_commands_and_transcripts():
    pages = {where for where, _, _ in COMMANDS}
    assert {"README.md", "docs/configuration.md", "docs/algorithms.md"} <= pages, pages
    assert len(COMMANDS) >= 40 and len(TRANSCRIPTS) >= 5


DATA_DEPENDENT = re.compile(r"^\+?(partitioning|num_clients)[.=]")


def _trains(args: list[str]) -> bool:
    """Whether a command trains on digits: no flag (--help, --cfg), no dry run, no dataset."""
    return not any(
        a.startswith("--") or a == "dry_run=true" or re.match(r"\+?(dataset|experiment)=", a)
        for a in args
    )


def _runs_of(args: list[str]) -> list[list[str]]:
    """The runs a command trains: itself, or for a sweep every combination of its swept
    values, with `seed` at its first value."""
    values = []
    for arg in args:
        if arg == "-m":
            continue
        key, sep, value = arg.partition("=")
        swept = sep and "," in value and "[" not in value
        choices = value.split(",") if swept else [value]
        values.append(
            [f"{key}={v}" if sep else arg for v in choices[: 1 if key == "seed" else None]]
        )
    return [list(run) for run in itertools.product(*values)]


README_RUNS = sorted(
    {
        tuple(run)
        for where, command, note in COMMANDS
        if where == "README.md" and not note.startswith("needs:")
        for words in [shlex.split(command)]
        if words[0] == "fedexp" and _trains(words[1:])
        for run in _runs_of(words[1:])
    }
)


def _first_job(args: list[str]) -> list[str]:
    """The arguments of a sweep's first job."""
    first = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if arg != "-m":
            first.append(f"{key}={value.split(',')[0]}" if sep and "[" not in value else arg)
    return first


def _cheapest(args: list[str]) -> list[str]:
    """`args` in the cheapest form that still checks them (see the module's docstring)."""
    if any(a.startswith("--") for a in args):
        return args
    on_digits = not any(re.match(r"\+?(dataset|experiment)=", a) for a in args)
    splits = [a for a in args if DATA_DEPENDENT.match(a)]
    if "-m" in args and not (on_digits and any("," in a for a in splits)):
        args = _first_job(args)  # the sweep does not vary the split: its first job will do
    if on_digits and splits:
        # a sweep over the split keeps every split, and the first value of other keys
        keep = [a if a == "-m" or DATA_DEPENDENT.match(a) else _first_job([a])[0] for a in args]
        return [*keep, "dry_run=true"]
    return ["--cfg", "job", *args]


@pytest.fixture
def in_fresh_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write_python_files(page: str, folder: Path) -> None:
    """The page's ```python blocks that name their file in their first line (`# x.py`)."""
    for language, lines in _blocks((ROOT / page).read_text()):
        name = re.fullmatch(r"# ([\w/]+\.py)", lines[0]) if language == "python" else None
        if name:
            path = folder / name.group(1)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines[1:]) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize(
    "where,command,note", COMMANDS, ids=[f"{w}: {c[:60]}" for w, c, _ in COMMANDS]
)
def test_documented_command_works(fedexp, in_fresh_dir, monkeypatch, where, command, note):
    if note.startswith("needs:"):
        return  # says what it needs; not runnable here
    words = shlex.split(command)
    while re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # PYTHONPATH=. : the page's own modules
        _write_python_files(where, in_fresh_dir)
        monkeypatch.syspath_prepend(str(in_fresh_dir))
        words = words[1:]
    assert words[0] != "fedexp-compare", f"{where}: {command} needs a `# needs:` note (runs)"
    args = words[3:] if words[:3] == ["python", "-m", "fedexp"] else words[1:]
    if "-m" in args:
        from fedexp.command_line import prepare
        from fedexp.main import check_settings, config_dir

        problem = prepare(args, config_dir(), check_settings).problem
        assert problem is None, f"{where}: {command}: {problem}"
    if where == "README.md" and _trains(args):
        return  # runs for real in test_the_readmes_runs_learn
    cheapest = _cheapest(args)
    proc = fedexp(*cheapest)
    assert proc.returncode in (0, None), f"{where}: {command}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if "dry_run=true" in cheapest and "--cfg" not in cheapest:
        assert "dry run:" in proc.stdout + proc.stderr, proc.stdout[-2000:]


_LEARNED: dict[str, float] = {}  # final test accuracy by composed config (loggers aside)


@pytest.mark.slow
@pytest.mark.parametrize("run", README_RUNS, ids=[" ".join(r) or "fedexp" for r in README_RUNS])
def test_the_readmes_runs_learn(fedexp, in_fresh_dir, run):
    """Each run the README shows ends above 0.3 test accuracy on digits (chance: 0.1). Runs
    that differ only in their loggers train the same numbers and run once."""
    from conftest import compose_cfg, read_results
    from omegaconf import OmegaConf

    cfg = compose_cfg(*run)
    key = OmegaConf.to_yaml({k: v for k, v in cfg.items() if k != "logger"})
    if key not in _LEARNED:
        proc = fedexp(*run, "hydra.run.dir=run")
        assert proc.returncode in (0, None), proc.stderr[-2000:]
        _LEARNED[key] = read_results(in_fresh_dir / "run")["final"]["test_accuracy"]
    assert _LEARNED[key] > 0.3, f"fedexp {' '.join(run)} ends at {_LEARNED[key]:.4f}"


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
@pytest.mark.parametrize(
    "where,command,shown", TRANSCRIPTS, ids=[f"{w}: {c[:60]}" for w, c, _ in TRANSCRIPTS]
)
def test_documented_transcript_prints_what_it_shows(fedexp, in_fresh_dir, where, command, shown):
    proc = fedexp(*shlex.split(command)[1:])
    printed = (proc.stdout + proc.stderr).splitlines()
    assert shown in printed, f"{where}: `{command}` printed:\n" + "\n".join(printed[-5:])


def _keys(node: dict, prefix: str = "") -> list[str]:
    """The dotted keys of a YAML option, without `defaults` and the `_target_`/`_partial_`
    lines (each option's `_target_` is named in the reference by its option)."""
    out = []
    for key, value in node.items():
        if key in ("defaults", "_target_", "_partial_"):
            continue
        if isinstance(value, dict) and value:
            out += _keys(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def test_the_reference_names_every_key_of_every_option():
    """docs/configuration.md (with partitioning.md for that group) is the reference of every
    group, option and key: a key added to conf/ must be documented there."""
    import yaml

    conf = ROOT / "conf"
    reference = (ROOT / "docs" / "configuration.md").read_text()
    reference += (ROOT / "docs" / "partitioning.md").read_text()
    missing = []
    for path in sorted(conf.rglob("*.yaml")):
        group = path.parent.relative_to(conf).as_posix()
        if group.startswith("hydra"):
            continue
        if group != "." and f"`{path.stem}`" not in reference:
            missing.append(f"{group}={path.stem}")
        node = yaml.safe_load(path.read_text()) or {}
        for key in _keys(node):
            if key.startswith(("hydra.", "callbacks.", "loader.", "partitioner.")):
                continue
            parts = key.split(".")  # named by its full path or by a tail of it
            if not any(f"`{'.'.join(parts[i:])}`" in reference for i in range(len(parts))):
                missing.append(f"{path.relative_to(conf)}: {key}")
    assert not missing, missing
