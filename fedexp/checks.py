"""Settings checked before any heavy work (data loading, downloads, Ray).

Every problem is one line that names the setting, its value and what is allowed, so that a
typo costs a second instead of a Ray traceback or a simulation that waits forever.
`check` needs only the config; `check_data` and `check_partitions` need the loaded
labels and the partitions, and run right after them, still before Ray starts.
Settings that are valid but do nothing get a warning with the values that take effect.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from .data.partitioners import evaluating, partitioner_name, rules
from .errors import ConfigError, build, importable, is_int, is_number, need
from .progress import count

log = logging.getLogger("fedexp")

# What a run returns to Hydra (`objective`), for sweepers that optimise it (e.g. Optuna):
# the last round's (epoch's) test accuracy, the best of any round, the last test loss; and
# the direction a sweeper must optimise it in (command_line.py sets Optuna's).
OBJECTIVES = {
    "final_test_accuracy": "maximize",
    "best_test_accuracy": "maximize",
    "final_test_loss": "minimize",
}


def _need_int(cfg: DictConfig, key: str, minimum: int, meaning: str = "", default=0) -> None:
    value = OmegaConf.select(cfg, key, default=default)
    need(is_int(value) and value >= minimum, key, value, f"an integer >= {minimum}{meaning}")


def check(cfg: DictConfig):
    """Raise ConfigError for the first bad setting; warn about settings that do nothing.
    Returns the model, built once to check it (the method's own check needs it: see
    main.check_settings)."""
    need(cfg.mode in ("federated", "centralized"), "mode", cfg.mode, "federated or centralized")
    n = cfg.num_clients
    need(is_int(n) and n >= 1, "num_clients", n, "an integer >= 1")
    need(
        is_int(cfg.seed) and 0 <= cfg.seed < 2**32,
        "seed",
        cfg.seed,
        "an integer from 0 to 2**32 - 1",
    )
    for key in ("num_rounds", "local_epochs", "batch_size", "eval_batch_size"):
        _need_int(cfg, key, 1)
    _need_int(cfg, "centralized.epochs", 1)
    p = cfg.centralized.partition
    need(
        p is None or (is_int(p) and 0 <= p < n),
        "centralized.partition",
        p,
        f"null (all clients pooled) or a client index 0..{n - 1}",
    )
    vf = cfg.partitioning.val_fraction
    need(is_number(vf) and 0 <= vf < 1, "partitioning.val_fraction", vf, "a number in [0, 1)")
    lr = cfg.optimizer.get("lr")
    need(is_number(lr) and lr > 0, "optimizer.lr", lr, "a number > 0")
    for key in ("client_failure_rate", "straggler_rate"):
        v = cfg.faults[key]
        need(is_number(v) and 0 <= v <= 1, f"faults.{key}", v, "a fraction in [0, 1]")
    _check_dataset_shape(cfg)
    _check_augment(cfg)
    _check_evaluation(cfg)
    _check_callbacks(cfg)
    _check_device(cfg)
    _check_dataset_path(cfg)
    rules(cfg).check_settings(cfg)
    if cfg.mode == "federated":
        _check_strategy(cfg)
    model = _check_model(cfg)  # these import torch: after the checks that need none
    _check_loss(cfg)
    return model


BACKENDS = ("auto", "ray", "inline")  # simulation.backend (see federated/simulation.py's uses_ray)


def _check_device(cfg: DictConfig) -> None:
    need(
        cfg.device.type in ("cpu", "cuda", "auto"),
        "device.type",
        cfg.device.type,
        "cpu, cuda or auto",
    )
    if cfg.device.type == "cuda":
        import torch

        need(
            torch.cuda.is_available(),
            "device",
            "cuda",
            "CUDA is not available on this machine (use device=cpu or device=auto)",
        )
    cpus = cfg.device.client_cpus
    need(is_number(cpus) and cpus > 0, "device.client_cpus", cpus, "a number > 0")
    sim = cfg.simulation
    backend = sim.get("backend", "auto")
    need(
        backend in BACKENDS,
        "simulation.backend",
        backend,
        ", ".join(BACKENDS[:-1]) + " or " + BACKENDS[-1],
    )
    need(
        not (backend == "inline" and sim.ray_address),
        "simulation.backend",
        backend,
        "ray or auto with simulation.ray_address (inline clients run in this process, not on a cluster)",
    )
    workers = sim.get("max_workers")
    need(is_int(workers) and workers >= 1, "simulation.max_workers", workers, "an integer >= 1")
    most = sim.get("inline_max_examples", 0)
    need(is_int(most) and most >= 0, "simulation.inline_max_examples", most, "an integer >= 0")
    nice = sim.get("worker_niceness")
    need(
        nice is None or (is_int(nice) and os.nice(0) <= nice <= 19),
        "simulation.worker_niceness",
        nice,
        f"null (this process's own, {os.nice(0)}) or an integer from {os.nice(0)} to 19 (higher = lower "
        f"priority; below this process's own needs privileges)",
    )
    need(
        sim.num_cpus is None or (is_int(sim.num_cpus) and sim.num_cpus >= 1),
        "simulation.num_cpus",
        sim.num_cpus,
        "null (all CPUs) or an integer >= 1",
    )
    if cfg.mode == "federated" and not sim.ray_address:
        total = sim.num_cpus or os.cpu_count() or 1
        need(
            cpus <= total,
            "device.client_cpus",
            cpus,
            f"at most the {total} CPUs Ray gets (simulation.num_cpus, or this machine's): "
            f"no client could ever be scheduled",
        )


def _check_dataset_shape(cfg: DictConfig) -> None:
    ds = cfg.dataset
    c = ds.get("channels")
    need(is_int(c) and c >= 1, "dataset.channels", c, "an integer >= 1")
    stats = {key: ds.get(key) for key in ("mean", "std")}
    for key, values in stats.items():
        need(
            isinstance(values, (list, ListConfig)) and all(is_number(v) for v in values),
            f"dataset.{key}",
            values,
            "a list of numbers, one per channel",
        )
    need(
        all(len(v) == c for v in stats.values()),
        "dataset.channels",
        c,
        f"as many as the values of dataset.mean ({len(stats['mean'])}) and dataset.std "
        f"({len(stats['std'])}), one per channel",
    )
    need(all(v > 0 for v in stats["std"]), "dataset.std", list(stats["std"]), "numbers > 0")
    if str(ds.loader.get("_target_", "")).endswith("load_image_folder"):
        need(c in (1, 3), "dataset.channels", c, "1 (grayscale) or 3 (RGB) for image folders")


def _check_augment(cfg: DictConfig) -> None:
    augment, size = cfg.dataset.get("augment") or {}, cfg.dataset.get("image_size")
    pad = augment.get("crop_padding", 0)
    need(
        is_int(pad) and pad >= 0 and (not is_int(size) or pad < size),
        "dataset.augment.crop_padding",
        pad,
        f"an integer from 0 (no crops) to dataset.image_size - 1 = {size - 1 if is_int(size) else '?'}",
    )
    flip = augment.get("flip", False)
    need(isinstance(flip, bool), "dataset.augment.flip", flip, "true or false")


def _check_evaluation(cfg: DictConfig) -> None:
    objective = cfg.get("objective", "final_test_accuracy")
    need(
        isinstance(objective, str) and objective in OBJECTIVES,
        "objective",
        objective,
        "one of " + ", ".join(OBJECTIVES),
    )
    _need_int(
        cfg, "evaluation.all_clients_every", 0, " (0 = off, K = every K rounds and after the last)"
    )
    _need_int(cfg, "checkpoint.keep", 0, " (how many per-round checkpoints stay; 0 = none)", 2)
    where = cfg.simulation.get("client_state", "auto")
    need(
        where in ("auto", "memory", "disk"),
        "simulation.client_state",
        where,
        "auto, memory or disk",
    )
    if where == "disk" and cfg.simulation.ray_address:
        log.warning(
            "simulation.client_state=disk with simulation.ray_address: the clients' state is "
            "written under the run directory, which every machine of the cluster must see"
        )


def _check_callbacks(cfg: DictConfig) -> None:
    """Each callback and logger names an importable class, and a logger's package (an
    optional extra) is installed."""
    import importlib.util

    from .callbacks import EXTRAS

    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            if not node:
                continue
            if group == "logger" and name in EXTRAS:
                package, extra = EXTRAS[name]
                if importlib.util.find_spec(package) is None:
                    raise ConfigError(
                        f"logger={name} needs the {package} package, which is not installed: "
                        f"pip install -e '.[{extra}]'"
                    )
            importable(f"{group}.{name}", node.get("_target_"))


def _check_dataset_path(cfg: DictConfig) -> None:
    if str(cfg.dataset.loader.get("_target_", "")).endswith("load_image_folder"):
        from .data.datasets import check_image_folder

        check_image_folder(cfg.dataset.get("path"))


def _check_model(cfg: DictConfig) -> None:
    """Build the model once (cheap) so a model/dataset mismatch or a checkpoint of another
    model is reported now, not by a Ray worker."""
    import torch

    model = build("model", cfg.model, f" for dataset={cfg.dataset.name}")
    ckpt = cfg.get("init_checkpoint")
    if not ckpt:
        return model
    need(
        Path(ckpt).is_file(),
        "init_checkpoint",
        ckpt,
        "a model.pt written by an earlier fedexp run (file not found)",
    )
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"init_checkpoint={ckpt} is not allowed: torch.load(weights_only=True) "
            f"cannot read it as a state_dict ({type(e).__name__})"
        ) from None
    need(
        isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()),
        "init_checkpoint",
        ckpt,
        "a model.pt (a state_dict) written by an earlier fedexp run",
    )
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        missing = sorted(set(want) - set(got))
        different = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        detail = (
            f"{different[0]} has shape {got[different[0]]}, the model needs {want[different[0]]}"
            if different
            else f"it lacks {missing[0]}"
            if missing
            else f"it has extra entries such as {sorted(set(got) - set(want))[0]}"
        )
        raise ConfigError(
            f"init_checkpoint={ckpt} is not allowed: it holds another model than "
            f"the configured one ({cfg.model._target_} on dataset="
            f"{cfg.dataset.name}): {detail}"
        )
    return model


def _check_loss(cfg: DictConfig) -> None:
    if not cfg.get("loss"):
        return
    loss = build("loss", cfg.loss)
    need(
        callable(loss),
        "loss._target_",
        cfg.loss.get("_target_"),
        "a loss, e.g. torch.nn.CrossEntropyLoss",
    )


# flwr-datasets partitioners, by class name: checks of their own parameters.
def check_data(cfg: DictConfig, data) -> None:
    """Checks that need the loaded data (`ImageData`): its shape, classes and size."""
    labels, name_ = data.y_train, cfg.dataset.name
    channels = data.shape[0]
    need(
        cfg.dataset.channels == channels,
        "dataset.channels",
        cfg.dataset.channels,
        f"{channels}: the images of dataset={name_} have {channels} channel(s)",
    )
    classes = len(data.classes) or int(max(labels.max(initial=-1), data.y_test.max(initial=-1))) + 1
    need(
        cfg.dataset.num_classes == classes,
        "dataset.num_classes",
        cfg.dataset.num_classes,
        f"{classes}: dataset={name_} has {classes} classes"
        + (
            f" ({', '.join(map(str, data.classes[:5]))}{', ...' if classes > 5 else ''})"
            if data.classes
            else ""
        ),
    )
    n_train, n = len(labels), cfg.num_clients
    need(
        n <= n_train,
        "num_clients",
        n,
        f"at most the {n_train} training examples of "
        f"dataset={cfg.dataset.name} (every client needs data)",
    )
    rules(cfg).check_data(cfg, labels)


def check_partitions(cfg: DictConfig, train: list, val: list) -> None:
    """Checks of what the partitioner produced (before Ray starts)."""
    n = len(train)
    empty = [i for i, t in enumerate(train) if len(t) == 0]
    if empty:
        raise ConfigError(
            f"partitioning={cfg.partitioning.get('name', partitioner_name(cfg))} with num_clients={n} "
            f"gives {len(empty)} client(s) no training examples (client {empty[0]} first): lower "
            f"num_clients or change the partitioner's settings"
        )
    no_val = [i for i, v in enumerate(val) if len(v) == 0]
    if evaluating(cfg) and no_val:
        smallest = min(len(train[i]) + len(val[i]) for i in no_val)
        raise ConfigError(
            f"partitioning.val_fraction={cfg.partitioning.val_fraction} leaves {len(no_val)} of {n} "
            f"clients without validation examples (client {no_val[0]} first; a client with "
            f"{smallest} examples keeps none for validation), and strategy.fraction_evaluate="
            f"{cfg.strategy.fraction_evaluate} asks clients to evaluate: raise val_fraction, lower "
            f"num_clients, or set strategy.fraction_evaluate=0 strategy.min_evaluate_clients=0"
        )


# Keys that strategies in conf/strategy/ share, by name: what each must be.
_STRATEGY_KEYS = {
    "proximal_mu": (lambda v: v >= 0, "a number >= 0 (0 trains as FedAvg)"),
    "alpha": (lambda v: v > 0, "a number > 0 (FedDyn's regularisation strength)"),
    "server_learning_rate": (lambda v: v > 0, "a number > 0"),
    "server_momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "eta": (lambda v: v > 0, "a number > 0 (the server's learning rate)"),
    "eta_l": (lambda v: v > 0, "a number > 0"),
    "tau": (lambda v: v > 0, "a number > 0 (adaptivity)"),
    "beta_1": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "beta_2": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "beta": (lambda v: 0 <= v < 0.5, "a fraction in [0, 0.5) trimmed from each end"),
    "q_param": (lambda v: v >= 0, "a number >= 0 (0 = unweighted FedAvg)"),
    "qffl_learning_rate": (lambda v: v > 0, "a number > 0"),
    "num_malicious_clients": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    "num_clients_to_keep": (lambda v: is_int(v) and v >= 0, "an integer >= 0 (0 = Krum)"),
}


def _check_strategy(cfg: DictConfig) -> None:
    s, n = cfg.strategy, cfg.num_clients
    for key, (ok, allowed) in _STRATEGY_KEYS.items():
        if key in s:
            v = s[key]
            need(is_number(v) and ok(v), f"strategy.{key}", v, allowed)
    for key in ("fraction_fit", "fraction_evaluate"):
        if key in s:
            v = s[key]
            lo = v > 0 if key == "fraction_fit" else v >= 0
            need(
                is_number(v) and lo and v <= 1,
                f"strategy.{key}",
                v,
                "a fraction in (0, 1]"
                if key == "fraction_fit"
                else "a fraction in [0, 1] (0 turns client-side evaluation off)",
            )
    for key in ("min_fit_clients", "min_evaluate_clients", "min_available_clients"):
        if key in s:
            v = s[key]
            need(
                is_int(v) and 0 <= v <= n,
                f"strategy.{key}",
                v,
                f"an integer from 0 to num_clients={n} (more would make Flower wait forever)",
            )
    if "fraction_fit" in s and "min_fit_clients" in s:
        asked = int(n * s.fraction_fit)
        need(
            max(asked, s.min_fit_clients) >= 1,
            "strategy.fraction_fit",
            s.fraction_fit,
            f"large enough that int(num_clients * fraction_fit) >= 1 (it is 0 with num_clients={n}), "
            f"or strategy.min_fit_clients >= 1: no client would train",
        )
        # The default minimum of 1 only keeps a round from having no client: no warning.
        if s.min_fit_clients > max(asked, 1):
            log.warning(
                "strategy.min_fit_clients=%d raises the %d clients that fraction_fit=%s "
                "asks for: %s train per round",
                s.min_fit_clients,
                asked,
                s.fraction_fit,
                count(s.min_fit_clients, "client"),
            )
    if "fraction_evaluate" in s and "min_evaluate_clients" in s:
        asked = int(n * s.fraction_evaluate)
        if s.fraction_evaluate == 0 and s.min_evaluate_clients > 0:
            log.warning(
                "strategy.min_evaluate_clients=%d does nothing: fraction_evaluate=0 turns "
                "client-side evaluation off (0 clients evaluate)",
                s.min_evaluate_clients,
            )
        elif s.fraction_evaluate > 0 and s.min_evaluate_clients > max(asked, 1):
            log.warning(
                "strategy.min_evaluate_clients=%d raises the %d clients that fraction_evaluate=%s "
                "asks for: %s evaluate per round",
                s.min_evaluate_clients,
                asked,
                s.fraction_evaluate,
                count(s.min_evaluate_clients, "client"),
            )
        elif s.fraction_evaluate > 0 and max(asked, s.min_evaluate_clients) == 0:
            log.warning(
                "strategy.fraction_evaluate=%s asks for int(%d * %s) = 0 clients and "
                "min_evaluate_clients=0: no client evaluates",
                s.fraction_evaluate,
                n,
                s.fraction_evaluate,
            )
    if cfg.partitioning.val_fraction == 0 and s.get("fraction_evaluate", 0) > 0:
        # An error, not a warning: clients with no validation data report a NaN loss that
        # FedAvg averages into every round, and quietly turning evaluation off would make
        # the saved config say something that did not happen.
        raise ConfigError(
            f"partitioning.val_fraction=0 is not allowed while clients evaluate "
            f"(strategy.fraction_evaluate={s.fraction_evaluate}): they would have nothing "
            f"to evaluate on; set strategy.fraction_evaluate=0 "
            f"strategy.min_evaluate_clients=0, or val_fraction > 0"
        )
    if s.get("accept_failures") is False and (
        cfg.faults.client_failure_rate > 0 or cfg.faults.straggler_rate > 0
    ):
        log.warning(
            "strategy.accept_failures=false with injected faults: FedAvg discards every "
            "round in which any client fails (the global model stays as it was)"
        )
    fault_rate = cfg.faults.straggler_rate
    if fault_rate and "min_fit_clients" in s:
        sampled = max(int(n * s.get("fraction_fit", 1.0)), s.min_fit_clients)
        dropped = round(fault_rate * sampled)
        if dropped >= sampled:
            log.warning(
                "faults.straggler_rate=%s drops all %d sampled clients every round: the "
                "run will end as failed in round 1",
                fault_rate,
                sampled,
            )
