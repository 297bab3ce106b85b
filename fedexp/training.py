"""Training and evaluation loops over in-memory arrays. Nothing here knows Flower.

Batches are gathered by indexing the decoded arrays and normalised on the fly: the same
math as the tutorial's ToTensor + Normalize + DataLoader(shuffle=True), without per-sample
Python work. One forward pass per step (the tutorial ran the net twice), losses averaged
per example (the tutorial divided a sum of batch means by the number of examples).

What a federated method changes in local training (an extra loss term, a gradient
correction) comes in through `TrainingHooks`, so the loop itself stays the same for every
method and for the centralized baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class DivergedError(RuntimeError):
    """A loss became NaN or infinite: continuing would only produce garbage."""


class Normalizer:
    """(x / 255 - mean) / std per channel, applied to a uint8 image batch.

    Inputs that are already real numbers (float features) pass through as float32: they
    have no pixel scale to undo."""

    def __init__(self, mean: Iterable[float], std: Iterable[float], device: torch.device):
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.device = device

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        xb = xb.to(self.device, non_blocking=True)
        if xb.dtype != torch.uint8:
            return xb.float()
        return (xb.float().div_(255.0) - self.mean) / self.std


class BatchAugment:
    """Random crops and horizontal flips of a whole normalised batch, as tensor operations.

    The standard CIFAR-10 augmentation (reflect-pad by `crop_padding` pixels, crop the
    original size at a random offset, flip half the images left to right) done on the batch
    at once instead of per sample with PIL, so that it costs little beside the forward
    pass. Offsets and flips are drawn from the training loop's generator, so they repeat
    with the run's seed like every other random choice.
    """

    def __init__(self, crop_padding: int = 0, flip: bool = False):
        self.pad, self.flip = int(crop_padding), bool(flip)
        self._tables: dict[int, torch.Tensor] = {}

    @classmethod
    def from_config(cls, node) -> BatchAugment | None:
        """The augmentation a dataset's `augment` settings ask for, or None for none."""
        if not node:
            return None
        augment = cls(node.get("crop_padding", 0) or 0, node.get("flip", False))
        return augment if augment.pad or augment.flip else None

    def _reflect(self, size: int) -> torch.Tensor:
        """Padded coordinate -> source coordinate of reflect padding (cached per size)."""
        if size not in self._tables:
            pad, last = self.pad, size - 1
            self._tables[size] = torch.tensor(
                [
                    abs(r - pad) if r - pad <= last else 2 * last - (r - pad)
                    for r in range(size + 2 * pad)
                ]
            )
        return self._tables[size]

    def __call__(self, xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One gather does the padding, the crop and the flip: output pixel (i, j) of image k
        is source pixel (R[top_k + i], R[left_k + j']), R the reflect padding's coordinate
        map and j' = j, or w - 1 - j if image k is flipped."""
        n, c, h, w = xb.shape
        if not self.pad and not self.flip:
            return xb
        rows, cols = torch.arange(h).expand(n, h), torch.arange(w).expand(n, w)
        if self.pad:
            top = torch.randint(0, 2 * self.pad + 1, (n, 1), generator=generator)
            left = torch.randint(0, 2 * self.pad + 1, (n, 1), generator=generator)
        if self.flip:
            flipped = (torch.rand(n, generator=generator) < 0.5).view(n, 1)
            cols = torch.where(flipped, w - 1 - cols, cols)
        if self.pad:
            rows, cols = self._reflect(h)[top + rows], self._reflect(w)[left + cols]
        index = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).to(xb.device)
        return xb.flatten(2).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


class TrainingHooks:
    """What a method may change inside local training; the defaults change nothing."""

    def loss_term(self, model: nn.Module) -> torch.Tensor | None:
        """An extra term added to every step's loss (e.g. FedProx's proximal term)."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Called between `backward` and `optimizer.step`: corrections to the gradient."""

    def after_step(self, model: nn.Module) -> None:
        """Called after `optimizer.step`: corrections to the weights (e.g. SCAFFOLD's)."""


_NO_HOOKS = TrainingHooks()


def _as_tensor(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if not a.flags.writeable:  # arrays from Ray's object store are read-only views
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(a)
    return torch.from_numpy(a)


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _is_classification(y: torch.Tensor) -> bool:
    return not torch.is_floating_point(y)


def train(
    model: nn.Module,
    x,
    y,
    indices: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    normalize: Normalizer,
    generator: torch.Generator,
    criterion: Callable = F.cross_entropy,
    augment: BatchAugment | None = None,
    hooks: TrainingHooks = _NO_HOOKS,
) -> dict:
    """Train in place for `epochs` passes over `indices`; return the mean loss, accuracy
    (classification only), examples and the number of optimizer steps taken."""
    x, y = _as_tensor(x), _as_tensor(y)
    idx = torch.as_tensor(indices, dtype=torch.long)
    classify = _is_classification(y)
    model.train()
    starts = list(range(0, len(idx), batch_size))
    if len(idx) % batch_size == 1 and len(starts) > 1 and _has_batch_norm(model):
        # BatchNorm cannot normalise a batch of one example: it joins the batch before it.
        starts.pop()
    ends = [*starts[1:], len(idx)]
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    for _ in range(epochs):
        order = idx[torch.randperm(len(idx), generator=generator)]
        for start, end in zip(starts, ends):
            b = order[start:end]
            xb, yb = normalize(x[b]), y[b].to(normalize.device)
            if augment is not None:
                xb = augment(xb, generator)
            optimizer.zero_grad(set_to_none=True)
            out = model(xb)
            loss = criterion(out, yb)
            extra = hooks.loss_term(model)
            (loss if extra is None else loss + extra).backward()
            hooks.after_backward(model)
            optimizer.step()
            hooks.after_step(model)
            steps += 1
            value = loss.item()
            if not math.isfinite(value):
                raise DivergedError(f"training loss became {value}")
            total_loss += value * len(b)
            if classify:
                correct += int((out.argmax(1) == yb).sum())
            seen += len(b)
    return {
        "loss": total_loss / max(seen, 1),
        "accuracy": correct / max(seen, 1) if classify else None,
        "examples": len(idx),
        "steps": steps,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x,
    y,
    indices: np.ndarray | None,
    *,
    batch_size: int,
    normalize: Normalizer,
    criterion: Callable = F.cross_entropy,
) -> dict:
    """Mean loss per example and accuracy (classification only) over `indices` (all when None)."""
    x, y = _as_tensor(x), _as_tensor(y)
    n = len(y) if indices is None else len(indices)
    if n == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "examples": 0}
    classify = _is_classification(y)
    idx = None if indices is None else torch.as_tensor(indices, dtype=torch.long)
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, n, batch_size):
        if idx is None:
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        else:
            b = idx[start : start + batch_size]
            xb, yb = x[b], y[b]
        yb = yb.to(normalize.device)
        out = model(normalize(xb))
        total_loss += float(criterion(out, yb)) * len(yb)  # the criterion's mean, back to a sum
        if classify:
            correct += int((out.argmax(1) == yb).sum())
    return {"loss": total_loss / n, "accuracy": correct / n if classify else None, "examples": n}


def first_steps() -> None:
    """A torch optimizer's first `step` imports torch._dynamo (~1.5 s here) and wraps
    itself; a training step on a tiny model does that before a run's clock starts, rather
    than in round 1 or epoch 1."""
    model = torch.nn.Linear(4, 2)
    for make in (torch.optim.Adam, torch.optim.SGD):
        optimizer = make(model.parameters(), lr=0.1)
        torch.nn.functional.cross_entropy(
            model(torch.zeros(3, 4)), torch.zeros(3, dtype=torch.long)
        ).backward()
        optimizer.step()
