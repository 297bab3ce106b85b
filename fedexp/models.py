"""Models, named by `_target_` in `conf/model/*.yaml`, and the weight exchange format.

Every model takes the dataset's `channels`, `image_size` and `num_classes` (interpolated
from `conf/dataset/*.yaml`), so any model runs on any dataset.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class CNN(nn.Module):
    """The tutorial's LeNet-style Net: conv 6@5x5 -> pool -> conv 16@5x5 -> pool -> 120 -> 84.

    The flattened size follows from `image_size` instead of the tutorial's fixed 16*5*5,
    so 28x28 MNIST or 32x32 CIFAR-10 both work. `batch_norm=True` adds BatchNorm after each
    convolution and hidden fully connected layer, as the models of FedBN (Li et al., 2021)
    have: that is what FedBN keeps local.
    """

    def __init__(
        self,
        channels: int = 3,
        image_size: int = 32,
        num_classes: int = 10,
        batch_norm: bool = False,
    ):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"model=cnn needs image_size >= 14, got {image_size}")
        self.conv1 = nn.Conv2d(channels, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        norm2d, norm1d = (nn.BatchNorm2d, nn.BatchNorm1d) if batch_norm else (_identity, _identity)
        self.bn1, self.bn2, self.bn3, self.bn4 = norm2d(6), norm2d(16), norm1d(120), norm1d(84)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x)))).flatten(1)
        x = F.relu(self.bn3(self.fc1(x)))
        return self.fc3(F.relu(self.bn4(self.fc2(x))))


def _identity(_features: int) -> nn.Module:
    return nn.Identity()


class MLP(nn.Module):
    """A fully connected baseline: flatten -> hidden layers with ReLU -> classes;
    `batch_norm=True` adds BatchNorm before each ReLU."""

    def __init__(
        self,
        channels: int = 3,
        image_size: int = 32,
        num_classes: int = 10,
        hidden: tuple[int, ...] = (200, 200),
        batch_norm: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = channels * image_size * image_size
        for h in hidden:
            layers += [nn.Linear(width, h), *([nn.BatchNorm1d(h)] if batch_norm else []), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def resnet18(
    channels: int = 3,
    image_size: int = 32,
    num_classes: int = 10,
    small_stem: bool | None = None,
    batch_norm: bool = True,
) -> nn.Module:
    """torchvision's ResNet-18 (random init), sized for the dataset.

    The ImageNet stem (7x7 stride-2 convolution, then max-pooling) shrinks a 32x32 image to
    8x8 before the first residual block and costs CIFAR-10 accuracy; `small_stem` swaps it
    for a 3x3 stride-1 convolution without pooling, the usual choice for 32x32 inputs.
    None picks the small stem for images up to 64 pixels wide. ResNet-18 has BatchNorm in
    every block: `batch_norm` (which every model takes) must be true.
    """
    from torchvision.models import resnet18 as tv_resnet18

    if not batch_norm:
        raise ValueError("resnet18 has BatchNorm in every block: model.batch_norm must be true")
    model = tv_resnet18(weights=None, num_classes=num_classes)
    if small_stem is None:
        small_stem = image_size <= 64
    if small_stem:
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    # initialised as torchvision initialises it
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Every state_dict entry (buffers included) as numpy, keeping each dtype."""
    return [v.detach().cpu().numpy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load arrays from `get_weights` back, in state_dict order, keeping each entry's dtype.

    A cast of every array to float32 (`torch.Tensor(v)`) would corrupt integer buffers such
    as BatchNorm's `num_batches_tracked`.
    """
    keys = list(model.state_dict().keys())
    if len(keys) != len(weights):
        raise ValueError(f"model has {len(keys)} state entries, got {len(weights)} arrays")
    state = OrderedDict(
        (k, torch.from_numpy(np.array(w, copy=True))) for k, w in zip(keys, weights)
    )
    model.load_state_dict(state, strict=True)
