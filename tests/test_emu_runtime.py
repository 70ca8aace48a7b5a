"""The CUDA emulator itself (gpucnn.backends.emu).

Kernels live in tests/emu_kernels/: basic.cu (good kernels), broken.cu (each one planted bug
that a check must catch). Kept small: the whole file should run in well under a minute.
"""
from pathlib import Path

import numpy as np
import pytest

from gpucnn.backends.emu import (EmuArithmeticError, EmuBuildError, EmuDeadlockError,
                                 EmuLaunchError, EmuMemoryError, EmuModule, EmuTimeoutError)
from gpucnn.toolchain.compilers import compile_nvrtc, get_nvrtc

KDIR = Path(__file__).resolve().parent / "emu_kernels"
SOURCES = [KDIR / "basic.cu", KDIR / "broken.cu"]
ORDERS = ("forward", "reverse", "random")
_mods = {}


def module(order="forward", checks=True, watchdog_s=20.0):
    key = (order, checks, watchdog_s)
    if key not in _mods:
        _mods[key] = EmuModule(SOURCES, order=order, checks=checks, seed=7, watchdog_s=watchdog_s)
    return _mods[key]


@pytest.fixture
def x(rng):
    return rng.standard_normal(5000).astype(np.float32)


# ---------------------------------------------------------------- good kernels

@pytest.mark.parametrize("checks", [False, True])
def test_vec_add_grid_stride(x, checks):
    y = (x[::-1] * 2).copy()
    out = np.full_like(x, np.nan)
    module(checks=checks).get_function("vec_add")((3,), (128,), (x, y, out, np.int32(x.size)))
    np.testing.assert_array_equal(out, x + y)


@pytest.mark.parametrize("order", ORDERS)
def test_block_reduction_all_orders(x, order):
    part = np.full(4, np.nan, np.float32)
    module(order).get_function("block_sum")((4,), (256,), (x, part, np.int32(x.size)))
    assert abs(part.sum(dtype=np.float64) - x.sum(dtype=np.float64)) < 1e-3


@pytest.mark.parametrize("order", ORDERS)
def test_warp_shuffle_reduction(x, order):
    part = np.full(3, np.nan, np.float32)
    module(order).get_function("warp_reduce")((3,), (128,), (x, part, np.int32(x.size)))
    assert abs(part.sum(dtype=np.float64) - x.sum(dtype=np.float64)) < 1e-3


@pytest.mark.parametrize("order", ORDERS)
def test_dynamic_shared_memory(x, order):
    n = 1000
    xs = x[:n].copy()
    y = np.full(n, np.nan, np.float32)
    module(order).get_function("dyn_reverse")((4,), (256,), (xs, y, np.int32(n)),
                                              shared_mem=256 * 4)
    padded = np.concatenate([xs, np.zeros(4 * 256 - n, np.float32)])
    np.testing.assert_array_equal(y, padded.reshape(4, 256)[:, ::-1].reshape(-1)[:n])


def test_atomic_add_counters(x):
    c = np.zeros(1, np.int32)
    u = np.zeros(1, np.uint32)
    f = np.zeros(1, np.float32)
    module().get_function("count_positive")((4,), (128,), (x, c, u, f, np.int32(x.size)))
    assert c[0] == (x > 0).sum() and u[0] == (x > 0).sum() and f[0] == x.size


def test_scalar_types_pass_through():
    out = np.zeros(1, np.float32)
    module().get_function("takes_scalars")(1, 1, (out, np.int32(-3), np.uint32(4), np.float32(0.5),
                                                  np.int64(10), np.float64(0.25), np.uint64(7)))
    assert out[0] == -3 + 4 + 0.5 + 10 + 0.25 + 7


# ---------------------------------------------------------------- checks that must fire

def test_oob_write_one_past_end():
    out = np.zeros(100, np.float32)
    with pytest.raises(EmuMemoryError) as e:
        module().get_function("oob_write")((1,), (128,), (out, np.int32(100)))
    msg = str(e.value)
    assert "oob_write" in msg and "thread (100,0,0)" in msg and "past the end" in msg
    assert "argument 0" in msg and "element index 100" in msg


def test_oob_read_one_past_end():
    x = np.ones(100, np.float32)
    out = np.zeros(100, np.float32)
    with pytest.raises(EmuMemoryError) as e:
        module().get_function("oob_read")((1,), (128,), (x, out, np.int32(100)))
    msg = str(e.value)
    assert "oob_read" in msg and "thread (99,0,0)" in msg and "argument 0" in msg


def test_oob_write_before_start():
    out = np.zeros(100, np.float32)
    with pytest.raises(EmuMemoryError, match="before the start of argument 0"):
        module().get_function("oob_underflow")((1,), (128,), (out, np.int32(100)))


def test_missing_barrier_race_is_detected(x):
    """racy_sum lacks the __syncthreads() in its tree loop: some thread order must expose it."""
    ref = x.sum(dtype=np.float64)
    errors = {}
    for order in ORDERS:
        part = np.full(4, np.nan, np.float32)
        module(order).get_function("racy_sum")((4,), (256,), (x, part, np.int32(x.size)))
        errors[order] = abs(part.sum(dtype=np.float64) - ref)
    good = np.full(4, np.nan, np.float32)
    module("reverse").get_function("block_sum")((4,), (256,), (x, good, np.int32(x.size)))
    assert abs(good.sum(dtype=np.float64) - ref) < 1e-3
    assert max(errors[o] for o in ("reverse", "random")) > 1e-2, errors


def test_divergent_barrier_exited_threads():
    out = np.zeros(32, np.float32)
    with pytest.raises(EmuDeadlockError, match=r"divergent barrier.*broken\.cu:\d+.*exited"):
        module().get_function("divergent_barrier")((1,), (32,), (out,))


def test_divergent_barrier_two_sites():
    out = np.zeros(32, np.float32)
    with pytest.raises(EmuDeadlockError,
                       match=r"two_barriers.*divergent barrier.*thread \(16,0,0\)"):
        module().get_function("two_barriers")((1,), (32,), (out,))


def test_watchdog_hung_spin_loop():
    flag = np.zeros(1, np.int32)
    with pytest.raises(EmuTimeoutError, match=r"spin_forever.*watchdog"):
        module(watchdog_s=0.5).get_function("spin_forever")((2,), (32,), (flag,))


def test_uninitialised_shared_memory_is_nan_poisoned():
    out = np.zeros(64, np.float32)
    module().get_function("uninit_shared")((1,), (64,), (out,))
    assert np.all(out[:32] == 1) and np.all(np.isnan(out[32:]))


def test_wild_pointer_fault():
    out = np.zeros(64, np.float32)
    with pytest.raises(EmuMemoryError, match=r"thread \(5,0,0\).*0x10"):
        module(checks=False).get_function("null_write")((1,), (64,), (out, np.uint64(16)))


def test_module_survives_faults(x):
    out = np.zeros(100, np.float32)
    m = module()
    for _ in range(3):
        with pytest.raises(EmuMemoryError):
            m.get_function("oob_write")((1,), (128,), (out, np.int32(100)))
        with pytest.raises(EmuDeadlockError):
            m.get_function("divergent_barrier")((1,), (32,), (out[:32],))
        with pytest.raises(EmuMemoryError):
            m.get_function("big_stack")((2,), (8,), (out, np.int32(65536)))
    with pytest.raises(EmuTimeoutError):
        module(watchdog_s=0.3).get_function("spin_forever")((1,), (32,), (np.zeros(1, np.int32),))
    part = np.full(4, np.nan, np.float32)
    m.get_function("block_sum")((4,), (256,), (x, part, np.int32(x.size)))
    assert abs(part.sum(dtype=np.float64) - x.sum(dtype=np.float64)) < 1e-3


def test_fault_in_one_block_of_many():
    """Block 3 faults while the other worker thread is running other blocks."""
    out = np.zeros(256, np.float32)
    with pytest.raises(EmuMemoryError,
                       match=r"block \(3,0,0\) thread \(7,0,0\).*element index 261"):
        module().get_function("oob_in_one_block")((8,), (64,), (out, np.int32(256)))


def test_fiber_stack_overflow():
    out = np.zeros(8, np.float32)
    with pytest.raises(EmuMemoryError, match="stack overflow"):
        module().get_function("big_stack")((1,), (8,), (out, np.int32(65536)))


def test_integer_division_by_zero():
    with pytest.raises(EmuArithmeticError, match=r"thread \(3,0,0\).*division by zero"):
        module().get_function("int_div_zero")((1,), (8,), (np.zeros(8, np.int32), np.int32(0)))


def test_dynamic_shared_memory_overflow():
    out = np.zeros(32, np.float32)
    f = module().get_function("dyn_overflow")
    f((1,), (32,), (out, np.int32(0)), shared_mem=128)
    with pytest.raises(EmuMemoryError, match="dynamic shared memory.*shared_mem=128"):
        f((1,), (32,), (out, np.int32(4)), shared_mem=128)


def test_shuffle_waiting_for_lane_at_barrier():
    out = np.zeros(32, np.float32)
    with pytest.raises(EmuDeadlockError, match=r"__shfl.*lane 3 .*__syncthreads"):
        module().get_function("shfl_vs_barrier")((1,), (32,), (out,))


def test_launch_bounds_and_block_limits(x):
    part = np.zeros(2, np.float32)
    with pytest.raises(EmuLaunchError, match=r"__launch_bounds__\(256\)"):
        module().get_function("block_sum")((1,), (512,), (x, part, np.int32(x.size)))
    with pytest.raises(EmuLaunchError, match="1..1024 threads"):
        module().get_function("vec_add")((1,), (2048,), (x, x, x.copy(), np.int32(x.size)))


# ---------------------------------------------------------------- argument checking

def test_python_int_for_int_param_is_type_error(x):
    out = np.empty_like(x)
    with pytest.raises(TypeError, match=r"vec_add: argument 3 \(int n\): expected np.int32"):
        module().get_function("vec_add")((1,), (32,), (x, x, out, x.size))


def test_wrong_array_dtype_is_type_error(x):
    out = np.empty(x.size, np.float64)
    with pytest.raises(TypeError,
                       match=r"argument 2 \(float\* out\): expected an array of float32"):
        module().get_function("vec_add")((1,), (32,), (x, x, out, np.int32(x.size)))


def test_wrong_arg_count_is_type_error(x):
    with pytest.raises(TypeError, match="expected 4 arguments"):
        module().get_function("vec_add")((1,), (32,), (x, x, np.int32(x.size)))


def test_infinity_does_not_compile():
    """Like NVRTC, no host math header: INFINITY is undefined on the emulator too."""
    src = ('extern "C" __global__ void uses_inf(float* o) { o[threadIdx.x] = -INFINITY; }\n')
    with pytest.raises(EmuBuildError, match="INFINITY"):
        EmuModule([src])


def test_two_modules_fault_independently():
    """Each module has its own runtime and signal handler; faults in either are recovered."""
    src = ('extern "C" __global__ void poke(float* o, int off)\n'
           '{ o[threadIdx.x + off] = (float)threadIdx.x; }\n')
    m2 = EmuModule([src], checks=True)
    out = np.zeros(32, np.float32)
    m2.get_function("poke")(1, 32, (out, np.int32(0)))
    np.testing.assert_array_equal(out, np.arange(32))
    with pytest.raises(EmuMemoryError, match=r"poke.*thread \(31,0,0\)"):
        m2.get_function("poke")(1, 32, (out, np.int32(1)))
    with pytest.raises(EmuMemoryError, match="oob_write"):
        module().get_function("oob_write")((1,), (128,), (np.zeros(100, np.float32), np.int32(100)))
    with pytest.raises(EmuMemoryError, match="poke"):
        m2.get_function("poke")(1, 32, (out, np.int32(-1)))


def test_underflow_read_sees_poison():
    src = ('extern "C" __global__ void shift_read(const float* x, float* o)\n'
           '{ o[threadIdx.x] = x[(int)threadIdx.x - 1]; }\n')
    m = EmuModule([src], checks=True)
    out = np.zeros(8, np.float32)
    m.get_function("shift_read")(1, 8, (np.ones(8, np.float32), out))
    assert np.isnan(out[0]) and np.all(out[1:] == 1)


def test_float4_kernel_on_odd_length_arrays(x):
    """Guarded copies of a float4 kernel's arrays stay 16-byte aligned (as cudaMalloc's are)."""
    xs = x[:1003].copy()
    y = np.full_like(xs, np.nan)
    module().get_function("scale_vec4")((2,), (64,), (xs, y, np.float32(3), np.int32(xs.size)))
    np.testing.assert_array_equal(y, xs * np.float32(3))
    with pytest.raises(EmuMemoryError, match=r"vec4_overrun.*past the end of argument 0"):
        module().get_function("vec4_overrun")(1, 8, (np.zeros(7, np.float32), np.int32(7)))


def test_trap():
    with pytest.raises(EmuLaunchError,
                       match=r"calls_trap.*thread \(2,0,0\).*__trap\(\) called at .*broken\.cu"):
        module().get_function("calls_trap")(1, 8, (np.zeros(8, np.float32),))


def test_test_kernels_are_valid_cuda():
    """What runs here must also be real CUDA: the test kernels compile with NVRTC."""
    nv = get_nvrtc()  # NVRTC comes with the test extras; its absence is a failure
    for src in SOURCES:
        res = compile_nvrtc(src, "sm_80", nvrtc=nv)
        assert res.ok, f"{src.name}: {res.errors}"


def test_mixed_faults_and_good_launches_stay_consistent(x):
    """Errors of every kind interleaved with good launches, over 2 worker threads: every good
    launch is right, every bad one raises its own error (no stale watchdog / fault state)."""
    bad = module(watchdog_s=0.1)
    seq = ["oob", "good", "spin", "good", "div", "fpe", "warp", "stack", "spin", "good", "oob",
           "warp", "trap", "good"] * 2
    expect = {"oob": EmuMemoryError, "spin": EmuTimeoutError, "div": EmuDeadlockError,
              "fpe": EmuArithmeticError, "stack": EmuMemoryError, "trap": EmuLaunchError}
    ref = x.sum(dtype=np.float64)
    for k in seq:
        if k in ("good", "warp"):
            part = np.full(5, np.nan, np.float32)
            name = "block_sum" if k == "good" else "warp_reduce"
            bad.get_function(name)((5,), (256,), (x, part, np.int32(x.size)))
            assert abs(part.sum(dtype=np.float64) - ref) < 1e-3, k
            continue
        with pytest.raises(expect[k]):
            if k == "oob":
                bad.get_function("oob_in_one_block")((8,), (64,), (np.zeros(256, np.float32),
                                                                  np.int32(256)))
            elif k == "spin":
                bad.get_function("spin_forever")((3,), (32,), (np.zeros(1, np.int32),))
            elif k == "div":
                bad.get_function("divergent_barrier")((4,), (32,), (np.zeros(32, np.float32),))
            elif k == "fpe":
                bad.get_function("int_div_zero")((3,), (8,), (np.zeros(8, np.int32), np.int32(0)))
            elif k == "stack":
                bad.get_function("big_stack")((3,), (8,), (np.zeros(8, np.float32),
                                                           np.int32(65536)))
            else:
                bad.get_function("calls_trap")((2,), (8,), (np.zeros(8, np.float32),))


@pytest.mark.parametrize("order", ORDERS)
def test_subnormals_flush_inside_kernels_only(order):
    """Kernels run with flush-to-zero / denormals-are-zero, as CuPy's -ftz=true builds do on a
    GPU; the launching thread's mode is restored, so NumPy here still keeps subnormals."""
    tiny = np.float32(1e-40)  # subnormal in float32
    assert 0 < tiny < np.finfo(np.float32).tiny
    x = np.array([tiny, 1.5e-38, 2.0, -tiny], np.float32)
    y = np.full_like(x, np.nan)
    module(order).get_function("scale_floats")((1,), (32,), (x, y, np.float32(1.0),
                                                             np.int32(x.size)))
    np.testing.assert_array_equal(y, np.array([0.0, x[1], 2.0, 0.0], np.float32))  # DAZ: operand
    y2 = np.full_like(x, np.nan)
    module(order).get_function("scale_floats")((1,), (32,), (x, y2, np.float32(1e-3),
                                                              np.int32(x.size)))
    assert y2[1] == 0.0 and y2[2] == np.float32(2e-3)  # FTZ: a subnormal result -> 0
    assert x[0] * np.float32(1.0) == tiny  # outside the launch, in the same thread: kept
    assert np.float32(1.5e-38) * np.float32(1e-3) > 0
