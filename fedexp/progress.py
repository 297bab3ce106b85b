"""One readable line per round or epoch, instead of Flower's and Ray's logs."""
from __future__ import annotations

import logging

log = logging.getLogger("fedexp")


def _f(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def round_line(r: dict, total: int) -> None:
    fails = f" ({r['fit_failures']} failed)" if r.get("fit_failures") else ""
    log.info("round %d/%d | fit %d clients%s, train loss %s | eval %d clients, loss %s acc %s "
             "| test loss %s acc %s | %.1fs",
             r["round"], total, r["fit_clients"], fails, _f(r.get("train_loss")),
             r["evaluate_clients"], _f(r.get("distributed_loss")),
             _f(r.get("distributed_accuracy")), _f(r.get("test_loss")),
             _f(r.get("test_accuracy")), r["seconds"])


def epoch_line(e: dict, total: int) -> None:
    log.info("epoch %d/%d | train loss %s acc %s | val loss %s acc %s | %.1fs",
             e["epoch"], total, _f(e["train_loss"]), _f(e["train_accuracy"]),
             _f(e["val_loss"]), _f(e["val_accuracy"]), e["seconds"])
