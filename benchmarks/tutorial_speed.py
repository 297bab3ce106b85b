"""Time fedexp's tutorial experiment against the tutorial's own code and bare PyTorch.

    python benchmarks/tutorial_speed.py --data DIR [--reference-dir ../shared/bench] [--repeat 3]
        [--variant "augmented=dataset.augment.crop_padding=4 dataset.augment.flip=true"]

DIR is a CIFAR-10 tree in ImageFolder layout (train/<class>/*, test/<class>/*); fedexp reads
it with `dataset=image_folder`. With --reference-dir, the folder holding `tutorial_flower.py`
(the tutorial on today's flwr) and `torch_limit.py` (the same federated work in bare PyTorch)
is run too. Each --variant NAME=OVERRIDES adds a fedexp run with those overrides to every
repetition (its training time is compared with the floor's too). Commands are interleaved
(A B C A B C ...) so that drift on a shared machine hits all of them alike; the figures to
quote are the medians and the ratios.

Per run it records the wall time of the whole process, the peak memory of the whole process
tree (Ray starts several processes) as the sum of RSS, and what the run reports: for fedexp,
the sum of its rounds' seconds and its final test accuracy from results.json; for the
scripts, their `RESULT {json}` line. RSS is read from /proc/<pid>/statm, about 4 ms per
sample of fedexp's tree. With --pss the sum of PSS (shared pages counted once) is sampled
too, from /proc/<pid>/smaps_rollup: the kernel walks every page table for it, about 0.1 s of
CPU per sample, which slows the measured runs on a small machine, so timings taken with
--pss are not the ones to quote. Only the standard library is used (Linux only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _children(pid: int, table: dict[int, list[int]]) -> list[int]:
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(table.get(p, []))
    return out


def _tree(root: int) -> list[int]:
    table: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        table.setdefault(ppid, []).append(int(entry))
    return _children(root, table)


PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def _tree_pss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def measure(cmd: list[str], cwd: Path, pss: bool = False) -> dict:
    """Run `cmd`, sampling the process tree's RSS every 0.25 s (and PSS every 1 s with `pss`)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = {"rss": 0, "pss": 0}

    def sample():
        n = 0
        while proc.poll() is None:
            pids = _tree(proc.pid)
            peak["rss"] = max(peak["rss"], _tree_rss(pids))
            if pss and n % 4 == 0:
                peak["pss"] = max(peak["pss"], _tree_pss(pids))
            n += 1
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0]
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{output[-3000:]}")
    result = {}
    for line in output.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    memory = {"rss_mb": peak["rss"] / 2**20}
    if pss:
        memory["pss_mb"] = peak["pss"] / 2**20
    return {"wall": wall, **memory, **result}


def fedexp_run(data: str, workdir: Path, i: int, extra: list[str], pss: bool) -> dict:
    run_dir = workdir / f"fedexp-{i}"
    cmd = [
        sys.executable,
        "-m",
        "fedexp",
        "experiment=tutorial",
        "dataset=image_folder",
        f"dataset.path={data}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    m = measure(cmd, workdir, pss)
    res = json.loads((run_dir / "results.json").read_text())
    m["train_seconds"] = sum(r["seconds"] for r in res["rounds"])
    m["accuracy"] = res["final"]["test_accuracy"]
    return m


def summary(name: str, runs: list[dict], keys: list[str]) -> dict:
    out = {}
    for k in keys:
        vals = [r[k] for r in runs if r.get(k) is not None]
        if vals:
            out[k] = (statistics.median(vals), min(vals), max(vals))
    cells = "  ".join(f"{k} {m:.2f} [{lo:.2f}-{hi:.2f}]" for k, (m, lo, hi) in out.items())
    print(f"{name:<10} {cells}")
    return {k: v[0] for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="CIFAR-10 ImageFolder tree (train/, test/)")
    ap.add_argument(
        "--reference-dir", type=Path, help="folder with tutorial_flower.py and torch_limit.py"
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pss", action="store_true", help="also sample PSS (slows the runs measured)")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OVERRIDES",
        help="also time fedexp with these space-separated overrides",
    )
    ap.add_argument("fedexp_overrides", nargs="*", help="extra fedexp overrides")
    a = ap.parse_args()
    variants = dict(v.split("=", 1) for v in a.variant)
    workdir = Path(tempfile.mkdtemp(prefix="fedexp-bench-"))
    # decode the image folder once, outside the timed runs (the cache is keyed by the files)
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from fedexp.data.datasets import load_image_folder;"
            " load_image_folder(sys.argv[1])",
            a.data,
        ],
        check=True,
    )
    runs: dict[str, list[dict]] = {
        "fedexp": [],
        "tutorial": [],
        "floor": [],
        **{v: [] for v in variants},
    }
    for i in range(a.repeat):
        runs["fedexp"].append(fedexp_run(a.data, workdir, i, a.fedexp_overrides, a.pss))
        print("fedexp  ", json.dumps(runs["fedexp"][-1]), flush=True)
        for name, overrides in variants.items():
            runs[name].append(
                fedexp_run(
                    a.data, workdir, f"{name}-{i}", [*a.fedexp_overrides, *overrides.split()], a.pss
                )
            )
            print(f"{name:<8}", json.dumps(runs[name][-1]), flush=True)
        if a.reference_dir:
            ref = a.reference_dir.resolve()
            runs["tutorial"].append(
                measure(
                    [sys.executable, str(ref / "tutorial_flower.py"), "--mode", "fed"],
                    workdir,
                    a.pss,
                )
            )
            print("tutorial", json.dumps(runs["tutorial"][-1]), flush=True)
            runs["floor"].append(
                measure([sys.executable, str(ref / "torch_limit.py")], workdir, a.pss)
            )
            print("floor   ", json.dumps(runs["floor"][-1]), flush=True)
    print(f"\nmedian [min-max] over {a.repeat} runs; seconds, MB")
    fx = summary(
        "fedexp", runs["fedexp"], ["wall", "train_seconds", "rss_mb", "pss_mb", "accuracy"]
    )
    for name in variants:
        summary(name, runs[name], ["wall", "train_seconds", "rss_mb", "pss_mb", "accuracy"])
    if a.reference_dir:
        tu = summary(
            "tutorial",
            runs["tutorial"],
            ["wall", "fed_seconds", "rss_mb", "pss_mb", "fed_test_accuracy"],
        )
        fl = summary(
            "floor", runs["floor"], ["wall", "fed_seconds", "rss_mb", "pss_mb", "fed_test_accuracy"]
        )
        ratio = [f["wall"] / t["wall"] for f, t in zip(runs["fedexp"], runs["tutorial"])]
        train = [
            f["train_seconds"] / b["fed_seconds"] for f, b in zip(runs["fedexp"], runs["floor"])
        ]
        print(
            f"\nfedexp / tutorial, whole process: median {statistics.median(ratio):.2f} "
            f"[{min(ratio):.2f}-{max(ratio):.2f}]  (target <= 0.6)"
        )
        print(
            f"fedexp training / floor fed_seconds: median {statistics.median(train):.2f} "
            f"[{min(train):.2f}-{max(train):.2f}]  (target <= 1.25)"
        )
        for name in variants:
            train = [
                f["train_seconds"] / b["fed_seconds"] for f, b in zip(runs[name], runs["floor"])
            ]
            print(
                f"fedexp {name} training / floor fed_seconds: median {statistics.median(train):.2f} "
                f"[{min(train):.2f}-{max(train):.2f}]  (target <= 1.25)"
            )
        pss = f", PSS {fx['pss_mb'] / tu['pss_mb']:.2f}" if a.pss else ""
        print(f"peak memory fedexp / tutorial: RSS {fx['rss_mb'] / tu['rss_mb']:.2f}{pss}")
        print(
            f"accuracy: fedexp {fx['accuracy']:.4f}, tutorial {tu['fed_test_accuracy']:.4f}, "
            f"floor {fl['fed_test_accuracy']:.4f}"
        )


if __name__ == "__main__":
    main()
