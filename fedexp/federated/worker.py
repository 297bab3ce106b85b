"""Runs in every Ray worker process as it starts (Ray's `worker_process_setup_hook`).

Ray starts its worker processes while the driver is still setting up, and Flower turns them
into client actors later. Importing torch, Flower and fedexp's client here, at process
start, takes those seconds off the first round instead of adding them to it.
"""


def warm_up() -> None:
    import flwr.simulation.ray_transport.ray_actor  # noqa: F401  (the actor class Flower uses)
    import torch  # noqa: F401

    from . import client  # noqa: F401
