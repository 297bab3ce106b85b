"""The one place that starts Flower's simulation engine.

flwr 1.41/1.42 mark `run_simulation` deprecated in favour of the `flwr run` CLI, which
packages the app, hands it to a detached local SuperLink daemon and accepts only flat
run-config values. That fits a Hydra job badly: the job would lose the run's records, its
process boundary and structured config. `run_simulation` still runs the ServerApp in a
thread of this process and the ClientApps in Ray actors, synchronously, so fedexp keeps
it, silences only that one deprecation message, and bounds flwr in pyproject.toml to
releases that ship it.

Ray is started here (not inside Flower) so that the training data can be put into Ray's
object store before the clients exist, and so that `simulation.ray_address` can join an
existing cluster.
"""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager


class _DropRunSimulationDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("DEPRECATED FEATURE")
                    and "run_simulation" in str(record.args))


@contextmanager
def ray_session(address: str | None, num_cpus: int | None, num_gpus: float | None, verbose: bool):
    """Start (or join, with `address`) Ray for one run; always shut it down."""
    # Ray >= 2.5x warns on every start that it will stop overriding CUDA_VISIBLE_DEVICES
    # for num_gpus=0; opting in to that future behaviour silences it.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray

    pythonpath = os.pathsep.join(p for p in sys.path if p)
    args = dict(include_dashboard=False, log_to_driver=verbose,
                logging_level=logging.INFO if verbose else logging.ERROR,
                runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    if address:
        args["address"] = address
    else:
        # "local", not None: ray.init(address=None) silently joins a cluster named by
        # RAY_ADDRESS or left by `ray start` on this machine (then num_cpus is refused).
        args.update(address="local", num_cpus=num_cpus, num_gpus=num_gpus)
    ray.init(**args)
    try:
        yield ray
    finally:
        ray.shutdown()


def run_engine(server_app, client_app, num_clients: int, client_resources: dict, verbose: bool) -> None:
    """Run the ServerApp against `num_clients` virtual ClientApps until it returns."""
    from flwr.simulation import run_simulation

    flwr_logger = logging.getLogger("flwr")
    drop = _DropRunSimulationDeprecation()
    flwr_logger.addFilter(drop)
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_clients,
            backend_name="ray",
            backend_config={"client_resources": client_resources},
            verbose_logging=verbose,
        )
    finally:
        flwr_logger.removeFilter(drop)
        flwr_logger.setLevel(level)
