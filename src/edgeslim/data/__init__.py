"""Datasets with the reference preprocessing, and top-1 evaluation."""

from edgeslim.data.fashion_mnist import CLASSES, NUM_CLASSES, FashionMNIST, check_root, default_root, preprocess
from edgeslim.data.loaders import calibration_subset, evaluate, fashion_mnist_loader

__all__ = [
    "CLASSES",
    "NUM_CLASSES",
    "FashionMNIST",
    "calibration_subset",
    "check_root",
    "default_root",
    "evaluate",
    "fashion_mnist_loader",
    "preprocess",
]
