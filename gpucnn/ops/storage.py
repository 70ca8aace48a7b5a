"""How activations are held: float32, or — under precision ``bf16`` on a device backend —
bfloat16, as PyTorch's ``torch.autocast(dtype=torch.bfloat16)`` holds them.

NumPy and CuPy have no bfloat16 dtype: a bf16 tensor is a **uint16 array of the bits**
(:data:`BF16`; ``gpucnn.ops.precision.round_bf16`` / ``bf16_to_float32`` convert on the host,
``kernels/bf16_storage.cuh`` in kernels, ``B.to_bf16`` / ``B.from_bf16`` on any backend). The
functional API takes and returns float32 in every precision; under precision bf16 the ops
that have bf16 kernels (named ``<kernel>_bf16io``: convolution (implicit GEMM), linear, ReLU,
dropout, max-pool, LRN) also take uint16 tensors and then return uint16 ones (in any other
precision a uint16 tensor is refused: 16-bit data is never read as bfloat16). Their plain definitions on the
``reference`` backend do the same (widen, compute, round the activation result once:
``gpucnn.ops.dispatch.bf16_activations``), so the reference is the oracle of the kernels,
rounding points included. The layer graph (:class:`gpucnn.nn.Sequential`) uses that: under
``bf16`` its layers pass bf16 tensors to each other, and a layer without bf16 kernels
(``bf16_native`` False: average and LP pooling) gets its input converted to float32 and its
output rounded back (what autocast does around its float32 ops). Float32 always: weights
(the master copy), their gradients, optimizer state, max-pool switches (int32), dropout's
mask, LRN's scale, the loss and softmax; the network's logits are returned as float32 (their
values those of the last layer's bf16 output, as autocast's).
"""
from __future__ import annotations

import numpy as np

__all__ = ["BF16", "FLOAT32", "io_kernel", "is_bf16", "activation_dtype",
           "activation_storage", "activation_itemsize",
           "common_dtype"]

BF16 = np.dtype(np.uint16)
FLOAT32 = np.dtype(np.float32)
# The suffix of a kernel whose activation tensors (inputs, outputs) are bf16.
IO_SUFFIX = "_bf16io"


def is_bf16(a):
    """Whether ``a`` (an array or a dtype) holds bf16 bits."""
    return np.dtype(getattr(a, "dtype", a)) == BF16


def io_kernel(name, dtype):
    """The kernel of ``name`` for activations of ``dtype``: ``name`` for float32, else
    ``name`` + ``_bf16io``."""
    return name + IO_SUFFIX if is_bf16(dtype) else name


def activation_dtype(backend):
    """How ``backend``'s layer graph holds activations: :data:`BF16` under precision ``bf16``
    on a device backend (and on ``reference``, the oracle of the device's), else
    :data:`FLOAT32` (``numpy`` computes in fp32 only)."""
    if backend.precision == "bf16" and backend.kind in ("device", "reference"):
        return BF16
    return FLOAT32


def activation_storage(backend):
    """``"bf16"`` or ``"float32"``: :func:`activation_dtype` as the metrics and bench JSON
    record it."""
    return "bf16" if activation_dtype(backend) == BF16 else "float32"


def activation_itemsize(backend):
    """Bytes per activation element, at least, for memory estimates: 2 for bf16, 8 for the
    reference's float64 definitions, else 4."""
    if activation_dtype(backend) == BF16:
        return 2
    return 8 if backend.name == "reference" else 4


def common_dtype(op, **arrays):
    """The activations' dtype of a call to ``op`` (its arrays already checked with
    ``dtype="activation"``): the named arrays are all float or all bf16 bits; mixing the two
    is a TypeError naming them."""
    (first, a), *rest = arrays.items()
    for name, other in rest:
        if is_bf16(other) != is_bf16(a):
            raise TypeError(f"{op}: {first} has dtype {a.dtype} and {name} {other.dtype}: "
                            f"activations are all float or all bf16 bits (uint16)")
    return a.dtype
