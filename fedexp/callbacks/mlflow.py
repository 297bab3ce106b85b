"""MLflow: one MLflow run per fedexp run, with the config flattened as params, every
number of every round as a metric at step = round, the final test numbers, and as
artifacts results.json, results.png, partitions.png and model.pt.

The store is `tracking_uri`: a tracking server (`http://host:5000`), or by default a
SQLite file, `outputs/mlflow.db` under the directory fedexp runs from (`mlflow ui
--backend-store-uri sqlite:///outputs/mlflow.db` shows it). A single run goes into the
experiment `experiment_name`; the runs of one sweep go into an experiment of their own,
named after the sweep's directory, so that MLflow's compare view shows one sweep. A
resumed run logs into the MLflow run it had (its id is kept in the run directory's
mlflow.json).

A server that does not answer fails a request after `request_timeout` seconds and
`max_retries` retries (MLflow's defaults would retry for minutes); the logger is then left
out of the run (see fedexp/callbacks)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import ARTIFACTS, Callback, flat, measures, numbers


class MLflowLogger(Callback):
    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str = "fedexp",
        request_timeout: float = 10.0,
        max_retries: int = 1,
    ):
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name
        self.request_timeout, self.max_retries = request_timeout, max_retries
        self.client = self.run_id = None

    def _experiment(self, name: str, artifacts: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except Exception:  # a job of the same sweep created it a moment ago
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def on_run_start(self, run) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(self.request_timeout))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(self.max_retries))
        import logging

        from mlflow import MlflowClient
        from mlflow.entities import Param

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its "View run at ..." lines
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # a line per retry

        uri, artifacts = self.tracking_uri, None
        if not uri:
            store = Path("outputs").resolve()
            store.mkdir(exist_ok=True)
            uri, artifacts = f"sqlite:///{store / 'mlflow.db'}", (store / "mlartifacts").as_uri()
        self.client = MlflowClient(uri)
        record = run.dir / "mlflow.json"
        earlier = json.loads(record.read_text()) if record.is_file() else {}
        if earlier.get("tracking_uri") == uri and run.data.get("resumed_after"):
            self.run_id = earlier["run_id"]
            return
        name = (
            self.experiment_name if not run.sweep else f"{self.experiment_name} sweep {run.sweep}"
        )
        created = self.client.create_run(
            self._experiment(name, artifacts),
            run_name=run.dir.name,
            tags={"fedexp.run_dir": str(run.dir.resolve())},
        )
        self.run_id = created.info.run_id
        record.write_text(json.dumps({"tracking_uri": uri, "run_id": self.run_id}) + "\n")
        params = [Param(k, str(v)[:6000]) for k, v in flat(run.config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _metrics(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()]
        )

    def on_step(self, run, record: dict) -> None:
        step, values = measures(record)
        self._metrics(values, step)

    def on_run_end(self, run) -> None:
        final = {f"final_{k}": v for k, v in numbers(run.data.get("final") or {}).items()}
        if final:
            self._metrics(final, len(run.steps))
        for name in ARTIFACTS:
            if (run.dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run.dir / name))
        status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(
            run.data.get("status"), "FAILED"
        )
        self.client.set_terminated(self.run_id, status)
