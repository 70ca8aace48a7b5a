"""The ``reference`` backend: every op's plain definition (``gpucnn/ops/*reference*``), in
float32 or float64. It is the oracle the tests compare every fast path with (the tuned
``numpy`` backend, and the kernels on ``emu`` and ``cuda``); users can select it
(``--backend reference``) to check a result. Slow on purpose: no threads, caches or fusion.
"""
from __future__ import annotations

import numpy as np

from ..ops.precision import PRECISIONS
from .base import Backend

__all__ = ["ReferenceBackend"]


class _Rounding:
    """The reference backend's context: the precision its multiplying ops round operands to."""
    __slots__ = ("precision",)

    def __init__(self, precision):
        self.precision = precision


class ReferenceBackend(Backend):
    name = "reference"
    kind = "reference"
    xp = np
    float_dtypes = (np.dtype(np.float32), np.dtype(np.float64))
    conv_policy = "fixed"  # algo= is checked (a "cpu" name or "auto"), then ignored
    # tf32 / bf16: the plain definitions of operands rounded as the tensor cores round them
    # (precision.round_operand); 3xtf32 is FP32-accurate: computed as fp32.
    precisions = PRECISIONS

    def use_precision(self, precision):
        super().use_precision(precision)
        self.ctx = _Rounding(precision)

    def describe(self):
        return "reference (plain NumPy definitions, CPU)"

    def asarray(self, a, dtype=None):
        a = np.asarray(a)
        if dtype is None:
            dtype = np.int32 if np.issubdtype(a.dtype, np.integer) else np.float32
        return np.ascontiguousarray(a, dtype=dtype)

    def to_numpy(self, a):
        return np.array(a, copy=True)
