"""The server side of a simulated federation: fedexp's parts around the configured strategy
(see strategy.py for what each module does)."""

from .evaluation import AllClientsEvaluation
from .guard import RunEnded
from .links import ClientLink, RunStopped
from .sampling import PartitionClientManager
from .strategy import ServerStrategy

__all__ = [
    "AllClientsEvaluation",
    "ClientLink",
    "PartitionClientManager",
    "RunEnded",
    "RunStopped",
    "ServerStrategy",
]
