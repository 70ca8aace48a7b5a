"""CUDA's launch limits and each architecture's SM resources, and the theoretical occupancy
they allow. Every CUDA limit gpucnn checks is defined here, once.

Sources: the CUDA C Programming Guide ("Compute capabilities" table) and the occupancy
calculator's allocation rules.
"""
from __future__ import annotations

import dataclasses

__all__ = ["INT32_MAX", "GRID_DIM_MAX", "BLOCK_DIM_MAX", "MAX_THREADS_PER_BLOCK",
           "MAX_REGS_PER_THREAD", "SMEM_PER_BLOCK_DEFAULT", "ArchLimits", "ARCHS", "Occupancy",
           "occupancy", "register_fit_limit"]

# Kernel indices and scalar arguments are 32-bit ``int``.
INT32_MAX = 2**31 - 1
GRID_DIM_MAX = (INT32_MAX, 65535, 65535)
MAX_THREADS_PER_BLOCK = 1024
BLOCK_DIM_MAX = (MAX_THREADS_PER_BLOCK, 1024, 64)
MAX_REGS_PER_THREAD = 255          # what ptxas can allocate per thread (sm_50+)
# Shared memory per block without the opt-in attribute: the most static __shared__ a kernel
# may declare, and the most dynamic shared memory a launch gets unless the kernel opts in.
SMEM_PER_BLOCK_DEFAULT = 48 * 1024


@dataclasses.dataclass(frozen=True)
class ArchLimits:
    name: str
    max_warps_per_sm: int
    max_blocks_per_sm: int
    regs_per_sm: int = 65536
    regs_per_block: int = 65536
    reg_alloc_unit: int = 256           # registers are allocated per warp in units of 256
    sub_partitions: int = 4             # register file split over 4 schedulers' partitions
    smem_per_sm: int = 0                # usable shared memory per SM at the largest carveout
    smem_per_block_optin: int = 0       # max per block (dynamic opt-in), reserved part excluded
    smem_static_max: int = SMEM_PER_BLOCK_DEFAULT
    smem_reserved_per_block: int = 0    # driver-reserved shared memory per block (sm_80+: 1 KB)
    smem_alloc_unit: int = 128
    max_threads_per_block: int = MAX_THREADS_PER_BLOCK
    warp_size: int = 32


ARCHS = {
    "sm_75": ArchLimits("sm_75", max_warps_per_sm=32, max_blocks_per_sm=16,
                        smem_per_sm=64 * 1024, smem_per_block_optin=64 * 1024,
                        smem_reserved_per_block=0, smem_alloc_unit=256),
    "sm_80": ArchLimits("sm_80", max_warps_per_sm=64, max_blocks_per_sm=32,
                        smem_per_sm=164 * 1024, smem_per_block_optin=163 * 1024,
                        smem_reserved_per_block=1024),
    "sm_86": ArchLimits("sm_86", max_warps_per_sm=48, max_blocks_per_sm=16,
                        smem_per_sm=100 * 1024, smem_per_block_optin=99 * 1024,
                        smem_reserved_per_block=1024),
    "sm_89": ArchLimits("sm_89", max_warps_per_sm=48, max_blocks_per_sm=24,
                        smem_per_sm=100 * 1024, smem_per_block_optin=99 * 1024,
                        smem_reserved_per_block=1024),
    "sm_90": ArchLimits("sm_90", max_warps_per_sm=64, max_blocks_per_sm=32,
                        smem_per_sm=228 * 1024, smem_per_block_optin=227 * 1024,
                        smem_reserved_per_block=1024),
}


def _ceil_div(a, b):
    return -(-int(a) // int(b))


def _round_up(a, b):
    return _ceil_div(a, b) * int(b)


@dataclasses.dataclass
class Occupancy:
    arch: str
    block: int
    registers: int
    smem_per_block: int                 # static + dynamic + reserved, rounded to the alloc unit
    blocks_per_sm: int
    active_warps: int
    max_warps: int
    occupancy: float                    # active warps / max warps per SM, 0..1
    limiter: str                        # what bounds blocks_per_sm
    limits: dict                        # blocks per SM allowed by each resource

    def describe(self):
        return f"{self.occupancy * 100:.0f}% ({self.blocks_per_sm} blk, {self.limiter})"


def occupancy(arch, block, registers, smem_static=0, smem_dynamic=0):
    """Theoretical occupancy of a kernel on ``arch`` (a name in :data:`ARCHS` or an
    :class:`ArchLimits`) launched with ``block`` threads per block.

    The occupancy-calculator rules: blocks per SM are the minimum of the limits set by

    * the block slots (``max_blocks_per_sm``) and the warp slots (``max_warps_per_sm`` over the
      block's warps, a partial warp counting as a whole one);
    * the registers: each warp gets ``registers * 32`` registers rounded up to 256; the register
      file is split over 4 sub-partitions, each holding ``floor(16384 / regs_per_warp)`` warps;
      a block whose registers (warps rounded up to a multiple of 4, the hardware's check) exceed
      64K registers cannot launch;
    * the shared memory: static + dynamic + the 1 KB the driver reserves per block (sm_80+),
      rounded up to 128 bytes (256 before sm_80), out of the SM's largest carveout.
    """
    a = ARCHS[arch] if isinstance(arch, str) else arch
    block = int(block)
    registers = int(registers)
    warps_per_block = _ceil_div(block, a.warp_size)
    limits = {}
    if block <= 0 or block > a.max_threads_per_block:
        limits["block size"] = 0
    limits["blocks"] = a.max_blocks_per_sm
    limits["warps"] = a.max_warps_per_sm // max(1, warps_per_block)
    if registers > MAX_REGS_PER_THREAD:
        limits["registers"] = 0
    elif registers > 0:
        regs_per_warp = _round_up(registers * a.warp_size, a.reg_alloc_unit)
        per_block = regs_per_warp * warps_per_block
        per_block_hw = regs_per_warp * _round_up(warps_per_block, a.sub_partitions)
        if per_block > a.regs_per_block or per_block_hw > a.regs_per_block:
            limits["registers"] = 0
        else:
            warps_per_part = (a.regs_per_sm // a.sub_partitions) // regs_per_warp
            limits["registers"] = (warps_per_part * a.sub_partitions) // max(1, warps_per_block)
    smem = int(smem_static) + int(smem_dynamic) + a.smem_reserved_per_block
    smem_alloc = _round_up(smem, a.smem_alloc_unit) if smem else 0
    if (int(smem_static) > a.smem_static_max
            or smem_alloc > a.smem_per_block_optin + a.smem_reserved_per_block):
        limits["shared memory"] = 0
    elif smem_alloc:
        limits["shared memory"] = a.smem_per_sm // smem_alloc
    limiter = min(limits, key=lambda k: (limits[k], k != "block size"))
    blocks = max(0, min(limits.values()))
    warps = blocks * warps_per_block
    return Occupancy(arch=a.name, block=block, registers=registers, smem_per_block=smem_alloc,
                     blocks_per_sm=blocks, active_warps=warps, max_warps=a.max_warps_per_sm,
                     occupancy=warps / a.max_warps_per_sm, limiter=limiter, limits=limits)


def register_fit_limit(arch, block):
    """The most registers per thread with which one block of ``block`` threads still fits."""
    a = ARCHS[arch] if isinstance(arch, str) else arch
    for r in range(MAX_REGS_PER_THREAD, 0, -1):
        if occupancy(a, block, r).limits.get("registers", 1) >= 1:
            return r
    return 0
