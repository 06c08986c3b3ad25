"""Deep Compression storage: pruning, trained codebooks and entropy coding in one ``.esz`` file."""

from edgeslim.deep_compression.api import PackResult, pack, unpack
from edgeslim.deep_compression.config import Init, PackConfig
from edgeslim.deep_compression.esz import EszError

__all__ = ["EszError", "Init", "PackConfig", "PackResult", "pack", "unpack"]
