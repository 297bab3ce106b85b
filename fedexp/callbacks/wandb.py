"""Weights & Biases: one W&B run per fedexp run, with the config (flattened), every number
of every round logged at step = round, the final test numbers in its summary, and
results.json, results.png, partitions.png and model.pt saved with it.

`mode: offline` (the default) needs no network or account: the run is written under the
run directory's `wandb/`, and `wandb sync outputs/.../wandb/offline-run-*` uploads it
later. `mode: online` logs as it goes. The runs of one sweep share a `group` (the sweep's
directory), so W&B shows them together."""

from __future__ import annotations

import shutil
from pathlib import Path

from . import ARTIFACTS, Callback, flat, measures, numbers


class WandbLogger(Callback):
    def __init__(
        self,
        project: str = "fedexp",
        mode: str = "offline",
        entity: str | None = None,
        group: str | None = None,
    ):
        self.project, self.mode, self.entity, self.group = project, mode, entity, group
        self.run = None

    def on_run_start(self, run) -> None:
        import wandb

        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            mode=self.mode,
            dir=str(run.dir),
            name=run.dir.name,
            group=self.group or run.sweep,
            config=flat(run.config),
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )

    def on_step(self, run, record: dict) -> None:
        step, values = measures(record)
        self.run.log(values, step=step)

    def on_run_end(self, run) -> None:
        for key, value in numbers(run.data.get("final") or {}).items():
            self.run.summary[f"final_{key}"] = value
        for name in ARTIFACTS:  # the run's files folder is what W&B uploads (now, or at sync)
            if (run.dir / name).is_file():
                shutil.copy2(run.dir / name, Path(self.run.dir) / name)
        self.run.finish(exit_code=0 if run.data.get("status") == "completed" else 1)
