"""The device SGEMM (kernels/sgemm.cu, launched by gpucnn/ops/gemm.py) against the plain
definition ``gpucnn.ops.gemm.reference`` in float64.

Tests taking ``device_backend`` run on the emulator in three thread orders (or on a GPU with
--device-backend cuda); the emulator poisons every output buffer before a kernel writes it,
and guards every argument buffer, so a read or write past an operand's end fails.

Every kernel variant is exercised: both tiles x the four transposes x vector / scalar global
loads, over ragged shapes, with the padding of padded operands set to NaN (a kernel that
reads a float past a row's end, e.g. a 128-bit load across the K edge, turns the result into
NaN); plus the epilogue (bias per row / column, beta, ReLU) and the batched and
batched-reduce launches on both tiles.
"""
import numpy as np
import pytest

from gpucnn.ops import gemm as G
from gpucnn.testing import assert_close, f64, randn, to_backend, to_host
from gpucnn.toolchain import kernel_signatures, source_defines
from gpucnn.toolchain.limits import GRID_DIM_MAX

TOL = 1e-5

SHAPES = [(1, 1, 1), (17, 33, 65), (64, 64, 64), (70, 3, 129)]  # M, N, K: ragged tiles
RAGGED = [(1, 1, 1), (17, 33, 65), (129, 127, 130)]             # past 1 and 2 tile edges
TRANS = [(False, False), (True, False), (False, True), (True, True)]
TRANS_IDS = ["NN", "TN", "NT", "TT"]
TILES = ["large", "small"]


def _operands(rng, M, N, K, ta, tb):
    a = randn(rng, *((K, M) if ta else (M, K)))
    b = randn(rng, *((N, K) if tb else (K, N)))
    return a, b


def _padded(B, x, ld):
    """x (rows x cols) stored with leading dimension ld >= cols; the padding is NaN."""
    store = np.full((x.shape[0], ld), np.nan, np.float32)
    store[:, :x.shape[1]] = x
    return B.asarray(store)


def _round4(n):
    return -(-n // 4) * 4


class Launches:
    """Records the kernel launches of a backend (name and arguments) while calling them."""

    def __init__(self, B, monkeypatch):
        self.calls = []
        kernel = B.ctx.kernel

        def recording(name):
            f = kernel(name)

            def launch(grid, block, args, *rest, **kw):
                self.calls.append((name, grid, block, args))
                return f(grid, block, args, *rest, **kw)
            return launch
        monkeypatch.setattr(B.ctx, "kernel", recording)

    def sgemm_args(self):
        (name, grid, block, args), = [c for c in self.calls if c[0] != "sgemm_sum_partials"]
        params = [p.name for p in kernel_signatures()[name]]
        return name, grid, block, dict(zip(params, args))


# ---- launch geometry and kernel choice: read from the .cu file, not retyped -------------------
def test_tiles_are_the_sources_defines():
    src = source_defines("sgemm.cu", "SGEMM")
    tiles = G.sgemm_tiles()
    for name, prefix in (("large", ""), ("small", "SMALL_")):
        t = tiles[name]
        for k in ("BM", "BN", "THREADS"):
            assert t[k] == src[prefix + k], (name, k)
        for k in ("BK", "TM", "TN", "WM", "WN", "PAD"):
            assert t[k] == src[k], (name, k)
        assert t["THREADS"] == (t["BM"] // t["TM"]) * (t["BN"] // t["TN"])
    assert G.sgemm_tile() == tiles["large"]
    assert (tiles["large"]["BM"], tiles["small"]["BM"], tiles["large"]["TM"]) == (128, 64, 8)


def test_every_variant_is_a_declared_kernel():
    """Each name the launcher can produce is a kernel of sgemm.cu, with one signature."""
    sigs = kernel_signatures()
    names = {G.sgemm_kernel_name(t, ta, tb) for t in TILES for ta, tb in TRANS}
    assert len(names) == 8 and names <= set(sigs)
    assert len({tuple((p.name, p.ctype) for p in sigs[n]) for n in names}) == 1
    with pytest.raises(ValueError, match="tile must be"):
        G.sgemm_kernel_name("huge", False, False)


@pytest.mark.parametrize("tile", TILES)
def test_launch_geometry(tile):
    t = G.sgemm_tiles()[tile]
    M, N = 2 * t["BM"] + 1, t["BN"] + 1  # one row / column past a tile edge: 3 x 2 tiles
    name, grid, block = G.sgemm_plan(M, N, True, False, 2, 3, tile=tile)
    assert name == G.sgemm_kernel_name(tile, True, False)
    assert grid == (3 * 2, 2, 3) and block == (t["THREADS"], 1, 1)
    assert G.sgemm_launch(t["BM"], t["BN"], tile=tile) == ((1, 1, 1), (t["THREADS"], 1, 1))
    with pytest.raises(ValueError, match="grid limit"):
        G.sgemm_launch(4, 4, batch_y=GRID_DIM_MAX[1] + 1, tile=tile)
    with pytest.raises(ValueError, match="grid limit"):
        G.sgemm_launch(4, 4, batch_z=GRID_DIM_MAX[2] + 1, tile=tile)


def test_choose_tile():
    big = G.sgemm_tiles()["large"]["BM"]
    assert G.choose_tile(64, 4096) == "small" and G.choose_tile(4096, 64) == "small"
    # 2 x 2 large tiles: too few blocks, unless the batch multiplies them past the threshold
    assert G.choose_tile(2 * big, 2 * big) == "small"
    assert G.choose_tile(2 * big, 2 * big, batches=G.LARGE_TILE_MIN_BLOCKS // 4) == "large"
    assert G.choose_tile(16 * big, 8 * big) == "large"       # 128 blocks
    assert G.choose_tile(16 * big, 8 * big - 1) == "large"
    assert G.choose_tile(15 * big, 8 * big) == "small"       # 120 blocks
    assert G.sgemm_plan(4096, 4096)[0] == "sgemm_nn"
    assert G.sgemm_plan(100, 4096, True, True)[0] == "sgemm_small_tt"


def _aligned_start(arr):
    """The first index of a float32 array at a 16-byte aligned address."""
    return (-(G.array_address(arr) // 4)) % 4


def test_vector_ok():
    buf = np.zeros(600, np.float32)
    i = _aligned_start(buf)
    aligned, shifted = buf[i:i + 512], buf[i + 1:i + 513]
    assert G.vector_ok(aligned, 8, (32, 0, 64))
    assert not G.vector_ok(aligned, 6)                 # leading dimension not a multiple of 4
    assert not G.vector_ok(aligned, 8, (32, 2))        # a batch stride that is not
    assert not G.vector_ok(shifted, 8)                 # 4 bytes past a 16-byte boundary
    assert not G.vector_ok(object(), 8)                # no address known: never vectorised


# ---- every variant: tile x transposes x vector / scalar loads, ragged shapes -------------------
@pytest.mark.parametrize("layout", ["vector", "scalar", "odd_ld"])
@pytest.mark.parametrize("ta,tb", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("M,N,K", RAGGED, ids=str)
def test_sgemm_variants(device_backend, rng, monkeypatch, M, N, K, tile, ta, tb, layout):
    """vector: leading dimensions rounded up to 4 (NaN padding), 128-bit loads where a chunk
    is whole, scalar ones across the edges; scalar: the same operands, vector loads off;
    odd_ld: leading dimensions not a multiple of 4 (the launcher must pick scalar loads)."""
    B = device_backend
    a, b = _operands(rng, M, N, K, ta, tb)
    pad = (lambda n: _round4(n) + 4) if layout != "odd_ld" else (lambda n: _round4(n) + 1)
    lda, ldb = pad(a.shape[1]), pad(b.shape[1])
    da, db = _padded(B, a, lda), _padded(B, b, ldb)
    c = B.empty((M, N))
    rec = Launches(B, monkeypatch)
    G.sgemm(B.ctx, da, db, c, M, N, K, lda, ldb, N, ta, tb, tile=tile, vector=layout != "scalar")
    name, grid, block, args = rec.sgemm_args()
    assert name == G.sgemm_kernel_name(tile, ta, tb)
    want_vec = layout == "vector" and G.vector_ok(da, lda) and G.vector_ok(db, ldb)
    if layout == "vector" and B.xp is np:
        assert want_vec, "the padded operands should allow 128-bit loads"
    assert (bool(args["vec_a"]), bool(args["vec_b"])) == (want_vec, want_vec)
    ref = G.reference(*f64(a, b), trans_a=ta, trans_b=tb)
    assert_close(B.to_numpy(c), ref, TOL, f"{name} {M}x{N}x{K} {layout}")


def test_sgemm_misaligned_operand(device_backend, rng, monkeypatch):
    """An operand starting 4 bytes past a 16-byte boundary is read with scalar loads (a
    128-bit load there would fault on a GPU); the other operand may still use vector ones."""
    B = device_backend
    M, N, K = 40, 72, 36
    a, b = _operands(rng, M, N, K, False, False)
    store = B.asarray(np.zeros(a.size + 8, np.float32))
    i = _aligned_start(store) + 1
    da = store[i:i + a.size]
    da[...] = B.asarray(a.ravel())
    db = B.asarray(b)
    c = B.empty((M, N))
    rec = Launches(B, monkeypatch)
    G.sgemm(B.ctx, da, db, c, M, N, K, K, N, N, tile="small")
    args = rec.sgemm_args()[3]
    assert int(args["vec_a"]) == 0 and int(args["vec_b"]) == int(G.vector_ok(db, N))
    assert_close(B.to_numpy(c), G.reference(*f64(a, b)), TOL, "misaligned A")


# ---- gemm(): the 2-D entry point -------------------------------------------------------
@pytest.mark.parametrize("ta,tb", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("M,N,K", SHAPES + [(256, 192, 72)], ids=str)
def test_gemm(device_backend, rng, M, N, K, ta, tb):
    B = device_backend
    a, b = _operands(rng, M, N, K, ta, tb)
    (out,) = to_host(B, G.gemm(B.ctx, *to_backend(B, a, b), trans_a=ta, trans_b=tb))
    assert out.dtype == np.float32
    ref = G.reference(*f64(a, b), trans_a=ta, trans_b=tb)
    assert_close(out, ref, TOL, f"gemm {M}x{N}x{K} trans=({ta},{tb})")


def test_gemm_empty_k(device_backend, rng):
    """K = 0: the products are empty sums; the epilogue still adds the bias."""
    B = device_backend
    a, b, bias = np.zeros((5, 0), np.float32), np.zeros((0, 7), np.float32), randn(rng, 7)
    out = G.gemm(B.ctx, *to_backend(B, a, b), bias=B.asarray(bias), bias_axis=1)
    assert_close(B.to_numpy(out), np.broadcast_to(f64(bias)[0], (5, 7)), TOL, "K = 0")


@pytest.mark.parametrize("beta", [0.0, 0.5])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias_axis", [None, 0, 1], ids=["no_bias", "per_row", "per_col"])
@pytest.mark.parametrize("tile", TILES)
def test_sgemm_epilogue(device_backend, rng, tile, bias_axis, relu, beta):
    """bias (per row or column), beta * C, ReLU, on both tiles; C is poisoned when beta = 0
    (it must not be read) and holds data otherwise."""
    B = device_backend
    M, N, K = 67, 70, 19
    ta, tb = (False, True) if bias_axis != 0 else (True, False)
    a, b = _operands(rng, M, N, K, ta, tb)
    bias = None if bias_axis is None else randn(rng, M if bias_axis == 0 else N)
    c0 = randn(rng, M, N)
    c = B.asarray(c0.copy()) if beta else B.empty((M, N))
    G.sgemm(B.ctx, *to_backend(B, a, b), c, M, N, K, a.shape[1], b.shape[1], N, ta, tb,
            bias=None if bias is None else B.asarray(bias), bias_axis=bias_axis or 0,
            relu=relu, beta=beta, tile=tile)
    a64, b64, c64 = f64(a, b, c0)
    ref = G.reference(a64, b64, ta, tb, bias=None if bias is None else f64(bias)[0],
                      bias_axis=bias_axis or 0, relu=relu, c=c64, beta=beta)
    out = B.to_numpy(c)
    assert_close(out, ref, TOL, f"{tile} epilogue bias={bias_axis} relu={relu} beta={beta}")
    if relu:  # the clamp happened, and not everywhere
        assert (out >= 0).all() and (out == 0).any() and (out > 0).any()


def test_gemm_bias_relu(device_backend, rng):
    B = device_backend
    for bias_axis in (0, 1):
        M, N, K = 37, 70, 19
        a, b = _operands(rng, M, N, K, False, True)
        bias = randn(rng, M if bias_axis == 0 else N)
        out = G.gemm(B.ctx, *to_backend(B, a, b), trans_b=True, bias=B.asarray(bias),
                     bias_axis=bias_axis, relu=True)
        ref = G.reference(*f64(a, b), trans_b=True, bias=f64(bias)[0], bias_axis=bias_axis,
                          relu=True)
        assert_close(B.to_numpy(out), ref, TOL, "gemm + bias + ReLU")


def test_no_bias_launch_does_not_alias_c(device_backend, rng, monkeypatch):
    """Without a bias the (restrict) bias pointer is A, never the output C."""
    B = device_backend
    a, b = to_backend(B, randn(rng, 9, 5), randn(rng, 5, 7))
    rec = Launches(B, monkeypatch)
    out = G.gemm(B.ctx, a, b)
    args = rec.sgemm_args()[3]
    assert args["bias"] is a and args["bias"] is not out and int(args["bias_mode"]) == 0


def test_gemm_accumulate(device_backend, rng):
    B = device_backend
    M, N, K = 20, 67, 33
    a, b = _operands(rng, M, N, K, True, False)
    c0 = randn(rng, M, N)
    out = B.asarray(c0.copy())  # asarray may return its argument itself (emu)
    assert G.gemm(B.ctx, *to_backend(B, a, b), trans_a=True, out=out, beta=0.5) is out
    ref = G.reference(*f64(a, b), trans_a=True, c=f64(c0)[0], beta=0.5)
    assert_close(B.to_numpy(out), ref, TOL, "gemm with beta=0.5")


def test_gemm_matmul_path(device_backend, rng, monkeypatch):
    """use_cublas (the cuda backend's cuBLAS comparison mode; on emu xp is NumPy, so this
    runs np.matmul) follows the same contract."""
    B = device_backend
    monkeypatch.setattr(B, "use_cublas", True)
    a, b = _operands(rng, 9, 14, 5, True, False)
    bias, c0 = randn(rng, 9), randn(rng, 9, 14)
    out = G.gemm(B.ctx, *to_backend(B, a, b), trans_a=True, bias=B.asarray(bias),
                 bias_axis=0, relu=True)
    a64, b64, bias64, c64 = f64(a, b, bias, c0)
    assert_close(B.to_numpy(out), G.reference(a64, b64, trans_a=True, bias=bias64,
                                              bias_axis=0, relu=True), TOL, "matmul path")
    out = B.asarray(c0.copy())
    G.gemm(B.ctx, *to_backend(B, a, b), trans_a=True, out=out, beta=1.0)
    assert_close(B.to_numpy(out), G.reference(a64, b64, trans_a=True, c=c64, beta=1.0), TOL,
                 "matmul path, beta=1")


def test_bad_operands(device_backend, rng):
    B = device_backend
    a, b = to_backend(B, randn(rng, 4, 3), randn(rng, 3, 5))
    cases = [
        ((B.asarray(randn(rng, 2, 4, 3)), b), {}, "a must be a 2-D"),
        ((B.asarray(randn(rng, 4, 3), np.float64), b), {}, "float32"),
        ((B.asarray(randn(rng, 3, 4)).T, b), {}, "C-contiguous"),
        ((a, B.asarray(randn(rng, 4, 5))), {}, "inner dimensions differ"),
        ((a, b), dict(bias=B.asarray(randn(rng, 4))), r"bias must have shape \(5,\)"),
        ((a, b), dict(bias=B.asarray(randn(rng, 5), np.float64)), "bias must be .*float32"),
        ((a, b), dict(beta=1.0), "beta != 0 needs out"),
        ((a, b), dict(out=B.empty((5, 4))), r"out must be .*\(4, 5\)"),
        ((a, b), dict(out=B.empty((4, 5), np.float64)), "out must be .*float32"),
    ]
    for args, kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            G.gemm(B.ctx, *args, **kw)
    with pytest.raises(ValueError, match="beta != 0 needs c"):
        G.reference(*f64(randn(rng, 2, 2), randn(rng, 2, 2)), beta=1.0)


def test_extent_guard():
    """In-matrix offsets are int32 in the kernel: the launcher refuses larger operands
    before launching anything (no device needed: the check precedes the launch)."""
    a = b = c = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="A extent"):
        G.sgemm(None, a, b, c, 70000, 8, 40000, 40000, 8, 8)
    with pytest.raises(ValueError, match="B extent"):
        G.sgemm(None, a, b, c, 8, 70000, 40000, 40000, 70000, 70000)


# ---- sgemm(): batched and batched-reduce launches, as the conv uses them -----------------
@pytest.mark.parametrize("K", [13, 16], ids=["K13_scalar", "K16_vector"])
@pytest.mark.parametrize("tile", TILES)
def test_sgemm_batched_reduce(device_backend, rng, monkeypatch, tile, K):
    """C[y, z] = sum_r A[y, z, r] @ B[y, z, r]^T: the strides over grid y/z and r (with
    K = 16 every stride is a multiple of 4 and the operands are read with vector loads)."""
    B = device_backend
    Y, Z, R, M, N = 2, 3, 4, 9, 21
    a, b = randn(rng, Y, Z, R, M, K), randn(rng, Y, Z, R, N, K)
    c = B.empty((Y, Z, M, N))
    rec = Launches(B, monkeypatch)
    da, db = to_backend(B, a, b)
    G.sgemm(B.ctx, da, db, c, M, N, K, lda=K, ldb=K, ldc=N, trans_b=True,
            batch_y=Y, batch_z=Z, a_y=Z * R * M * K, a_z=R * M * K, a_r=M * K,
            b_y=Z * R * N * K, b_z=R * N * K, b_r=N * K, c_y=Z * M * N, c_z=M * N,
            red_per_z=R, red_total=R * Z, tile=tile)
    args = rec.sgemm_args()[3]
    if B.xp is np:
        assert int(args["vec_a"]) == int(args["vec_b"]) == int(K % 4 == 0)
    a64, b64 = f64(a, b)
    ref = np.stack([np.stack([sum(G.reference(a64[y, z, r], b64[y, z, r], trans_b=True)
                                  for r in range(R)) for z in range(Z)]) for y in range(Y)])
    assert_close(B.to_numpy(c), ref, TOL, "batched-reduce sgemm")


@pytest.mark.parametrize("tile", TILES)
def test_sgemm_ragged_split_reduction(device_backend, rng, tile):
    """Block z sums r in [2z, 2z + 2) of 5: the last part is short."""
    B = device_backend
    M, N, K = 9, 21, 13
    a, b = randn(rng, 5, M, K), randn(rng, 5, K, N)
    c = B.empty((3, M, N))
    G.sgemm(B.ctx, *to_backend(B, a, b), c, M, N, K, lda=K, ldb=N, ldc=N, batch_z=3,
            a_z=2 * M * K, a_r=M * K, b_z=2 * K * N, b_r=K * N, c_z=M * N, red_per_z=2,
            red_total=5, tile=tile)
    a64, b64 = f64(a, b)
    parts = [sum(G.reference(a64[r], b64[r]) for r in range(lo, min(lo + 2, 5)))
             for lo in (0, 2, 4)]
    assert_close(B.to_numpy(c), np.stack(parts), TOL, "split reduction")


@pytest.mark.parametrize("tile", TILES)
def test_sgemm_batched_bias_per_group(device_backend, rng, tile):
    """bias_y strides the bias per grid-y batch (one bias slice per conv group)."""
    B = device_backend
    Y, M, N, K = 3, 5, 11, 7
    a, b, bias = randn(rng, Y, M, K), randn(rng, Y, K, N), randn(rng, Y * M)
    c = B.empty((Y, M, N))
    G.sgemm(B.ctx, *to_backend(B, a, b), c, M, N, K, lda=K, ldb=N, ldc=N, batch_y=Y,
            a_y=M * K, b_y=K * N, c_y=M * N, bias=B.asarray(bias), bias_y=M, bias_axis=0,
            relu=True, tile=tile)
    a64, b64, bias64 = f64(a, b, bias)
    ref = np.stack([G.reference(a64[y], b64[y], bias=bias64[y * M:(y + 1) * M], bias_axis=0,
                                relu=True) for y in range(Y)])
    assert_close(B.to_numpy(c), ref, TOL, "batched sgemm + per-group bias + ReLU")


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_sum_partials(device_backend, rng, beta):
    B = device_backend
    S, count = 5, 3 * 256 + 17  # not a multiple of the block, more than one grid stride
    parts, out0 = randn(rng, S, count), randn(rng, count)
    out = B.asarray(out0.copy()) if beta else B.empty((count,))
    G.sum_partials(B.ctx, B.asarray(parts), out, count, S, beta)
    parts64, out64 = f64(parts, out0)
    assert_close(B.to_numpy(out), parts64.sum(axis=0) + beta * out64, TOL, "sum_partials")
