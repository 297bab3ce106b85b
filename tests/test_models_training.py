"""Weight exchange keeps every entry and dtype; training lowers the loss."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from fedexp.data.datasets import load_digits
from fedexp.models import CNN, get_weights, set_weights
from fedexp.training import Normalizer, evaluate, train


def test_weights_round_trip_with_dtypes_and_buffers():
    src = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    src[1].num_batches_tracked += 7
    src[1].running_mean += 0.5
    weights = get_weights(src)
    assert len(weights) == len(src.state_dict())  # buffers included
    dst = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    set_weights(dst, weights)
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert a.dtype == b.dtype, k
        assert torch.equal(a, b), k
    assert dst[1].num_batches_tracked.dtype == torch.int64
    assert int(dst[1].num_batches_tracked) == 7


def test_set_weights_rejects_a_different_model():
    try:
        set_weights(CNN(1, 32, 10), get_weights(nn.Linear(2, 2)))
    except ValueError as e:
        assert "state entries" in str(e)
    else:
        raise AssertionError("no error")


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_short_training_lowers_the_loss_on_digits():
    d = load_digits(32, 0.2, 0)
    torch.manual_seed(0)
    model = CNN(1, 32, 10)
    norm = Normalizer([0.5], [0.5], torch.device("cpu"))
    idx = np.arange(len(d.y_train))
    before = evaluate(model, d.x_test, d.y_test, None, batch_size=256, normalize=norm)
    opt = torch.optim.Adam(model.parameters())
    stats = train(
        model,
        d.x_train,
        d.y_train,
        idx,
        epochs=3,
        batch_size=32,
        optimizer=opt,
        normalize=norm,
        generator=torch.Generator().manual_seed(0),
    )
    after = evaluate(model, d.x_test, d.y_test, None, batch_size=256, normalize=norm)
    assert stats["examples"] == len(idx)
    assert after["loss"] < before["loss"] - 0.5
    assert after["accuracy"] > 0.7


def test_evaluate_is_a_mean_per_example_and_batch_size_free():
    d = load_digits(32, 0.2, 0)
    model = CNN(1, 32, 10)
    norm = Normalizer([0.5], [0.5], torch.device("cpu"))
    a = evaluate(model, d.x_test, d.y_test, None, batch_size=7, normalize=norm)
    b = evaluate(model, d.x_test, d.y_test, None, batch_size=1000, normalize=norm)
    assert a["examples"] == b["examples"] == len(d.y_test)
    assert abs(a["loss"] - b["loss"]) < 1e-5
    # Other batch sizes run other kernels: an untrained model's near-tied logits may flip
    # the argmax of an example or two on another CPU.
    assert abs(a["accuracy"] - b["accuracy"]) <= 2 / len(d.y_test)
    x = norm(torch.from_numpy(d.x_test))
    expected = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(d.y_test)).item()
    assert abs(a["loss"] - expected) < 1e-5


def test_resnet18_has_a_small_image_stem():
    from fedexp.models import resnet18

    small = resnet18(channels=1, image_size=32, num_classes=7)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert small.conv1.in_channels == 1 and isinstance(small.maxpool, nn.Identity)
    assert small(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    big = resnet18(channels=3, image_size=224, num_classes=5)
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)


def test_batchnorm_buffers_travel_through_a_federated_round(run_inline):
    """ResNet-18 (BatchNorm) on digits at their native 8x8, one round through Flower's engine:
    the global model's running statistics are the clients' and its batch counter is the
    number of steps each client took, as an int64."""
    res, run_dir = run_inline(
        "model=resnet18",
        "dataset.image_size=8",
        "num_clients=4",
        "strategy.fraction_fit=0.5",
        "num_rounds=1",
        "batch_size=64",
        "strategy.fraction_evaluate=0",
        "strategy.min_evaluate_clients=0",
        name="resnet18",
    )
    assert res["status"] == "completed" and res["rounds"][0]["fit_clients"] == 2
    state = torch.load(run_dir / "model.pt", weights_only=True)
    counters = {k: v for k, v in state.items() if k.endswith("num_batches_tracked")}
    assert len(counters) == 20  # every BatchNorm of ResNet-18
    # IID sizes differ by at most one example: both sampled clients took the same steps
    sizes = [
        c["train_size"] for c in json.loads((run_dir / "partitions.json").read_text())["clients"]
    ]
    assert len({math.ceil(n / 64) for n in sizes}) == 1
    expected = math.ceil(sizes[0] / 64)
    assert all(v.dtype == torch.int64 and int(v) == expected for v in counters.values())
    assert not torch.equal(state["bn1.running_mean"], torch.zeros(64))
    assert not torch.equal(state["bn1.running_var"], torch.ones(64))
    assert all(v.dtype == torch.float32 for k, v in state.items() if k not in counters)
