"""Launch arguments checked against a kernel's C signature (:class:`~.parse.Param` list), with
CuPy's rules made strict; shared by the ``cuda`` backend and the ``emu`` backend.

* a pointer parameter takes a C-contiguous array (NumPy, or anything array-like with ``dtype``,
  ``flags`` and ``data``/``ctypes``: CuPy) whose dtype matches the pointee type
  (``float*`` -> float32, ``int*`` -> int32, ``unsigned int*`` -> uint32, ``long long*`` -> int64,
  ``unsigned char*`` -> uint8, ...; ``void*`` and unknown struct types take any dtype;
  ``float2*``/``float4*`` take float32 arrays);
* a scalar parameter takes a NumPy scalar of exactly the matching dtype (``int`` -> np.int32,
  ``unsigned int`` -> np.uint32, ``float`` -> np.float32, ``long long`` -> np.int64,
  ``double`` -> np.float64, ``size_t`` -> np.uint64). A Python ``int``/``float`` is rejected:
  CuPy would silently pass it as 64 bits.

Errors are ``TypeError`` naming the kernel, the parameter index and name, expected and got.
"""
from __future__ import annotations

import numpy as np

__all__ = ["check_launch_args"]


def _describe(a):
    if isinstance(a, np.generic):
        return f"np.{type(a).__name__}"
    dt = getattr(a, "dtype", None)
    if dt is not None and hasattr(a, "shape"):
        return f"{type(a).__module__.split('.')[0]}.ndarray(dtype={dt}, shape={tuple(a.shape)})"
    return f"{type(a).__name__} {a!r}"[:80]


def check_launch_args(kernel_name: str, params, args) -> list:
    """Check ``args`` against ``params``; return the argument list (arrays unchanged, scalars as
    NumPy scalars of the parameter's dtype). Raises ``TypeError`` on any mismatch."""
    args = list(args) if isinstance(args, (list, tuple)) else None
    if args is None:
        raise TypeError(f"kernel {kernel_name}: args must be a tuple or list")
    if len(args) != len(params):
        sig = ", ".join(f"{p.ctype} {p.name}" for p in params)
        raise TypeError(f"kernel {kernel_name}: expected {len(params)} arguments ({sig}), "
                        f"got {len(args)}")
    out = []
    for p, a in zip(params, args):
        where = f"kernel {kernel_name}: argument {p.index} ({p.ctype} {p.name})"
        if p.is_pointer:
            if isinstance(a, np.generic) or not hasattr(a, "dtype") or not hasattr(a, "shape"):
                raise TypeError(f"{where}: expected an array"
                                + (f" of {p.dtype}" if p.dtype is not None else "")
                                + f", got {_describe(a)}")
            if p.dtype is not None and np.dtype(a.dtype) != p.dtype:
                raise TypeError(f"{where}: expected an array of {p.dtype}, got {_describe(a)}")
            flags = getattr(a, "flags", None)
            if flags is not None and not flags.c_contiguous:
                raise TypeError(f"{where}: array must be C-contiguous, got {_describe(a)}")
            out.append(a)
        else:
            if not isinstance(a, np.generic) or np.dtype(type(a)) != p.dtype:
                raise TypeError(f"{where}: expected np.{p.dtype.type.__name__}, "
                                f"got {_describe(a)}")
            out.append(a)
    return out
