"""`fedexp`: compose the config, check it, then run one centralized or federated experiment.

Data flows one way: config -> checks -> data (load, partition) -> model -> training loops ->
`federated` (Flower simulation) or `centralized` -> results in Hydra's run directory.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .checks import ConfigError, check
from .data import DatasetError
from .results import ResultsExistError, RunResults
from .sweep import in_multirun, record_failed_job

log = logging.getLogger("fedexp")


def config_dir() -> str:
    """The YAML configs: `conf/` beside the package in a checkout or editable install,
    `fedexp/conf/` inside a built wheel (pyproject.toml maps one onto the other)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"fedexp's conf/ folder is missing (looked in {here} and {here.parent})")


def run(cfg: DictConfig, run_dir: str) -> dict:
    """Run the experiment `cfg` describes, writing into `run_dir`; return results.json's data."""
    import torch

    from . import centralized, federated, partition_report
    from .workload import Workload

    check(cfg)
    results = RunResults(run_dir, cfg.mode, info={"seed": cfg.seed})
    try:
        work = Workload.build(cfg)
        results.data["data"] = {"dataset": cfg.dataset.name, "train_examples": len(work.data.y_train),
                                "test_examples": len(work.data.y_test), "clients": len(work.parts)}
        partition_report.write(run_dir, work.data.y_train, work.parts, work.data.classes, cfg.partitioning)
        runner = federated if cfg.mode == "federated" else centralized
        model = runner.run(work, results)
        torch.save(model.state_dict(), Path(run_dir) / "model.pt")
    except BaseException as e:
        if results.data["status"] == "running":
            results.finish("failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        results.plot()
    return results.data


def run_sweep_job(cfg: DictConfig, run_dir: str) -> dict | None:
    """One job of a multirun: a failure is recorded in the job's results.json and the sweep
    goes on (see sweep.py); None tells main that this job failed."""
    try:
        return run(cfg, run_dir)
    except Exception as e:
        record_failed_job(cfg, run_dir, e)
        if cfg.get("verbose"):
            raise
        return None


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        data = run_sweep_job(cfg, run_dir) if in_multirun() else run(cfg, run_dir)
    except (ConfigError, DatasetError, ResultsExistError) as e:
        print(f"fedexp: error: {e}", file=sys.stderr)
        if cfg.get("verbose"):
            raise
        sys.exit(2)
    if data is None:
        return None
    final = data.get("final") or {}
    log.info("%s run %s: final test accuracy %s, test loss %s (%.1fs) -> %s", cfg.mode,
             data["status"], final.get("test_accuracy"), final.get("test_loss"),
             data["wall_seconds"], run_dir)
    return final.get("test_accuracy")


if __name__ == "__main__":
    main()
