"""Live progress: one readable line per round or epoch, instead of Flower's and Ray's logs.

Plain lines, never terminal control codes, so the same output reads well on a terminal,
in `main.log`, in a CI log and in a sweep's interleaved output. Each line carries the
progress (round 3/10), the latest accuracies and an ETA for the rest of the run.
"""

from __future__ import annotations

import logging

from .callbacks import Callback

log = logging.getLogger("fedexp")


def number(v, spec=".4f") -> str:
    """A loss or an accuracy as the progress lines show it: 4 decimals, "-" for none."""
    return "-" if v is None else format(v, spec)


def duration(seconds: float) -> str:
    """45s, 1m20s, 2h05m."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta(done: list[dict], total: int) -> str:
    """' | ETA 1m20s' for the steps still to run, or '' after the last one.

    Estimated from the mean time of the steps done, leaving out the first once later ones
    exist: the first step runs cold (first-call set-up in torch, a joined Ray cluster's
    workers still starting).
    """
    left = total - len(done)
    if left <= 0 or not done:
        return ""
    times = [s["seconds"] for s in done[1:]] or [done[0]["seconds"]]
    return f" | ETA {duration(left * sum(times) / len(times))}"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def start_line(text: str) -> None:
    log.info(text)


def all_clients(summary: dict | None) -> str:
    """What an evaluation of every client found, and of which model: 'all 10 clients, own
    models: acc mean 0.7472 p10 0.4857' ('' when the round had none)."""
    if not summary or summary.get("mean_accuracy") is None:
        return ""
    models = "own models" if summary.get("model") == "personal" else "global model"
    return (
        f"all {count(summary['clients'], 'client')}, {models}: acc mean "
        f"{number(summary['mean_accuracy'])} p10 {number(summary['p10_accuracy'])}"
    )


def last_all_clients(data: dict) -> dict | None:
    """The `all_clients` summary of a run's last round that evaluated every client."""
    return next(
        (r["all_clients"] for r in reversed(data.get("rounds") or []) if r.get("all_clients")), None
    )


def final_line(data: dict, run_dir: str) -> str:
    """The run's last line: the final test numbers, said to be the global model's on the
    server's test set, and the clients' own accuracy where every client was evaluated."""
    final = data.get("final") or {}
    line = (
        f"{data['mode']} run {data['status']}: final test accuracy "
        f"{number(final.get('test_accuracy'))}, test loss {number(final.get('test_loss'))}"
    )
    if data["mode"] == "federated":
        clients = all_clients(last_all_clients(data))
        line += " (global model, server's test set)" + (f"; {clients}" if clients else "")
    return line + f" ({data['wall_seconds']:.1f}s) -> {run_dir}"


# A personalised method run without the evaluation of every client: where its numbers are.
PERSONAL_NOTE = (
    "strategy={name} trains a model per client, which the global model's test numbers do not "
    "measure: evaluation.all_clients_every=K evaluates every client's own model every K "
    "rounds and after the last (their mean and p10 on the round and final lines, each client in "
    "clients.csv)"
)


def round_line(r: dict, total: int, done: list[dict] | None = None) -> None:
    fails = f" ({r['fit_failures']} failed)" if r.get("fit_failures") else ""
    clients = all_clients(r.get("all_clients"))
    log.info(
        "round %d/%d | fit %s%s, train loss %s | eval %s, loss %s acc %s "
        "| test loss %s acc %s%s | %.1fs%s",
        r["round"],
        total,
        count(r["fit_clients"], "client"),
        fails,
        number(r.get("train_loss")),
        count(r["evaluate_clients"], "client"),
        number(r.get("distributed_loss")),
        number(r.get("distributed_accuracy")),
        number(r.get("test_loss")),
        number(r.get("test_accuracy")),
        f" | {clients}" if clients else "",
        r["seconds"],
        eta(done or [], total),
    )


def epoch_line(e: dict, total: int, done: list[dict] | None = None) -> None:
    log.info(
        "epoch %d/%d | train loss %s acc %s | val loss %s acc %s | %.1fs%s",
        e["epoch"],
        total,
        number(e["train_loss"]),
        number(e["train_accuracy"]),
        number(e["val_loss"]),
        number(e["val_accuracy"]),
        e["seconds"],
        eta(done or [], total),
    )


class ProgressLines(Callback):
    """The callback (see fedexp/callbacks) that prints a line per round or epoch."""

    def on_step(self, run, record: dict) -> None:
        config = run.config or {}
        if run.mode == "federated":
            round_line(record, int(config.get("num_rounds", len(run.steps))), run.steps)
        else:
            epoch_line(
                record,
                int((config.get("centralized") or {}).get("epochs", len(run.steps))),
                run.steps,
            )
