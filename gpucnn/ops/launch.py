"""Launches of the device ops, worked out once per plan and replayed (shared by ``cuda``,
``emu`` and the null device).

A :class:`Launch` is one kernel launch of a plan with its grid, block and shared memory fixed;
``launch.fire(args)`` launches. Its first launch is fully checked (the arguments against the
kernel's parsed C signature, tensor extents against the kernel's 32-bit indexing, grid and
block against the CUDA limits); later ones go straight to the kernel (the plan's run has
checked the arrays' shapes and dtypes, so the extents cannot change), unless the context says
to check every launch (``GPUCNN_CHECK_LAUNCHES=1``: tests, debugging). The emulator's kernels
check their arguments' types and the grid on every call anyway. Block sizes come from each
kernel's ``// gpucnn: block=`` annotation in its ``.cu`` file and limits from
:mod:`gpucnn.toolchain.limits`: both defined once. ``ctx.max_blocks`` caps a grid-stride
launch: large on a GPU, small on the emulator.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from ..toolchain import kernel_block, kernel_signatures
from ..toolchain.limits import INT32_MAX

__all__ = ["ceil_div", "i32", "grid_1d", "Launch", "plan_1d", "plan_rows", "launch_1d",
           "launch_rows", "check_extents"]


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


class Launch:
    """One planned launch of kernel ``name``: ``launch.fire(args)`` (or ``launch(args)``,
    one frame more). ``fire`` checks the first launch fully, then becomes the kernel's own
    launcher with grid, block and shared memory bound (a ``functools.partial``: no Python
    frame between the op's run and the kernel); with ``always`` it keeps checking."""
    __slots__ = ("name", "kernel", "raw", "fire", "grid", "block", "smem", "large_ok",
                 "always")

    def __init__(self, ctx, name, grid, block, smem=0, large_ok=()):
        self.name = name
        self.kernel = ctx.kernel(name)
        # A kernel without an unchecked ``launch`` (the emulator's) checks its arguments'
        # types and the grid on every call itself.
        self.raw = getattr(self.kernel, "launch", None) or self.kernel
        self.always = bool(ctx.check_launches)
        self.grid, self.block, self.smem = tuple(grid), tuple(block), int(smem)
        self.large_ok = large_ok
        self.fire = self.checked

    def __call__(self, args):
        self.fire(args)

    def checked(self, args):
        """Check one launch fully (extents, then the kernel's signature, grid and block
        limits where the kernel has a ``check``), launch it, and unless ``always``, let
        later launches go straight to the kernel."""
        check_extents(self.name, args, self.large_ok)
        check = getattr(self.kernel, "check", None)
        if check is not None:
            check(self.grid, self.block, args, self.smem)
        if not self.always:
            self.fire = partial(self.raw, self.grid, self.block, shared_mem=self.smem)
        self.raw(self.grid, self.block, args, shared_mem=self.smem)

    def __repr__(self):
        return f"<Launch {self.name} grid={self.grid} block={self.block}>"


def plan_1d(ctx, name, n, large_ok=()):
    """The :class:`Launch` of the grid-stride kernel ``name`` over ``n`` elements."""
    grid, block = grid_1d(n, ctx.max_blocks, kernel_block(name))
    if n + grid[0] * block[0] > INT32_MAX:
        # The kernels index with int32 (including the last grid-stride increment).
        raise ValueError(f"{name}: {n} elements is too many for the device kernels "
                         f"(at most about 2^31)")
    return Launch(ctx, name, grid, block, large_ok=large_ok)


def plan_rows(ctx, name, rows, large_ok=()):
    """The :class:`Launch` of ``name`` with one block per row (block-stride over rows);
    ``rows == 0`` still launches one block, which then does nothing."""
    grid = (max(1, min(int(rows), ctx.max_blocks)), 1, 1)
    return Launch(ctx, name, grid, (kernel_block(name), 1, 1), large_ok=large_ok)


def launch_1d(ctx, name, n, *args, large_ok=()):
    """Plan and launch ``name`` once (for one-off launches and tests; ops keep their plans)."""
    check_extents(name, args, large_ok)
    plan_1d(ctx, name, n, large_ok)(args)


def launch_rows(ctx, name, rows, *args, large_ok=()):
    check_extents(name, args, large_ok)
    plan_rows(ctx, name, rows, large_ok)(args)
