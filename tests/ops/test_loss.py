"""Softmax cross-entropy (gpucnn/ops/loss.py, kernels/loss.cu): the reference by its
definition, finite differences and large logits; the kernels (emu, three thread orders)
against it."""
import numpy as np
import pytest

from gpucnn.ops import loss
from gpucnn.testing import assert_close, f64, numeric_grad, randn, rel_error
from gpucnn.toolchain import kernel_block, source_defines

TOL = 1e-5


def test_reference_gradient_and_definition(rng):
    logits = rng.standard_normal((6, 5)) * 3
    labels = rng.integers(0, 5, 6).astype(np.int32)
    mean, probs = loss.softmax_cross_entropy_reference(logits, labels)
    d = loss.softmax_cross_entropy_backward_reference(probs, labels)
    num = numeric_grad(lambda: loss.softmax_cross_entropy_reference(logits, labels)[0], logits,
                       np.ones(()))
    assert rel_error(d, num) < 1e-7
    e = np.exp(logits)
    ref = -np.mean(np.log(e[np.arange(6), labels] / e.sum(1)))
    assert abs(float(mean) - ref) < 1e-12
    assert rel_error(probs, e / e.sum(1, keepdims=True)) < 1e-14


@pytest.mark.parametrize("shift", [1e3, 1e7, 1e8])
def test_reference_does_not_cancel_for_large_logits(rng, shift):
    """log-sum-exp with the label's logit taken relative to the max first: in float32 the
    loss of logits near 1e7-1e8 equals the float64 loss of the same (rounded) logits."""
    x32 = (rng.standard_normal((8, 10)) * 16 + shift).astype(np.float32)
    labels = rng.integers(0, 10, 8)
    want, _ = loss.softmax_cross_entropy_reference(x32.astype(np.float64), labels)
    got, _ = loss.softmax_cross_entropy_reference(x32, labels)
    assert got.dtype == np.float32
    assert abs(float(got) - float(want)) <= 1e-5 * float(want)
    ties = np.full((1, 10), shift, dtype=np.float32)  # ten equal logits: log(10)
    got, _ = loss.softmax_cross_entropy_reference(ties, np.array([3]))
    assert abs(float(got) - np.log(10)) < 1e-6


@pytest.mark.parametrize("shift", [1e7, 1e8])
def test_numpy_backend_loss_does_not_cancel(numpy_backend, shift):
    """The issue's cases on the numpy backend: ten equal logits at 1e7 / 1e8 give log(10)
    and rows one float32 step apart the float64 loss (the cancelling log(s) + m - z[label]
    loses up to the logits' spacing, 1 at 1e7 and 8 at 1e8: 0.0 for the ties at 1e8)."""
    B = numpy_backend
    ties = np.full((1, 10), shift, np.float32)
    got, _ = B.softmax_cross_entropy(ties, np.array([3], np.int32))
    assert abs(float(got) - np.log(10)) < 1e-6
    z = np.full((2, 10), shift, np.float32)
    z[:, 4] += np.spacing(np.float32(shift))  # the next float32 up: a difference of 1 or 8
    want, _ = loss.softmax_cross_entropy_reference(z.astype(np.float64), np.array([0, 4]))
    got, _ = B.softmax_cross_entropy(z, np.array([0, 4], np.int32))
    assert abs(float(got) - float(want)) <= 1e-6 * float(want)


def test_reference_rejects_labels_out_of_range(rng):
    logits = rng.standard_normal((6, 5))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\) .*labels 5\b"):
        loss.softmax_cross_entropy_reference(logits, np.full(6, 5, dtype=np.int32))
    with pytest.raises(ValueError, match=r"out-of-range labels -2 to 7"):
        loss.softmax_cross_entropy_reference(logits, np.array([0, -2, 7, 1, 5, 4], np.int32))


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("N,K,scale,offset", [
    (5, 10, 3.0, 0.0),
    (11, 300, 1.0, 0.0),      # more rows than emu blocks, more classes than threads
    (4, 7, 1e3, 1e4),         # large logits: exp would overflow without the max shift
    (1, 3, 50.0, -1e4),       # batch 1, large negative logits
])
def test_device_matches_reference(device_backend, reference_backend, rng, N, K, scale, offset,
                                  label_dtype):
    B, R = device_backend, reference_backend
    logits = (randn(rng, N, K, dtype=np.float64) * scale + offset).astype(np.float32)
    labels = rng.integers(0, K, size=N)
    # Not the row's argmax: a loss near 0 (log of 1 + tiny) has no float32 relative accuracy.
    top = logits.argmax(axis=1)
    labels = np.where(labels == top, (labels + 1) % K, labels).astype(label_dtype)
    mean, probs = B.softmax_cross_entropy(B.asarray(logits), B.asarray(labels, labels.dtype))
    mean_ref, probs_ref = R.softmax_cross_entropy(f64(logits)[0], labels)
    assert isinstance(mean, B.xp.ndarray) and mean.shape == ()
    assert np.isfinite(B.to_numpy(mean))
    assert_close(B.to_numpy(mean), mean_ref, TOL, "loss")
    assert_close(B.to_numpy(probs), probs_ref, TOL, "probs")
    d = B.softmax_cross_entropy_backward(probs, B.asarray(labels, labels.dtype))
    assert_close(B.to_numpy(d), R.softmax_cross_entropy_backward(probs_ref, labels), TOL,
                 "dlogits")


def test_block_size_is_the_kernels_reduction_tree():
    """Both reduction kernels launch XENT_THREADS threads (their annotations name it), the
    size of their shared-memory tree, which must be a power of two."""
    threads = source_defines("loss.cu", "XENT")["THREADS"]
    assert kernel_block("softmax_xent_forward") == kernel_block("softmax_xent_mean") == threads
    assert threads & (threads - 1) == 0


def test_device_loss_is_deterministic(device_backend, rng):
    B = device_backend
    logits = B.asarray(randn(rng, 9, 130))
    labels = B.asarray(rng.integers(0, 130, size=9).astype(np.int32))
    first = B.to_numpy(B.softmax_cross_entropy(logits, labels)[0])
    second = B.to_numpy(B.softmax_cross_entropy(logits, labels)[0])
    assert first.tobytes() == second.tobytes()


def test_device_bad_label_is_flagged_and_raised_at_the_check(device_backend,
                                                              reference_backend, rng):
    """A label outside [0, K) cannot raise inside a kernel: its row poisons loss and gradient,
    the kernel flags it on the device, and raise_device_errors (where the trainer syncs
    anyway) raises the reference's own ValueError; the flag is then clear."""
    B = device_backend
    B.raise_device_errors()  # nothing flagged
    x = randn(rng, 4, 4)
    bad = np.array([1, 4, 0, -3], np.int32)
    with pytest.raises(ValueError) as ref:
        reference_backend.softmax_cross_entropy(x, bad)
    mean, probs = B.softmax_cross_entropy(B.asarray(x), B.asarray(bad))
    assert np.isnan(B.to_numpy(mean))
    d = B.to_numpy(B.softmax_cross_entropy_backward(probs, B.asarray(bad)))
    assert np.isnan(d[[1, 3]]).all() and np.isfinite(d[[0, 2]]).all()
    with pytest.raises(ValueError) as dev:
        B.raise_device_errors()
    assert str(dev.value).startswith(str(ref.value))  # "... labels -3 to 4"
    B.raise_device_errors()  # cleared
    good = B.asarray(np.array([1, 2, 0, 3], np.int32))
    assert np.isfinite(B.to_numpy(B.softmax_cross_entropy(B.asarray(x), good)[0]))
    B.raise_device_errors()


def test_device_backward_alone_flags_bad_labels(device_backend, rng):
    B = device_backend
    probs = B.asarray(np.full((2, 3), 1 / 3, np.float32))
    B.softmax_cross_entropy_backward(probs, B.asarray(np.array([0, 3], np.int32)))
    with pytest.raises(ValueError, match=r"\[0, 3\) for 3 classes, got out-of-range labels 3"):
        B.raise_device_errors()
