"""Building the configured strategy (the server half of `conf/strategy/NAME.yaml`).

Any class named by `strategy._target_` works, Flower's, one of fedexp's methods or the
user's own: the config's keys (all but `client`, the client half) go to its constructor,
and fedexp adds its server-side hooks (initial parameters, test-set evaluation, per-round
client settings, metric averaging, the model's layout) only where that constructor takes
them, so a Strategy subclass with a narrower signature still builds.

The setting checks (`check_method`, which main.check_settings calls after checks.py's) and
the run build the strategy through `build` with the same hooks, so a strategy that needs
one of them (FedAdam needs the initial model) is checked as it will run.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import torch
from flwr.common import ndarrays_to_parameters
from flwr.server.strategy import Strategy
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, first_line, importable
from ..errors import build as build_checked
from ..models import get_weights
from .payload import ModelLayout

log = logging.getLogger("fedexp")

# What each hook gives up when a strategy's constructor does not take it.
_WITHOUT = {
    "initial_parameters": "the server will ask a client for the initial model instead of using the seeded one",
    "evaluate_fn": "no server-side test evaluation (test_loss/test_accuracy stay empty)",
    "on_fit_config_fn": "clients get no per-round settings and fall back to the config",
    "on_evaluate_config_fn": "clients evaluate with the config's eval_batch_size",
    "fit_metrics_aggregation_fn": "no train_loss/train_accuracy per round",
    "evaluate_metrics_aggregation_fn": "no distributed_accuracy per round",
}


def weighted_mean(metrics: list[tuple[int, dict]]) -> dict:
    """Average each numeric metric over clients, weighted by their example counts."""
    total = sum(n for n, _ in metrics)
    keys = {
        k
        for _, m in metrics
        for k, v in m.items()
        if k != "partition_id" and isinstance(v, (int, float))
    }
    if total == 0:
        return {}
    return {k: sum(n * float(m[k]) for n, m in metrics if k in m) / total for k in sorted(keys)}


def evaluate_config_fn(cfg: DictConfig) -> Callable[[int], dict]:
    """What the server sends with every evaluation instruction."""

    def evaluate_config(server_round: int) -> dict:
        return {"server_round": server_round, "eval_batch_size": int(cfg.eval_batch_size)}

    return evaluate_config


def is_personal(cfg: DictConfig) -> bool:
    """Whether the method's clients each evaluate a model of their own."""
    node = cfg.strategy.get("client")
    return bool(node) and bool(
        getattr(importable("strategy.client", node._target_), "personal", False)
    )


def server_hooks(cfg: DictConfig, model: torch.nn.Module, evaluate_fn: Callable | None) -> dict:
    """Everything fedexp offers a strategy's constructor, for the run `cfg` describes."""

    def fit_config(server_round: int) -> dict:
        return {
            "server_round": server_round,
            "local_epochs": int(cfg.local_epochs),
            "batch_size": int(cfg.batch_size),
            "lr": float(cfg.optimizer.lr),
            "seed": int(cfg.seed),
        }

    evaluate_config = evaluate_config_fn(cfg)
    return {
        "initial_parameters": ndarrays_to_parameters(get_weights(model)),
        "evaluate_fn": evaluate_fn,
        "on_fit_config_fn": fit_config,
        "on_evaluate_config_fn": evaluate_config,
        "fit_metrics_aggregation_fn": weighted_mean,
        "evaluate_metrics_aggregation_fn": weighted_mean,
        "model_layout": ModelLayout.of(model),
    }


def _constructor_parameters(factory) -> dict[str, inspect.Parameter]:
    """The keyword parameters a constructor takes: its own, and while it passes **kwargs
    on, those of the base classes it passes them to."""
    params: dict[str, inspect.Parameter] = {}
    for cls in inspect.getmro(factory) if inspect.isclass(factory) else [None]:
        init = factory if cls is None else cls.__init__
        if init is object.__init__:
            break
        try:
            own = inspect.signature(init).parameters
        except (TypeError, ValueError):  # no introspectable signature: offer everything
            own = {"kwargs": inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)}
        for name, p in own.items():
            params.setdefault(name, p)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
            break
    return params


def strategy_node(node: DictConfig) -> DictConfig:
    """The strategy's own settings, resolved: the `strategy` config without its client half."""
    settings = OmegaConf.to_container(node, resolve=True)
    settings.pop("client", None)
    return OmegaConf.create(settings)


def build(
    cfg: DictConfig, model: torch.nn.Module, evaluate_fn: Callable | None = None, warn: bool = True
) -> Strategy:
    """Instantiate `cfg.strategy` with the hooks its constructor accepts; `warn` logs each
    hook it cannot take (the setting checks build it quietly, the run says it once)."""
    node = strategy_node(cfg.strategy)
    hooks = server_hooks(cfg, model, evaluate_fn)
    target = node.get("_target_")
    factory = importable("strategy", target)
    params = _constructor_parameters(factory)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        # **kwargs usually ends in Flower's constructor: it gets Flower's hooks, and
        # fedexp's own (model_layout) only where a constructor on the way names them.
        accepted = {k: v for k, v in hooks.items() if k in _WITHOUT or k in params}
    else:
        accepted = {k: v for k, v in hooks.items() if k in params}
    for name in sorted(set(_WITHOUT) - set(accepted)) if warn else []:
        log.warning("strategy %s does not take %s: %s", target, name, _WITHOUT[name])
    try:
        # The hooks go to the constructor as they are: through instantiate's kwargs, Hydra
        # would turn dataclasses (Parameters, ModelLayout) into configs.
        strategy = instantiate(node, _partial_=True)(**accepted)
    except Exception as e:
        raise ConfigError(
            f"strategy ({target}) cannot be built from its settings: {first_line(e)}"
        ) from None
    if not isinstance(strategy, Strategy):
        raise ConfigError(
            f"strategy._target_={target} built a {type(strategy).__name__}, "
            "not a flwr.server.strategy.Strategy"
        )
    return strategy


def check_method(cfg: DictConfig, model: torch.nn.Module) -> None:
    """Build both halves of the method once, the strategy with the same hooks the run gives
    it (FedAdam needs the initial model), so that a setting they reject fails before any
    data is loaded; warn when the client half is defined for another local solver."""
    build(cfg, model, warn=False)
    check_client_half(cfg, model)
    note = local_solver_note(cfg)
    if note:
        log.warning(note)


def check_client_half(cfg: DictConfig, model: torch.nn.Module) -> None:
    """Build the client half (`strategy.client`) once, so a bad setting fails before Ray,
    and ask it whether it can work with the model (its `check_model`)."""
    from .methods.base import ClientMethod

    node = cfg.strategy.get("client")
    if not node:
        return
    method = build_checked("strategy.client", node)
    if not isinstance(method, ClientMethod):
        raise ConfigError(
            f"strategy.client._target_={node.get('_target_')} built a "
            f"{type(method).__name__}, not a fedexp.federated.methods.ClientMethod"
        )
    problem = method.check_model(ModelLayout.of(model))
    if problem:
        raise ConfigError(
            f"strategy.client ({node._target_}) cannot work with model "
            f"({cfg.model._target_}): {problem}"
        )


def local_solver_note(cfg: DictConfig) -> str | None:
    """One line when the client half's method is defined for local SGD (its `sgd_only`
    note) and the optimizer is another one."""
    node = cfg.strategy.get("client")
    optimizer = str(cfg.optimizer.get("_target_", ""))
    if not node or optimizer.endswith(".SGD"):
        return None
    from hydra.utils import get_class

    note = getattr(get_class(node._target_), "sgd_only", None)
    return f"strategy.client ({node._target_}) with optimizer {optimizer}: {note}" if note else None
