"""TensorBoard event files in the run directory: every number of every round (or epoch)
as a scalar with step = round, and, when the run ends, the config as hyperparameters
with the final test numbers (TensorBoard's HParams view compares a sweep's runs).

A resumed run purges the steps after its checkpoint, which TensorBoard would otherwise
show twice."""

from __future__ import annotations

from . import Callback, flat, measures, numbers


class TensorBoardLogger(Callback):
    def __init__(self, folder: str = "tensorboard"):
        self.folder = folder
        self.writer = None

    def on_run_start(self, run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        resumed = run.data.get("resumed_after") or [None]
        purge = None if resumed[-1] is None else resumed[-1] + 1
        self.writer = SummaryWriter(str(run.dir / self.folder), purge_step=purge)

    def on_step(self, run, record: dict) -> None:
        step, values = measures(record)
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def on_run_end(self, run) -> None:
        hparams = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in flat(run.config).items()
            if v is not None
        }
        final = {f"final/{k}": v for k, v in numbers(run.data.get("final") or {}).items()}
        self.writer.add_hparams(hparams, final, run_name=".")
        self.writer.close()
