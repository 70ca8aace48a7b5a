"""Which element types the SGEMM kernels read and write (gpucnn/ops/gemm.py launches them):
float32 everywhere, or — precision bf16, the fully connected layer on bf16 activations
(gpucnn/ops/linear.py, gpucnn/ops/storage.py) — bf16 bits (uint16) for some of A, B, C. The
kernels are in kernels/sgemm_tc.cu; tests: tests/ops/test_linear_bf16io.py."""
from __future__ import annotations

import numpy as np

from .storage import BF16, FLOAT32, is_bf16

__all__ = ["BF16_GEMMS", "gemm_io_suffix"]

# The GEMMs on bf16 activations (precision bf16, kernels/sgemm_tc.cu): (layout XY, the dtypes
# of A, B, C) -> the suffix of the kernel sgemm_bf16_XY<suffix>. The weights and the weight
# gradient stay float32, so which operands are bf16 depends on the product:
BF16_GEMMS = {
    ("nt", (BF16, FLOAT32, BF16)): "_bf16io",    # y = x @ w^T
    ("nn", (BF16, FLOAT32, BF16)): "_bf16io",    # dx = dy @ w
    ("tn", (BF16, BF16, FLOAT32)): "_bf16io",    # dW = dy^T @ x
    ("nt", (BF16, FLOAT32, FLOAT32)): "_bf16a",  # the float32 parts of a split y
    ("nn", (BF16, FLOAT32, FLOAT32)): "_bf16a",  # ... of a split dx
}


def gemm_io_suffix(trans_a, trans_b, dtypes, precision):
    """The kernel-name suffix of a GEMM whose A, B, C have ``dtypes`` (None: all float32):
    ``""`` for float32 ones, else the :data:`BF16_GEMMS` entry, which needs precision bf16;
    another combination is a TypeError."""
    if dtypes is None:
        return ""
    dtypes = tuple(np.dtype(d) for d in dtypes)
    if not any(is_bf16(d) for d in dtypes):
        return ""
    xy = f"{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}"
    if precision != "bf16":
        raise TypeError(f"sgemm: bf16 operands (uint16) need precision bf16, not {precision}")
    suffix = BF16_GEMMS.get((xy, dtypes))
    if suffix is None:
        raise TypeError(f"sgemm: no {xy} kernel for A, B, C of dtypes "
                        f"{tuple(str(d) for d in dtypes)} (the bf16 ones: "
                        f"{sorted((k[0], tuple(map(str, k[1]))) for k in BF16_GEMMS)})")
    return suffix
