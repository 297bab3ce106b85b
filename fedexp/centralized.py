"""The centralized baseline: one model trained on one client's data (the tutorial) or on
all clients' data pooled (`centralized.partition=null`), validated every epoch.

The model after each completed epoch is kept in memory: if an epoch diverges (NaN/inf
loss) the run ends as "diverged" and model.pt holds the last good epoch's model; on an
interrupt, model.pt holds the last completed epoch's.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from hydra.utils import instantiate

from . import progress
from .results import RunResults
from .training import DivergedError, evaluate, train
from .workload import Workload


def _snapshot(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run(work: Workload, results: RunResults) -> torch.nn.Module:
    cfg = work.cfg
    pid = cfg.centralized.partition
    if pid is None:
        train_idx, val_idx = work.parts.pooled()
    else:
        train_idx, val_idx = work.parts.train[pid], work.parts.val[pid]
    model = work.new_model()
    normalize, criterion, augment = work.normalizer(), work.criterion(), work.augment()
    # One optimizer for the whole run, so that Adam's moments carry over between epochs.
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    x, y = work.data.x_train, work.data.y_train
    whose = "all clients' data" if pid is None else f"client {pid}'s data"
    progress.start_line(
        f"centralized: {progress.count(cfg.centralized.epochs, 'epoch')} on {whose} "
        f"({len(train_idx)} examples) of {cfg.dataset.name}"
    )
    good, status, error = _snapshot(model), "completed", None
    try:
        for epoch in range(1, cfg.centralized.epochs + 1):
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(
                int(np.random.SeedSequence([cfg.seed, epoch]).generate_state(1)[0])
            )
            try:
                tr = train(
                    model,
                    x,
                    y,
                    train_idx,
                    epochs=1,
                    batch_size=cfg.batch_size,
                    optimizer=optimizer,
                    normalize=normalize,
                    generator=gen,
                    criterion=criterion,
                    augment=augment,
                )
            except DivergedError as e:
                kept = f"the model after epoch {epoch - 1}" if epoch > 1 else "the initial model"
                status, error = "diverged", f"epoch {epoch}: {e}; model.pt holds {kept}"
                break
            va = evaluate(
                model,
                x,
                y,
                val_idx,
                batch_size=cfg.eval_batch_size,
                normalize=normalize,
                criterion=criterion,
            )
            good = _snapshot(model)
            record = {
                "epoch": epoch,
                "train_loss": tr["loss"],
                "train_accuracy": tr["accuracy"],
                "val_loss": va["loss"],
                "val_accuracy": va["accuracy"],
                "seconds": time.perf_counter() - t0,
            }
            # model.pt: the last completed epoch's, before results.json lists it
            results.save_model(model)
            results.add(record)
    finally:
        model.load_state_dict(good)
        results.save_model(model)
    te = work.test(model)
    if results.steps:
        results.steps[-1].update(test_loss=te["loss"], test_accuracy=te["accuracy"])
    results.finish(
        status, error=error, final={"test_loss": te["loss"], "test_accuracy": te["accuracy"]}
    )
    return model
