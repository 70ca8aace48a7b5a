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
