"""Backend selection: ``get_backend("numpy" | "cuda" | "emu" | "reference" | "auto")``.

``auto`` picks ``cuda`` only when CuPy imports, a device exists and a tiny kernel compiles and
runs on it; otherwise ``numpy``, and says why once (a log line; ``gpucnn info`` shows it too).
``GPUCNN_BACKEND`` overrides the default name.
"""
from __future__ import annotations

import logging
import os
import warnings

from .base import Backend
from .errors import BackendUnavailable, GpuUnusable, GpuUnusableWarning

__all__ = ["Backend", "BackendUnavailable", "GpuUnusable", "GpuUnusableWarning", "get_backend",
           "auto_reason", "BACKEND_NAMES"]

BACKEND_NAMES = ("numpy", "cuda", "emu", "reference", "auto")
log = logging.getLogger("gpucnn")
_cache: dict[str, Backend] = {}
_auto_reason: str | None = None


def _make(name):
    if name == "numpy":
        from .numpy_backend import NumpyBackend
        return NumpyBackend()
    if name == "cuda":
        from .cuda import make_cuda_backend
        return make_cuda_backend()
    if name == "emu":
        from .device import make_emu_backend
        return make_emu_backend()
    if name == "reference":
        from .reference import ReferenceBackend
        return ReferenceBackend()
    raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}; got {name!r}")


def _choose_auto():
    global _auto_reason
    try:
        backend = get_backend("cuda")
        _auto_reason = f"cuda: {backend.describe()}"
        return backend
    except GpuUnusable as exc:
        # A GPU is there but unusable: the engine's reason to exist is at stake, so say it
        # loudly (a warning, not just a log line), with the fix.
        _auto_reason = f"numpy, because a GPU is present but unusable: {exc}"
        warnings.warn(f"gpucnn: training on the CPU (numpy backend): {exc}",
                      GpuUnusableWarning, stacklevel=3)
        log.error("gpucnn: using the numpy backend although a GPU is present (%s)", exc)
        return get_backend("numpy")
    except BackendUnavailable as exc:
        _auto_reason = f"numpy, because the cuda backend is unavailable: {exc}"
        log.warning("gpucnn: using the numpy backend (%s)", exc)
        return get_backend("numpy")


def get_backend(name=None):
    """The backend object for ``name`` (default: $GPUCNN_BACKEND, else "auto"); cached."""
    if name is None:
        name = os.environ.get("GPUCNN_BACKEND", "auto")
    if isinstance(name, Backend):
        return name
    name = str(name).lower()
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}; got {name!r}")
    if name not in _cache:
        _cache[name] = _choose_auto() if name == "auto" else _make(name)
    return _cache[name]


def auto_reason():
    """Why ``auto`` chose what it chose (runs the probe if it has not run yet)."""
    if _auto_reason is None:
        get_backend("auto")
    return _auto_reason
