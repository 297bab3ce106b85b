"""What the comparison shows: the settings in which the runs differ, one row per run, and
seed groups (runs that differ only in `seed`) as mean ± standard deviation over distinct
seeds (repeats of a seed are shown as repeats, `0×2`, and count once).

The standard deviation is the sample standard deviation (n - 1 in the denominator,
`statistics.stdev`), the one papers report for a handful of seeds; a group of one run has
none.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from ..modes import unused_by_mode
from .runs import Run

# hydra.*: output paths and such; mode has its own column; what observes or checkpoints a
# run (callbacks, loggers, checkpoint) does not change its numbers.
NOT_SETTINGS = ("hydra", "mode", "callbacks", "logger", "checkpoint")
MISSING = "-"  # a key a run's config does not have


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def show(v) -> str:
    """A value as it would be written on the command line."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ",".join(show(x) for x in v) + "]"
    return str(v)


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def unused(run: Run, key: str) -> bool:
    """Settings the run did not use, left blank: those of the other mode (so that a
    centralized baseline beside a federated sweep shows no strategy), and those a sweep
    gave it that its options do not have (results.json's `unused_settings`)."""
    return unused_by_mode(run.mode, key) or any(
        _under(key, p) for p in run.results.get("unused_settings") or []
    )


def parse_overrides(lines: list[str]) -> list[tuple[str, str]]:
    """(key or group, value) of each command-line override, parsed by Hydra's own parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(lines)
        return [
            (o.key_or_group, "" if o.is_delete() else o.get_value_element_as_str()) for o in parsed
        ]
    except Exception:  # not Hydra syntax after all: fall back to key=value
        return [tuple(line.lstrip("+~").split("=", 1)) for line in lines if "=" in line]


def _is_setting(key: str) -> bool:
    return not any(_under(key.replace("/", "."), k) for k in NOT_SETTINGS)


@dataclass
class Settings:
    """The settings (overrides, group choices, other config keys) that differ between runs."""

    runs: list[Run]
    columns: list[str] = field(default_factory=list)
    values: dict[str, list[str | None]] = field(default_factory=dict)  # None: unused by the run

    @classmethod
    def of(cls, runs: list[Run]) -> Settings:
        self = cls(runs)
        flat = [flatten(r.config) for r in runs]
        overrides = [dict(parse_overrides(r.overrides)) for r in runs]
        groups = {g for r in runs for g in r.choices if _is_setting(g)}
        candidates: list[str] = []
        for o in overrides:
            candidates += [k for k in o if _is_setting(k) and k not in candidates]
        candidates.sort(key=lambda k: k == "seed")  # the replicate axis last
        candidates += sorted(groups - set(candidates))

        def value(i: int, key: str) -> str | None:
            path = key.replace("/", ".")
            if unused(runs[i], path):
                return None
            is_group = key in groups or (
                path not in flat[i] and any(_under(k, path) for k in flat[i])
            )
            if is_group:
                return overrides[i].get(key) or show(runs[i].choices.get(key, "default"))
            return show(flat[i][path]) if path in flat[i] else MISSING

        for key in candidates:
            self._add_if_differs(key, [value(i, key) for i in range(len(runs))])
        # Config keys that differ without an override or group choice explaining them
        # (runs from different command lines, presets): shown by their full key.
        explained = [c.replace("/", ".") for c in self.columns]
        for key in sorted(set().union(*flat)):
            if not _is_setting(key) or any(_under(key, c) for c in explained):
                continue
            self._add_if_differs(
                key,
                [
                    None if unused(r, key) else show(f[key]) if key in f else MISSING
                    for r, f in zip(runs, flat)
                ],
            )
        return self

    def _add_if_differs(self, key: str, vals: list[str | None]) -> None:
        if len({v for v in vals if v is not None}) > 1:
            self.columns.append(key)
            self.values[key] = vals

    def of_run(self, i: int, exclude: tuple[str, ...] = ()) -> dict[str, str | None]:
        return {c: self.values[c][i] for c in self.columns if c not in exclude}


def label(settings: dict[str, str | None], fallback: str) -> str:
    shown = [f"{k}={v}" for k, v in settings.items() if v is not None]
    return ", ".join(shown) if shown else fallback


@dataclass
class Stat:
    mean: float | None
    std: float | None  # sample standard deviation; None for fewer than two values
    n: int

    @classmethod
    def of(cls, values: list[float | None]) -> Stat:
        xs = [v for v in values if v is not None]
        return cls(
            statistics.fmean(xs) if xs else None,
            statistics.stdev(xs) if len(xs) > 1 else None,
            len(xs),
        )

    def text(self, spec: str) -> str:
        if self.mean is None:
            return MISSING
        return format(self.mean, spec) + (
            "" if self.std is None else " ± " + format(self.std, spec)
        )


@dataclass
class SeedGroup:
    """Runs whose settings are equal except for `seed`. Statistics are over distinct
    seeds: two runs of one seed repeat each other (the same numbers, see
    docs/results.md#reproducibility), so they are one sample, not a spread."""

    settings: dict[str, str | None]  # the differing settings, seed excluded
    mode: str
    runs: list[Run]

    def by_seed(self) -> dict[str, list[Run]]:
        runs: dict[str, list[Run]] = {}
        for r in self.runs:
            runs.setdefault(show(r.config.get("seed")), []).append(r)
        return runs

    @property
    def completed(self) -> list[Run]:
        """One completed run per seed (the first, in the order of the runs)."""
        firsts = ([r for r in runs if r.status == "completed"] for runs in self.by_seed().values())
        return [done[0] for done in firsts if done]

    def stat(self, metric: str) -> Stat:
        return Stat.of([getattr(r, metric) for r in self.completed])

    @property
    def seeds(self) -> str:
        """The group's seeds; a seed run k times shows as `0×k`, and `(differ)` follows when
        its completed runs did not end with the same numbers."""
        shown = []
        for seed, runs in self.by_seed().items():
            if len(runs) == 1:
                shown.append(seed)
                continue
            ends = {(r.final_accuracy, r.final_loss) for r in runs if r.status == "completed"}
            shown.append(f"{seed}×{len(runs)}" + (" (differ)" if len(ends) > 1 else ""))
        return ",".join(shown)


def seed_groups(settings: Settings) -> list[SeedGroup]:
    groups: dict[tuple, SeedGroup] = {}
    for i, run in enumerate(settings.runs):
        s = settings.of_run(i, exclude=("seed",))
        key = (run.mode, tuple(s.items()))
        groups.setdefault(key, SeedGroup(s, run.mode, [])).runs.append(run)
    return sorted(groups.values(), key=lambda g: _desc(g.stat("final_accuracy").mean))


def _desc(v: float | None) -> tuple:
    """Sort key: highest first, missing last."""
    return (v is None, -(v or 0.0))


METRICS = [
    ("final test acc", "final_accuracy", ".4f"),
    ("best test acc", "best_accuracy", ".4f"),
    ("final test loss", "final_loss", ".4f"),
]
# Shown when some run evaluated every client (evaluation.all_clients_every): the mean over
# clients and the worst tail, from the last such evaluation.
CLIENT_METRICS = [
    ("clients mean acc", "clients_mean_accuracy", ".4f"),
    ("clients p10 acc", "clients_p10_accuracy", ".4f"),
    ("clients min acc", "clients_min_accuracy", ".4f"),
]


def metrics(runs: list[Run]) -> list[tuple[str, str, str]]:
    return METRICS + (CLIENT_METRICS if any(r.all_clients for r in runs) else [])


def _fmt(v, spec: str) -> str:
    return MISSING if v is None else format(v, spec)


def run_rows(settings: Settings) -> tuple[list[str], list[list[str]], list[int]]:
    """Header and text rows of the run table, best final test accuracy first; the order."""
    order = sorted(
        range(len(settings.runs)),
        key=lambda i: (_desc(settings.runs[i].final_accuracy), settings.runs[i].name),
    )
    shown = metrics(settings.runs)
    header = (
        ["run", *settings.columns, "status", "mode", "rounds"] + [m[0] for m in shown] + ["wall s"]
    )
    rows = []
    for i in order:
        r = settings.runs[i]
        rounds = str(len(r.steps)) + (" ep" if r.mode == "centralized" else "")
        rows.append(
            [
                r.name,
                *["" if v is None else v for v in settings.of_run(i).values()],
                r.status,
                str(r.mode),
                rounds,
            ]
            + [_fmt(getattr(r, attr), spec) for _, attr, spec in shown]
            + [_fmt(r.wall_seconds, ".1f")]
        )
    return header, rows, order


def group_rows(settings: Settings, groups: list[SeedGroup]) -> tuple[list[str], list[list[str]]]:
    columns = [c for c in settings.columns if c != "seed"]
    shown = metrics(settings.runs)
    header = [*columns, "mode", "seeds", "n"] + [m[0] for m in shown] + ["wall s"]
    rows = []
    for g in groups:
        seeds = len(g.by_seed())
        n = f"{len(g.completed)}" if len(g.completed) == seeds else f"{len(g.completed)} of {seeds}"
        rows.append(
            [*["" if g.settings[c] is None else g.settings[c] for c in columns], g.mode, g.seeds, n]
            + [g.stat(attr).text(spec) for _, attr, spec in shown]
            + [_fmt(g.stat("wall_seconds").mean, ".1f")]
        )
    return header, rows


def printable(text) -> str:
    """`text` with every control character (a terminal's escape codes among them) shown as
    an escape, so that nothing a results file holds can act on the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def render(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: the first column and words left-aligned, numbers right-aligned."""
    header, rows = [printable(c) for c in header], [[printable(c) for c in r] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    numeric = [j > 0 and all(_numeric(row[j]) for row in rows) for j in range(len(header))]

    def line(cells):
        return "  ".join(
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _numeric(cell: str) -> bool:
    head = cell.split(" ")[0]
    try:
        float(head)
        return True
    except ValueError:
        return cell in ("", MISSING)


def csv_rows(settings: Settings, groups: list[SeedGroup]) -> tuple[list[str], list[list]]:
    """The run table with full-precision numbers, one row per run in the printed order.
    When some runs differ only in seed, each row also carries its seed group's statistics."""
    _, _, order = run_rows(settings)
    group_of = {id(r): g for g in groups for r in g.runs}
    with_groups = any(len(g.runs) > 1 for g in groups)
    clients = [attr for _, attr, _ in metrics(settings.runs)[len(METRICS) :]]
    header = [
        "run",
        *settings.columns,
        "status",
        "mode",
        "rounds",
        "final_test_accuracy",
        "best_test_accuracy",
        "final_test_loss",
        *clients,
        "wall_seconds",
        "error",
        "path",
    ]
    stats = ["final_accuracy", "best_accuracy", "final_loss", *clients]
    if with_groups:
        header += ["seed_group", "group_runs"] + [
            f"group_{m}_{s}"
            for m in ("final_test_accuracy", "best_test_accuracy", "final_test_loss", *clients)
            for s in ("mean", "std")
        ]
    rows = []
    for i in order:
        r = settings.runs[i]
        row = [
            r.name,
            *["" if v is None else v for v in settings.of_run(i).values()],
            r.status,
            r.mode,
            len(r.steps),
            r.final_accuracy,
            r.best_accuracy,
            r.final_loss,
            *[getattr(r, attr) for attr in clients],
            r.wall_seconds,
            r.results.get("error", ""),
            str(r.dir),
        ]
        if with_groups:
            g = group_of[id(r)]
            row += [label(g.settings, g.mode), len(g.completed)]
            for attr in stats:
                st = g.stat(attr)
                row += [st.mean, st.std]
        rows.append(["" if v is None else v for v in row])
    return header, rows
