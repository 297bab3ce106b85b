"""`fedexp-compare`: which setting won, and by how much, across runs and sweeps.

Reads only what runs wrote (results.json and Hydra's `.hydra/` snapshot), prints a table of
the runs and, where runs differ only in `seed`, of their seed groups (mean ± sample
standard deviation), and on request writes the table as CSV and a plot of test accuracy
and loss per round. Errors are one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from ..sweep import first_line
from .runs import CompareError, check_same_dataset, load_runs
from .table import Settings, csv_rows, group_rows, printable, render, run_rows, seed_groups

# A run's own files: --csv/--plot never write over them.
RUN_FILES = ("results.json", "metrics.csv", "results.png", "model.pt", "main.log")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="fedexp-compare",
        description="Compare fedexp runs: a table of the settings that differ and the results, "
        "seed groups as mean ± sample std (n-1), optionally a CSV and a plot.",
        epilog="example: fedexp-compare outputs/multirun/2026-11-25/10-00-00 --csv table.csv "
        "--plot compare.png",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="a run directory, a sweep directory (searched for results.json), or a results.json",
    )
    p.add_argument(
        "--csv", metavar="FILE", type=Path, help="also write the run table to FILE as CSV"
    )
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        type=Path,
        help="also draw test accuracy and loss per round into FILE.png",
    )
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    p.add_argument(
        "--mixed-datasets",
        action="store_true",
        help="compare runs even if they were tested on different datasets",
    )
    return p.parse_args(argv)


def _check_output(path: Path | None, overwrite: bool, kind: str) -> None:
    if path is None:
        return
    if path.name in RUN_FILES:
        raise CompareError(
            f"--{kind} {path}: {path.name} is the name of a run's own file; choose another name"
        )
    if path.is_dir():
        raise CompareError(f"--{kind} {path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise CompareError(
            f"--{kind} {path} already exists; choose another name or add --overwrite"
        )
    if kind == "plot":
        from matplotlib.figure import Figure

        formats = Figure().canvas.get_supported_filetypes()
        if path.suffix.lstrip(".").lower() not in formats:
            raise CompareError(
                f"--plot {path}: unknown image type {path.suffix!r}; use .png "
                f"(or one of {', '.join(sorted(formats))})"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _check_output(args.csv, args.overwrite, "csv")
        _check_output(args.plot, args.overwrite, "plot")
        runs = load_runs(args.paths)
        if not args.mixed_datasets:
            check_same_dataset(runs)
        settings = Settings.of(runs)
        groups = seed_groups(settings)
        header, rows, _ = run_rows(settings)
        print(f"{len(runs)} run{'s' * (len(runs) > 1)}, best final test accuracy first:")
        print(render(header, rows))
        if any(len(g.runs) > 1 for g in groups):
            print(
                "\nseed groups (runs that differ only in seed): mean ± sample std (n-1) over "
                "distinct seeds; a seed run k times (0×k) counts once"
            )
            print(render(*group_rows(settings, groups)))
        failed = [r for r in runs if r.results.get("error")]
        if failed:
            print("\nerrors:")
            for r in failed:
                print(printable(f"  {r.name}: {first_line(str(r.results['error']))}"))
        if args.csv or args.plot:
            print()
        if args.csv:
            header, rows = csv_rows(settings, groups)
            args.csv.parent.mkdir(parents=True, exist_ok=True)
            with args.csv.open("w", newline="") as f:
                csv.writer(f).writerows([header, *rows])
            print(f"wrote {args.csv}")
        if args.plot:
            from .plot import plot

            print(f"wrote {plot(settings, groups, args.plot)}")
    except CompareError as e:
        print(printable(f"fedexp-compare: error: {e}"), file=sys.stderr)
        return 2
    except BrokenPipeError:  # `fedexp-compare ... | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0
