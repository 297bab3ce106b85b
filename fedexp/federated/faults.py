"""Injected faults (`faults.*` in the config): failing clients and stragglers.

Both are seeded, so a faulty run repeats exactly, and both reach the strategy through
Flower's own failure path (the `failures` list of `aggregate_fit`/`aggregate_evaluate`),
so the configured strategy's `accept_failures` decides what a failure means.

- `client_failure_rate`: every `fit` call raises `InjectedClientFailure` inside the
  ClientApp with this probability, drawn independently per (seed, round, partition).
  Flower turns the exception into an error reply, as it would for a crashing client.
- `straggler_rate`: each round, this fraction (rounded) of the clients sampled for
  training drops out of the round: the server's request to them is never answered, so
  their `fit` (and their `evaluate`, if they are also sampled for it) ends in a
  `StragglerTimeout` on the server side, which is what Flower's client proxy raises when
  a real client's reply does not arrive before the round's timeout. The client does no
  work, as a device that went offline would not.
"""

from __future__ import annotations

import random

import numpy as np


class InjectedClientFailure(RuntimeError):
    """A fit call failed on purpose (`faults.client_failure_rate`)."""


class StragglerTimeout(TimeoutError):
    """A sampled client never answered this round (`faults.straggler_rate`)."""


_FAIL_SALT, _STRAGGLER_SALT = 3, 4


def fit_fails(seed: int, server_round: int, partition_id: int, rate: float) -> bool:
    """Whether this client's fit call in this round fails (probability `rate`)."""
    if rate <= 0:
        return False
    u = np.random.default_rng([seed, server_round, partition_id, _FAIL_SALT]).random()
    return bool(u < rate)


def stragglers(seed: int, server_round: int, sampled: list[int], rate: float) -> set[int]:
    """The partitions among `sampled` that drop out of this round: round(rate * len)."""
    k = round(rate * len(sampled))
    if k <= 0:
        return set()
    rng = random.Random(
        int(np.random.SeedSequence([seed, server_round, _STRAGGLER_SALT]).generate_state(1)[0])
    )
    return set(rng.sample(sorted(sampled), k))
