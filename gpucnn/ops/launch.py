"""Launch geometry of the device ops, shared by ``cuda`` and ``emu``.

Every device op launches through these helpers (or computes its grid next to its kernel's
launch, in its op module), so the emulator executes exactly the launch a GPU would get. Block
sizes come from each kernel's ``// gpucnn: block=`` annotation in its ``.cu`` file (read by
the toolchain) and CUDA limits from :mod:`gpucnn.toolchain.limits`: both are defined once.
``dev.max_blocks`` caps a grid-stride launch: large on a GPU, small on the emulator.
"""
from __future__ import annotations

import numpy as np

from ..toolchain import kernel_block, kernel_signatures
from ..toolchain.limits import INT32_MAX

__all__ = ["ceil_div", "i32", "grid_1d", "launch_1d", "launch_rows", "check_extents"]


def ceil_div(a, b):
    return -(-int(a) // int(b))


def i32(value, what):
    """``value`` as np.int32 for a kernel argument, or a clear error if it does not fit."""
    value = int(value)
    if not -INT32_MAX <= value <= INT32_MAX:
        raise ValueError(f"{what} = {value} does not fit the device kernels' int32 indexing "
                         f"(use a smaller batch or workspace)")
    return np.int32(value)


def grid_1d(n, max_blocks, block):
    """(grid, block) for a grid-stride loop over ``n`` elements."""
    blocks = max(1, min(ceil_div(n, block), int(max_blocks)))
    return (blocks, 1, 1), (block, 1, 1)


def check_extents(name, args, large_ok=()):
    """Refuse a tensor the kernel cannot address. Kernels index with int32 except where they
    take a 64-bit plane or row offset (kernels/common.cuh: plane_offset); ``large_ok`` names
    the C parameters a kernel addresses that way, which may hold 2^31 elements or more."""
    params = kernel_signatures()[name]
    for p, a in zip(params, args):
        size = getattr(a, "size", None) if p.is_pointer else None
        if size is not None and size > INT32_MAX and p.name not in large_ok:
            raise ValueError(f"{name}: {p.name} has {size} elements, more than the {INT32_MAX} "
                             f"this kernel can index with 32-bit integers: use a smaller batch")


def launch_1d(dev, name, n, *args, large_ok=()):
    """Launch the grid-stride kernel ``name`` over ``n`` elements (``large_ok``: see
    :func:`check_extents`)."""
    check_extents(name, args, large_ok)
    grid, block = grid_1d(n, dev.max_blocks, kernel_block(name))
    if n + grid[0] * block[0] > INT32_MAX:
        # The kernels index with int32 (including the last grid-stride increment).
        raise ValueError(f"{name}: {n} elements is too many for the device kernels "
                         f"(at most about 2^31)")
    dev.kernel(name)(grid, block, args)


def launch_rows(dev, name, rows, *args, large_ok=()):
    """Launch ``name`` with one block per row (block-stride over rows); ``rows == 0`` still
    launches one block, which then does nothing."""
    check_extents(name, args, large_ok)
    grid = (max(1, min(int(rows), dev.max_blocks)), 1, 1)
    dev.kernel(name)(grid, (kernel_block(name), 1, 1), args)
