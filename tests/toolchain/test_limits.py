"""gpucnn.toolchain.limits: CUDA's launch limits and the occupancy calculator."""
import pytest

from gpucnn.toolchain.limits import (ARCHS, BLOCK_DIM_MAX, GRID_DIM_MAX, INT32_MAX,
                                     MAX_THREADS_PER_BLOCK, occupancy, register_fit_limit)


def test_cuda_launch_limits():
    assert INT32_MAX == 2**31 - 1 == GRID_DIM_MAX[0]
    assert GRID_DIM_MAX == (2**31 - 1, 65535, 65535)
    assert BLOCK_DIM_MAX == (1024, 1024, 64) and MAX_THREADS_PER_BLOCK == 1024
    assert all(a.max_threads_per_block == MAX_THREADS_PER_BLOCK for a in ARCHS.values())


@pytest.mark.parametrize("arch,block,regs,smem,dyn,blocks,occ", [
    # registers: 32 regs * 32 threads = 1024 per warp; 16 warps per sub-partition -> 64 warps
    ("sm_80", 256, 32, 0, 0, 8, 1.0),
    # 128 regs -> 4096 per warp -> 4 warps per sub-partition -> 16 warps -> 2 blocks of 8
    ("sm_80", 256, 128, 0, 0, 2, 0.25),
    ("sm_80", 256, 64, 0, 0, 4, 0.5),
    # 255 regs -> 8160 rounded to 8192 -> 2 warps per sub-partition -> 8 warps -> 1 block
    ("sm_80", 256, 255, 0, 0, 1, 0.125),
    # 40 regs -> 1280 per warp -> 12 warps per sub-partition (not 51 over the whole file)
    ("sm_80", 96, 40, 0, 0, 16, 0.75),
    ("sm_80", 1024, 64, 0, 0, 1, 0.5),
    # 65 regs -> 2080 -> 2304 per warp * 32 warps > 64K registers: cannot launch
    ("sm_80", 1024, 65, 0, 0, 0, 0.0),
    # 48 KB static smem + 1 KB reserved = 50176 B per block: 3 fit in 164 KB, 4 in 228 KB
    ("sm_80", 256, 16, 48 * 1024, 0, 3, 0.375),
    ("sm_90", 256, 16, 48 * 1024, 0, 4, 0.5),
    # the 32-blocks-per-SM limit
    ("sm_80", 32, 8, 0, 0, 32, 0.5),
    # 100 KB dynamic smem: one block of 2 warps
    ("sm_80", 64, 0, 0, 100 * 1024, 1, 2 / 64),
    # more than the opt-in maximum per block
    ("sm_80", 64, 16, 0, 164 * 1024, 0, 0.0),
    ("sm_86", 256, 32, 0, 0, 6, 1.0),       # 48 warps per SM
    ("sm_75", 256, 32, 0, 0, 4, 1.0),       # 32 warps per SM
    ("sm_90", 256, 96, 17 * 1024, 0, 2, 0.25),
    ("sm_80", 2048, 16, 0, 0, 0, 0.0),      # more than 1024 threads
])
def test_occupancy(arch, block, regs, smem, dyn, blocks, occ):
    o = occupancy(arch, block, regs, smem, dyn)
    assert o.blocks_per_sm == blocks, o
    assert o.occupancy == pytest.approx(occ), o


def test_occupancy_limiter_and_fit_limit():
    assert occupancy("sm_80", 256, 128).limiter == "registers"
    assert occupancy("sm_80", 256, 16, 48 * 1024).limiter == "shared memory"
    assert occupancy("sm_80", 32, 8).limiter == "blocks"
    assert register_fit_limit("sm_80", 256) == 255
    assert register_fit_limit("sm_80", 512) == 128
    assert register_fit_limit("sm_80", 1024) == 64
    assert register_fit_limit("sm_80", 768) == 80   # 24 warps * 2560 <= 64K
