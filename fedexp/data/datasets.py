"""Dataset loaders: every dataset becomes the same in-memory `ImageData`.

Each loader decodes its source once into uint8 arrays (N, C, H, W) plus int64 labels.
Training then batches by indexing those arrays and normalises per batch, which removes the
per-sample PIL decode + transform + DataLoader collation that dominates the tutorial's
time. uint8 keeps CIFAR-10 at 150 MB instead of 600 MB of float32, so the arrays can be
shared with every simulation worker through Ray's object store without copies.

The loaders are named by `_target_` in `conf/dataset/*.yaml` (key `loader`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class ImageData:
    """Decoded images (uint8, N x C x H x W) and labels (int64) of one dataset."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        for name in ("x_train", "y_train", "x_test", "y_test"):
            setattr(self, name, row_major(getattr(self, name)))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


def row_major(a: np.ndarray) -> np.ndarray:
    """`a` with the strides of a fresh C-order array (a copy only when they differ).

    A one-channel batch whose channel stride is 1 (what `x[:, None]` gives) reads as both
    contiguous and channels-last, and torch's convolutions then take their channels-last
    kernels, which round differently. Ray's object store hands every worker a fresh
    row-major copy, so without this the clients' numbers would depend on the backend
    that runs them (inline or Ray)."""
    a = np.asarray(a)
    strides, step = [], a.itemsize
    for size in reversed(a.shape):
        strides.append(step)
        step *= size
    if a.strides == tuple(reversed(strides)):
        return a
    return np.array(a, order="C", copy=True)


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 N x C x H x W images to size x size (no-op when equal)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    import torch
    import torch.nn.functional as F

    out = F.interpolate(
        torch.from_numpy(x).float(), size=(size, size), mode="bilinear", align_corners=False
    )
    return out.round_().clamp_(0, 255).to(torch.uint8).numpy()


def _nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:  # grayscale N x H x W
        return np.ascontiguousarray(x[:, None])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def load_digits(image_size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's bundled 8x8 digits (1,797 images, offline), upsampled to `image_size`.

    The tutorial's CNN was designed for 32x32 inputs: at 8x8 its two 5x5 convolutions leave
    nothing, so the images are interpolated up once here. Pixel values 0..16 are scaled to
    0..255 so that every dataset shares one representation. The set has no official test
    split: a stratified, seeded `test_fraction` is held out for the server.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]  # N x 1 x 8 x 8
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    return ImageData(
        _resize(x_tr, image_size),
        y_tr,
        _resize(x_te, image_size),
        y_te,
        [str(c) for c in bunch.target_names],
    )


# Where torchvision looks for each dataset's files under `root` (what to copy there offline).
_EXPECTED = {
    "CIFAR10": "cifar-10-python.tar.gz, or its extracted cifar-10-batches-py/ folder, in {root}",
    "MNIST": "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (or the same with .gz) in {root}/MNIST/raw/",
    "FashionMNIST": "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (or the same with .gz) in {root}/FashionMNIST/raw/",
}


def _last_line(e: BaseException) -> str:
    """torchvision's errors span lines (one per mirror tried); the last says why."""
    lines = [s.strip().rstrip(")").strip() for s in str(e).splitlines() if s.strip()]
    lines = [s for s in lines if not s.startswith("Tried ")] or [type(e).__name__]
    return lines[-1]


def _torchvision(name: str, root: str, download: bool, image_size: int) -> ImageData:
    import torchvision.datasets as tvd

    cls = getattr(tvd, name)
    where = _EXPECTED[name].format(root=root)
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except (RuntimeError, OSError) as e:  # not found / URLError and friends (no network)
        if download:
            raise DatasetError(
                f"{name} is not under dataset.root={root} and downloading it failed "
                f"({_last_line(e)}): put {where}, copied from a machine with network access "
                f"(dataset=digits works offline)"
            ) from None
        raise DatasetError(
            f"{name} is not under dataset.root={root} and dataset.download=false: put {where}, "
            f"or allow dataset.download=true with network access (dataset=digits works offline)"
        ) from None

    def arrays(ds):
        x = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
        y = np.asarray(ds.targets, dtype=np.int64)
        return _resize(_nhwc_to_nchw(x), image_size), y

    x_tr, y_tr = arrays(train)
    x_te, y_te = arrays(test)
    return ImageData(x_tr, y_tr, x_te, y_te, list(train.classes))


def load_cifar10(root: str = "data", download: bool = True, image_size: int = 32) -> ImageData:
    """torchvision's CIFAR-10, read from its pickled batches straight into arrays."""
    return _torchvision("CIFAR10", root, download, image_size)


def load_mnist(root: str = "data", download: bool = True, image_size: int = 28) -> ImageData:
    """torchvision's MNIST (IDX files)."""
    return _torchvision("MNIST", root, download, image_size)


def load_fashion_mnist(
    root: str = "data", download: bool = True, image_size: int = 28
) -> ImageData:
    """torchvision's Fashion-MNIST (IDX files)."""
    return _torchvision("FashionMNIST", root, download, image_size)


def _folder_signature(folder: Path, image_size: int, channels: int) -> str:
    """Hash of every file's path, size and mtime: a changed, added or removed image
    invalidates the decoded cache."""
    h = hashlib.sha256(f"{folder.resolve()}|{image_size}|{channels}".encode())
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            h.update(f"{dirpath}/{name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def check_image_folder(path: str | None) -> Path:
    """Fail early, in one line, on a path that is not an ImageFolder train/test tree."""
    if not path:
        raise DatasetError(
            "dataset.path is not set: dataset=image_folder needs dataset.path=DIR "
            "with DIR/train/<class>/* and DIR/test/<class>/*"
        )
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset.path={path} does not exist or is not a folder")
    for split in ("train", "test"):
        d = root / split
        if not d.is_dir() or not any(p.is_dir() for p in d.iterdir()):
            raise DatasetError(
                f"dataset.path={path} has no {split}/<class>/ folders: expected "
                f"DIR/train/<class>/* and DIR/test/<class>/* (torchvision ImageFolder layout)"
            )
    return root


def _read_cache(cache: Path) -> dict | None:
    """The decoded arrays in `cache`, or None if there are none. A cache that cannot be read
    (cut short by a full disk or a killed process, say) is removed, and decoded again."""
    if not cache.exists():
        return None
    try:
        with np.load(cache) as d:
            cached = {name: d[name] for name in d.files}
        if not {"x_train", "y_train", "x_test", "y_test"} <= set(cached):
            raise ValueError("arrays missing")
        return cached
    except Exception as e:  # numpy raises OSError, ValueError, zipfile.BadZipFile, EOFError...
        log.warning(
            "the decoded image cache %s is unreadable (%s: %s): decoding the images again",
            cache,
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
        )
        cache.unlink(missing_ok=True)
        return None


def load_image_folder(
    path: str | None = None, image_size: int = 32, channels: int = 3, cache_dir: str | None = None
) -> ImageData:
    """A user's own images in torchvision's ImageFolder layout (DIR/train, DIR/test).

    Decoding tens of thousands of JPEGs takes longer than a whole training run, so the
    decoded arrays are cached as .npz under `cache_dir`, keyed by the files' paths, sizes
    and modification times.
    """
    root = check_image_folder(path)
    cache_root = Path(cache_dir or Path.home() / ".cache" / "fedexp").expanduser()
    key = _folder_signature(root, image_size, channels)
    cache = cache_root / f"image_folder-{key}.npz"
    cached = _read_cache(cache)
    if cached is not None and "classes" in cached:
        # no torchvision import (1-2 s) when nothing needs decoding
        return ImageData(
            cached["x_train"],
            cached["y_train"],
            cached["x_test"],
            cached["y_test"],
            [str(c) for c in cached["classes"]],
        )
    from torchvision.datasets import ImageFolder

    train = ImageFolder(str(root / "train"))
    test = ImageFolder(str(root / "test"))
    if train.classes != test.classes:
        raise DatasetError(f"dataset.path={path}: train/ and test/ have different class folders")
    if cached is not None:  # written before the cache held the class names
        return ImageData(
            cached["x_train"],
            cached["y_train"],
            cached["x_test"],
            cached["y_test"],
            list(train.classes),
        )
    log.info("decoding %s once (cached in %s)", root, cache)
    mode = {1: "L", 3: "RGB"}[channels]

    def decode(ds):
        from PIL import Image

        x = np.empty((len(ds.samples), image_size, image_size, channels), np.uint8)
        for i, (file, _) in enumerate(ds.samples):
            with Image.open(file) as im:
                im = im.convert(mode)
                if im.size != (image_size, image_size):
                    im = im.resize((image_size, image_size), Image.BILINEAR)
                x[i] = np.asarray(im).reshape(image_size, image_size, channels)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), np.asarray(ds.targets, np.int64)

    x_tr, y_tr = decode(train)
    x_te, y_te = decode(test)
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        classes=np.asarray(train.classes, dtype=str),
    )
    os.replace(tmp, cache)
    return ImageData(x_tr, y_tr, x_te, y_te, list(train.classes))
