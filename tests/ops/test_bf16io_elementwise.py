"""bf16 activations (uint16 bits, gpucnn/ops/storage.py) through ReLU, dropout and max-pool:
the ``_bf16io`` kernels of kernels/activation.cu and kernels/pool.cu (emu, three thread
orders; the GPU under --device-backend cuda).

Each bf16 output is checked bit for bit twice: against round_bf16 of the plain definition on
the widened input (gpucnn.ops.precision: bf16_to_float32 is exact), and against round_bf16 of
the float32 kernel of the same backend on that input. Why bit equality holds: ReLU and max-pool
pick one of their inputs (nothing to round but NaNs, which every path writes as 0x7FFF);
dropout's x * mask and the max-pool gather's sum are float32 operations in the float kernel's
order, rounded once to bf16 at the store, as round_bf16 does to the float32 result. The one
difference from the definition is the sign of ReLU's zero: the kernels (float and bf16) pass
-0.0 through (-0.0 < 0 is false) where np.maximum returns +0.0, so ReLU's forward is compared
with the definition by value (+-0 equal) and with the float kernel by bits.

The inputs hold NaNs (several payloads), +-inf, +-0.0 and the largest finite bf16, but no
subnormals: a GPU flushes those (the kernels are built with flush-to-zero), the emulator and
NumPy do not. Outputs are written over poison (on emu every bf16 output starts as 0xFFC1, a
NaN no kernel writes), so bit equality also shows that every element was written.
"""
import numpy as np
import pytest

from gpucnn import get_backend

# The inputs hold NaN and inf on purpose: NumPy's warnings about them in the references say
# nothing.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

from gpucnn.ops import activation
from gpucnn.ops.pool import pool_geometry
from gpucnn.ops.precision import bf16_to_float32, round_bf16
from gpucnn.ops.storage import BF16

# bf16 bits planted among the random values: NaNs (quiet, another payload, negative, a
# signalling pattern), +-inf, +-0, the largest finite values
SPECIALS = np.array([0x7FC0, 0x7FA1, 0xFFC3, 0x7F81, 0x7F80, 0xFF80, 0x0000, 0x8000, 0x7F7F,
                     0xFF7F], dtype=np.uint16)
POISON = 0xFFC1  # what emu's empty() fills bf16 outputs with (gpucnn/backends/device.py)


def bf16_values(rng, shape, scale=1.0, specials=True):
    """Random bf16 bits: normal values times ``scale``, with SPECIALS planted (about 1 in 8)."""
    bits = round_bf16((rng.standard_normal(shape) * scale).astype(np.float32))
    if specials:
        flat = bits.reshape(-1)
        count = min(flat.size, max(len(SPECIALS), flat.size // 8))
        where = rng.choice(flat.size, size=count, replace=False)
        flat[where] = SPECIALS[np.arange(where.size) % len(SPECIALS)]
    return bits


def plateau_values(rng, shape):
    """bf16 bits of few distinct values (-0.0 and +0.0 among them): windows full of ties."""
    values = np.array([-2.0, -1.0, -0.0, 0.0, 1.0, 2.0], np.float32)
    return round_bf16(values[rng.integers(0, values.size, shape)])


def widened(bits):
    return bf16_to_float32(bits)


def to_bf16(B, bits):
    return B.asarray(bits, BF16)


def got_bits(B, a):
    """The device array ``a`` as host bits, after checking it is bf16 and fully written."""
    assert a.dtype == BF16, a.dtype
    bits = B.to_numpy(a)
    assert not (bits == POISON).any(), "an output element was never written (poison left)"
    return bits


def assert_bits(got, want, what):
    np.testing.assert_array_equal(got, want, err_msg=f"{what}: bf16 bits differ")


# ---- ReLU ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 3, 4, 5), (1, 1)])
def test_relu_bf16io(device_bf16, reference_backend, rng, shape):
    B, R = device_bf16, reference_backend
    x = bf16_values(rng, shape)
    y = B.relu(to_bf16(B, x))
    yb = got_bits(B, y)
    # the definition, by value (+-0 equal: see the module docstring); NaN where it is NaN
    np.testing.assert_array_equal(widened(yb), widened(round_bf16(R.relu(widened(x)))))
    # the float kernel, by bits (-0.0 passes through both)
    assert_bits(yb, round_bf16(B.to_numpy(B.relu(B.asarray(widened(x))))), "relu")

    dy = bf16_values(rng, shape)
    dx = got_bits(B, B.relu_backward(to_bf16(B, dy), y))
    assert_bits(dx, round_bf16(R.relu_backward(widened(dy), widened(yb))), "relu_backward")
    float_dx = B.relu_backward(B.asarray(widened(dy)), B.asarray(widened(yb)))
    assert_bits(dx, round_bf16(B.to_numpy(float_dx)), "relu_backward vs the float kernel")


def test_relu_bf16io_passes_the_signs_and_specials(device_precision):
    """Every special value through ReLU and its backward, element by element."""
    B = device_precision("bf16")
    x = np.array([0x3F80, 0xBF80, 0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC3, 0x7F7F,
                  0xFF7F], np.uint16)
    #             1.0     -1.0    +0      -0      +inf    -inf    NaN     -NaN    max     -max
    y = got_bits(B, B.relu(to_bf16(B, x)))
    assert y.tolist() == [0x3F80, 0, 0, 0x8000, 0x7F80, 0, 0x7FFF, 0x7FFF, 0x7F7F, 0]
    dy = np.full(x.shape, 0x4040, np.uint16)  # 3.0
    dy[0] = 0x7FA1  # a NaN gradient where y > 0 stays NaN (canonical bits)
    dx = got_bits(B, B.relu_backward(to_bf16(B, dy), to_bf16(B, y)))
    assert dx.tolist() == [0x7FFF, 0, 0, 0, 0x4040, 0, 0, 0, 0x4040, 0]


# ---- dropout --------------------------------------------------------------------------------
@pytest.mark.parametrize("p,seed", [(0.0, 7), (0.5, 12345), (0.3, 2**32 - 1)])
def test_dropout_bf16io(device_bf16, reference_backend, rng, p, seed):
    B, R = device_bf16, reference_backend
    shape = (3, 5, 7, 11)
    x = bf16_values(rng, shape)
    y, mask = B.dropout(to_bf16(B, x), p, seed)
    assert mask.dtype == np.float32
    y_ref, mask_ref = R.dropout(widened(x), p, seed)  # float32: the float path's mask
    np.testing.assert_array_equal(B.to_numpy(mask), mask_ref, err_msg="mask")
    yb = got_bits(B, y)
    assert_bits(yb, round_bf16(y_ref), "dropout")
    float_y, float_mask = B.dropout(B.asarray(widened(x)), p, seed)
    np.testing.assert_array_equal(B.to_numpy(float_mask), mask_ref, err_msg="float mask")
    assert_bits(yb, round_bf16(B.to_numpy(float_y)), "dropout vs the float kernel")

    dy = bf16_values(rng, shape)
    dx = got_bits(B, B.dropout_backward(to_bf16(B, dy), mask))
    assert_bits(dx, round_bf16(R.dropout_backward(widened(dy), mask_ref)), "dropout_backward")
    float_dx = B.dropout_backward(B.asarray(widened(dy)), float_mask)
    assert_bits(dx, round_bf16(B.to_numpy(float_dx)), "dropout_backward vs the float kernel")


def test_dropout_bf16io_rounds_the_product_once_more(device_precision, rng):
    """With p = 1/3 the keep scale 1.5 makes x * 1.5 need 9 significant bits for most bf16
    x: the kernel must round it (ties to even), not truncate or keep the float."""
    B = device_precision("bf16")
    x = round_bf16(rng.uniform(1, 2, (64, 64)).astype(np.float32))
    y, mask = B.dropout(to_bf16(B, x), 1 / 3, 5)
    product = widened(x) * B.to_numpy(mask)
    want = round_bf16(product)
    assert (widened(want) != product).mean() > 0.2  # the case is one that rounds
    assert_bits(got_bits(B, y), want, "dropout x * 1.5")


# ---- max-pool -----------------------------------------------------------------------------
# (x shape, kernel, stride, padding, dilation, ceil_mode)
MAX_CASES = [
    ((2, 3, 7, 7), 3, 2, 0, 1, False),    # AlexNet's overlapping 3 / 2
    ((1, 2, 8, 9), 2, 2, 0, 1, False),    # LeNet's disjoint 2 / 2
    ((2, 2, 9, 8), 3, 2, 1, 1, True),     # padding (-inf) and a ceil_mode window
    ((1, 3, 11, 10), 3, 1, 1, 2, False),  # dilation
]


def pool_args(case):
    shape, k, s, p, d, ceil = case
    return shape, dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)


@pytest.mark.parametrize("kind", ["randn", "plateau"])
@pytest.mark.parametrize("case", MAX_CASES)
def test_max_pool_bf16io(device_bf16, reference_backend, rng, case, kind):
    B, R = device_bf16, reference_backend
    shape, kw = pool_args(case)
    x = bf16_values(rng, shape) if kind == "randn" else plateau_values(rng, shape)
    y, switches = B.max_pool2d(to_bf16(B, x), **kw)
    yb, sw = got_bits(B, y), B.to_numpy(switches)
    y_ref, sw_ref = R.max_pool2d(widened(x).astype(np.float64), **kw)
    assert_bits(yb, round_bf16(y_ref.astype(np.float32)), "max_pool2d")
    np.testing.assert_array_equal(sw, sw_ref, err_msg="switches (ties: the first maximum)")
    float_y, float_sw = B.max_pool2d(B.asarray(widened(x)), **kw)
    assert_bits(yb, round_bf16(B.to_numpy(float_y)), "max_pool2d vs the float kernel")
    np.testing.assert_array_equal(sw, B.to_numpy(float_sw), err_msg="switches vs float")


def max_pool_backward_case(B, rng, wide=False):
    """AlexNet's overlapping 3 / 2 pool on a plateau (ties) with peaks at (2, 2) and (4, 4),
    which 4 and 3 windows choose, so dx sums up to 4 gradients: (x_shape, kwargs, switches
    on the device, dy bits). ``wide``: dy spans 2^-12 to 2^12 times normal values, so some
    float32 sums are not exact."""
    shape, kw = pool_args(MAX_CASES[0])
    x = plateau_values(rng, shape)
    x[:, :, 2, 2] = x[:, :, 4, 4] = round_bf16(np.float32(4.0))
    _, switches = B.max_pool2d(to_bf16(B, x), **kw)
    g = pool_geometry(shape, kw["kernel_size"], kw["stride"], kw["padding"])
    dy = rng.standard_normal(g.y_shape)
    if wide:
        dy *= np.exp2(rng.integers(-12, 13, g.y_shape))
    return shape, kw, switches, round_bf16(dy.astype(np.float32))


@pytest.mark.parametrize("wide", [False, True], ids=["randn", "wide"])
def test_max_pool_backward_bf16io(device_bf16, reference_backend, rng, wide):
    """dx = round_bf16 of the float32 gather, bit for bit (the reference's np.add.at sums each
    pixel's windows in the kernel's order, row-major). Against the exact sum S (float64: at
    most 4 bf16 terms within 2^+-16 of each other) it is within 2^-8 |S| (the one bf16
    rounding) + 3 * 2^-24 * (1 + 2^-8) * sum |terms| (the float32 additions), and equal to
    round_bf16(S) wherever the float32 sum is exact."""
    B, R = device_bf16, reference_backend
    x_shape, kw, switches, dy = max_pool_backward_case(B, rng, wide)
    sw = B.to_numpy(switches)
    dx = got_bits(B, B.max_pool2d_backward(to_bf16(B, dy), switches, x_shape, **kw))
    ref32 = R.max_pool2d_backward(widened(dy), sw, x_shape, **kw)
    assert_bits(dx, round_bf16(ref32), "max_pool2d_backward vs the float32 reference")
    float_dx = B.max_pool2d_backward(B.asarray(widened(dy)), switches, x_shape, **kw)
    assert_bits(dx, round_bf16(B.to_numpy(float_dx)), "max_pool2d_backward vs float kernel")

    def gather64(a):
        return R.max_pool2d_backward(a.astype(np.float64), sw, x_shape, **kw)
    exact, magnitude = gather64(widened(dy)), gather64(np.abs(widened(dy)))
    err = np.abs(widened(dx).astype(np.float64) - exact)
    bound = 2.0 ** -8 * np.abs(exact) + 3 * 2.0 ** -24 * (1 + 2.0 ** -8) * magnitude
    assert (err <= bound).all(), f"worst excess {np.max(err - bound)}"
    summed_exactly = ref32.astype(np.float64) == exact
    assert_bits(dx[summed_exactly], round_bf16(exact[summed_exactly].astype(np.float32)),
                "max_pool2d_backward where the float32 sum is exact")
    assert gather64(np.ones(dy.shape)).max() == 4  # some pixel sums 4 windows
    if wide:
        assert not summed_exactly.all()  # the case holds inexact float32 sums


def test_max_pool_backward_bf16io_specials(device_precision, rng):
    """NaN and inf gradients propagate through the gather as in the float kernel."""
    B = device_precision("bf16")
    x_shape, kw, switches, dy = max_pool_backward_case(B, rng)
    flat = dy.reshape(-1)
    flat[rng.choice(flat.size, 12, replace=False)] = SPECIALS[[0, 2, 4, 5, 6, 7, 1, 3, 4, 5,
                                                               8, 9]]
    dx = got_bits(B, B.max_pool2d_backward(to_bf16(B, dy), switches, x_shape, **kw))
    float_dx = B.max_pool2d_backward(B.asarray(widened(dy)), switches, x_shape, **kw)
    assert_bits(dx, round_bf16(B.to_numpy(float_dx)), "max_pool2d_backward with NaN/inf")
    assert (dx == 0x7FFF).any() and ((dx & 0x7FFF) == 0x7F80).any()


# ---- what is refused ------------------------------------------------------------------------
def test_bf16_outputs_are_poisoned_where_float_ones_are(device_precision):
    """The check above that no 0xFFC1 is left means something only if outputs start so."""
    B = device_precision("bf16")
    if np.isnan(B.to_numpy(B.empty((8,), np.float32))).all():
        assert (B.to_numpy(B.empty((8,), BF16)) == POISON).all()


def test_mixed_dtypes_are_refused_naming_both(device_precision, rng):
    B = device_precision("bf16")
    bits, floats = to_bf16(B, bf16_values(rng, (4, 6))), B.asarray(rng.standard_normal((4, 6)))
    with pytest.raises(TypeError, match=r"dy \(uint16\) and y \(float32\)"):
        B.relu_backward(bits, floats)
    with pytest.raises(TypeError, match=r"dy \(float32\) and y \(uint16\)"):
        B.relu_backward(floats, bits)
    with pytest.raises(TypeError, match="mask.*float32.*uint16"):
        B.dropout_backward(bits, bits)  # a bf16 dropout's mask is float32
    with pytest.raises(TypeError, match="mask.*float32.*uint16"):
        B.dropout_backward(floats, bits)
    # a plan made for one dtype refuses the other
    plan = activation.relu_plan(B, floats)
    with pytest.raises(TypeError, match="x must have dtype float32, got uint16"):
        plan.run(bits)


def _bf16_calls(B, x, switches):
    return {
        "relu": lambda: B.relu(x),
        "relu_backward": lambda: B.relu_backward(x, x),
        "dropout": lambda: B.dropout(x, 0.5, 1),
        "dropout_backward": lambda: B.dropout_backward(x, np.ones(x.shape, np.float32)),
        "max_pool2d": lambda: B.max_pool2d(x, 2),
        "max_pool2d_backward": lambda: B.max_pool2d_backward(x[:, :, :3, :3].copy(),
                                                             switches, x.shape, 2),
    }


def test_numpy_backend_refuses_bf16_bits(numpy_backend, rng):
    """The numpy backend computes in float32 only (no bf16 precision), and says so."""
    x = round_bf16(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    for name, call in _bf16_calls(numpy_backend, x, np.zeros((2, 3, 3, 3), np.int32)).items():
        with pytest.raises(TypeError, match="must have dtype float32 or float64, got uint16"):
            call()


def test_reference_rounds_where_the_kernels_do(rng):
    """The reference's definitions on bf16 bits (gpucnn.ops.dispatch.bf16_activations): the
    float definition on the widened values, its activation result rounded once."""
    R = get_backend("reference", "bf16")
    x = round_bf16(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    switches = R.max_pool2d(bf16_to_float32(x), 2)[1]
    wide = {n: c() for n, c in _bf16_calls(R, bf16_to_float32(x), switches).items()}
    for name, call in _bf16_calls(R, x, switches).items():
        got, want = call(), wide[name]
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        assert got[0].dtype == np.uint16, name
        assert np.array_equal(got[0], round_bf16(want[0])), name
        for a, b in zip(got[1:], want[1:]):   # switches, masks: as the float call's
            assert np.array_equal(a, b), name


@pytest.mark.parametrize("op", ["avg_pool2d", "avg_pool2d_backward", "lp_pool2d",
                                "lp_pool2d_backward"])
def test_avg_and_lp_pool_refuse_bf16_by_name(device_precision, reference_backend, rng, op):
    x_bits = round_bf16(rng.standard_normal((1, 2, 6, 6)).astype(np.float32))
    dy_bits = round_bf16(rng.standard_normal((1, 2, 3, 3)).astype(np.float32))
    device, reference = device_precision("bf16"), get_backend("reference", "bf16")
    for B in (device, reference):
        x = to_bf16(B, x_bits) if B is device else x_bits
        dy = to_bf16(B, dy_bits) if B is device else dy_bits
        calls = {"avg_pool2d": lambda: B.avg_pool2d(x, 2),
                 "avg_pool2d_backward": lambda: B.avg_pool2d_backward(dy, x.shape, 2),
                 "lp_pool2d": lambda: B.lp_pool2d(x, 2, 2),
                 "lp_pool2d_backward": lambda: B.lp_pool2d_backward(dy, x, dy, 2, 2)}
        with pytest.raises(TypeError, match=f"{op}: .* holds bf16 bits .*only max_pool2d "
                                            f"has bf16 kernels: pass {op} float32"):
            calls[op]()
