"""Launch geometry of the device ops, shared by ``cuda`` and ``emu``.

Every device op launches through these helpers (or computes its grid next to its kernel's
launch, in its op module), so the emulator executes exactly the launch a GPU would get. Block
sizes come from each kernel's ``// gpucnn: block=`` annotation in its ``.cu`` file (read by
the toolchain) and CUDA limits from :mod:`gpucnn.toolchain.limits`: both are defined once.
``dev.max_blocks`` caps a grid-stride launch: large on a GPU, small on the emulator.
"""
from __future__ import annotations

import numpy as np

from ..toolchain import kernel_block
from ..toolchain.limits import INT32_MAX

__all__ = ["ceil_div", "i32", "grid_1d", "launch_1d", "launch_rows"]


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


def launch_1d(dev, name, n, *args):
    """Launch the grid-stride kernel ``name`` over ``n`` elements."""
    grid, block = grid_1d(n, dev.max_blocks, kernel_block(name))
    if n + grid[0] * block[0] > INT32_MAX:
        # The kernels index with int32 (including the last grid-stride increment).
        raise ValueError(f"{name}: {n} elements is too many for the device kernels "
                         f"(at most about 2^31)")
    dev.kernel(name)(grid, block, args)


def launch_rows(dev, name, rows, *args):
    """Launch ``name`` with one block per row (block-stride over rows); ``rows == 0`` still
    launches one block, which then does nothing."""
    grid = (max(1, min(int(rows), dev.max_blocks)), 1, 1)
    dev.kernel(name)(grid, (kernel_block(name), 1, 1), args)
