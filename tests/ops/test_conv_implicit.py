"""Implicit-GEMM convolution (kernels/conv_implicit.cu, gpucnn/ops/conv/implicit.py) and the
convolution algorithm registry (gpucnn/ops/conv/algos.py).

1. Every implicit kernel (forward + bias + ReLU, backward-data by stride phases,
   backward-weights with and without its split) on ``emu`` in three thread orders (or a GPU
   with --device-backend cuda), through the public ``algo="implicit"``, against the float64
   reference over ragged shapes; outputs are poisoned on emu, so a skipped element fails.
2. The launch geometry that needs no device: stride phases against a brute-force
   enumeration, the split, the int32 guard, workspace bytes.
3. The registry: names, errors, $GPUCNN_CONV_ALGO, per-call override, the heuristic's table,
   the accessor, presets, and the GPU's timed choice with a fake timer and its file cache.
"""
import json

import numpy as np
import pytest

from gpucnn.backends.device import DeviceBackend
from gpucnn.ops.conv import algos, conv_geometry, direct, implicit, selector
from gpucnn.testing import assert_close, f64, randn, to_backend, to_host

TOL = 1e-5
TOL_LARGE_K = 1e-4  # float32 sums of more than 256 products

# name: (N, C, H, W), (F, kh, kw), stride, padding, dilation, groups
CASES = {
    "basic": ((2, 3, 7, 6), (4, 3, 3), 1, 0, 1, 1),
    "pad": ((2, 3, 9, 11), (5, 3, 3), 1, 1, 1, 1),
    "alexnet_conv1": ((1, 3, 227, 227), (2, 11, 11), 4, 2, 1, 1),
    "same_even": ((2, 2, 6, 7), (3, 4, 4), 1, "same", 1, 1),
    "same_rect_dilation": ((1, 2, 8, 9), (2, 2, 4), 1, "same", 3, 1),
    "dilation2": ((2, 2, 10, 9), (3, 3, 3), 1, 2, 2, 1),
    "dilation2_stride2": ((2, 2, 11, 10), (3, 3, 3), 2, 1, 2, 1),  # phases no tap reaches
    "stride3_dilation2_rect": ((1, 2, 13, 12), (2, 3, 2), 3, (1, 2), 2, 1),
    "groups2": ((2, 4, 7, 8), (6, 3, 3), 1, 1, 1, 2),
    "groups3_stride2": ((3, 6, 9, 7), (3, 3, 2), 2, (1, 0), 1, 3),
    "1x1": ((3, 3, 5, 5), (5, 1, 1), 1, 0, 1, 1),
    "1x1_stride2_pad": ((2, 3, 7, 6), (4, 1, 1), 2, 1, 1, 1),
    "batch1_odd": ((1, 3, 13, 5), (7, 3, 2), (2, 3), (1, 0), 1, 1),
    "rect_dilation": ((2, 2, 11, 12), (3, 2, 3), (1, 2), (0, 3), (3, 2), 1),
    "input_smaller_than_stride": ((2, 2, 3, 3), (2, 3, 3), 4, 1, 1, 1),
    # past one 128 x 128 tile (either precision's) along m and n, ragged: forward and
    # backward-weights (F = 130), backward-data too (C = 130, pointwise)
    "ragged_tiles": ((2, 40, 9, 9), (130, 3, 3), 1, 1, 1, 1),
    "ragged_groups": ((2, 6, 12, 12), (387, 2, 2), 1, 0, 1, 3),
    "ragged_pointwise": ((2, 130, 10, 10), (131, 1, 1), 1, 0, 1, 1),
}
# long weight-gradient reductions: the backward-weights split over grid z
SPLIT = {
    "split": ((4, 3, 12, 11), (5, 3, 3), 1, 1, 1, 1),
    "split_groups_stride": ((3, 4, 21, 20), (4, 3, 3), 2, 1, 1, 2),
}


def _inputs(rng, case, bias=True):
    xs, (F, kh, kw), s, p, d, gr = {**CASES, **SPLIT}[case]
    x = randn(rng, *xs)
    w = randn(rng, F, xs[1] // gr, kh, kw)
    b = randn(rng, F) if bias else None
    return x, w, b, dict(stride=s, padding=p, dilation=d, groups=gr)


def _tol(x, w, kw):
    g = conv_geometry(x.shape, w.shape, **kw)
    return TOL_LARGE_K if max(g.K, g.N * g.Ho * g.Wo) > 256 else TOL


# ---- 1. the kernels on the device --------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_implicit_forward(device_backend, reference_backend, rng, case):
    """Bias + ReLU epilogue, bias only, neither."""
    B = device_backend
    x, w, b, kw = _inputs(rng, case)
    tol = _tol(x, w, kw)
    for bias, relu in ((b, True), (b, False), (None, False)):
        ref = reference_backend.conv2d(*f64(x, w), None if bias is None else f64(bias)[0],
                                       **kw, relu=relu)
        args = to_backend(B, x, w) + ((None,) if bias is None else to_backend(B, bias))
        y = B.to_numpy(B.conv2d(*args, **kw, relu=relu, algo="implicit"))
        assert y.dtype == np.float32
        assert_close(y, ref, tol, f"{case} bias={bias is not None} relu={relu}")


@pytest.mark.parametrize("case", list(CASES))
def test_implicit_backward(device_backend, reference_backend, rng, case):
    B = device_backend
    x, w, _, kw = _inputs(rng, case, bias=False)
    dy = randn(rng, *conv_geometry(x.shape, w.shape, **kw).y_shape)
    refs = reference_backend.conv2d_backward(*f64(dy, x, w), **kw)
    outs = to_host(B, *B.conv2d_backward(*to_backend(B, dy, x, w), **kw, algo="implicit"))
    for name, out, ref in zip(("dx", "dw", "db"), outs, refs):
        assert out.dtype == np.float32
        assert_close(out, ref, _tol(x, w, kw), f"{case} {name}")


@pytest.mark.parametrize("case", ["groups3_stride2", "same_even", "alexnet_conv1"])
def test_implicit_backward_partial(device_backend, reference_backend, rng, case):
    B = device_backend
    x, w, _, kw = _inputs(rng, case, bias=False)
    dy = randn(rng, *conv_geometry(x.shape, w.shape, **kw).y_shape)
    refs = reference_backend.conv2d_backward(*f64(dy, x, w), **kw)
    args = to_backend(B, dy, x, w)
    dx, dw, db = B.conv2d_backward(*args, **kw, need_dw=False, algo="implicit")
    assert dw is None and db is None
    assert_close(B.to_numpy(dx), refs[0], _tol(x, w, kw), f"{case} dx alone")
    dx, dw, db = B.conv2d_backward(*args, **kw, need_dx=False, algo="implicit")
    assert dx is None
    assert_close(B.to_numpy(dw), refs[1], _tol(x, w, kw), f"{case} dw alone")
    assert_close(B.to_numpy(db), refs[2], _tol(x, w, kw), f"{case} db alone")
    assert B.conv2d_backward(*args, **kw, need_dx=False, need_dw=False,
                             algo="implicit") == (None, None, None)


@pytest.mark.parametrize("case", list(SPLIT))
def test_implicit_weight_gradient_split(device_backend, reference_backend, rng, monkeypatch,
                                        case):
    """The split over grid z (partial sums added in order) and no split give dw."""
    B = device_backend
    x, w, _, kw = _inputs(rng, case, bias=False)
    g = conv_geometry(x.shape, w.shape, **kw)
    dy = randn(rng, *g.y_shape)
    ref = reference_backend.conv2d_backward(*f64(dy, x, w), **kw)[1]
    for target, split in ((10**6, True), (1, False)):
        monkeypatch.setattr(B, "dw_target_blocks", target, raising=False)
        parts, per = implicit.wgrad_split(g, B.workspace_bytes, target)
        assert (parts > 1) == split and per % implicit.implicit_tile()["BK"] == 0
        dw = B.conv2d_backward(*to_backend(B, dy, x, w), **kw, need_dx=False,
                               algo="implicit")[1]
        assert_close(B.to_numpy(dw), ref, TOL_LARGE_K, f"{case} parts={parts}")


def test_implicit_is_deterministic(device_backend, rng, monkeypatch):
    """No atomics, fixed summation orders: two runs (on emu, random thread order: two
    different schedules) are bit-identical, the split weight gradient included."""
    B = device_backend
    monkeypatch.setattr(B, "dw_target_blocks", 10**6, raising=False)
    x, w, b, kw = _inputs(rng, "split_groups_stride")
    dy = randn(rng, *conv_geometry(x.shape, w.shape, **kw).y_shape)
    args = to_backend(B, dy, x, w)

    def run():
        y = B.to_numpy(B.conv2d(*to_backend(B, x, w, b), **kw, relu=True, algo="implicit"))
        return (y,) + to_host(B, *B.conv2d_backward(*args, **kw, algo="implicit"))

    for a, c in zip(run(), run()):
        np.testing.assert_array_equal(a, c)


# ---- 2. launch geometry ----------------------------------------------------------------------
@pytest.mark.parametrize("size,k,s,p,d", [(9, 3, 1, 1, 1), (227, 11, 4, 2, 1), (11, 3, 2, 1, 2),
                                          (13, 3, 3, 1, 2), (3, 3, 4, 1, 1), (10, 4, 3, 0, 3),
                                          (7, 1, 2, 1, 1), (12, 5, 2, 3, 2)])
def test_dgrad_phases_cover_every_tap(size, k, s, p, d):
    """Each input pixel lies in exactly one phase, whose taps are exactly those reaching it
    (h + p - i*d a multiple of s), each reading output row (h + p - i*d) / s."""
    g = conv_geometry((1, 1, size, 5), (1, 1, k, 1), stride=(s, 1), padding=(p, 0),
                      dilation=(d, 1))
    seen = {}
    for rows, cols in implicit.dgrad_phases(g):
        assert cols == implicit.PhaseAxis(0, 5, 0, 1, 1, 0, 1)  # 1 tap, stride 1
        for t in range(rows.size):
            h = rows.a + s * t
            taps = {rows.first + u * rows.step: t + rows.out0 - u * rows.out_step
                    for u in range(rows.count)}
            seen[h] = taps
            assert taps == {i: (h + p - i * d) // s for i in range(k)
                            if (h + p - i * d) % s == 0}
    assert sorted(seen) == list(range(size))


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_split_choice_and_its_bounds(precision):
    bk = implicit.implicit_tile(precision)["BK"]
    g = conv_geometry((4, 3, 12, 11), (5, 3, 3, 3), padding=1)  # one output tile
    slices = -(-4 * 12 * 11 // bk)
    assert implicit.wgrad_split(g, 1 << 30, 1, precision) == (1, slices * bk)
    parts, per = implicit.wgrad_split(g, 1 << 30, precision=precision)
    # as many parts as leave each at least MIN_SLICES_PER_PART slices, whole slices each
    want = slices // implicit.MIN_SLICES_PER_PART
    assert parts == want and per == -(-slices // want) * bk
    assert parts * per >= 4 * 12 * 11 > (parts - 1) * per
    tiny = implicit.PARTS_SHARE * 2 * g.F * g.K * 4  # room for two parts' partial sums
    assert implicit.wgrad_split(g, tiny)[0] == 2
    assert implicit.wgrad_split(g, 0)[0] == 1


def test_int32_guard_refuses_what_the_kernels_cannot_index():
    # a whole batch past 2^31 elements is fine (64-bit image offsets)...
    big_batch = conv_geometry((20000, 64, 55, 55), (64, 64, 3, 3), padding=1)
    assert big_batch.N * big_batch.C * big_batch.H * big_batch.W > 2**31
    implicit.check_geometry(big_batch)
    # ...one image or the weights past 2^31 are not
    for xs, ws in (((1, 3, 30000, 30000), (2, 3, 3, 3)), ((1, 4096, 8, 8), (600000, 4096, 1, 1))):
        with pytest.raises(ValueError, match=r"conv2d \(implicit GEMM\).*exceeds 2147483647"):
            implicit.check_geometry(conv_geometry(xs, ws))


def test_workspace_bytes_alexnet_conv2():
    """The column matrix is im2col's workspace (in chunks bounded by the limit); the implicit
    GEMM needs at most its weight-gradient partial sums."""
    g = conv_geometry((128, 64, 27, 27), (192, 64, 5, 5), padding=2)
    limit = 256 << 20
    per_image = 64 * 25 * 27 * 27 * 4
    im2col = algos.workspace_bytes("im2col", g, limit)
    implicit_ws = algos.workspace_bytes("implicit", g, limit)
    assert im2col >= (limit // per_image) * per_image == 57 * per_image
    assert implicit_ws == implicit.workspace_bytes(g, limit)
    assert 0 < implicit_ws <= limit // implicit.PARTS_SHARE and implicit_ws < im2col / 10
    plain = conv_geometry((128, 64, 27, 27), (192, 64, 1, 1))  # x is its own column matrix
    assert algos.workspace_bytes("im2col", plain, limit) <= limit // 4  # dW partials only
    assert algos.workspace_bytes("wide", g, limit, kind="cpu") > 0
    with pytest.raises(ValueError, match="valid: im2col, implicit"):
        algos.workspace_bytes("winograd", g, limit)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "3xtf32", "bf16"])
def test_tile_defines_match_the_launch(precision):
    """Each precision's tile, read from its header: the loaders' layout (conv_implicit.cuh
    ConvTile) and, for FP32, 8 x 8 accumulators per thread (the SGEMM's treatment)."""
    t = implicit.implicit_tile(precision)
    assert t["BM"] == t["BN"] and t["BM"] * t["BK"] % t["THREADS"] == 0
    assert (t["BM"] * t["BK"] // t["THREADS"]) * (t["THREADS"] // t["BK"]) == t["BM"]
    if precision == "fp32":
        assert (t["BM"] // 8) * (t["BN"] // 8) == t["THREADS"]
    else:
        assert t == implicit.implicit_tile("tf32")       # one tensor-core tile


# ---- 3. the registry ---------------------------------------------------------------------
def test_registry_names_and_unknown_names(device_forward, numpy_backend, reference_backend,
                                          rng):
    assert algos.names("device") == ("im2col", "implicit")
    assert algos.names("cpu") == ("wide", "direct", "im2col", "winograd_f2", "winograd_f4")
    x, w = randn(rng, 1, 2, 6, 6), randn(rng, 3, 2, 3, 3)
    for B, valid in ((device_forward, "auto, im2col, implicit"),
                     (numpy_backend, "auto, wide, direct, im2col, winograd_f2, winograd_f4"),
                     (reference_backend, "auto, wide, direct, im2col, winograd_f2, winograd_f4")):
        xb, wb = to_backend(B, x, w)
        for bad in ("winograd", "Implicit", 3):
            with pytest.raises(ValueError, match=f"algo={bad!r}.*valid: {valid}"):
                B.conv2d(xb, wb, algo=bad)
        with pytest.raises(ValueError, match="valid: " + valid):
            B.conv2d_backward(B.conv2d(xb, wb), xb, wb, algo="fft")
    with pytest.raises(ValueError, match="algo='implicit'.*numpy backend"):
        numpy_backend.conv2d(x, w, algo="implicit")
    with pytest.raises(ValueError, match="needs stride 1, dilation 1, one group.*auto, im2col"):
        numpy_backend.conv2d(x, w, stride=2, algo="wide")
    # the reference runs its definition whatever the (valid) name, and records no choice
    np.testing.assert_array_equal(reference_backend.conv2d(x, w, algo="im2col"),
                                  reference_backend.conv2d(x, w))
    assert reference_backend.conv_algorithms() == {}


def _fresh_emu(device_forward):
    """A device backend with no choices recorded (sharing the compiled module)."""
    return DeviceBackend(device_forward.module, device_forward.xp, "emu",
                         device_forward.max_blocks)


def test_env_var_and_per_call_override(device_forward, numpy_backend, rng, monkeypatch):
    x, w = randn(rng, 2, 2, 6, 6), randn(rng, 3, 2, 3, 3)
    key = algos.shape_key("forward", conv_geometry(x.shape, w.shape, padding=1))
    for env, per_call, want in (("im2col", None, "im2col"), ("implicit", None, "implicit"),
                                ("implicit", "im2col", "im2col"), ("", None, "implicit"),
                                ("auto", None, "implicit"), ("wide", None, "implicit")):
        monkeypatch.setenv(algos.ENV, env)
        B = _fresh_emu(device_forward)
        B.conv2d(*to_backend(B, x, w), padding=1, algo=per_call)
        assert B.conv_algorithms() == {key: want}, (env, per_call)
    # a device name in the env var means auto on the CPU; an unknown one is an error anywhere
    monkeypatch.setenv(algos.ENV, "implicit")
    numpy_backend.conv2d(x, w, padding=1)
    assert numpy_backend.conv_algorithms()[key] == DIRECT
    monkeypatch.setenv(algos.ENV, "im2col")  # a name of both kinds applies to both
    numpy_backend.conv2d(x, w, padding=1)
    assert numpy_backend.conv_algorithms()[key] == "im2col"
    monkeypatch.setenv(algos.ENV, "fastest")
    with pytest.raises(ValueError, match=r"GPUCNN_CONV_ALGO='fastest' is not a convolution "
                                         r"algorithm \(valid: auto; device: im2col, implicit; "
                                         r"cpu: wide, direct, im2col, winograd_f2, winograd_f4\)"):
        numpy_backend.conv2d(x, w)


# the CPU's stride-1 layers with padding < kernel run "direct" where its C++ source can be
# built (tests/ops/test_conv_direct.py), else "wide"
DIRECT = "direct" if direct.available() else "wide"


@pytest.mark.parametrize("xs,ws,kw,device,cpu", [
    ((2, 3, 8, 8), (4, 3, 1, 1), {}, "im2col", DIRECT),                  # a plain GEMM
    ((2, 3, 8, 8), (4, 3, 1, 1), dict(stride=2), "implicit", "im2col"),
    ((2, 3, 8, 8), (4, 3, 1, 1), dict(padding=1), "implicit", "wide"),  # padding >= kernel
    ((2, 3, 8, 8), (4, 3, 3, 3), dict(padding=1), "implicit", DIRECT),
    ((2, 4, 8, 8), (4, 2, 3, 3), dict(groups=2), "implicit", "im2col"),
    ((2, 3, 9, 9), (4, 3, 3, 3), dict(dilation=2), "implicit", "im2col"),
    ((1, 3, 227, 227), (64, 3, 11, 11), dict(stride=4, padding=2), "implicit", "im2col"),
    # Winograd F(4x4, 3x3) from 64 channels each way and 256 output tiles (AlexNet's 3x3s)
    ((128, 192, 7, 7), (384, 192, 3, 3), dict(padding=1), "implicit", "winograd_f4"),
    ((16, 192, 13, 13), (384, 192, 3, 3), dict(padding=1), "implicit", "winograd_f4"),
    ((128, 3, 32, 32), (64, 3, 3, 3), dict(padding=1), "implicit", DIRECT),     # C < 64
    ((4, 256, 13, 13), (256, 256, 3, 3), dict(padding=1), "implicit", DIRECT),  # 64 tiles
    ((128, 64, 15, 15), (192, 64, 5, 5), dict(padding=2), "implicit", DIRECT),  # 5x5
])
def test_auto_heuristic_table(xs, ws, kw, device, cpu):
    g = conv_geometry(xs, ws, **kw)
    assert (algos.heuristic("device", g), algos.heuristic("cpu", g)) == (device, cpu)


def test_accessor_records_and_presets(device_forward, reference_backend, rng):
    B = _fresh_emu(device_forward)
    x, w = randn(rng, 2, 2, 6, 6), randn(rng, 3, 2, 3, 3)
    xb, wb = to_backend(B, x, w)
    y = B.conv2d(xb, wb)
    B.conv2d_backward(y, xb, wb, need_dx=False)
    B.conv2d_relu_maxpool(xb, wb, stride=2, algo="im2col")
    g = conv_geometry(x.shape, w.shape)
    g2 = conv_geometry(x.shape, w.shape, stride=2)
    assert B.conv_algorithms() == {algos.shape_key("forward", g): "implicit",
                                   algos.shape_key("backward", g, need_dx=False): "implicit",
                                   algos.shape_key("forward", g2): "im2col"}
    assert algos.shape_key("backward", g, need_dx=False).startswith("backward[dw] N2 C2 6x6")
    # a resumed run presets what the first one chose: auto then picks the same
    C = _fresh_emu(device_forward)
    C.set_conv_algorithms({algos.shape_key("forward", g): "im2col"})
    ref = reference_backend.conv2d(*f64(x, w))
    assert_close(C.to_numpy(C.conv2d(xb, wb)), ref, TOL, "preset im2col")
    assert C.conv_algorithms() == {algos.shape_key("forward", g): "im2col"}
    with pytest.raises(ValueError, match="valid: im2col, implicit"):
        C.set_conv_algorithms({"forward ...": "wide"})


class _FakeTimer:
    def __init__(self, seconds):
        self.seconds, self.calls = seconds, []

    def __call__(self, name, run):
        self.calls.append(name)
        if self.seconds[name] is None:
            raise RuntimeError(f"{name} failed")
        return self.seconds[name]


def _fake_gpu(device_forward, gpu="Fake GPU"):
    """A backend with the cuda policy (timed auto) on the emulator's kernels."""
    return DeviceBackend(device_forward.module, device_forward.xp, "cuda",
                         device_forward.max_blocks, device_name=gpu)


def test_timed_auto_with_a_fake_timer_and_its_file_cache(device_forward, reference_backend,
                                                         rng, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(algos.ENV, raising=False)
    selector.forget_timings()
    x, w, b = randn(rng, 2, 3, 9, 8), randn(rng, 4, 3, 3, 3), randn(rng, 4)
    g = conv_geometry(x.shape, w.shape, padding=1)
    key = algos.shape_key("forward", g)
    B = _fake_gpu(device_forward)
    assert B.conv_policy == "timed"
    B.conv_selector.timer = timer = _FakeTimer({"im2col": 1e-3, "implicit": 2e-3})
    ref = reference_backend.conv2d(*f64(x, w, b), padding=1, relu=True)
    for _ in range(2):  # timed once per shape, then remembered
        y = B.conv2d(*to_backend(B, x, w, b), padding=1, relu=True)
        assert_close(B.to_numpy(y), ref, TOL, "timed auto")
    assert timer.calls == ["im2col", "implicit"]
    assert B.conv_algorithms() == {key: "im2col"}
    # the choice is on disk, keyed by GPU, driver, gpucnn version and shape
    doc = json.loads((tmp_path / selector.CACHE_FILE).read_text())
    (tkey, name), = doc["choices"].items()
    assert name == "im2col" and tkey == f"{selector.device_identity(B)} | {key}"
    assert tkey.startswith("Fake GPU | driver ") and " | gpucnn " in tkey
    # a new process (memory forgotten) reads it instead of timing again
    selector.forget_timings()
    C = _fake_gpu(device_forward)
    C.conv_selector.timer = timer2 = _FakeTimer({"im2col": 9.0, "implicit": 1.0})
    C.conv2d(*to_backend(C, x, w, b), padding=1)
    assert timer2.calls == [] and C.conv_algorithms() == {key: "im2col"}
    # another GPU times for itself; a candidate that fails is not chosen
    D = _fake_gpu(device_forward, gpu="Other GPU")
    D.conv_selector.timer = timer3 = _FakeTimer({"im2col": None, "implicit": 5.0})
    D.conv2d(*to_backend(D, x, w, b), padding=1)
    assert timer3.calls == ["im2col", "implicit"] and D.conv_algorithms() == {key: "implicit"}
    assert len(json.loads((tmp_path / selector.CACHE_FILE).read_text())["choices"]) == 2
    selector.forget_timings()


@pytest.mark.parametrize("content", ["{not json", '{"choices": [1, 2]}', "[]", "",
                                     '{"choices": {}, "pad": "' + "x" * (1 << 20) + '"}',
                                     '{"choices": ' + "[" * 200_000 + "]" * 200_000 + "}"],
                         ids=["not json", "choices a list", "a list", "empty", "oversized",
                              "nested deep"])
def test_corrupt_cache_file_is_ignored_with_one_warning(device_forward, rng, tmp_path,
                                                        monkeypatch, content):
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(tmp_path))
    selector.forget_timings()
    selector.cache_path().write_text(content)
    x, w = randn(rng, 1, 2, 6, 6), randn(rng, 3, 2, 3, 3)
    B = _fake_gpu(device_forward)
    B.conv_selector.timer = _FakeTimer({"im2col": 2.0, "implicit": 1.0})
    with pytest.warns(RuntimeWarning, match="ignoring the corrupt convolution-algorithm cache") \
            as record:
        B.conv2d(*to_backend(B, x, w))
        B.conv2d(*to_backend(B, x, w), stride=2)  # a second shape: no second warning
    assert len(record) == 1
    assert B.conv_algorithms()[algos.shape_key("forward", conv_geometry(x.shape, w.shape))] \
        == "implicit"
    choices = json.loads(selector.cache_path().read_text())["choices"]  # rewritten, valid
    assert sorted(choices.values()) == ["implicit", "implicit"]
    selector.forget_timings()
