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

:func:`check_launch` checks a whole launch: the grid and block against CUDA's limits
(:mod:`.limits`), the dynamic shared memory, the arguments as above and, optionally, that
every array is of the backend's array type. Every launcher that stands for a GPU launch (the
``cuda`` backend's kernels, the ``null`` device's) calls it, so they refuse the same launches
with the same messages.
"""
from __future__ import annotations

import numpy as np

from .limits import BLOCK_DIM_MAX, GRID_DIM_MAX, MAX_THREADS_PER_BLOCK

__all__ = ["check_launch_args", "check_launch", "dim3"]


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


def dim3(v, what, kernel_name):
    """``v`` (an int or a tuple of 1-3 ints) as a 3-tuple of ints; ``what`` is "grid" or
    "block". Raises ``TypeError``/``ValueError`` naming the kernel."""
    if isinstance(v, (int, np.integer)):
        v = (int(v),)
    try:
        dims = tuple(int(x) for x in v)
    except TypeError:
        raise TypeError(f"kernel {kernel_name}: {what} must be an int or a tuple of 1-3 ints, "
                        f"got {v!r}") from None
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"kernel {kernel_name}: {what} must have 1 to 3 dimensions, "
                         f"got {v!r}")
    return dims + (1,) * (3 - len(dims))


def _check_dims(kernel_name, what, dims, limits):
    for i, (d, lim) in enumerate(zip(dims, limits)):
        if not 1 <= d <= lim:
            raise ValueError(f"kernel {kernel_name}: {what}{'xyz'[i]} = {d} is outside "
                             f"[1, {lim}] ({what} {dims})")


def check_launch(kernel_name: str, params, grid, block, args, shared_mem=0,
                 array_type=None, array_note=""):
    """Check one launch of ``kernel_name`` (C signature ``params``) as a GPU would take it;
    return the normalised ``(grid, block, args, shared_mem)``: grid and block as 3-tuples of
    ints, args as a tuple (see :func:`check_launch_args`), shared_mem as an int.

    ``array_type``: when given, every pointer argument must be an instance of it (the
    backend's device array); ``array_note`` ends that error (what to do instead). Raises
    ``ValueError`` for geometry outside CUDA's limits, ``TypeError`` for wrong arguments.
    """
    grid = dim3(grid, "grid", kernel_name)
    block = dim3(block, "block", kernel_name)
    _check_dims(kernel_name, "grid", grid, GRID_DIM_MAX)
    _check_dims(kernel_name, "block", block, BLOCK_DIM_MAX)
    if block[0] * block[1] * block[2] > MAX_THREADS_PER_BLOCK:
        raise ValueError(f"kernel {kernel_name}: block {block} has more than "
                         f"{MAX_THREADS_PER_BLOCK} threads")
    shared_mem = int(shared_mem)
    if shared_mem < 0:
        raise ValueError(f"kernel {kernel_name}: shared_mem must be >= 0, got {shared_mem}")
    args = check_launch_args(kernel_name, params, args)
    if array_type is not None:
        for p, a in zip(params, args):
            if p.is_pointer and not isinstance(a, array_type):
                msg = (f"kernel {kernel_name}: argument {p.index} ({p.ctype} {p.name}) is a "
                       f"{type(a).__module__}.{type(a).__name__}")
                raise TypeError(f"{msg}; {array_note}" if array_note else msg)
    return grid, block, tuple(args), shared_mem
