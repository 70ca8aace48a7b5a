"""Launch geometry shared by the ``cuda`` and ``emu`` backends.

Every device op computes its grid/block here (or from constants defined next to its kernel),
never inline, so the emulator executes exactly the launch a GPU would get. ``max_blocks`` caps a
grid-stride launch: large on a GPU, small on the emulator (each block is a batch of fibers).
"""
from __future__ import annotations

BLOCK_1D = 256


def ceil_div(a, b):
    return -(-int(a) // int(b))


def grid_1d(n, max_blocks, block=BLOCK_1D):
    """(grid, block) for a grid-stride loop over ``n`` elements."""
    blocks = max(1, min(ceil_div(n, block), int(max_blocks)))
    return (blocks, 1, 1), (block, 1, 1)
