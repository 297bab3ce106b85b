"""What fedexp knows about each flwr-datasets partitioner beyond what the partitioner
checks itself, found by its class name (`rules(cfg)`).

flwr-datasets judges its settings only while it partitions, in its own terms ("the
partition sizes..."). These rules check a partitioner's settings before any data is loaded,
check them against the loaded labels before partitioning, and turn a failure of the
partitioner into one line that says which setting to change and to what.
"""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig, ListConfig

from ..errors import ConfigError, is_int, is_number, need
from .partition import validation_size

KEY = "partitioning.partitioner"


def partitioner_name(cfg: DictConfig) -> str:
    """The flwr-datasets class the partitioning option names, e.g. "DirichletPartitioner"."""
    return str(cfg.partitioning.partitioner.get("_target_", "")).rpartition(".")[2]


def evaluating(cfg: DictConfig) -> bool:
    """Whether clients are asked to evaluate, so each needs a validation example."""
    return cfg.mode == "federated" and cfg.strategy.get("fraction_evaluate", 0) > 0


class Rules:
    """The checks every partitioner shares; a subclass adds its own."""

    def check_settings(self, cfg: DictConfig) -> None:
        part, n = cfg.partitioning.partitioner, cfg.num_clients
        if "num_partitions" in part:
            need(
                part.num_partitions == n,
                f"{KEY}.num_partitions",
                part.num_partitions,
                f"equal to num_clients={n} (leave it at ${{num_clients}})",
            )
        if "partition_by" in part:
            need(
                part.partition_by == "label",
                f"{KEY}.partition_by",
                part.partition_by,
                "label (fedexp's datasets have one column to partition by)",
            )

    def check_data(self, cfg: DictConfig, labels: np.ndarray) -> None:
        """Checks against the training labels, before partitioning."""

    def explain(self, cfg: DictConfig, cause: Exception) -> str | None:
        """One line for the partitioner's own ValueError, or None to quote it."""
        return None


class Dirichlet(Rules):
    def check_settings(self, cfg: DictConfig) -> None:
        super().check_settings(cfg)
        part, n = cfg.partitioning.partitioner, cfg.num_clients
        alpha = part.get("alpha")
        ok = (is_number(alpha) and alpha > 0) or (
            isinstance(alpha, (list, ListConfig))
            and len(alpha) == n
            and all(is_number(a) and a > 0 for a in alpha)
        )
        need(
            ok,
            f"{KEY}.alpha",
            alpha,
            f"a number > 0 (or a list of num_clients={n} numbers > 0); "
            f"small alpha = very uneven label mixes, large = close to IID",
        )
        m = part.get("min_partition_size", 10)
        need(is_int(m) and m >= 0, f"{KEY}.min_partition_size", m, "an integer >= 0")

    def check_data(self, cfg: DictConfig, labels: np.ndarray) -> None:
        m, n, n_train = (
            cfg.partitioning.partitioner.get("min_partition_size", 10),
            cfg.num_clients,
            len(labels),
        )
        need(
            n * m <= n_train,
            f"{KEY}.min_partition_size",
            m,
            f"at most {n_train // n}: num_clients={n} clients x {m} examples is more than the "
            f"{n_train} training examples",
        )

    def explain(self, cfg: DictConfig, cause: Exception) -> str | None:
        if "attempts" not in str(cause):
            return None
        part = cfg.partitioning.partitioner
        m = part.get("min_partition_size", 10)
        return (
            f"{KEY}.min_partition_size={m} is not allowed with alpha={part.alpha}: "
            f"DirichletPartitioner could not give each of num_clients={cfg.num_clients} clients "
            f"{m} examples in 10 samplings (raise alpha, or lower min_partition_size or num_clients)"
        )


ASSIGNMENT_MODES = ("random", "deterministic", "first-deterministic")


class Pathological(Rules):
    def check_settings(self, cfg: DictConfig) -> None:
        super().check_settings(cfg)
        part, classes = cfg.partitioning.partitioner, cfg.dataset.num_classes
        k = part.get("num_classes_per_partition")
        need(
            is_int(k) and 1 <= k <= classes,
            f"{KEY}.num_classes_per_partition",
            k,
            f"an integer from 1 to the {classes} classes of dataset={cfg.dataset.name}",
        )
        mode = part.get("class_assignment_mode", "random")
        need(
            mode in ASSIGNMENT_MODES,
            f"{KEY}.class_assignment_mode",
            mode,
            ", ".join(ASSIGNMENT_MODES),
        )

    def check_data(self, cfg: DictConfig, labels: np.ndarray) -> None:
        present, k = len(np.unique(labels)), cfg.partitioning.partitioner.num_classes_per_partition
        need(
            k <= present,
            f"{KEY}.num_classes_per_partition",
            k,
            f"at most the {present} classes present in the training set",
        )


class Shard(Rules):
    def check_settings(self, cfg: DictConfig) -> None:
        super().check_settings(cfg)
        part = cfg.partitioning.partitioner
        shards, size = part.get("num_shards_per_partition"), part.get("shard_size")
        for setting, v in (("num_shards_per_partition", shards), ("shard_size", size)):
            need(
                v is None or (is_int(v) and v >= 1),
                f"{KEY}.{setting}",
                v,
                "null or an integer >= 1",
            )
        need(
            shards is not None or size is not None,
            f"{KEY}.shard_size",
            size,
            "an integer >= 1 when num_shards_per_partition is null (set at least one of them)",
        )

    def check_data(self, cfg: DictConfig, labels: np.ndarray) -> None:
        part, n, n_train = cfg.partitioning.partitioner, cfg.num_clients, len(labels)
        shards, size = part.get("num_shards_per_partition"), part.get("shard_size")
        setting = "shard_size" if size is not None else "num_shards_per_partition"
        need(
            n * (shards or 1) * (size or 1) <= n_train,
            f"{KEY}.{setting}",
            size if size is not None else shards,
            f"small enough that num_clients={n} clients x {shards or 1} shard(s) x "
            f"{size or 1} examples fit in the {n_train} training examples",
        )


class SizeSkew(Rules):
    """Linear, square and exponential quantity skew: client 0 gets the smallest share, so
    whether every client gets data (and a validation example) is a question of client 0's
    share, which shrinks as num_clients grows. The share is flwr-datasets' own, read from
    the partitioner built for a stand-in dataset of the same size."""

    def check_data(self, cfg: DictConfig, labels: np.ndarray) -> None:
        n, n_train = cfg.num_clients, len(labels)
        if self._works(cfg, n, n_train):
            return
        train, val = self._smallest_split(cfg, n, n_train)
        most = self._most_clients(cfg, n_train)
        fix = f"use num_clients={most} or fewer" if most else "use another partitioning"
        raise ConfigError(
            f"num_clients={n} is too many for partitioning={cfg.partitioning.get('name')} "
            f"({partitioner_name(cfg)}) on the {n_train} training "
            f"examples of dataset={cfg.dataset.name}: the smallest client gets {train + val} "
            f"example(s), {train} to train and {val} to validate "
            f"(val_fraction={cfg.partitioning.val_fraction}); {fix}"
            + (", or set strategy.fraction_evaluate=0" if train >= 1 else "")
        )

    @staticmethod
    def _smallest_share(cfg: DictConfig, clients: int, n_train: int) -> int:
        import datasets
        from hydra.utils import instantiate

        partitioner = instantiate(cfg.partitioning.partitioner, num_partitions=clients)
        partitioner.dataset = datasets.Dataset.from_dict({"label": np.zeros(n_train, np.int64)})
        try:
            return len(partitioner.load_partition(0))
        except ValueError:  # flwr-datasets refuses an empty partition
            return 0

    def _smallest_split(self, cfg: DictConfig, clients: int, n_train: int) -> tuple[int, int]:
        """The smallest client's training and validation examples, as data.partition splits."""
        share = self._smallest_share(cfg, clients, n_train)
        n_val = validation_size(share, cfg.partitioning.val_fraction)
        return share - n_val, n_val

    def _works(self, cfg: DictConfig, clients: int, n_train: int) -> bool:
        train, val = self._smallest_split(cfg, clients, n_train)
        return train >= 1 and (val >= 1 or not evaluating(cfg))

    def _most_clients(self, cfg: DictConfig, n_train: int) -> int:
        """The largest number of clients that works (0 if none), by bisection."""
        low, high = 0, cfg.num_clients  # low works (or is 0), high does not
        while high - low > 1:
            mid = (low + high) // 2
            if self._works(cfg, mid, n_train):
                low = mid
            else:
                high = mid
        return low


RULES: dict[str, Rules] = {
    "DirichletPartitioner": Dirichlet(),
    "PathologicalPartitioner": Pathological(),
    "ShardPartitioner": Shard(),
    "LinearPartitioner": SizeSkew(),
    "SquarePartitioner": SizeSkew(),
    "ExponentialPartitioner": SizeSkew(),
}


def rules(cfg: DictConfig) -> Rules:
    return RULES.get(partitioner_name(cfg), Rules())
