"""What both run modes share: the data, its partitions, the device and seeded models."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from .checks import ConfigError, check_data, check_partitions
from .data import DatasetError, ImageData, Partitions, partition
from .data.partitioners import partitioner_name, rules
from .models import set_weights
from .training import BatchAugment, Normalizer, evaluate


def loss_from(cfg) -> Callable:
    """The training objective (`loss`), cross-entropy unless the config names another;
    `cfg` is the config or its plain-container copy (a client worker's)."""
    return instantiate(cfg["loss"]) if cfg.get("loss") else F.cross_entropy


def resolve_device(kind: str) -> torch.device:
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(kind)


def initial_model(cfg: DictConfig) -> torch.nn.Module:
    """The run's initial model, on the CPU: seeded, or loaded from `init_checkpoint`. It
    needs only the config (a run stopped while loading its data still saves it)."""
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model)
    if cfg.get("init_checkpoint"):
        state = torch.load(cfg.init_checkpoint, map_location="cpu", weights_only=True)
        set_weights(model, [v.numpy() for v in state.values()])
    return model


@dataclass
class Workload:
    cfg: DictConfig
    data: ImageData
    parts: Partitions
    device: torch.device

    @classmethod
    def build(cls, cfg: DictConfig) -> Workload:
        """Load and partition the data; the checks that need it run here, before Ray."""
        try:
            data = instantiate(cfg.dataset.loader)
        except InstantiationException as e:  # Hydra wraps the loader's own DatasetError
            if isinstance(e.__cause__, DatasetError):
                raise e.__cause__ from None
            raise
        check_data(cfg, data)
        parts = _partition(cfg, data)
        check_partitions(cfg, parts.train, parts.val)
        return cls(cfg, data, parts, resolve_device(cfg.device.type))

    def new_model(self) -> torch.nn.Module:
        return initial_model(self.cfg).to(self.device)

    def normalizer(self) -> Normalizer:
        return Normalizer(self.cfg.dataset.mean, self.cfg.dataset.std, self.device)

    def criterion(self) -> Callable:
        return loss_from(self.cfg)

    def augment(self) -> BatchAugment | None:
        return BatchAugment.from_config(self.cfg.dataset.get("augment"))

    def test(self, model: torch.nn.Module) -> dict:
        """`model`'s loss and accuracy on the server's test set."""
        return evaluate(
            model,
            self.data.x_test,
            self.data.y_test,
            None,
            batch_size=self.cfg.eval_batch_size,
            normalize=self.normalizer(),
            criterion=self.criterion(),
        )


def _partition(cfg: DictConfig, data: ImageData) -> Partitions:
    """Run the configured flwr-datasets partitioner; its ValueErrors (settings it cannot
    satisfy, e.g. a Dirichlet min_partition_size not met after 10 samplings) become one
    ConfigError line, and its per-retry warnings one log line."""
    name = partitioner_name(cfg)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            partitioner = instantiate(cfg.partitioning.partitioner)
            parts = partition(
                data.y_train,
                partitioner,
                cfg.partitioning.val_fraction,
                cfg.seed,
                shuffle=cfg.partitioning.get("shuffle", True),
            )
    except (InstantiationException, ValueError, TypeError) as e:
        cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ else e
        explained = rules(cfg).explain(cfg, cause)
        if explained:
            raise ConfigError(explained) from None
        raise ConfigError(
            f"partitioning.partitioner ({name}) cannot split the {len(data.y_train)} "
            f"training examples of dataset={cfg.dataset.name} among num_clients="
            f"{cfg.num_clients} with these settings: {cause}"
        ) from None
    retries = [w for w in caught if "min_partition_size" in str(w.message)]
    if retries:
        logging.getLogger("fedexp").warning(
            "%s sampled %d times before every client got min_partition_size=%s examples",
            name,
            len(retries) + 1,
            cfg.partitioning.partitioner.get("min_partition_size"),
        )
    for w in caught:
        if w not in retries:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return parts
