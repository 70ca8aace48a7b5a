"""Launch helpers (gpucnn/ops/launch.py) and the kernels' index arithmetic past 2^31.

No test allocates an 8 GB tensor: the host guard is fed zero-stride NumPy views of 2^31
elements, and the 64-bit offset helpers of kernels/common.cuh run on the emulator with the
(plane, rows, cols) of tensors that large."""
from pathlib import Path

import numpy as np
import pytest

from gpucnn.backends.emu import EmuModule
from gpucnn.ops.launch import check_extents, launch_1d
from gpucnn.toolchain.limits import INT32_MAX

KERNELS = Path(__file__).resolve().parents[1] / "emu_kernels" / "index64.cu"


def huge(dtype=np.float32):
    """2^31 elements that take no memory (one element, broadcast)."""
    return np.broadcast_to(np.zeros(1, dtype), (INT32_MAX + 1,))


class NoLaunch:
    """A device whose kernels must never be reached (the guard fires before)."""
    max_blocks = 8

    def kernel(self, name):
        raise AssertionError(f"{name} was launched")


def test_guard_refuses_a_tensor_a_32_bit_kernel_cannot_index():
    small = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"relu_forward: x has 2147483648 elements, more than "
                                         r"the 2147483647 this kernel can index"):
        launch_1d(NoLaunch(), "relu_forward", 4, huge(), small, np.int32(4))
    with pytest.raises(ValueError, match="sgd_update: velocity has 2147483648 elements"):
        check_extents("sgd_update", (small, small, huge()))


def test_guard_admits_tensors_addressed_with_64_bit_offsets():
    small = np.zeros(4, np.float32)
    check_extents("max_pool2d_forward", (huge(), small, small.view(np.int32)), large_ok=("x",))
    with pytest.raises(ValueError, match="max_pool2d_forward: y has"):
        check_extents("max_pool2d_forward", (small, huge(), small), large_ok=("x",))


def test_grid_index_limit_is_checked_too():
    with pytest.raises(ValueError, match="too many for the device kernels"):
        launch_1d(NoLaunch(), "relu_forward", INT32_MAX, np.zeros(1, np.float32),
                  np.zeros(1, np.float32), np.int32(1))


@pytest.fixture(scope="module")
def index_kernels():
    return EmuModule([KERNELS], order="forward", checks=True, seed=3)


def test_plane_offsets_past_2_31_are_exact(index_kernels):
    """AlexNet pool1 input planes (55 x 55) at a batch of 7,395 x 96 channels and more: the
    offset of the last plane is past 2^31 and must not wrap."""
    rows = cols = 55
    planes = np.array([0, 1, 709_920, 709_919, 2**31 // (55 * 55) + 5, INT32_MAX // 3],
                      np.int32)
    out = np.full(planes.size, -1, np.int64)
    index_kernels.get_function("plane_offsets")((1,), (32,), (planes, out, np.int32(rows),
                                                            np.int32(cols), np.int32(planes.size)))
    want = planes.astype(np.int64) * rows * cols
    assert (want[2:] > INT32_MAX).all()
    np.testing.assert_array_equal(out, want)


def test_plane_positions(index_kernels):
    rows, cols, n = 7, 5, 40
    out = np.full(3 * n, -1, np.int32)
    index_kernels.get_function("plane_positions")((2,), (32,), (out, np.int32(rows),
                                                              np.int32(cols), np.int32(n)))
    idx = np.arange(n) * 97
    want = np.stack([idx // (rows * cols), (idx // cols) % rows, idx % cols], axis=1).ravel()
    np.testing.assert_array_equal(out, want)


# ---- launch plans: checked at their first launch, then straight to the kernel ------------------
def _null(check_launches):
    from gpucnn.backends.null import make_null_backend
    B = make_null_backend()
    B.ctx.check_launches = check_launches
    return B


@pytest.mark.parametrize("check_launches", [False, True])
def test_a_plan_checks_its_first_launch_or_every_one(check_launches):
    B = _null(check_launches)
    layer_x = B.asarray(np.ones((2, 3, 8, 8), np.float32))
    for _ in range(3):
        B.max_pool2d(layer_x, 2)
    assert B.module.launches == 3
    assert B.module.checks == (3 if check_launches else 1)


def test_a_wrong_launch_argument_is_caught_at_the_first_launch():
    """A plan whose argument tuple disagrees with the kernel's C signature (a planted bug:
    an int64 where the kernel takes int) fails at its first launch, on a checked device."""
    from gpucnn.ops.launch import plan_1d
    B = _null(False)
    x, y = np.ones(8, np.float32), np.empty(8, np.float32)
    launch = plan_1d(B.ctx, "relu_forward", 8)
    with pytest.raises(TypeError, match=r"relu_forward: argument 2 \(int n\): expected "
                                        r"np.int32, got np.int64"):
        launch.fire((x, y, np.int64(8)))
    assert B.module.launches == 0
    launch.fire((x, y, np.int32(8)))  # a correct one is checked, then later ones are not
    launch.fire((x, y, np.int32(8)))
    assert (B.module.checks, B.module.launches) == (1, 2)  # the refused check is not counted


def test_plans_are_made_once_per_shape_and_dropped_with_a_new_limit():
    B = _null(False)
    x = B.asarray(np.ones((2, 3, 8, 8), np.float32))
    w = B.asarray(np.ones((4, 3, 3, 3), np.float32))
    B.conv2d(x, w, algo="im2col")
    made = dict(B.plans)
    B.conv2d(x, w, algo="im2col")
    assert B.plans == made  # the same implementation objects: nothing worked out again
    B.workspace_bytes = 1  # one image per chunk: the plans of the old bound are stale
    assert not B.plans
    B.conv2d(x, w, algo="im2col")
    assert B.module.launches == 2 * 2 + 2 * 2  # im2col + sgemm per chunk (1 chunk, 2 chunks)
