"""Data: load a dataset into arrays (`datasets`), split it among clients (`partition`)."""

from .datasets import DatasetError, ImageData
from .partition import Partitions, label_counts, partition

__all__ = ["DatasetError", "ImageData", "Partitions", "label_counts", "partition"]
