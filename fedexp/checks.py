"""Settings checked before any heavy work (data loading, downloads, Ray).

Every problem is one line that names the setting, its value and what is allowed, so that a
typo costs a second instead of a Ray traceback or a simulation that waits forever.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger("fedexp")


class ConfigError(ValueError):
    """A setting is out of range; the message is meant for the user as it is."""


def _need(ok: bool, setting: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{setting}={value} is not allowed: {allowed}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check(cfg: DictConfig) -> None:
    """Raise ConfigError for the first bad setting; warn about settings that do nothing."""
    _need(cfg.mode in ("federated", "centralized"), "mode", cfg.mode, "federated or centralized")
    n = cfg.num_clients
    _need(_is_int(n) and n >= 1, "num_clients", n, "an integer >= 1")
    _need(_is_int(cfg.num_rounds) and cfg.num_rounds >= 1, "num_rounds", cfg.num_rounds, "an integer >= 1")
    _need(_is_int(cfg.local_epochs) and cfg.local_epochs >= 1, "local_epochs", cfg.local_epochs, "an integer >= 1")
    _need(_is_int(cfg.batch_size) and cfg.batch_size >= 1, "batch_size", cfg.batch_size, "an integer >= 1")
    _need(_is_int(cfg.eval_batch_size) and cfg.eval_batch_size >= 1, "eval_batch_size",
          cfg.eval_batch_size, "an integer >= 1")
    _need(_is_int(cfg.centralized.epochs) and cfg.centralized.epochs >= 1, "centralized.epochs",
          cfg.centralized.epochs, "an integer >= 1")
    p = cfg.centralized.partition
    _need(p is None or (_is_int(p) and 0 <= p < n), "centralized.partition", p,
          f"null (all clients pooled) or a client index 0..{n - 1}")
    vf = cfg.partitioning.val_fraction
    _need(isinstance(vf, (int, float)) and 0 <= vf < 1, "partitioning.val_fraction", vf, "a number in [0, 1)")
    lr = cfg.optimizer.get("lr")
    _need(isinstance(lr, (int, float)) and lr > 0, "optimizer.lr", lr, "a number > 0")
    _need(cfg.device.type in ("cpu", "cuda", "auto"), "device.type", cfg.device.type, "cpu, cuda or auto")
    if cfg.device.type == "cuda":
        import torch

        _need(torch.cuda.is_available(), "device", "cuda", "CUDA is not available on this machine "
              "(use device=cpu or device=auto)")
    if cfg.get("init_checkpoint"):
        _need(Path(cfg.init_checkpoint).is_file(), "init_checkpoint", cfg.init_checkpoint,
              "a model.pt written by an earlier fedexp run (file not found)")
    if cfg.mode == "federated":
        _check_strategy(cfg)


def _check_strategy(cfg: DictConfig) -> None:
    s, n = cfg.strategy, cfg.num_clients
    for key in ("fraction_fit", "fraction_evaluate"):
        if key in s:
            v = s[key]
            lo = 0 < v if key == "fraction_fit" else 0 <= v
            _need(isinstance(v, (int, float)) and lo and v <= 1, f"strategy.{key}", v,
                  "a fraction in (0, 1]" if key == "fraction_fit" else "a fraction in [0, 1]")
    for key in ("min_fit_clients", "min_evaluate_clients", "min_available_clients"):
        if key in s:
            v = s[key]
            _need(_is_int(v) and 0 <= v <= n, f"strategy.{key}", v,
                  f"an integer from 0 to num_clients={n} (more would make Flower wait forever)")
    if "fraction_fit" in s and "min_fit_clients" in s:
        asked = int(n * s.fraction_fit)
        if s.min_fit_clients > asked:
            log.warning("strategy.min_fit_clients=%d raises the %d clients that fraction_fit=%s "
                        "asks for: %d clients train per round", s.min_fit_clients, asked,
                        s.fraction_fit, s.min_fit_clients)
    if "fraction_evaluate" in s and "min_evaluate_clients" in s:
        asked = int(n * s.fraction_evaluate)
        if s.fraction_evaluate == 0 and s.min_evaluate_clients > 0:
            log.warning("strategy.min_evaluate_clients=%d does nothing: fraction_evaluate=0 turns "
                        "client-side evaluation off (0 clients evaluate)", s.min_evaluate_clients)
        elif s.min_evaluate_clients > asked:
            log.warning("strategy.min_evaluate_clients=%d raises the %d clients that fraction_evaluate=%s "
                        "asks for", s.min_evaluate_clients, asked, s.fraction_evaluate)
    if cfg.partitioning.val_fraction == 0 and s.get("fraction_evaluate", 0) > 0:
        raise ConfigError("partitioning.val_fraction=0 leaves clients nothing to evaluate on: "
                          "set strategy.fraction_evaluate=0 strategy.min_evaluate_clients=0, or val_fraction > 0")
