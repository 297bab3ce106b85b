"""The comparison plot: test accuracy and test loss per round, one line per run or per seed
group (the mean, with a band of ± one sample standard deviation), labelled by the settings
that differ. Centralized runs have no rounds: they are horizontal reference lines at their
final test accuracy and loss.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .runs import CompareError, Run
from .table import SeedGroup, Settings, label

METRICS = (("accuracy", "test accuracy"), ("loss", "test loss"))


def _series(settings: Settings, groups: list[SeedGroup]) -> list[tuple[str, str, list[Run]]]:
    """(label, mode, runs) per line: a seed group of two or more completed runs is one line;
    every other run is a line of its own."""
    index = {id(r): i for i, r in enumerate(settings.runs)}
    out = []
    for g in groups:
        if len(g.completed) > 1:
            out.append(
                (
                    _label(
                        label(g.settings, ""), g.mode, f"mean ± std of {len(g.completed)} seeds"
                    ),
                    g.mode,
                    g.completed,
                )
            )
            continue
        for r in g.runs:
            text = _label(
                label(settings.of_run(index[id(r)]), r.name),
                r.mode,
                "" if r.status == "completed" else r.status,
            )
            out.append((text, r.mode, [r]))
    return out


def _label(settings: str, mode: str, note: str) -> str:
    if mode == "centralized":
        settings = "centralized" + (f": {settings}" if settings else "")
        note = "final" + (f", {note}" if note else "")
    return (settings or mode) + (f" ({note})" if note else "")


def _mean_std(runs: list[Run], metric: str) -> tuple[list[int], list[float], list[float]]:
    """Per round that every run reached: mean and sample std over the runs."""
    curves = [dict(zip(*r.curve(metric))) for r in runs]
    xs = sorted(set.intersection(*(set(c) for c in curves)))
    ys = [[c[x] for c in curves] for x in xs]
    return (
        xs,
        [statistics.fmean(y) for y in ys],
        [statistics.stdev(y) if len(y) > 1 else 0.0 for y in ys],
    )


def _final(runs: list[Run], metric: str) -> list[float]:
    attr = "final_accuracy" if metric == "accuracy" else "final_loss"
    return [v for v in (getattr(r, attr) for r in runs) if v is not None]


def plot(settings: Settings, groups: list[SeedGroup], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series = _series(settings, groups)
    drawable = [
        s
        for s in series
        if any(
            (r.curve("accuracy")[0] if r.mode == "federated" else _final([r], "accuracy"))
            for r in s[2]
        )
    ]
    if not drawable:
        raise CompareError("no run has test results to plot yet")
    ncol = 1 if len(drawable) > 4 else 2
    legend_rows = -(-len(drawable) // ncol)
    height = 4.0 + 0.25 * legend_rows
    fig, axes = plt.subplots(1, 2, figsize=(11, height))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (text, mode, runs) in enumerate(drawable):
        color = colors[n % len(colors)]
        for ax, (metric, _) in zip(axes, METRICS):
            if mode == "federated":
                xs, mean, std = _mean_std(runs, metric)
                ax.plot(xs, mean, marker="o", markersize=3, color=color, label=text)
                if len(runs) > 1:
                    ax.fill_between(
                        xs,
                        [m - s for m, s in zip(mean, std)],
                        [m + s for m, s in zip(mean, std)],
                        color=color,
                        alpha=0.2,
                    )
            else:
                finals = _final(runs, metric)
                if not finals:
                    continue
                mean = statistics.fmean(finals)
                ax.axhline(mean, color=color, linestyle="--", label=text)
                if len(finals) > 1:
                    std = statistics.stdev(finals)
                    ax.axhspan(mean - std, mean + std, color=color, alpha=0.12)
    for ax, (_, title) in zip(axes, METRICS):
        ax.set_title(title)
        ax.set_xlabel("round (0: initial model)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, (0.25 * legend_rows + 0.1) / height, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
