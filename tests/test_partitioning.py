"""Every partitioning option: a true partition of the training set, seeded, and as skewed as
it claims; partitions.json and partitions.png describe it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from fedexp import partition_report
from fedexp.data import partition
from fedexp.data.datasets import load_digits, load_image_folder
from fedexp.main import config_dir

SCHEMES = sorted(p.stem for p in (Path(config_dir()) / "partitioning").glob("*.yaml"))
# Schemes that may leave examples out by design: shard drops what fills no whole shard,
# pathological drops classes no client drew.
MAY_DROP = {"shard", "pathological"}
LABELS = load_digits(32, 0.2, 0).y_train  # 1,437 labels, 10 classes


def split(make_cfg, scheme, n=6, seed=0, labels=LABELS, *overrides):
    cfg = make_cfg(f"partitioning={scheme}", f"num_clients={n}", f"seed={seed}", *overrides)
    p = cfg.partitioning
    return partition(labels, instantiate(p.partitioner), p.val_fraction, seed, shuffle=p.shuffle)


def label_dists(labels, parts):
    counts = np.stack(
        [
            np.bincount(labels[np.concatenate([t, v])], minlength=10)
            for t, v in zip(parts.train, parts.val)
        ]
    ).astype(float)
    return counts / counts.sum(1, keepdims=True)


def test_the_issue_asks_for_these_schemes():
    assert {"iid", "dirichlet", "pathological", "shard"} <= set(SCHEMES)
    assert {"linear", "square", "exponential"} & set(SCHEMES)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_index_in_at_most_one_client_and_sizes_add_up(make_cfg, scheme):
    n = 3 if scheme == "exponential" else 6  # e^i sizes: 6 clients of 1,437 leave client 0 empty
    parts = split(make_cfg, scheme, n)
    assert len(parts) == n
    held = np.concatenate(parts.train + parts.val)
    assert len(np.unique(held)) == len(held)  # nobody shares an example
    assert held.min() >= 0 and held.max() < len(LABELS)
    if scheme not in MAY_DROP:
        assert len(held) == len(LABELS)  # and nobody misses one
    else:
        assert len(held) >= 0.5 * len(LABELS)
    for t, v in zip(parts.train, parts.val):
        assert len(t) > 0
        assert len(v) == int((len(t) + len(v)) * 0.1)  # val_fraction of each client's share
        assert not set(t) & set(v)


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
@pytest.mark.parametrize("scheme", SCHEMES)
def test_seeded_repeatability(make_cfg, scheme):
    n = 3 if scheme == "exponential" else 6
    a, b, c = (
        split(make_cfg, scheme, n, seed=4),
        split(make_cfg, scheme, n, seed=4),
        split(make_cfg, scheme, n, seed=5),
    )
    for x, y in zip(a.train + a.val, b.train + b.val):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a.train, c.train))


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_dirichlet_skew_follows_alpha(make_cfg):
    overall = np.bincount(LABELS, minlength=10) / len(LABELS)

    def distance(alpha):  # mean total-variation distance of clients' labels from the whole set
        parts = split(make_cfg, "dirichlet", 10, 0, LABELS, f"partitioning.alpha={alpha}")
        return float(np.mean(0.5 * np.abs(label_dists(LABELS, parts) - overall).sum(1)))

    skewed, mild, iid_like = distance(0.1), distance(1.0), distance(1000.0)
    assert skewed > 0.5 > mild > iid_like
    assert iid_like < 0.1
    iid = split(make_cfg, "iid", 10)
    assert float(np.mean(0.5 * np.abs(label_dists(LABELS, iid) - overall).sum(1))) < 0.1


def test_dirichlet_keeps_min_partition_size(make_cfg):
    parts = split(
        make_cfg,
        "dirichlet",
        10,
        0,
        LABELS,
        "partitioning.alpha=0.1",
        "partitioning.min_partition_size=40",
    )
    assert min(len(t) + len(v) for t, v in zip(parts.train, parts.val)) >= 40


def test_pathological_gives_each_client_its_classes(make_cfg):
    parts = split(
        make_cfg, "pathological", 10, 0, LABELS, "partitioning.num_classes_per_partition=3"
    )
    classes = [
        set(np.unique(LABELS[np.concatenate([t, v])])) for t, v in zip(parts.train, parts.val)
    ]
    assert all(len(c) == 3 for c in classes)
    assert set().union(*classes) == set(range(10))  # first-deterministic: every class used


def test_shard_clients_hold_few_classes(make_cfg):
    parts = split(make_cfg, "shard", 10, 0, LABELS, "partitioning.num_shards_per_partition=2")
    sizes = [len(t) + len(v) for t, v in zip(parts.train, parts.val)]
    assert len(set(sizes)) == 1 and sizes[0] == len(LABELS) // 20 * 2  # two equal shards each
    # a shard of a label-sorted set spans one class, or two at a class boundary
    assert (
        max(len(np.unique(LABELS[np.concatenate([t, v])])) for t, v in zip(parts.train, parts.val))
        <= 4
    )


@pytest.mark.parametrize("scheme,power", [("linear", 1), ("square", 2)])
def test_size_skew_grows_with_the_client_number(make_cfg, scheme, power):
    parts = split(make_cfg, scheme, 5)
    sizes = np.array([len(t) + len(v) for t, v in zip(parts.train, parts.val)])
    expected = np.arange(1, 6) ** power / np.sum(np.arange(1, 6) ** power) * len(LABELS)
    assert np.all(np.abs(sizes - expected) <= 5)
    # quantity skew only: the labels stay IID (every client of some size sees every class)
    assert all(len(np.unique(LABELS[t])) == 10 for t in parts.train if len(t) >= 150)


def test_partitioning_works_on_an_image_folder(make_cfg, tmp_path):
    from test_data import write_image_folder

    root = write_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=20, size=8)
    d = load_image_folder(str(root), image_size=8, channels=3, cache_dir=str(tmp_path / "cache"))
    parts = split(make_cfg, "dirichlet", 3, 0, d.y_train, "partitioning.min_partition_size=5")
    assert sorted(np.concatenate(parts.train + parts.val).tolist()) == list(range(60))


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_partitions_json_and_png_describe_the_split(make_cfg, tmp_path):
    cfg = make_cfg("partitioning=shard", "num_clients=4", "partitioning.num_shards_per_partition=3")
    parts = split(make_cfg, "shard", 4, 0, LABELS, "partitioning.num_shards_per_partition=3")
    classes = [f"c{i}" for i in range(10)]
    summary = partition_report.write(tmp_path, LABELS, parts, classes, cfg.partitioning)
    on_disk = json.loads((tmp_path / "partitions.json").read_text())
    assert on_disk == summary
    assert (
        on_disk["scheme"] == "shard"
        and on_disk["num_clients"] == 4
        and on_disk["classes"] == classes
    )
    assert on_disk["settings"] == {
        "val_fraction": 0.1,
        "shuffle": True,
        "num_shards_per_partition": 3,
        "shard_size": None,
    }
    held = 0
    for c, t, v in zip(on_disk["clients"], parts.train, parts.val):
        assert (c["train_size"], c["val_size"]) == (len(t), len(v))
        assert c["train_label_counts"] == np.bincount(LABELS[t], minlength=10).tolist()
        assert c["val_label_counts"] == np.bincount(LABELS[v], minlength=10).tolist()
        held += len(t) + len(v)
    assert on_disk["unassigned"] == len(LABELS) - held > 0  # 1,437 is not a multiple of 12 shards
    png = tmp_path / "partitions.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
