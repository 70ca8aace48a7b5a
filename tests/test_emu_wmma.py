"""nvcuda::wmma on the emulator (gpucnn/backends/emu/cuda_emu.h), with tests/emu_kernels/wmma.cu.

What the emulator defines (and these tests pin down): A and B are read as a tensor core reads
them (tf32: low 13 bits dropped, so an element not converted by __float_to_tf32 is truncated;
bf16: exact), then D[i][j] = fma(A[i][K-1], B[K-1][j], ... fma(A[i][0], B[0][j], C[i][j])) in
FP32, k in order. Against that definition results are compared bit for bit; against the exact
(float64) product of the unrounded inputs within the bound derived in :func:`error_bound`.
"""
import glob
import os
import re
from pathlib import Path

import numpy as np
import pytest

from gpucnn.backends.emu import EmuDeadlockError, EmuLaunchError, EmuModule
from gpucnn.ops.precision import bf16_to_float32, round_bf16, round_tf32, truncate_tf32
from gpucnn.toolchain.compilers import compile_nvrtc, nvrtc_by_major

SOURCE = Path(__file__).resolve().parent / "emu_kernels" / "wmma.cu"
CONVERT, A_COL, B_COL, CD_COL = 1, 2, 4, 8       # wmma.cu's WM_* flags
N = 16
ORDERS = ("forward", "reverse", "random")   # how the scheduler orders a block's threads
_mods = {}


def module(seed=7, order="forward"):
    # checks on: arguments are guarded copies that end at a page boundary, so a buffer whose
    # size is a multiple of 32 bytes starts 32-byte aligned, as wmma requires
    if (seed, order) not in _mods:
        _mods[seed, order] = EmuModule([SOURCE], checks=True, seed=seed, order=order)
    return _mods[seed, order]


def line_of(marker):
    for no, text in enumerate(SOURCE.read_text().splitlines(), 1):
        if marker in text:
            return no
    raise AssertionError(f"{marker} not in {SOURCE.name}")


def store(m, col, pad):
    """``m`` laid out row- or column-major with a leading dimension ``pad`` elements wider
    than needed; the padding holds NaN (bf16: its NaN bits), so reading it shows."""
    rows, cols = (m.shape[1], m.shape[0]) if col else m.shape
    fill = np.uint16(0x7FC0) if m.dtype == np.uint16 else np.nan
    buf = np.full((rows, cols + pad), fill, m.dtype)
    buf[:, :cols] = m.T if col else m
    return buf, np.int32(cols + pad)


def run(kind, a, b, c, flags, pad=0, alpha=1.0, warps_per_block=2, order="forward"):
    """D = alpha * (A.B + C) by wmma_<kind>; a, b as the kernel takes them (float32 or bf16
    bits), c float32. Returns D (float32, logical layout)."""
    m, k = a.shape
    abuf, lda = store(a, flags & A_COL, pad)
    bbuf, ldb = store(b, flags & B_COL, pad)
    cbuf, ldc = store(c, flags & CD_COL, pad)
    dbuf = np.full_like(cbuf, np.nan)
    warps = m // 16
    module(order=order).get_function(f"wmma_{kind}")(
        (warps // warps_per_block,), (32 * warps_per_block,),
        (abuf, bbuf, cbuf, dbuf, np.int32(k), lda, ldb, ldc, ldc, np.int32(flags),
         np.float32(alpha)))
    cols = m if flags & CD_COL else N
    assert np.isnan(dbuf[:, cols:]).all(), "store_matrix_sync wrote into the padding"
    d = dbuf[:, :cols]
    return d.T if flags & CD_COL else d


def fma_chain(a, b, c):
    """The emulator's definition on operands as read (float32 arrays): per k in order one FP32
    rounding of acc + a*b. Done in float64, where a*b (<= 22 significant bits) and the sum are
    exact -- TwoSum checks the sum -- so rounding it to float32 is the FMA's single rounding."""
    acc = c.astype(np.float64)
    for k in range(a.shape[1]):
        p = np.outer(a[:, k].astype(np.float64), b[k].astype(np.float64))
        s = acc + p
        t = s - acc
        assert np.all((acc - (s - t)) + (p - t) == 0), "reference sum not exact in float64"
        acc = s.astype(np.float32).astype(np.float64)
    return acc.astype(np.float32)


def error_bound(a, b, c, u):
    """Per-element bound on |D - (A.B + C)| (A, B, C the unrounded float32 inputs, exact
    product) for operands rounded with relative error <= u and the K-step FP32 chain:
    |ab - a~b~| <= (2u + u^2)|a||b|; the chain adds <= gamma_K (|c| + sum|a~||b~|) with
    gamma_K = K 2^-24 / (1 - K 2^-24) (Higham, Thm 3.1; 1.01 K 2^-24 covers it for K < 2^17),
    and |a~||b~| <= (1+u)^2 |a||b|. u = 2^-11 (tf32, round to nearest), 2^-10 (tf32,
    truncated), 2^-8 (bf16, round to nearest)."""
    k = a.shape[1]
    gamma = 1.01 * k * 2.0**-24
    absprod = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    return (2 * u + u * u + gamma * (1 + u) ** 2) * absprod + gamma * np.abs(c)


def exact(a, b, c):
    return a.astype(np.float64) @ b.astype(np.float64) + c


def inputs(rng, m, k, *, floor=2.0**-8):
    """Normal samples kept away from 0 (|x| >= floor), so every product and partial sum of
    fma_chain is exact in float64."""
    def draw(*shape):
        x = rng.standard_normal(shape)
        return (np.sign(x) * np.maximum(np.abs(x), floor)).astype(np.float32)
    return draw(m, k), draw(k, N), draw(m, N)


LAYOUTS = [0, A_COL, B_COL, CD_COL, A_COL | B_COL | CD_COL]


@pytest.mark.parametrize("flags", LAYOUTS)
@pytest.mark.parametrize("pad", [0, 8])
def test_tf32_converted_is_the_defined_chain_bit_for_bit(rng, flags, pad):
    a, b, c = inputs(rng, 64, 32)
    d = run("tf32", a, b, c, flags | CONVERT, pad=pad, alpha=-2.0)
    np.testing.assert_array_equal(d, -2.0 * fma_chain(round_tf32(a), round_tf32(b), c))
    assert np.all(np.abs(d / -2.0 - exact(a, b, c)) <= error_bound(a, b, c, 2.0**-11))


@pytest.mark.parametrize("order", ORDERS)
def test_any_lane_may_act_for_the_warp(rng, order):
    """Whichever lane resumes first does the warp's operation (here under every thread order
    the scheduler has, 4 warps in 2 blocks of 64 and 1 block of 128 threads)."""
    a, b, c = inputs(rng, 64, 16)
    want = fma_chain(round_tf32(a), round_tf32(b), c)
    for per_block in (2, 4):
        d = run("tf32", a, b, c, CONVERT, warps_per_block=per_block, order=order)
        np.testing.assert_array_equal(d, want)


@pytest.mark.parametrize("flags", [0, A_COL | B_COL])
def test_tf32_unconverted_elements_are_truncated(rng, flags):
    a, b, c = inputs(rng, 32, 16)
    d = run("tf32", a, b, c, flags)
    np.testing.assert_array_equal(d, fma_chain(truncate_tf32(a), truncate_tf32(b), c))
    assert not np.array_equal(d, fma_chain(round_tf32(a), round_tf32(b), c))
    assert np.all(np.abs(d - exact(a, b, c)) <= error_bound(a, b, c, 2.0**-10))


def test_tf32_error_is_clearly_larger_than_fp32(rng):
    """A silently-FP32 emulation cannot pass: TF32's error is ~2^-11 relative, FP32's ~2^-24."""
    a, b, c = inputs(rng, 32, 64)
    ref = exact(a, b, c)
    d = run("tf32", a, b, c, CONVERT)
    fp32 = c.copy()
    for k in range(a.shape[1]):                     # FP32 multiply-adds on the same data
        fp32 = fp32 + np.outer(a[:, k], b[k])
    err_tf32 = np.linalg.norm(d - ref) / np.linalg.norm(ref)
    err_fp32 = np.linalg.norm(fp32 - ref) / np.linalg.norm(ref)
    assert err_tf32 > 100 * err_fp32, (err_tf32, err_fp32)
    assert 2.0**-16 < err_tf32 < 2.0**-9


@pytest.mark.parametrize("flags", LAYOUTS)
def test_bf16_is_the_defined_chain_bit_for_bit(rng, flags):
    a, b, c = inputs(rng, 32, 48)
    a16, b16 = round_bf16(a), round_bf16(b)
    d = run("bf16", a16, b16, c, flags, pad=8 if flags & A_COL else 0)
    np.testing.assert_array_equal(d, fma_chain(bf16_to_float32(a16), bf16_to_float32(b16), c))
    assert np.all(np.abs(d - exact(a, b, c)) <= error_bound(a, b, c, 2.0**-8))


def test_conversions_in_kernel_code_match_the_references(rng):
    u = rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
    special = np.array([0x3F808000, 0x3F818000, 0x3F801000, 0x3F803000, 0x00008000, 0x80000000,
                        0x7F7FFFFF, 0x7F7F8000, 0x7F800000, 0xFF800000, 0x7F800001, 0xFFC00000],
                       np.uint32)
    x = np.concatenate([special, u]).view(np.float32)
    x = np.concatenate([x, np.zeros(-x.size % 16, np.float32)])   # 32-byte multiples
    bits, back, t = np.zeros(x.size, np.uint16), np.zeros_like(x), np.zeros_like(x)
    n, grid = np.int32(x.size), ((x.size + 255) // 256,)
    module().get_function("bf16_convert")(grid, (256,), (x, bits, back, n))
    module().get_function("tf32_convert")(grid, (256,), (x, t, n))
    np.testing.assert_array_equal(bits, round_bf16(x))
    np.testing.assert_array_equal(back.view(np.uint32),
                                  bf16_to_float32(round_bf16(x)).view(np.uint32))
    np.testing.assert_array_equal(t.view(np.uint32), round_tf32(x).view(np.uint32))


def test_fragment_order_is_not_natural_and_follows_the_seed(rng):
    """A kernel that stores accumulator elements by index, assuming lane-major row order,
    gets the right values in the wrong places; the map changes with the launch seed."""
    a, b, _ = inputs(rng, 16, 8)
    want = fma_chain(truncate_tf32(a), truncate_tf32(b), np.zeros((16, N), np.float32))
    got = {}
    for seed in (7, 8):
        d = np.full((16, N), np.nan, np.float32)
        module(seed).get_function("wmma_natural_order")((1,), (32,), (a, b, d))
        np.testing.assert_array_equal(np.sort(d.ravel()), np.sort(want.ravel()))
        assert np.mean(d == want) < 0.1
        got[seed] = d
    assert not np.array_equal(got[7], got[8])


@pytest.mark.parametrize("mode, why", [
    (0, r"lane 7 thread \(7,0,0\) waits at wmma::store_matrix_sync\(\)"),
    (1, r"lane 7 thread \(7,0,0\) exited without reaching it"),
])
def test_a_lane_missing_from_mma_is_a_deadlock(rng, mode, why):
    a, b, _ = inputs(rng, 16, 8)
    d = np.zeros((16, N), np.float32)
    line = line_of("WMMA_SKIPPED_MMA")
    want = rf"wmma_lane_skips.*wmma::mma_sync\(\) at \S*wmma\.cu:{line} .*{why}"
    with pytest.raises(EmuDeadlockError, match=want):
        module().get_function("wmma_lane_skips")((1,), (32,), (a, b, d, np.int32(mode)))


@pytest.mark.parametrize("mode, marker, what", [
    (0, "WMMA_MISALIGNED",
     r"pointer 0x[0-9a-f]+ is not 256-bit \(32-byte\) aligned \(4 bytes past\)"),
    (1, "WMMA_BAD_LDM", r"ldm=6 is not a multiple of 16 bytes \(4 elements"),
    (2, "WMMA_PER_LANE", r"lane 1 passed a different pointer"),
    (3, "WMMA_BF16_LDM", r"ldm=20 is not a multiple of 16 bytes \(8 elements"),
])
def test_operand_rules_are_enforced_naming_kernel_and_line(mode, marker, what):
    a = np.zeros(256, np.float32)
    h = np.zeros(512, np.uint16)
    d = np.zeros(32, np.float32)
    want = (rf"kernel wmma_bad_operand .*wmma::load_matrix_sync\(\): {what}.* "
            rf"at \S*wmma\.cu:{line_of(marker)}$")
    with pytest.raises(EmuLaunchError, match=want):
        module().get_function("wmma_bad_operand")((1,), (32,), (a, h, d, np.int32(mode)))


def _toolkit_includes(nvcc):
    """Folders that hold mma.h: the toolkit of the nvcc the suite requires, CUDA_HOME, other
    /usr/local/cuda* (no pip wheel in use ships it)."""
    roots = [str(Path(nvcc).resolve().parent.parent), os.environ.get("CUDA_HOME", ""),
             *sorted(glob.glob("/usr/local/cuda*"), reverse=True)]
    return [str(Path(r) / "include") for r in roots
            if r and (Path(r) / "include" / "mma.h").is_file()]


@pytest.mark.parametrize("major", [12, 13])
def test_nvrtc_compiles_the_wmma_kernels_for_sm_80(major):
    """The same source builds for a GPU -- given CUDA's WMMA headers: the NVRTC wheels ship no
    mma.h / cuda_bf16.h, so COMPILE_OPTIONS alone cannot find them; the gate's options add
    the folders wmma_include_dirs() finds (a toolkit, or the nvidia-cuda-runtime and
    nvidia-cuda-crt wheels) for a source that uses WMMA. Both NVRTC versions and nvcc's
    toolkit are required tools (the test extras, the README)."""
    nvrtcs = nvrtc_by_major()
    assert major in nvrtcs, f"NVRTC {major} is not installed (pip install '.[test]')"
    plain = compile_nvrtc(SOURCE, "sm_80", nvrtc=nvrtcs[major], source="#include <mma.h>\n")
    missing = [e for e in plain.errors if re.search(r'cannot open source file "mma\.h"', e)]
    assert not plain.ok and missing, plain.errors      # no WMMA in the text: no header folder
    found = compile_nvrtc(SOURCE, "sm_80", nvrtc=nvrtcs[major])
    assert found.ok, found.errors
    from gpucnn.toolchain.compilers import find_nvcc
    nvcc = find_nvcc()  # a required tool: its absence fails (test_required_tools names it)
    inc = _toolkit_includes(nvcc)
    assert inc, f"no mma.h beside {nvcc} nor under CUDA_HOME or /usr/local/cuda*"
    res = compile_nvrtc(SOURCE, "sm_80", nvrtc=nvrtcs[major],
                        extra_options=[f"--include-path={inc[0]}"])
    assert res.ok, res.errors


def test_wmma_sources_get_32_byte_aligned_argument_copies():
    """Under checks every array argument is a guarded copy; a WMMA source's are 32-byte
    aligned (its loads and stores require it), whatever the array's size, and a source with
    vector types keeps its 16 bytes."""
    from gpucnn.backends.emu.build import copy_alignment
    mod = module()
    assert all(mod.get_function(n).align == 32 for n in mod.kernel_names)
    assert copy_alignment("float4 v;") == 16 and copy_alignment("int i;") == 1
    assert copy_alignment("wmma::fragment<...> f; float4 v;") == 32
