"""Training and evaluation loops over in-memory uint8 arrays. Nothing here knows Flower.

Batches are gathered by indexing the decoded arrays and normalised on the fly: the same
math as the tutorial's ToTensor + Normalize + DataLoader(shuffle=True), without per-sample
Python work. One forward pass per step (the tutorial ran the net twice), losses averaged
per example (the tutorial divided a sum of batch means by the number of examples).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class DivergedError(RuntimeError):
    """A loss became NaN or infinite: continuing would only produce garbage."""


class Normalizer:
    """(x / 255 - mean) / std per channel, applied to a uint8 batch."""

    def __init__(self, mean: Iterable[float], std: Iterable[float], device: torch.device):
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.device = device

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        return (xb.to(self.device, non_blocking=True).float().div_(255.0) - self.mean) / self.std


def _as_tensor(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if not a.flags.writeable:  # arrays from Ray's object store are read-only views
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(a)
    return torch.from_numpy(a)


def train(model: nn.Module, x, y, indices: np.ndarray, *, epochs: int, batch_size: int,
          optimizer: torch.optim.Optimizer, normalize: Normalizer, generator: torch.Generator,
          proximal_mu: float = 0.0) -> dict:
    """Train in place for `epochs` passes over `indices`; return mean loss and accuracy.

    With `proximal_mu > 0` the FedProx term (mu/2)*||w - w_start||^2 is added to every
    step's loss, w_start being the weights the model had on entry (the global model).
    """
    x, y = _as_tensor(x), _as_tensor(y)
    idx = torch.as_tensor(indices, dtype=torch.long)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for _ in range(epochs):
        order = idx[torch.randperm(len(idx), generator=generator)]
        for start in range(0, len(order), batch_size):
            b = order[start:start + batch_size]
            xb, yb = normalize(x[b]), y[b].to(normalize.device)
            optimizer.zero_grad(set_to_none=True)
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            if anchor is not None:
                prox = sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor))
                (loss + 0.5 * proximal_mu * prox).backward()
            else:
                loss.backward()
            optimizer.step()
            value = loss.item()
            if not math.isfinite(value):
                raise DivergedError(f"training loss became {value}")
            total_loss += value * len(b)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(b)
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1),
            "examples": len(idx)}


@torch.no_grad()
def evaluate(model: nn.Module, x, y, indices: np.ndarray | None, *, batch_size: int,
             normalize: Normalizer) -> dict:
    """Mean cross-entropy per example and accuracy over `indices` (all when None)."""
    x, y = _as_tensor(x), _as_tensor(y)
    n = len(y) if indices is None else len(indices)
    if n == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "examples": 0}
    idx = None if indices is None else torch.as_tensor(indices, dtype=torch.long)
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, n, batch_size):
        if idx is None:
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        else:
            b = idx[start:start + batch_size]
            xb, yb = x[b], y[b]
        yb = yb.to(normalize.device)
        out = model(normalize(xb))
        total_loss += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    return {"loss": total_loss / n, "accuracy": correct / n, "examples": n}
