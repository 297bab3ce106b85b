"""BatchAugment, the tensor version of CIFAR-10's standard augmentation, and its wiring.

What it must be: torchvision's RandomCrop(size, padding=p, padding_mode="reflect") followed
by RandomHorizontalFlip(), done on a whole normalised batch; offsets in [0, 2p] x [0, 2p]
and flips drawn from the training loop's generator (so seeded like everything else); off
unless the dataset's `augment` settings ask for it; applied by `train()` to training
batches only, in the centralized run and in every federated client; cheap beside a
training step.

Brute-force checks use images wider and taller than 2p + 1 pixels: on smaller ones a
flipped crop can coincide with an unflipped crop at another offset (reflection is
symmetric), so "exactly one crop explains each output" would not be decidable.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from conftest import compose_cfg
from omegaconf import OmegaConf

from fedexp import centralized
from fedexp.checks import ConfigError, check
from fedexp.data.datasets import load_digits
from fedexp.federated.client import ClientKit, ClientSpec, FedexpClient
from fedexp.models import CNN, get_weights
from fedexp.results import RunResults
from fedexp.training import BatchAugment, Normalizer, train
from fedexp.workload import Workload

CPU = torch.device("cpu")
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
AUG_ON = ("dataset.augment.crop_padding=4", "dataset.augment.flip=true")
AUG_OFF = ("dataset.augment.crop_padding=0", "dataset.augment.flip=false")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def all_crops(padded: torch.Tensor, h: int, w: int, pad: int):
    """Every output RandomCrop((h, w)) + RandomHorizontalFlip() can give from `padded`
    (n x c x (h+2p) x (w+2p)): n x K x c x h x w, and the (top, left, flipped) of each of the K."""
    crops, keys = [], []
    for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
            crop = padded[:, :, top : top + h, left : left + w]
            for flipped in (False, True):
                crops.append(crop.flip(3) if flipped else crop)
                keys.append((top, left, flipped))
    return torch.stack(crops, 1), keys


def explained_by(out: torch.Tensor, padded: torch.Tensor, pad: int):
    """n x K booleans: which candidate crops equal each output image exactly."""
    cands, keys = all_crops(padded, out.shape[2], out.shape[3], pad)
    return (cands == out[:, None]).flatten(2).all(2), keys


# --- 1. the same outputs as torchvision's reflect-pad + random crop + random flip ------


@pytest.mark.parametrize("channels,h,w", [(3, 12, 12), (1, 10, 14)])
def test_every_output_is_exactly_one_reflect_padded_crop_flipped_or_not(channels, h, w):
    raw = torch.randint(0, 256, (48, channels, h, w), dtype=torch.uint8, generator=gen(1))
    norm = Normalizer(CIFAR_MEAN[:channels], CIFAR_STD[:channels], CPU)
    xb = norm(raw)
    out = BatchAugment(4, True)(xb, gen(2))

    # torchvision pads the raw image, then ToTensor/Normalize; fedexp pads the normalised
    # batch. Reflection only copies pixels, so the two orders give the same numbers.
    padded = norm(TF.pad(raw, [4], padding_mode="reflect"))
    assert torch.equal(padded, F.pad(xb, (4, 4, 4, 4), mode="reflect"))
    hit, keys = explained_by(out, padded, 4)
    assert hit.sum(1).tolist() == [1] * len(out), (
        "each output must be exactly one crop of the reflect-padded image"
    )
    chosen = [keys[k] for k in hit.int().argmax(1).tolist()]
    assert {f for _, _, f in chosen} == {False, True}

    # The check can tell the padding modes apart: zero, edge or symmetric (edge pixel
    # repeated) padding does not explain the outputs whose crop reaches into the border.
    for mode in ("constant", "edge", "symmetric"):
        other, _ = explained_by(out, norm(TF.pad(raw, [4], padding_mode=mode)), 4)
        assert not other.any(1).all(), (
            f"{mode} padding explains every output: the test cannot see the mode"
        )


def test_the_candidate_set_is_torchvisions_own_output_set():
    """The 81 offsets x 2 flips enumerated above are exactly what torchvision's
    RandomCrop(padding=4, padding_mode="reflect") + RandomHorizontalFlip() produce."""
    raw = torch.randint(0, 256, (1, 12, 12), dtype=torch.uint8, generator=gen(3))
    standard = T.Compose(
        [T.RandomCrop(12, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip()]
    )
    torch.manual_seed(0)
    seen = {standard(raw).numpy().tobytes() for _ in range(2500)}
    cands, _ = all_crops(TF.pad(raw, [4], padding_mode="reflect")[None], 12, 12, 4)
    ours = {c.numpy().tobytes() for c in cands[0]}
    assert len(ours) == 162
    assert seen == ours


def test_crop_only_never_flips_and_flip_only_never_crops():
    x = torch.randn(64, 3, 12, 12, generator=gen(4))
    out = BatchAugment(4, False)(x, gen(5))
    hit, keys = explained_by(out, F.pad(x, (4,) * 4, mode="reflect"), 4)
    assert hit.sum(1).tolist() == [1] * 64
    assert not any(keys[k][2] for k in hit.int().argmax(1).tolist())
    assert len({keys[k][:2] for k in hit.int().argmax(1).tolist()}) > 1

    out = BatchAugment(0, True)(x, gen(5))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert (same ^ mirrored).all()
    assert 0 < int(mirrored.sum()) < 64


# --- 2. the draws cover the whole range, uniformly; half the images are flipped --------


def test_offsets_cover_the_range_uniformly_and_half_are_flipped():
    n, side, pad = 4000, 12, 4
    coded = torch.arange(side * side, dtype=torch.float32).view(1, 1, side, side)  # all unique
    out = BatchAugment(pad, True)(coded.repeat(n, 1, 1, 1), gen(2024))
    cands, keys = all_crops(F.pad(coded, (pad,) * 4, mode="reflect"), side, side, pad)
    lookup = {c.numpy().tobytes(): key for c, key in zip(cands[0], keys)}
    assert len(lookup) == 162  # every (offset, flip) gives a different image
    draws = np.array([lookup[o.numpy().tobytes()] for o in out])  # KeyError: not a crop at all
    top, left, flipped = draws[:, 0], draws[:, 1], draws[:, 2].astype(bool)

    expected = n / (2 * pad + 1)  # 444; one standard deviation is 20
    for name, offsets in (("top", top), ("left", left)):
        counts = np.bincount(offsets, minlength=2 * pad + 1)
        assert len(counts) == 2 * pad + 1, f"{name} offsets beyond 2*pad: {counts}"
        assert counts[0] > 0 and counts[2 * pad] > 0, f"{name} never hits an extreme: {counts}"
        assert counts.min() > 0.7 * expected and counts.max() < 1.3 * expected, f"{name}: {counts}"
    # independent rows and columns
    assert len(set(zip(top.tolist(), left.tolist()))) == (2 * pad + 1) ** 2
    assert np.mean(top == left) < 0.2  # 1/9 if independent
    assert 0.4 < flipped.mean() < 0.6
    # flips independent of the offsets
    assert 0.4 < flipped[top < pad].mean() < 0.6 and 0.4 < flipped[top > pad].mean() < 0.6


# --- 3. seeded by the generator it is given; off means nothing happens ----------------


def test_same_generator_seed_same_batch_other_seed_other_batch():
    x = torch.randn(256, 3, 16, 16, generator=gen(6))
    before = x.clone()
    aug = BatchAugment(4, True)
    torch.manual_seed(1)
    a = aug(x, gen(7))
    torch.manual_seed(2)  # the global RNG plays no part
    b = aug(x, gen(7))
    c = aug(x, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g = gen(7)
    first, second = aug(x, g), aug(x, g)
    assert torch.equal(first, a) and not torch.equal(first, second)  # fresh draws for every batch
    assert torch.equal(x, before)  # the input batch is left alone


@pytest.mark.parametrize("dataset", ["digits", "cifar10", "mnist", "fashion_mnist", "image_folder"])
def test_every_dataset_config_leaves_augmentation_off(dataset):
    cfg = compose_cfg(f"dataset={dataset}")
    assert cfg.dataset.augment.crop_padding == 0 and cfg.dataset.augment.flip is False
    assert BatchAugment.from_config(cfg.dataset.augment) is None
    assert (
        BatchAugment.from_config(OmegaConf.to_container(cfg, resolve=True)["dataset"]["augment"])
        is None
    )


@pytest.mark.parametrize(
    "node,expected",
    [
        (None, None),
        ({}, None),
        ({"crop_padding": 0, "flip": False}, None),
        ({"crop_padding": None}, None),
        ({"crop_padding": 4}, (4, False)),
        ({"flip": True}, (0, True)),
        ({"crop_padding": 2, "flip": True}, (2, True)),
    ],
)
def test_from_config_reads_dicts_and_dictconfigs(node, expected):
    for form in (node, None if node is None else OmegaConf.create(node)):
        aug = BatchAugment.from_config(form)
        assert (None if aug is None else (aug.pad, aug.flip)) == expected


@pytest.fixture(scope="module")
def digits():
    return load_digits(32, 0.2, 0)


_ABSENT = object()


def train_digits(d, augment=_ABSENT, gen_seed: int = 0):
    """Two epochs of 4 SGD steps of the tutorial CNN on 256 digits; (stats, weights). Two
    epochs, so that any draw the augmentation takes shows in the second epoch's order."""
    torch.manual_seed(0)
    model = CNN(1, 32, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    extra = {} if augment is _ABSENT else {"augment": augment}
    stats = train(
        model,
        d.x_train,
        d.y_train,
        np.arange(256),
        epochs=2,
        batch_size=64,
        optimizer=opt,
        normalize=Normalizer([0.305], [0.324], CPU),
        generator=gen(gen_seed),
        **extra,
    )
    return stats, [v.detach().clone() for v in model.state_dict().values()]


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_augmentation_off_trains_bit_for_bit_as_without_it(digits):
    off = BatchAugment.from_config(compose_cfg().dataset.augment)
    assert off is None
    plain_stats, plain = train_digits(digits)
    stats, weights = train_digits(digits, augment=off)
    assert stats == plain_stats and same_weights(weights, plain)
    # an explicit do-nothing augmentation draws nothing from the generator either
    stats, weights = train_digits(digits, augment=BatchAugment(0, False))
    assert stats == plain_stats and same_weights(weights, plain)


# --- 4. train() with augmentation: reproducible, and different from without -----------


class Recording(BatchAugment):
    def __init__(self, *args):
        super().__init__(*args)
        self.seen, self.made = [], []

    def __call__(self, xb, generator):
        out = super().__call__(xb, generator)
        self.seen.append(xb.clone())
        self.made.append(out.clone())
        return out


def test_train_with_augmentation_is_seeded_and_changes_training(digits):
    plain_stats, plain = train_digits(digits)
    on_stats, on = train_digits(digits, augment=BatchAugment(4, True))
    again_stats, again = train_digits(digits, augment=BatchAugment(4, True))
    assert on_stats == again_stats and same_weights(on, again)
    assert on_stats["steps"] == plain_stats["steps"] == 8
    assert on_stats["loss"] != plain_stats["loss"]
    assert not same_weights(on, plain)
    _, other = train_digits(digits, augment=BatchAugment(4, True), gen_seed=1)
    assert not same_weights(on, other)


def test_train_feeds_the_model_the_augmented_normalised_batches(digits):
    aug = Recording(4, True)
    inputs = []
    torch.manual_seed(0)
    model = CNN(1, 32, 10)
    model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    idx = np.arange(256)
    norm = Normalizer([0.305], [0.324], CPU)
    train(
        model,
        digits.x_train,
        digits.y_train,
        idx,
        epochs=1,
        batch_size=64,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        normalize=norm,
        generator=gen(0),
        augment=aug,
    )
    assert len(aug.seen) == len(inputs) == 4  # once per step
    assert all(torch.equal(m, i) for m, i in zip(aug.made, inputs))
    assert not any(torch.equal(s, m) for s, m in zip(aug.seen, aug.made))
    # what is augmented is the normalised training batches: each training image exactly once
    rows = Counter(r.numpy().tobytes() for batch in aug.seen for r in batch)
    assert rows == Counter(r.numpy().tobytes() for r in norm(torch.from_numpy(digits.x_train[idx])))


# --- 5. wiring: presets, the federated client, the centralized run ---------------------


def test_niid_bench_turns_on_cifar10s_augmentation():
    cfg = compose_cfg("experiment=niid_bench")
    assert cfg.dataset.name == "cifar10"
    assert cfg.dataset.augment.crop_padding == 4 and cfg.dataset.augment.flip is True
    aug = BatchAugment.from_config(cfg.dataset.augment)
    assert isinstance(aug, BatchAugment) and (aug.pad, aug.flip) == (4, True)
    # the preset's documented way to train another dataset without it
    assert (
        BatchAugment.from_config(compose_cfg("experiment=niid_bench", *AUG_OFF).dataset.augment)
        is None
    )


@pytest.mark.parametrize("overrides", [(), ("experiment=tutorial",)])
def test_default_and_tutorial_leave_augmentation_off(overrides):
    cfg = compose_cfg(*overrides)
    assert BatchAugment.from_config(cfg.dataset.augment) is None
    assert ClientKit.build(OmegaConf.to_container(cfg, resolve=True), CPU).augment is None
    assert Workload(cfg, None, None, CPU).augment() is None


def test_niid_bench_client_kit_and_workload_carry_the_augmentation():
    cfg = compose_cfg("experiment=niid_bench")
    kit = ClientKit.build(OmegaConf.to_container(cfg, resolve=True), CPU)
    assert isinstance(kit.augment, BatchAugment) and (kit.augment.pad, kit.augment.flip) == (
        4,
        True,
    )
    work_aug = Workload(cfg, None, None, CPU).augment()  # what the centralized run uses
    assert isinstance(work_aug, BatchAugment) and (work_aug.pad, work_aug.flip) == (4, True)


def test_federated_client_trains_with_the_configured_augmentation():
    """A niid_bench client's fit uses its kit's BatchAugment on every step, and its update
    differs from the same client's without augmentation."""
    n = 96
    data = {
        "x": torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen(9)).numpy(),
        "y": torch.randint(0, 10, (n,), generator=gen(10)).numpy(),
        "train": [np.arange(n)],
        "val": [np.arange(0)],
    }
    torch.manual_seed(0)
    global_w = get_weights(CNN(3, 32, 10))
    config = {
        "partition_id": 0,
        "server_round": 1,
        "seed": 0,
        "lr": 0.01,
        "local_epochs": 1,
        "batch_size": 32,
    }

    def fit(*overrides, recording: bool = False):
        spec = ClientSpec(
            OmegaConf.to_container(compose_cfg("experiment=niid_bench", *overrides), resolve=True),
            None,
            "cpu",
            1,
        )
        kit = ClientKit.build(spec.cfg, CPU)
        if recording:
            kit.augment = Recording(kit.augment.pad, kit.augment.flip)
        weights, examples, _metrics = FedexpClient(spec, data, kit).fit(global_w, config)
        assert examples == n
        return weights, kit

    on, _ = fit()
    again, kit = fit(recording=True)
    off, off_kit = fit(*AUG_OFF)
    assert off_kit.augment is None
    assert all(np.array_equal(a, b) for a, b in zip(on, again))  # recording changes nothing
    assert len(kit.augment.made) == math.ceil(n / 32)  # every training step, nothing else
    assert not all(np.array_equal(a, b) for a, b in zip(on, off))


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_centralized_run_trains_with_the_configured_augmentation(tmp_path, monkeypatch):
    base = ("mode=centralized", "centralized.epochs=1")
    work = Workload.build(compose_cfg(*base))
    calls = []
    original = BatchAugment.__call__

    def counting(self, xb, generator):
        calls.append(len(xb))
        return original(self, xb, generator)

    monkeypatch.setattr(BatchAugment, "__call__", counting)

    def run(name, *overrides):
        results = RunResults(tmp_path / name, "centralized", info={})
        model = centralized.run(
            dataclasses.replace(work, cfg=compose_cfg(*base, *overrides)), results
        )
        return results.steps[0]["train_loss"], [v.clone() for v in model.state_dict().values()]

    off_loss, off = run("off")
    assert calls == []
    on_loss, on = run("on", *AUG_ON)
    train_size = len(work.parts.train[0])
    # training batches only: no call for the validation or test evaluation
    assert len(calls) == math.ceil(train_size / work.cfg.batch_size) and sum(calls) == train_size
    again_loss, again = run("again", *AUG_ON)
    assert on_loss == again_loss and same_weights(on, again)
    assert on_loss != off_loss and not same_weights(on, off)


# --- bugs: settings the config check lets through ----------------------------------------


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_valid_augment_settings_pass_the_config_check():
    check(compose_cfg(*AUG_ON))
    check(compose_cfg("experiment=niid_bench"))


@pytest.mark.parametrize(
    "override",
    [
        "dataset.augment.crop_padding=-1",  # BatchAugment(-1) is "on" and fails in torch.randint
        "dataset.augment.crop_padding=32",  # >= image_size: F.pad(mode="reflect") fails
        "dataset.augment.crop_padding=2.5",  # silently truncated to 2
    ],
)
def test_bad_crop_padding_is_a_config_error(override):
    """Every other numeric setting is checked before any data is loaded (main.run's
    contract); these pass check() and dry_run and only fail inside training."""
    with pytest.raises(ConfigError, match="crop_padding"):
        check(compose_cfg(override))


@pytest.mark.parametrize("override", ["dataset.augment.flip=no", 'dataset.augment.flip="false"'])
def test_a_flip_that_says_no_does_not_flip(override):
    """Hydra reads `flip=no` and `flip="false"` as strings; bool() of a non-empty string is
    True. Rejecting the value or leaving flipping off are both fine; flipping is not."""
    cfg = compose_cfg(override)
    try:
        check(cfg)
    except ConfigError:
        return
    aug = BatchAugment.from_config(cfg.dataset.augment)
    assert aug is None or not aug.flip, (
        f"{override} gave BatchAugment(pad={aug.pad}, flip={aug.flip})"
    )


# --- 6. shape, dtype, device, contiguity ---------------------------------------------

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pad,flip", [(4, True), (4, False), (0, True)])
def test_shape_dtype_device_kept_and_output_contiguous(device, channels, dtype, pad, flip):
    aug = BatchAugment(pad, flip)
    x = torch.randn(17, channels, 32, 32, dtype=dtype, generator=gen(11)).to(device)
    for xb in (x, x.transpose(2, 3), x.to(memory_format=torch.channels_last), x[:1]):
        before = xb.clone()
        out = aug(xb, gen(12))
        assert torch.equal(xb, before)  # the input is not changed in place
        assert out.shape == xb.shape and out.dtype == xb.dtype and out.device == xb.device
        assert out.is_contiguous()
        # it did something (one image may be left as is)
        assert not torch.equal(out, xb) or len(xb) == 1


# --- 7. cost beside a training step -------------------------------------------------


def test_augmenting_a_batch_costs_a_small_fraction_of_a_training_step():
    x = torch.randn(64, 3, 32, 32, generator=gen(13))
    y = torch.randint(0, 10, (64,), generator=gen(14))
    torch.manual_seed(0)
    model = CNN(3, 32, 10)  # the tutorial's CNN, with the tutorial's Adam
    opt = torch.optim.Adam(model.parameters())
    aug, g = BatchAugment(4, True), gen(15)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    for _ in range(3):
        step(), aug(x, g)
    aug_t, step_t = [], []
    for _ in range(15):  # interleaved, so that a busy moment slows both
        aug_t.append(timed(lambda: aug(x, g)))
        step_t.append(timed(step))
    a, s = statistics.median(aug_t), statistics.median(step_t)
    print(
        f"\nbatch 64x3x32x32, torch threads {torch.get_num_threads()}: augment {a * 1e3:.2f} ms, "
        f"CNN forward+backward+Adam step {s * 1e3:.2f} ms, ratio {a / s:.2f}"
    )
    assert a < 0.5 * s
