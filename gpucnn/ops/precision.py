"""The precision of GEMMs and convolutions, and the rounding references (pure NumPy) that the
emulator's tensor-core support (``nvcuda::wmma`` in ``gpucnn/backends/emu/cuda_emu.h``) and
the tests of tensor-core kernels are checked against.

One setting, four values (:data:`PRECISIONS`), one meaning on every backend and op that
multiplies (conv forward / backward-data / backward-weights, im2col or implicit; linear):

* ``fp32``: CUDA cores, FP32 operands and accumulation (``kernels/sgemm.cu``,
  ``conv_implicit.cu``); the default.
* ``tf32``: tensor cores, operands rounded to TF32 (10 mantissa bits, ``cvt.rna``), FP32
  accumulation (``kernels/sgemm_tc.cu``, ``conv_implicit_tc.cu``).
* ``3xtf32``: tensor cores, FP32-accurate: each operand split into two TF32 parts, three
  products accumulated in FP32.
* ``bf16``: mixed precision: tensor cores, operands rounded to bfloat16 (7 mantissa bits) as
  the kernels stage them, FP32 accumulation; the layer graph holds activations in bf16
  (:mod:`gpucnn.ops.storage` says which tensors), while weights (the FP32 master copy),
  their gradients, optimizer state, loss and softmax stay float32.

Everything else (pooling, activations, LRN, loss, optimizers) computes in FP32 whatever the
setting; the functional API takes and returns float32 arrays in every precision (under bf16
the ops with bf16 kernels also take and return bf16 bits, gpucnn/ops/storage.py).

TF32 has float32's sign and 8-bit exponent and 10 explicit mantissa bits; a TF32 value is
held in a float32 whose low 13 mantissa bits are zero. BF16 is the high half of a float32
(7 explicit mantissa bits); NumPy has no bfloat16 dtype, so BF16 buffers are uint16 arrays
of the bits, as a kernel's ``__nv_bfloat16*`` sees them.

All functions work bit by bit on float32 inputs (anything else is converted to float32
first) and return arrays of the input's shape.
"""
from __future__ import annotations

import numpy as np

import os

__all__ = ["PRECISIONS", "TENSOR_CORE_MIN_CC", "check_precision", "default_precision",
           "round_operand", "TF32_DROP_BITS", "round_tf32", "truncate_tf32", "round_bf16",
           "bf16_to_float32"]

PRECISIONS = ("fp32", "tf32", "3xtf32", "bf16")
# TF32 and BF16 tensor cores (WMMA m16n16k8 / m16n16k16) arrived with compute capability 8.0
# (A100); below it the tensor-core precisions fall back to fp32 (gpucnn/backends/cuda.py).
TENSOR_CORE_MIN_CC = (8, 0)


def check_precision(value, what="precision"):
    """``value`` as one of :data:`PRECISIONS` (case-insensitive), else a ValueError naming
    ``what`` and the four values."""
    v = value.strip().lower() if isinstance(value, str) else value
    if v not in PRECISIONS:
        raise ValueError(f"{what} must be one of {', '.join(PRECISIONS)}; got {value!r}")
    return v


def default_precision():
    """``$GPUCNN_PRECISION`` (checked), else ``fp32``."""
    env = os.environ.get("GPUCNN_PRECISION")
    return check_precision(env, "GPUCNN_PRECISION") if env else "fp32"


def round_operand(x, precision):
    """A GEMM operand as the tensor cores of ``precision`` multiply it, as float32 values:
    rounded to TF32 (``tf32``) or to bfloat16 (``bf16``); ``fp32`` and ``3xtf32`` (whose
    split represents the operand to within float32's last bits) leave it as it is. The
    rounded reference of the tests is the plain definition applied to these operands."""
    precision = check_precision(precision)
    if precision == "tf32":
        return round_tf32(x)
    if precision == "bf16":
        return bf16_to_float32(round_bf16(x))
    return np.asarray(x, dtype=np.float32)

# float32 mantissa bits a TF32 value leaves out (23 explicit - 10)
TF32_DROP_BITS = 13
_TF32_LOW = np.uint32((1 << TF32_DROP_BITS) - 1)
_EXP_MASK = np.uint32(0x7F800000)
_ABS_MASK = np.uint32(0x7FFFFFFF)
_F32_QUIET = np.uint32(0x00400000)


def _bits(x):
    return np.array(x, dtype=np.float32, copy=True).view(np.uint32)


def _is_nan(u):
    return (u & _ABS_MASK) > _EXP_MASK


def _tf32_nan(u):
    """A NaN stays a NaN: its sign kept, the quiet bit set (so that clearing the low 13 bits
    of a NaN whose payload lies only there cannot turn it into an infinity)."""
    return (u & ~_TF32_LOW) | _F32_QUIET


def round_tf32(x):
    """PTX ``cvt.rna.tf32.f32`` (CUDA's ``wmma::__float_to_tf32``): keep 10 explicit mantissa
    bits, rounding to nearest with ties **away from zero**; the result is a float32 with its
    low 13 bits zero.

    Adding half a TF32 unit (bit 12) to the magnitude bits and clearing the low 13 rounds the
    magnitude half-up, which in sign-magnitude is ties-away-from-zero; a carry out of the
    mantissa moves to the next binade, subnormals included. Overflow: a finite value at or
    above the midpoint between the largest TF32 value (0x7F7FE000, about 3.4026e38) and
    2^128 carries into the exponent and becomes +-inf, as IEEE rounding to nearest does.
    inf stays inf; NaN stays NaN (see :func:`_tf32_nan`)."""
    u = _bits(x)
    finite = (u & _EXP_MASK) != _EXP_MASK
    half = np.uint32(1 << (TF32_DROP_BITS - 1))
    r = np.where(finite, (u + half) & ~_TF32_LOW, u)
    r = np.where(_is_nan(u), _tf32_nan(u), r)
    return r.astype(np.uint32).view(np.float32)


def truncate_tf32(x):
    """What a tensor core reads from a float32 that was not converted with
    ``__float_to_tf32``: the low 13 mantissa bits dropped (rounding toward zero). Never
    overflows; inf stays inf, NaN stays NaN."""
    u = _bits(x)
    r = np.where(_is_nan(u), _tf32_nan(u), u & ~_TF32_LOW)
    return r.astype(np.uint32).view(np.float32)


# the bf16 NaN that CUDA's __float2bfloat16_rn returns for any NaN input
BF16_NAN = np.uint16(0x7FFF)


def round_bf16(x):
    """float32 -> bfloat16 bits (uint16), rounding to nearest, ties to even, as CUDA's
    ``__float2bfloat16`` / ``__float2bfloat16_rn``. Subnormals round like any other value
    (bf16 has float32's exponent range); a value at or above the midpoint between the
    largest bf16 (0x7F7F) and 2^128 becomes +-inf; inf stays inf; every NaN becomes
    :data:`BF16_NAN`."""
    u = _bits(x)
    # ties to even: the bias is half a bf16 unit minus one, plus the kept part's lowest bit
    bias = np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    r = ((u + bias) >> np.uint32(16)).astype(np.uint16)
    return np.where(_is_nan(u), BF16_NAN, r).astype(np.uint16)


def bf16_to_float32(bits):
    """bfloat16 bits (uint16 array) -> the float32 values they stand for (exact)."""
    b = np.asarray(bits)
    if b.dtype != np.uint16:
        raise TypeError(f"bf16_to_float32 takes uint16 bit patterns, not {b.dtype}")
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)
