"""Backend selection: ``get_backend("numpy" | "cuda" | "emu" | "reference" | "auto")``.

``auto`` picks ``cuda`` only when CuPy imports, a device exists and a tiny kernel compiles and
runs on it; otherwise ``numpy``, and says why once (a log line; ``gpucnn info`` shows it too).
``GPUCNN_BACKEND`` overrides the default name.

``precision`` (``fp32``, ``tf32``, ``3xtf32``, ``bf16``; gpucnn/ops/precision.py) is the
arithmetic of the GEMMs and convolutions: omitted, ``$GPUCNN_PRECISION`` or ``fp32``. Backends
are cached per (name, precision). ``numpy`` computes in fp32 only (a ValueError for the others;
``auto`` falling back to numpy falls back to fp32 too, with a log line).
"""
from __future__ import annotations

import logging
import os
import warnings

from .base import Backend
from ..ops.precision import check_precision, default_precision
from .errors import BackendUnavailable, GpuUnusable, GpuUnusableWarning

__all__ = ["Backend", "BackendUnavailable", "GpuUnusable", "GpuUnusableWarning", "get_backend",
           "auto_reason", "BACKEND_NAMES"]

BACKEND_NAMES = ("numpy", "cuda", "emu", "reference", "auto")
log = logging.getLogger("gpucnn")
_cache: dict[tuple, Backend] = {}
_auto_reason: str | None = None


def _make(name, precision):
    if name == "numpy":
        from .numpy_backend import NumpyBackend
        backend = NumpyBackend()
    elif name == "cuda":
        from .cuda import make_cuda_backend
        backend = make_cuda_backend()
    elif name == "emu":
        from .device import make_emu_backend
        backend = make_emu_backend()
    elif name == "reference":
        from .reference import ReferenceBackend
        backend = ReferenceBackend()
    else:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}; got {name!r}")
    backend.use_precision(precision)
    return backend


def _cpu_fallback(precision):
    if precision != "fp32":
        log.warning("gpucnn: precision %s falls back to fp32 on the numpy backend (no GPU)",
                    precision)
    return get_backend("numpy", "fp32")


def _choose_auto(precision):
    global _auto_reason
    try:
        backend = get_backend("cuda", precision)
        _auto_reason = f"cuda: {backend.describe()}"
        return backend
    except GpuUnusable as exc:
        # A GPU is there but unusable: the engine's reason to exist is at stake, so say it
        # loudly (a warning, not just a log line), with the fix.
        _auto_reason = f"numpy, because a GPU is present but unusable: {exc}"
        warnings.warn(f"gpucnn: training on the CPU (numpy backend): {exc}",
                      GpuUnusableWarning, stacklevel=3)
        log.error("gpucnn: using the numpy backend although a GPU is present (%s)", exc)
        return _cpu_fallback(precision)
    except BackendUnavailable as exc:
        _auto_reason = f"numpy, because the cuda backend is unavailable: {exc}"
        log.warning("gpucnn: using the numpy backend (%s)", exc)
        return _cpu_fallback(precision)


def get_backend(name=None, precision=None):
    """The backend object for ``name`` (default: $GPUCNN_BACKEND, else "auto") computing its
    GEMMs and convolutions in ``precision`` (default: $GPUCNN_PRECISION, else "fp32");
    cached per (name, precision)."""
    from_env = precision is None and bool(os.environ.get("GPUCNN_PRECISION"))
    precision = default_precision() if precision is None else check_precision(precision)
    if name is None:
        name = os.environ.get("GPUCNN_BACKEND", "auto")
    if isinstance(name, Backend):
        return name
    name = str(name).lower()
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}; got {name!r}")
    key = (name, precision)
    if key not in _cache:
        try:
            _cache[key] = _choose_auto(precision) if name == "auto" else _make(name, precision)
        except ValueError as exc:
            if from_env and f"not {precision}" in str(exc):  # (Backend.use_precision's)
                # say where a precision nobody passed came from
                raise ValueError(f"{exc} (the precision is $GPUCNN_PRECISION's)") from None
            raise
    return _cache[key]


def auto_reason():
    """Why ``auto`` chose what it chose (runs the probe if it has not run yet)."""
    if _auto_reason is None:
        get_backend("auto")
    return _auto_reason
