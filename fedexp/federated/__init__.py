"""Federated mode: all Flower code of fedexp lives in this package.

client.py (what every virtual client does), methods/ (each method's strategy and client
half, side by side), server/ (fedexp's parts around the strategy: sampling, instructions,
round records, the last good model), strategies.py (building the configured strategy),
payload.py (the model's arrays and a method's extras in one message), simulation.py
(Flower's engine, on Ray or with the clients in this process), worker.py (what each Ray
worker loads as it starts), faults.py (injected failures and stragglers); `run` wires them
for one experiment.

However the run ends (completed, failed, diverged, interrupted), the last good global
model is written as model.pt and results.json says how it ended.
"""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path

import torch
from flwr.server import Server, ServerApp, ServerAppComponents, ServerConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from .. import checkpoints, progress
from ..models import set_weights
from ..results import RunResults
from ..workload import Workload
from . import strategies
from .client import ClientSpec, make_client_app, prepare
from .methods.base import DiskClientState
from .payload import ModelLayout
from .server import AllClientsEvaluation, PartitionClientManager, RunEnded, ServerStrategy
from .simulation import (
    client_pool,
    inline_clients,
    kept_session_fits,
    ray_session,
    reap_orphans,
    run_engine,
    sweep_ray,
    uses_ray,
)


def build_strategy(work: Workload, model: torch.nn.Module):
    """The configured strategy, with fedexp's server-side hooks filled in: its
    `evaluate_fn` tests the global model on the server's test set."""
    cfg = work.cfg
    test_model = instantiate(cfg.model).to(work.device)

    def evaluate_fn(server_round, weights, config):
        set_weights(test_model, weights)
        s = work.test(test_model)
        return s["loss"], {} if s["accuracy"] is None else {"accuracy": s["accuracy"]}

    return strategies.build(cfg, model, evaluate_fn)


def all_clients_evaluation(cfg) -> AllClientsEvaluation | None:
    every = int(cfg.get("evaluation", {}).get("all_clients_every", 0) or 0)
    if every <= 0:
        return None
    return AllClientsEvaluation(
        every,
        cfg.num_rounds,
        strategies.evaluate_config_fn(cfg),
        personal=strategies.is_personal(cfg),
    )


def state_dir(cfg, run_dir: Path) -> str | None:
    """Where clients keep their state between rounds: None for Flower's `Context.state` (in
    this process's memory), else a folder of the run directory (see DiskClientState). With
    `auto`, the folder, unless the clients run on a joined cluster whose machines may not
    see it: files are versioned per round, so a resumed run finds its clients' state as
    it was at its checkpoint (Context.state is in no checkpoint), and a local Ray's actors
    need not send every state through this process with each message."""
    where = cfg.simulation.get("client_state", "auto")
    if where == "memory" or (where == "auto" and cfg.simulation.ray_address):
        return None
    return str(Path(run_dir) / "client_state")


def examples_trained(cfg, work: Workload) -> int:
    """At most how many examples the clients train on over the run (every client sampled)."""
    return sum(len(t) for t in work.parts.train) * int(cfg.local_epochs) * int(cfg.num_rounds)


def run(
    work: Workload, results: RunResults, resume: dict | None = None, keep_ray: bool = False
) -> torch.nn.Module:
    """Run the federation; `resume`: the checkpoint to continue from (see resume.py);
    `keep_ray`: a Ray this run starts stays up for the next job of the sweep, which runs
    in this process (see simulation.ray_session)."""
    cfg = work.cfg
    reap_orphans()  # of a killed run, whether or not this run starts Ray
    model = work.new_model()
    manager = PartitionClientManager(cfg.seed, expected=cfg.num_clients)
    keep = int(cfg.get("checkpoint", {}).get("keep", 0) or 0)
    config = OmegaConf.to_container(cfg, resolve=True)

    saved = copy.deepcopy(model)  # what model.pt holds; the strategy keeps `model` as it was built

    def on_round(record: dict) -> None:
        weights = strategy.final_weights()
        if weights is not None:  # model.pt: always the last completed round's model, written
            set_weights(saved, weights)  # before results.json lists the round
            results.save_model(saved)
        results.add(record)
        if keep:  # after results.json: a resume truncates it to the checkpoint's round
            checkpoints.save(
                results.dir, record["round"], {**strategy.checkpoint(), "config": config}, keep
            )

    strategy = ServerStrategy(
        build_strategy(work, model),
        manager,
        on_round,
        seed=cfg.seed,
        straggler_rate=float(cfg.faults.straggler_rate),
        layout=ModelLayout.of(model),
        all_clients=all_clients_evaluation(cfg),
        on_clients=results.add_clients,
    )
    if resume is not None:
        strategy.restore(resume)
    server = Server(client_manager=manager, strategy=strategy)
    # Flower's compat layer sends each client's instruction from its own thread and polls
    # for the reply every 0.1 s; its default pool (cores + 4 threads) leaves Ray workers
    # idle when a round has hundreds of clients. More threads keep them fed.
    server.set_max_workers(cfg.simulation.max_workers)
    server_app = ServerApp(
        server_fn=lambda context: ServerAppComponents(
            server=server, config=ServerConfig(num_rounds=cfg.num_rounds - strategy.offset)
        )
    )
    client_cpus = cfg.device.client_cpus
    client_gpus = float(cfg.device.client_gpus) if work.device.type == "cuda" else 0.0
    address, share = sweep_ray(cfg.simulation.ray_address)
    on_ray = uses_ray(cfg.simulation, examples_trained(cfg, work))
    ray_settings = (
        address,
        cfg.simulation.num_cpus,
        cfg.simulation.num_gpus,
        cfg.verbose,
        cfg.simulation.get("worker_niceness"),
    )
    results.data["backend"] = "ray" if on_ray else "inline"
    progress.start_line(
        f"federated: {progress.count(cfg.num_rounds, 'round')}"
        + (f" (resumed after round {strategy.offset})" if strategy.offset else "")
        + ", "
        f"{progress.count(cfg.num_clients, 'client')}, "
        f"{type(strategy.inner).__name__} on {cfg.dataset.name}; "
        + (
            "clients in this process"
            if not on_ray
            else "on the Ray of the job before"
            if kept_session_fits(*ray_settings)
            else "joining the sweep's Ray"
            if address != cfg.simulation.ray_address
            else f"joining the Ray cluster at {address}"
            if address
            else "starting Ray"
        )
    )
    data = {
        "x": work.data.x_train,
        "y": work.data.y_train,
        "train": work.parts.train,
        "val": work.parts.val,
    }
    threads = max(1, int(client_cpus))
    states = state_dir(cfg, results.dir)
    if states and strategy.offset:
        DiskClientState.forget_after(Path(states), strategy.offset)
    status, error, interrupt = "completed", None, None
    client_spec = partial(
        ClientSpec,
        cfg=config,
        device=str(work.device),
        state_dir=states,
        state_versions=keep + 1,
    )
    engine = partial(run_engine, server_app, num_clients=cfg.num_clients, verbose=cfg.verbose)
    try:
        if not on_ray:
            spec = client_spec(data_ref=data, threads=None)
            strategy.wait_for_clients = lambda: prepare(spec)
            engine(make_client_app(spec), stop=strategy.stop.set, backend=inline_clients(threads))
        else:
            with ray_session(*ray_settings, keep=keep_ray) as session:
                spec = client_spec(data_ref=session.ray.put(data), threads=threads)
                resources = {"num_cpus": client_cpus, "num_gpus": client_gpus}
                slots = min(session.client_slots(resources, share), cfg.num_clients)
                strategy.wait_for_clients = lambda: session.wait_for_workers(slots, strategy.stop)
                engine(
                    make_client_app(spec),
                    stop=strategy.stop.set,
                    backend=client_pool(session, slots),
                    client_resources=resources,
                    session=session,
                )
    except RunEnded as e:
        status, error = e.status, str(e)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (see fedexp/interrupts.py)
        status, error, interrupt = "interrupted", str(e) or "interrupted", e
    finally:
        results.data["initial"] = strategy.initial
        if strategy.client_start_seconds is not None:
            results.data["client_start_seconds"] = round(strategy.client_start_seconds, 3)
        weights = strategy.final_weights()
        if weights is not None:
            set_weights(model, weights)
        results.save_model(model)
    results.finish(status, error=error, final=_final(results.steps, strategy.initial))
    if interrupt is not None:
        raise interrupt
    return model


def _final(rounds: list[dict], initial: dict | None) -> dict:
    """Test loss and accuracy of the saved model: the last round that evaluated a finite
    model (a failed or diverged last round left the model of the round before)."""
    for r in reversed(rounds):
        if isinstance(r.get("test_loss"), float) and math.isfinite(r["test_loss"]):
            return {"test_loss": r["test_loss"], "test_accuracy": r.get("test_accuracy")}
    initial = initial or {}
    return {"test_loss": initial.get("test_loss"), "test_accuracy": initial.get("test_accuracy")}
