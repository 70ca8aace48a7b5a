"""gpucnn: a CNN engine with a NumPy reference, hand-written CUDA kernels, and a CPU emulator."""
__version__ = "0.1.0"

from .backends import get_backend  # noqa: E402

__all__ = ["get_backend", "__version__"]
