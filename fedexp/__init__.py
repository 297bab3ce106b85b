"""fedexp: Hydra-configured federated learning experiments on Flower and PyTorch."""

__version__ = "0.1.0"
