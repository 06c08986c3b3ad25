"""Datasets with the reference preprocessing, data sources by name, and top-1 evaluation."""

# the built-in data sources register themselves (fashion-mnist, imagefolder, npz, python)
from edgeslim.data import fashion_source, imagefolder, npz, python_source  # noqa: F401
from edgeslim.data.fashion_mnist import CLASSES, NUM_CLASSES, FashionMNIST, check_root, default_root, preprocess
from edgeslim.data.loaders import calibration_subset, evaluate, fashion_mnist_loader
from edgeslim.data.sources import DATA_SOURCES, DataOptions, DataSource, open_data, register_data_source

__all__ = [
    "CLASSES",
    "DATA_SOURCES",
    "NUM_CLASSES",
    "DataOptions",
    "DataSource",
    "FashionMNIST",
    "calibration_subset",
    "check_root",
    "default_root",
    "evaluate",
    "fashion_mnist_loader",
    "open_data",
    "preprocess",
    "register_data_source",
]
