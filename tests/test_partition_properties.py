"""Property-based checks of partitioning: whatever the sizes and seeds, every example
lands in exactly one client (train or validation), and the split repeats for a seed."""

from __future__ import annotations

import numpy as np
import pytest
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, LinearPartitioner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedexp.data import partition

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_exact_cover(parts, n):
    everything = np.concatenate(parts.train + parts.val)
    assert len(everything) == n
    assert np.array_equal(np.sort(everything), np.arange(n))


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
@SETTINGS
@given(
    n_clients=st.integers(1, 12),
    extra=st.integers(0, 200),
    classes=st.integers(1, 10),
    val_fraction=st.floats(0, 0.9),
    seed=st.integers(0, 2**31 - 1),
)
def test_iid_every_example_in_exactly_one_client(n_clients, extra, classes, val_fraction, seed):
    n = n_clients + extra
    labels = np.random.default_rng(seed).integers(0, classes, n)
    parts = partition(labels, IidPartitioner(n_clients), val_fraction, seed)
    assert len(parts) == n_clients
    assert_exact_cover(parts, n)
    sizes = [len(t) + len(v) for t, v in zip(parts.train, parts.val)]
    assert max(sizes) - min(sizes) <= 1  # IID: equal shares
    for t, v in zip(parts.train, parts.val):
        assert len(v) == int((len(t) + len(v)) * val_fraction)
    again = partition(labels, IidPartitioner(n_clients), val_fraction, seed)
    assert all(
        np.array_equal(a, b) for a, b in zip(parts.train + parts.val, again.train + again.val)
    )


@SETTINGS
@given(
    n_clients=st.integers(1, 8),
    n=st.integers(50, 300),
    alpha=st.floats(0.05, 20),
    val_fraction=st.floats(0, 0.5),
    seed=st.integers(0, 2**31 - 1),
)
def test_dirichlet_every_example_in_exactly_one_client(n_clients, n, alpha, val_fraction, seed):
    labels = np.random.default_rng(seed).integers(0, 5, n)
    p = DirichletPartitioner(n_clients, "label", alpha=alpha, min_partition_size=0, seed=seed)
    assert_exact_cover(partition(labels, p, val_fraction, seed), n)


@SETTINGS
@given(n_clients=st.integers(1, 10), extra=st.integers(60, 300), seed=st.integers(0, 2**31 - 1))
def test_linear_sizes_every_example_in_exactly_one_client(n_clients, extra, seed):
    n = n_clients * (n_clients + 1) // 2 + extra
    labels = np.random.default_rng(seed).integers(0, 3, n)
    parts = partition(labels, LinearPartitioner(n_clients), 0.1, seed)
    assert_exact_cover(parts, n)
