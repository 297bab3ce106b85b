"""partitions.json and partitions.png: who holds what, written with every run.

Non-IID results mean little without the split they came from: these two files record it
per run (per client: train and validation sizes and label counts) and show the label skew
at a glance (clients x classes heat map). Written before training starts, so the split can
be inspected even when a run fails.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .data import Partitions
from .results import atomic_write, fitted_title

log = logging.getLogger("fedexp")


def summarize(
    labels: np.ndarray, parts: Partitions, classes: list[str], partitioning: Mapping
) -> dict:
    """partitions.json's content. `partitioning` is the run's `partitioning` config;
    `unassigned` counts training examples no client holds (shard and pathological splits
    can leave some out)."""
    num_classes = max(len(classes), int(labels.max()) + 1 if len(labels) else 0)

    def counts(idx: np.ndarray) -> list[int]:
        return np.bincount(labels[idx], minlength=num_classes).tolist()

    held = sum(len(t) + len(v) for t, v in zip(parts.train, parts.val))
    if isinstance(partitioning, DictConfig):
        partitioning = OmegaConf.to_container(partitioning, resolve=True)
    settings = {
        k: v
        for k, v in partitioning.items()
        if k not in ("name", "partitioner") and not isinstance(v, Mapping)
    }
    return {
        "scheme": partitioning["name"],
        "settings": settings,
        "num_clients": len(parts),
        "classes": list(classes)
        if len(classes) == num_classes
        else [str(c) for c in range(num_classes)],
        "train_examples": len(labels),
        "unassigned": int(len(labels) - held),
        "clients": [
            {
                "client": i,
                "train_size": len(t),
                "val_size": len(v),
                "train_label_counts": counts(t),
                "val_label_counts": counts(v),
            }
            for i, (t, v) in enumerate(zip(parts.train, parts.val))
        ],
    }


def plot(summary: dict, out: Path) -> Path:
    """Heat map of training-label counts, one row per client, one column per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.array([c["train_label_counts"] for c in summary["clients"]])
    n_clients, n_classes = counts.shape
    fig_w = min(4 + 0.45 * n_classes, 16)
    fig_h = min(1.5 + 0.3 * n_clients, 16)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    im = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="training examples")
    if n_clients * n_classes <= 400:
        threshold = counts.max() / 2 if counts.size else 0
        for (i, j), v in np.ndenumerate(counts):
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                fontsize=7,
                color="black" if v > threshold else "white",
            )
    if n_classes <= 30:
        ax.set_xticks(
            range(n_classes), summary["classes"], rotation=45 if n_classes > 10 else 0, fontsize=8
        )
    if n_clients <= 40:
        ax.set_yticks(range(n_clients))
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    sizes = [c["train_size"] for c in summary["clients"]]
    shown = ", ".join(
        f"{k}={v}" for k, v in summary["settings"].items() if k not in ("shuffle", "val_fraction")
    )
    ax.set_title(
        fitted_title(
            f"{summary['scheme']}{f' ({shown})' if shown else ''}: {n_clients} clients, "
            f"train sizes {min(sizes)}..{max(sizes)}"
            + (f", {summary['unassigned']} examples unassigned" if summary["unassigned"] else ""),
            fig,
        ),
        fontsize=10,
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    plt.close(fig)
    atomic_write(out, buffer.getvalue())
    return out


def write(
    run_dir: str | Path,
    labels: np.ndarray,
    parts: Partitions,
    classes: list[str],
    partitioning: Mapping,
) -> dict:
    """Write partitions.json and partitions.png into `run_dir`; return the summary."""
    run_dir = Path(run_dir)
    summary = summarize(np.asarray(labels), parts, classes, partitioning)
    scheme = summary["scheme"]
    if summary["unassigned"]:
        held = np.sum([c["train_label_counts"] for c in summary["clients"]], axis=0)
        missing = [summary["classes"][k] for k in np.flatnonzero(held == 0)]
        log.warning(
            "partitioning=%s leaves %d of %d training examples to no client%s",
            scheme,
            summary["unassigned"],
            summary["train_examples"],
            f" (no client holds class {', '.join(missing)})" if missing else "",
        )
    # One line per key and per client: readable, and diffable between runs.
    head = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in summary.items() if k != "clients"]
    clients = ",\n  ".join(json.dumps(c) for c in summary["clients"])
    text = "{\n" + ",\n".join(head) + ',\n "clients": [\n  ' + clients + "\n ]\n}\n"
    atomic_write(run_dir / "partitions.json", text)
    plot(summary, run_dir / "partitions.png")
    return summary
