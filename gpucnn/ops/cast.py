"""float32 <-> bf16 activations (``kernels/cast.cu``; tests: ``tests/ops/test_cast.py``):
``B.to_bf16(x)`` rounds a float32 tensor to bfloat16 bits (uint16, gpucnn/ops/storage.py;
nearest, ties to even, every NaN to 0x7FFF: CUDA's ``__float2bfloat16_rn``) and
``B.from_bf16(b)`` gives the float32 values of bf16 bits (exact). Every backend has them: on
the CPU they are :func:`~gpucnn.ops.precision.round_bf16` and
:func:`~gpucnn.ops.precision.bf16_to_float32`, which are the definitions."""
from __future__ import annotations

import math

import numpy as np

from .dispatch import Op, api, plain
from .launch import plan_1d
from .precision import bf16_to_float32, round_bf16
from .storage import BF16, FLOAT32

__all__ = ["TO_BF16", "FROM_BF16", "to_bf16_plan", "from_bf16_plan"]


def _device(name, out_dtype):
    def make(ctx, shape):
        n = math.prod(shape)
        launch, empty, count = plan_1d(ctx, name, n), ctx.empty, np.int32(n)

        def run(x):
            out = empty(shape, out_dtype)
            launch.fire((x, out, count))
            return out
        return run
    return make


TO_BF16 = Op("to_bf16", plain(round_bf16, False), device=_device("cast_to_bf16", BF16))
FROM_BF16 = Op("from_bf16", plain(bf16_to_float32, False),
               device=_device("cast_from_bf16", FLOAT32))


def to_bf16_plan(backend, x):
    """x: the backend's float dtype (the reference's float64 is rounded to float32 first)."""
    backend.check(x, "x")
    return backend.plan(TO_BF16, (x.shape,), ("x", x.shape, (x.dtype,)))


def from_bf16_plan(backend, x):
    backend.check(x, "x", dtype=np.uint16)
    return backend.plan(FROM_BF16, (x.shape,), ("x", x.shape, (BF16,)))


@api
def to_bf16(backend, x):
    """x (float32; float64 on the reference, via float32) rounded to bfloat16, as a uint16
    array of the bits."""
    return to_bf16_plan(backend, x).run(x)


@api
def from_bf16(backend, x):
    """The float32 values of bfloat16 bits x (a uint16 array)."""
    return from_bf16_plan(backend, x).run(x)
