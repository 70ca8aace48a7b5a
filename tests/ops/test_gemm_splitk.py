"""Split-K GEMMs and ordered sums (gpucnn/ops/gemm.py: gemm_plan, SplitKGemm, plan_gemm,
plan_sum_partials; kernels/sgemm.cu: the parts' sgemm launch with k_last,
sgemm_splitk_epilogue, sgemm_sum_partials).

The plan tests need no device: they check the block counts an H100 (132 SMs) would get for
the fully connected layers of AlexNet and AlexNet-CIFAR. The equivalence tests run split and
unsplit GEMMs on the emulator (three thread orders; outputs and workspaces poisoned) against
the float64 reference, over ragged sizes, both bias axes, ReLU, beta and the four transposes.
"""
import numpy as np
import pytest

from gpucnn.ops import gemm as G
from gpucnn.ops import linear
from gpucnn.testing import assert_close, f64, randn, to_backend
from gpucnn.toolchain import kernel_signatures

TOL = 1e-5
TRANS = [(False, False), (True, False), (False, True), (True, True)]
TRANS_IDS = ["NN", "TN", "NT", "TT"]

# The hidden fully connected layers (in_features, out_features) of gpucnn/models.py: AlexNet's
# fc6, fc7 and AlexNet-CIFAR's two; the classifiers (-> 1000, -> 10) are exempt from the fill
# target (a 10-column product has too little work to fill any GPU).
HIDDEN_FC = {"alexnet.fc6": (9216, 4096), "alexnet.fc7": (4096, 4096),
             "alexnet_cifar.fc1": (2304, 1024), "alexnet_cifar.fc2": (1024, 1024)}
BATCH = 128
H100_SMS = 132


def fc_gemms(batch, fin, fout):
    """{GEMM: (M, N, K, trans_a, trans_b)} of a linear layer, as gpucnn/ops/linear.py plans
    them: y = x @ w^T, dx = dy @ w, dw = dy^T @ x."""
    return {"fwd": (batch, fout, fin, False, True), "dx": (batch, fin, fout, False, False),
            "dW": (fout, fin, batch, True, False)}


def _operands(rng, M, N, K, ta, tb):
    a = randn(rng, *((K, M) if ta else (M, K)))
    b = randn(rng, *((N, K) if tb else (K, N)))
    return a, b


# ---- the plans (no device) -------------------------------------------------------------------
@pytest.mark.parametrize("gemm", ["fwd", "dx", "dW"])
@pytest.mark.parametrize("layer", list(HIDDEN_FC))
def test_fc_layers_fill_an_h100(layer, gemm):
    """At batch 128 every GEMM of the hidden FC layers launches at least two blocks per SM
    of an H100. (Before split-K, fc6's forward got 128 small blocks.)"""
    assert G.FILL_BLOCKS == 2 * H100_SMS
    M, N, K, ta, tb = fc_gemms(BATCH, *HIDDEN_FC[layer])[gemm]
    plan = G.gemm_plan(M, N, K, ta, tb)
    assert plan.blocks >= 2 * H100_SMS, plan
    assert plan.grid == G.sgemm_plan(M, N, ta, tb, 1, plan.split, plan.tile)[1]


def test_fc6_forward_needed_the_split():
    M, N, K, ta, tb = fc_gemms(BATCH, *HIDDEN_FC["alexnet.fc6"])["fwd"]
    assert G.gemm_plan(M, N, K, ta, tb, split=1).blocks == 128
    assert G.gemm_plan(M, N, K, ta, tb).split > 1


@pytest.mark.parametrize("M,N,K", [(128, 4096, 9216), (128, 1024, 1024), (17, 33, 1001),
                                   (1, 1, 100000), (1024, 1024, 128), (4096, 4096, 4096),
                                   (128, 1024, 127), (70, 3, 129), (5, 7, 0)], ids=str)
def test_gemm_plan_rule(M, N, K):
    """Whole BK slices per part and a remainder for the last; no split where the tiles
    already fill the GPU or K is shorter than two parts; the tile only large when it alone
    fills the GPU."""
    plan = G.gemm_plan(M, N, K)
    bk = G.sgemm_tiles()[plan.tile]["BK"]
    tiles = G.tile_count(M, N, plan.tile)
    assert plan.grid[2] == plan.split >= 1 and plan.grid[0] == tiles
    assert (plan.split - 1) * plan.k_part + plan.k_last == K
    if plan.split > 1:
        assert plan.k_part % bk == 0 and 0 < plan.k_last <= plan.k_part
        assert plan.k_part >= G.SPLIT_MIN_K and tiles < G.FILL_BLOCKS
        assert (plan.split - 1) * tiles < G.FILL_BLOCKS  # no more parts than needed
    else:
        assert plan.k_part == plan.k_last == K
        assert tiles >= G.FILL_BLOCKS or K < 2 * G.SPLIT_MIN_K
    assert (plan.tile == "large") == (G.tile_count(M, N, "large") >= G.FILL_BLOCKS
                                      and min(M, N) > G.sgemm_tiles()["small"]["BM"])


def test_gemm_plan_overrides_and_workspace_cap():
    full = G.gemm_plan(128, 4096, 9216, False, True)
    assert full.split == 3 and full.kernel == "sgemm_small_nt"
    assert G.gemm_plan(128, 4096, 9216, max_part_floats=2 * 128 * 4096).split == 2
    assert G.gemm_plan(128, 4096, 9216, max_part_floats=128 * 4096 - 1).split == 1
    forced = G.gemm_plan(20, 30, 13, tile="large", split=2)
    assert (forced.kernel, forced.split, forced.k_part, forced.k_last) == ("sgemm_nn", 2, 8, 5)
    assert G.gemm_plan(20, 30, 9, split=4).split == 2   # parts of whole 8-slices: 8 + 1


# ---- split against unsplit against the float64 reference (emulator) -------------------------
@pytest.mark.parametrize("ta,tb", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("M,N,K", [(17, 33, 1001), (70, 130, 260), (1, 5, 200)], ids=str)
def test_split_gemm_matches_reference(device_backend, rng, M, N, K, ta, tb):
    """The plan's own split (ragged K: a short last part), a forced split of 3 and no split
    all match the reference; the plan splits these shapes."""
    B = device_backend
    a, b = _operands(rng, M, N, K, ta, tb)
    ref = G.reference(*f64(a, b), trans_a=ta, trans_b=tb)
    da, db = to_backend(B, a, b)
    assert G.gemm_plan(M, N, K, ta, tb).split > 1
    for split in (None, 3, 1):
        gemm = G.plan_gemm(B.ctx, M, N, K, ta, tb, split=split)
        assert isinstance(gemm, G.SplitKGemm) == (split != 1)
        out = B.empty((M, N))
        gemm(da, db, out)
        assert_close(B.to_numpy(out), ref, TOL, f"split={split} {M}x{N}x{K} ({ta}, {tb})")


@pytest.mark.parametrize("beta", [0.0, 0.5])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias_axis", [None, 0, 1], ids=["no_bias", "per_row", "per_col"])
def test_split_epilogue_once(device_backend, rng, bias_axis, relu, beta):
    """bias, beta * C and ReLU after the sum of 4 parts, once: a bias added per part would
    be counted 4 times, ReLU per part would clamp partial sums. C is poisoned when beta = 0
    (it must not be read) and holds data otherwise."""
    B = device_backend
    M, N, K = 67, 70, 203
    ta, tb = (False, True) if bias_axis != 0 else (True, False)
    a, b = _operands(rng, M, N, K, ta, tb)
    bias = None if bias_axis is None else 8 * randn(rng, M if bias_axis == 0 else N)
    c0 = randn(rng, M, N)
    c = B.asarray(c0.copy()) if beta else B.empty((M, N))
    gemm = G.plan_gemm(B.ctx, M, N, K, ta, tb, bias is not None, bias_axis or 0, relu, beta,
                       split=4)
    assert gemm.plan.split == 4
    gemm(*to_backend(B, a, b), c, None if bias is None else B.asarray(bias))
    a64, b64, c64 = f64(a, b, c0)
    ref = G.reference(a64, b64, ta, tb, bias=None if bias is None else f64(bias)[0],
                      bias_axis=bias_axis or 0, relu=relu, c=c64, beta=beta)
    out = B.to_numpy(c)
    assert_close(out, ref, TOL, f"split epilogue bias={bias_axis} relu={relu} beta={beta}")
    if relu:
        assert (out >= 0).all() and (out == 0).any() and (out > 0).any()


def test_split_launches_and_determinism(device_backend, rng, monkeypatch):
    """Two launches: the parts (grid z = split, k_last the remainder, no epilogue) into the
    workspace, then the ordered sum with the epilogue; the same bits on a second run."""
    B = device_backend
    M, N, K = 40, 72, 500
    a, b, bias = randn(rng, M, K), randn(rng, N, K), randn(rng, N)
    da, db, dbias = to_backend(B, a, b, bias)
    calls = []
    kernel = B.ctx.kernel

    def recording(name):
        f = kernel(name)

        def launch(grid, block, args, *rest, **kw):
            calls.append((name, grid, args))
            return f(grid, block, args, *rest, **kw)
        return launch
    monkeypatch.setattr(B.ctx, "kernel", recording)
    gemm = G.plan_gemm(B.ctx, M, N, K, trans_b=True, has_bias=True, relu=True)
    plan = gemm.plan
    assert plan == G.gemm_plan(M, N, K, False, True) and plan.split > 1
    outs = []
    for _ in range(2):
        out = B.empty((M, N))
        gemm(da, db, out, dbias)
        outs.append(B.to_numpy(out))
    names = [c[0] for c in calls]
    assert names == [plan.kernel, "sgemm_splitk_epilogue"] * 2
    sig = [p.name for p in kernel_signatures()[plan.kernel]]
    args = dict(zip(sig, calls[0][2]))
    assert calls[0][1] == plan.grid
    assert [int(args[k]) for k in ("K", "k_last", "bias_mode", "relu")] == [
        plan.k_part, plan.k_last, 0, 0] and float(args["beta"]) == 0.0
    assert args["C"] is calls[1][2][0]                # the parts are what the sum reads
    assert outs[0].tobytes() == outs[1].tobytes()
    ref = G.reference(*f64(a, b), trans_b=True, bias=f64(bias)[0], relu=True)
    assert_close(outs[0], ref, TOL, "split GEMM + bias + ReLU")


def test_fc_plans_on_a_device_context(device_backend):
    """plan_gemm follows gemm_plan: fc6's forward is split, AlexNet-CIFAR fc1's dW is not
    (the small tile alone gives 576 blocks)."""
    ctx = device_backend.ctx
    M, N, K, ta, tb = fc_gemms(BATCH, *HIDDEN_FC["alexnet.fc6"])["fwd"]
    fwd = G.plan_gemm(ctx, M, N, K, ta, tb, True, 1, True)
    assert isinstance(fwd, G.SplitKGemm) and fwd.plan == G.gemm_plan(M, N, K, ta, tb)
    M, N, K, ta, tb = fc_gemms(BATCH, *HIDDEN_FC["alexnet_cifar.fc1"])["dW"]
    dw = G.plan_gemm(ctx, M, N, K, ta, tb)
    assert isinstance(dw, G.SgemmLaunch) and dw.name == "sgemm_small_tn"
    assert dw.grid == G.gemm_plan(M, N, K, ta, tb).grid


def test_linear_with_split_gemms(device_backend, rng):
    """A linear layer whose forward (K = 200: 3 parts) and dx (K = 150: 2 parts) GEMMs split,
    with the fused bias + ReLU, against the reference."""
    B = device_backend
    n, fin, fout = 6, 200, 150
    assert G.gemm_plan(n, fout, fin, False, True).split == 3
    assert G.gemm_plan(n, fin, fout).split == 2
    x, w, b, dy = randn(rng, n, fin), randn(rng, fout, fin), randn(rng, fout), randn(rng, n, fout)
    y = B.linear(*to_backend(B, x, w, b), relu=True)
    assert_close(B.to_numpy(y), linear.linear_reference(*f64(x, w, b), True), TOL, "y")
    grads = B.linear_backward(*to_backend(B, dy, x, w))
    for got, ref, nm in zip(grads, linear.linear_backward_reference(*f64(dy, x, w)),
                            "dx dw db".split()):
        assert_close(B.to_numpy(got), ref, TOL, nm)


# ---- the ordered sums ------------------------------------------------------------------------
@pytest.mark.parametrize("S", [1, 2, 3, 5, 8, 9, 40])
def test_sum_partials_keeps_the_part_order(device_backend, rng, S):
    """Every output is ((0 + p_0) + p_1) + ... in float32, whatever threads load the parts
    (1, 2, 4 or 8 per output; 40 parts take two passes): bit for bit the serial sum, which
    is what the conv weight-gradient splits were recorded with."""
    B = device_backend
    count = 3 * 256 + 17
    parts = randn(rng, S, count)
    out = B.empty((count,))
    G.sum_partials(B.ctx, B.asarray(parts), out, count, S, 0.0)
    serial = np.zeros(count, np.float32)
    for p in parts:
        serial += p
    assert B.to_numpy(out).tobytes() == serial.tobytes()
    assert_close(B.to_numpy(out), f64(parts)[0].sum(axis=0), TOL, "sum_partials")
