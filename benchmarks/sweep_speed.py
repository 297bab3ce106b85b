"""Time a fedexp sweep against the same runs started one by one.

    python benchmarks/sweep_speed.py [--jobs 12] [--repeat 3] [-- OVERRIDES...]

A: one multirun, `fedexp -m seed=0,...,N-1 OVERRIDES` (one Ray for all jobs).
B: the same N runs as N separate `fedexp seed=i OVERRIDES` processes, one after another: what
   a user would otherwise script.
A and B alternate (A B A B ...) so that drift on a shared machine hits both alike. Per
repetition it prints the wall time of each, their ratio, and for A each job's time beyond
its own rounds: the job's `wall_seconds` in results.json minus the sum of its rounds'
`seconds`, the fixed cost that sharing Ray is meant to cut. The default workload is the
default experiment (digits, 10 clients, 5 rounds). Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def beyond_rounds(run_dir: Path) -> float:
    data = json.loads((run_dir / "results.json").read_text())
    if data["status"] != "completed":
        sys.exit(f"{run_dir}: {data['status']}: {data.get('error')}")
    return data["wall_seconds"] - sum(r["seconds"] for r in data["rounds"])


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="fedexp overrides for every run")
    args = parser.parse_args()
    fedexp = [sys.executable, "-m", "fedexp"]
    seeds = list(range(args.jobs))
    sweeps, singles, ratios, beyond = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="fedexp-sweep-bench-") as tmp:
        work = Path(tmp)
        for rep in range(args.repeat):
            sweep_dir = work / f"sweep{rep}"
            a = timed(
                [
                    *fedexp,
                    "-m",
                    f"seed={','.join(map(str, seeds))}",
                    *args.overrides,
                    f"hydra.sweep.dir={sweep_dir}",
                ],
                work,
            )
            b = sum(
                timed(
                    [
                        *fedexp,
                        f"seed={s}",
                        *args.overrides,
                        f"hydra.run.dir={work / f'one{rep}-{s}'}",
                    ],
                    work,
                )
                for s in seeds
            )
            jobs = [beyond_rounds(sweep_dir / str(s)) for s in seeds]
            sweeps.append(a)
            singles.append(b)
            ratios.append(a / b)
            beyond.extend(jobs)
            print(
                f"repetition {rep + 1}: sweep {a:.1f} s, one by one {b:.1f} s, ratio {a / b:.2f}; "
                f"per sweep job beyond its rounds: median {statistics.median(jobs):.2f} s "
                f"(first job {jobs[0]:.2f} s, others {min(jobs[1:]):.2f}-{max(jobs[1:]):.2f} s)",
                flush=True,
            )
    result = {
        "jobs": args.jobs,
        "repeat": args.repeat,
        "overrides": args.overrides,
        "sweep_seconds": spread(sweeps),
        "one_by_one_seconds": spread(singles),
        "ratio": spread(ratios),
        "beyond_rounds_per_job_seconds": spread(beyond),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
