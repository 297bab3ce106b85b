"""Loaders read the real on-disk formats; IID partitions behave as the tutorial's split."""

from __future__ import annotations

import logging
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torchvision.datasets.cifar
from hydra.utils import instantiate
from PIL import Image

from fedexp.data import DatasetError, partition
from fedexp.data.datasets import load_cifar10, load_digits, load_image_folder, load_mnist


def test_digits_offline_upsampled_and_split():
    d = load_digits(image_size=32, test_fraction=0.2, seed=0)
    assert d.x_train.shape[1:] == (1, 32, 32) and d.x_train.dtype == np.uint8
    assert len(d.y_train) + len(d.y_test) == 1797
    assert abs(len(d.y_test) - 360) <= 1
    assert set(np.unique(d.y_test)) == set(range(10))  # stratified
    assert d.x_train.max() > 200  # 0..16 scaled to 0..255


def write_cifar10(root, n_train_batch=6, n_test=8, seed=0):
    """CIFAR-10's python format: pickled dicts of uint8 rows (3072 = 3x32x32) and labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_train_batch
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {
        "label_names": [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
    }
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return folder


def test_cifar10_reads_the_python_batches(tmp_path, monkeypatch):
    folder = write_cifar10(tmp_path)
    # torchvision checks the real files' MD5 sums; only that check is patched.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    d = load_cifar10(root=str(tmp_path), download=False)
    first = pickle.loads((folder / "data_batch_1").read_bytes())
    assert d.x_train.shape == (30, 3, 32, 32) and d.x_test.shape == (8, 3, 32, 32)
    np.testing.assert_array_equal(d.x_train[0], first["data"][0].reshape(3, 32, 32))
    assert d.y_train[:6].tolist() == first["labels"]
    assert d.classes[0] == "airplane"


def write_idx(path, array: np.ndarray):
    magic = 0x0803 if array.ndim == 3 else 0x0801
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in array.shape))
        f.write(array.astype(np.uint8).tobytes())


def test_mnist_reads_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    x_tr, y_tr = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12)
    x_te, y_te = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)
    write_idx(raw / "train-images-idx3-ubyte", x_tr)
    write_idx(raw / "train-labels-idx1-ubyte", y_tr)
    write_idx(raw / "t10k-images-idx3-ubyte", x_te)
    write_idx(raw / "t10k-labels-idx1-ubyte", y_te)
    d = load_mnist(root=str(tmp_path), download=False)
    assert d.x_train.shape == (12, 1, 28, 28) and d.x_test.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(d.x_train[:, 0], x_tr)
    np.testing.assert_array_equal(d.y_test, y_te)


def test_missing_torchvision_data_offline_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset\.root"):
        load_mnist(root=str(tmp_path), download=False)


def write_image_folder(root, classes=("cat", "dog"), per_class=3, size=20):
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_image_folder_decodes_resizes_and_caches(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    d = load_image_folder(str(root), image_size=16, channels=3, cache_dir=str(cache))
    assert d.x_train.shape == (6, 3, 16, 16) and d.classes == ["cat", "dog"]
    assert sorted(d.y_train.tolist()) == [0, 0, 0, 1, 1, 1]
    assert len(list(cache.glob("*.npz"))) == 1
    again = load_image_folder(str(root), image_size=16, channels=3, cache_dir=str(cache))
    np.testing.assert_array_equal(again.x_train, d.x_train)
    assert again.classes == ["cat", "dog"]
    # A cache hit reads only the .npz: importing torchvision would cost 1-2 s per run.
    probe = (
        "import sys; from fedexp.data.datasets import load_image_folder as f; "
        f"d = f({str(root)!r}, image_size=16, channels=3, cache_dir={str(cache)!r}); "
        "print(d.classes, 'torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['cat',", "'dog']", "False"]
    # A changed image invalidates the cache.
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "train" / "cat" / "0.png")
    changed = load_image_folder(str(root), image_size=16, channels=3, cache_dir=str(cache))
    assert len(list(cache.glob("*.npz"))) == 2
    assert changed.x_train[0].sum() == 0


@pytest.mark.parametrize("damage", ["truncated", "not a zip", "arrays missing"])
def test_a_corrupt_image_cache_is_named_removed_and_rebuilt(tmp_path, caplog, damage):
    root = write_image_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    d = load_image_folder(str(root), image_size=16, channels=3, cache_dir=str(cache))
    (npz,) = cache.glob("*.npz")
    if damage == "truncated":  # a killed process or a full disk cut the write short
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    elif damage == "not a zip":
        npz.write_text("nothing like numpy's format")
    else:
        np.savez(npz, x_train=d.x_train)
    with caplog.at_level(logging.WARNING, logger="fedexp.data.datasets"):
        again = load_image_folder(str(root), image_size=16, channels=3, cache_dir=str(cache))
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(npz) in warning.getMessage() and "decoding the images again" in warning.getMessage()
    assert "\n" not in warning.getMessage()
    np.testing.assert_array_equal(again.x_train, d.x_train)
    np.testing.assert_array_equal(again.y_test, d.y_test)
    assert (
        load_image_folder(str(root), image_size=16, channels=3, cache_dir=str(cache)).classes
        == d.classes
    )


@pytest.mark.parametrize("path", [None, "does-not-exist"])
def test_image_folder_bad_path(tmp_path, path):
    with pytest.raises(DatasetError, match=r"dataset\.path"):
        load_image_folder(path)


def test_image_folder_without_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="train/<class>"):
        load_image_folder(str(tmp_path))


def iid(make_cfg, labels, n, seed, val_fraction=0.1):
    cfg = make_cfg("partitioning=iid", f"num_clients={n}")
    return partition(labels, instantiate(cfg.partitioning.partitioner), val_fraction, seed)


def test_iid_partitions_are_disjoint_cover_and_equal(make_cfg):
    labels = np.random.default_rng(0).integers(0, 10, 5000)
    parts = iid(make_cfg, labels, 10, seed=42)
    everything = np.concatenate(parts.train + parts.val)
    assert len(everything) == 5000 and len(np.unique(everything)) == 5000
    assert all(len(t) == 450 and len(v) == 50 for t, v in zip(parts.train, parts.val))


def test_iid_partitions_repeat_for_a_seed_and_differ_across_seeds(make_cfg):
    labels = np.arange(1000) % 10
    a, b, c = (iid(make_cfg, labels, 4, seed=s) for s in (1, 1, 2))
    for x, y in zip(a.train + a.val, b.train + b.val):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a.train, c.train))


def test_iid_partitions_are_random_not_file_order(make_cfg):
    parts = iid(make_cfg, np.zeros(1000, int), 10, seed=0)
    assert parts.train[0].max() > 500  # a contiguous shard would stop at 100


def test_one_channel_images_are_row_major_so_every_backend_computes_alike():
    """`x[:, None]` leaves a channel stride of 1, which torch reads as channels-last too and
    convolves with other kernels than the row-major copy Ray's object store hands a worker:
    ImageData keeps its arrays row-major, so a client trains alike inline and on Ray."""
    import torch

    from fedexp.data.datasets import ImageData

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 12, 12), dtype=np.uint8)
    # the strides digits' upsampling leaves (torch's interpolate output, as numpy)
    x = np.lib.stride_tricks.as_strided(images, (64, 1, 12, 12), (144, 1, 12, 1))
    y = rng.integers(0, 3, 64)
    data = ImageData(x, y, x[:8], y[:8], ["a", "b", "c"])
    assert data.x_train.strides == (144, 144, 12, 1)
    np.testing.assert_array_equal(data.x_train, x)

    def trained(images):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(1, 6, 5), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(384, 3)
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            batch = torch.from_numpy(images)[torch.arange(32)].float() / 255
            torch.nn.functional.cross_entropy(model(batch), torch.from_numpy(y[:32])).backward()
            optimizer.step()
        return [p.detach().clone() for p in model.parameters()]

    # what a Ray worker gets: a fresh row-major copy of the array
    for a, b in zip(trained(data.x_train), trained(np.array(data.x_train, order="C"))):
        assert torch.equal(a, b)
