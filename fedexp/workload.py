"""What both run modes share: the data, its partitions, the device and seeded models."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from .data import ImageData, Partitions, partition
from .models import set_weights
from .training import Normalizer


def resolve_device(kind: str) -> torch.device:
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(kind)


@dataclass
class Workload:
    cfg: DictConfig
    data: ImageData
    parts: Partitions
    device: torch.device

    @classmethod
    def build(cls, cfg: DictConfig) -> "Workload":
        data = instantiate(cfg.dataset.loader)
        partitioner = instantiate(cfg.partitioning.partitioner)
        parts = partition(data.y_train, partitioner, cfg.partitioning.val_fraction, cfg.seed,
                          shuffle=cfg.partitioning.get("shuffle", True))
        return cls(cfg, data, parts, resolve_device(cfg.device.type))

    def new_model(self) -> torch.nn.Module:
        """The run's initial model: seeded, or loaded from `init_checkpoint`."""
        torch.manual_seed(self.cfg.seed)
        model = instantiate(self.cfg.model)
        if self.cfg.get("init_checkpoint"):
            state = torch.load(self.cfg.init_checkpoint, map_location="cpu", weights_only=True)
            set_weights(model, [v.numpy() for v in state.values()])
        return model.to(self.device)

    def normalizer(self) -> Normalizer:
        return Normalizer(self.cfg.dataset.mean, self.cfg.dataset.std, self.device)
