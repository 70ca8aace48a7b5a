"""A handful of chosen kernel launches for compute-sanitizer (bench/gpu_validate.sh, step 5).

    compute-sanitizer --tool memcheck python bench/gpu_sanitize.py [--cases quick|full]
    python bench/gpu_sanitize.py --backend emu        # the same launches on the emulator

The launches are those of the two kernels with double-buffered shared memory and 128-bit
global loads: our SGEMM (both tiles, ragged sizes, vector and scalar loads) and the
implicit-GEMM convolution (forward, backward-data with stride phases, backward-weights with
its split reduction and the partial-sum kernel). Sizes are small but past several tile edges
and K slices, so every edge path and both shared-memory buffers are used, and the run stays
short under instrumentation (racecheck slows shared-memory accesses by orders of magnitude).

Why a driver and not the test suite: under compute-sanitizer every module CuPy loads and
every launch is instrumented, so pytest's start-up and ~400 tests would not fit the minute a
lent GPU can spare; and the suite allocates through CuPy's memory pool, which rounds every
buffer up to 512 bytes and so hides an overrun of a few floats from memcheck. Here the pool
is switched off before the first allocation (``cupy.cuda.set_allocator(None)``): each array
is its own cudaMalloc of exactly its size, and memcheck sees the end of every operand. Only
the kernel files these launches need are loaded (the backend is made with ``eager=False``).

Every result is also checked against the float64 reference, so the driver fails (exit 1) on
a wrong result even where the sanitizer finds nothing. Its last two lines (the verdict and the
kernels used) start with ``@summary`` unless ``--plain``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's gpucnn

from gpucnn.ops import gemm as G  # noqa: E402
from gpucnn.ops.conv import conv_geometry  # noqa: E402
from gpucnn.testing import assert_close, f64, randn, to_backend, to_host  # noqa: E402

TOL = 1e-4

# (tile, trans_a, trans_b, M, N, K): every case is ragged in M or N (a partial edge tile);
# K runs over several BK slices (both shared-memory buffers in use) and, where the leading
# dimensions are multiples of 4 floats, the 128-bit load path is taken, else the scalar one.
SGEMM_QUICK = [
    ("large", False, False, 129, 132, 136),   # vector loads of A and B
    ("large", True, True, 131, 129, 130),     # scalar loads, K edge inside a slice
    ("small", False, False, 67, 132, 140),    # vector loads
    ("small", True, False, 65, 63, 70),       # scalar loads
]
SGEMM_FULL = SGEMM_QUICK + [
    (tile, ta, tb, m, n, k) for tile in ("large", "small") for ta, tb in
    ((False, True), (True, False), (False, False), (True, True))
    for m, n, k in ((257, 129, 68), (1, 131, 9))]

# (name, x shape, w shape, conv keywords): forward with bias and ReLU; stride 2 gives the
# backward-data pass several phases; small outputs make backward-weights split its reduction
CONV_QUICK = [
    ("pad1", (4, 8, 9, 9), (70, 8, 3, 3), dict(padding=1)),     # dW split in 2 parts
    ("stride2", (2, 8, 11, 11), (20, 8, 3, 3), dict(stride=2, padding=1)),
]
CONV_FULL = CONV_QUICK + [
    ("5x5", (3, 6, 12, 12), (36, 6, 5, 5), dict(padding=2)),
    ("dilation2", (2, 5, 13, 13), (9, 5, 3, 3), dict(padding=2, dilation=2)),
    ("groups2", (2, 8, 10, 10), (12, 4, 3, 3), dict(padding=1, groups=2)),
]


def make_backend(kind):
    """The backend to run on: cuda with CuPy's memory pool off, or the emulator."""
    if kind == "emu":
        from gpucnn.backends.device import make_emu_backend
        return make_emu_backend(order="forward", checks=True, seed=7)
    import cupy
    cupy.cuda.set_allocator(None)              # exact cudaMalloc sizes for memcheck
    cupy.cuda.set_pinned_memory_allocator(None)
    from gpucnn.backends.cuda import make_cuda_backend
    B = make_cuda_backend(eager=False, use_cublas=False)  # our kernels, loaded on use
    probe = B.empty((3,))
    if cupy.get_default_memory_pool().used_bytes():  # the check the whole step relies on
        raise RuntimeError("CuPy's memory pool still serves allocations: memcheck would "
                           "not see small overruns")
    del probe
    return B


def record_kernels(B):
    """The names of the kernels B plans from now on, in first-use order: the summary lists
    them, so a case that stopped reaching the kernel it was chosen for shows."""
    used, kernel = [], B.ctx.kernel

    def recording(name):
        if name not in used:
            used.append(name)
        return kernel(name)
    B.ctx.kernel = recording
    return used


def sgemm_case(B, rng, tile, ta, tb, M, N, K):
    a = randn(rng, *((K, M) if ta else (M, K)))
    b = randn(rng, *((N, K) if tb else (K, N)))
    bias = randn(rng, N)
    c = B.empty((M, N))
    G.sgemm(B.ctx, *to_backend(B, a, b), c, M, N, K, lda=M if ta else K,
            ldb=K if tb else N, ldc=N, trans_a=ta, trans_b=tb, bias=B.asarray(bias),
            relu=True, tile=tile)
    ref = G.reference(*f64(a, b), trans_a=ta, trans_b=tb, bias=f64(bias)[0], relu=True)
    assert_close(B.to_numpy(c), ref, TOL, "sgemm")


def conv_cases(B, reference, rng, x_shape, w_shape, kw):
    """forward (bias, ReLU), then backward-data and backward-weights separately, each with
    the implicit-GEMM algorithm; yields (what, run) so each is timed and reported alone."""
    x, w, b = randn(rng, *x_shape), randn(rng, *w_shape), randn(rng, w_shape[0])
    dy = randn(rng, *conv_geometry(x_shape, w_shape, **kw).y_shape)
    xd, wd, bd, dyd = to_backend(B, x, w, b, dy)

    def fwd():
        y = B.conv2d(xd, wd, bd, relu=True, algo="implicit", **kw)
        assert_close(B.to_numpy(y), reference.conv2d(*f64(x, w, b), relu=True, **kw), TOL, "y")

    refs = reference.conv2d_backward(*f64(dy, x, w), **kw)

    def dgrad():
        dx, _, _ = B.conv2d_backward(dyd, xd, wd, need_dw=False, algo="implicit", **kw)
        assert_close(B.to_numpy(dx), refs[0], TOL, "dx")

    def wgrad():
        _, dw, db = B.conv2d_backward(dyd, xd, wd, need_dx=False, algo="implicit", **kw)
        for name, out, ref in zip(("dw", "db"), to_host(B, dw, db), refs[1:]):
            assert_close(out, ref, TOL, name)

    yield "fwd", fwd
    yield "dgrad", dgrad
    yield "wgrad", wgrad


def cases(B, reference, rng, full):
    for tile, ta, tb, M, N, K in (SGEMM_FULL if full else SGEMM_QUICK):
        yield (f"sgemm {tile} {'T' if ta else 'N'}{'T' if tb else 'N'} {M}x{N}x{K}",
               lambda c=(tile, ta, tb, M, N, K): sgemm_case(B, rng, *c))
    for name, xs, ws, kw in (CONV_FULL if full else CONV_QUICK):
        for what, run in conv_cases(B, reference, rng, xs, ws, kw):
            yield f"implicit conv {name} {what} x{list(xs)} w{list(ws)}", run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("cuda", "emu"), default="cuda",
                   help="cuda (under compute-sanitizer) or emu (the same launches on the "
                        "CPU emulator) (default: cuda)")
    p.add_argument("--plain", action="store_true",
                   help="summary lines without the @summary mark (gpu_validate.sh words "
                        "its own around them)")
    p.add_argument("--cases", choices=("quick", "full"), default="quick",
                   help="quick: 4 SGEMMs and 2 convolutions x 3 passes; full: every "
                        "transpose of both tiles and 5 convolutions (default: quick)")
    args = p.parse_args(argv)
    from gpucnn.backends import get_backend
    t0 = time.perf_counter()
    B = make_backend(args.backend)
    reference = get_backend("reference")
    rng = np.random.default_rng(0)
    print(f"backend: {B.describe()} ({time.perf_counter() - t0:.1f} s to start)", flush=True)
    used = record_kernels(B)
    done, failed = 0, []
    for label, run in cases(B, reference, rng, args.cases == "full"):
        t = time.perf_counter()
        try:
            run()
            B.synchronize()
        except AssertionError as exc:   # a wrong result: report it, run the other cases
            failed.append(label)
            print(f"MISMATCH {label}: {exc}", flush=True)
            continue
        done += 1
        print(f"ok {label} ({time.perf_counter() - t:.2f} s)", flush=True)
    total = done + len(failed)
    verdict = (f"all {total} match the float64 reference" if not failed else
               f"{len(failed)} of {total} DO NOT match the float64 reference: "
               f"{'; '.join(failed)}")
    pool = ", CuPy memory pool off" if args.backend == "cuda" else ""
    mark = "" if args.plain else "@summary "
    print(f"{mark}driver ({args.backend}, {args.cases} cases{pool}): {verdict} "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"{mark}driver kernels: {', '.join(used)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
