"""Federated methods, one module each: the server strategy and the client half side by side.

| module | strategy | client half |
|---|---|---|
| (Flower) | `flwr.server.strategy.FedAvg`, `FedAdam`, ... | `base.ClientMethod` (plain local training) |
| `fedprox` | `flwr.server.strategy.FedProx` | `FedProxClient` |
| `qfedavg` | `QFedAvg` | `QFedAvgClient` |
| `scaffold` | `Scaffold` | `ScaffoldClient` |
| `fednova` | `FedNova` | `FedNovaClient` |
| `feddyn` | `FedDyn` | `FedDynClient` |
| `fedbn` | `FedBN` | `FedBNClient` (personalised: keeps its BatchNorm) |
| `fedper` | `FedPer` | `FedPerClient` (personalised: keeps its head) |
| `ditto` | `Ditto` | `DittoClient` (personalised: keeps a personal model) |

`base.py` explains the hooks. A new method is one module here (or anywhere importable)
and one `conf/strategy/NAME.yaml` naming both halves.
"""

from .base import ClientMethod, ClientState, FedAvgBased, LocalEvaluation, LocalFit

__all__ = ["ClientMethod", "ClientState", "FedAvgBased", "LocalEvaluation", "LocalFit"]
