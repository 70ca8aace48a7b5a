"""Mean softmax cross-entropy (``kernels/loss.cu``; tests: ``tests/ops/test_loss.py``).

Forward returns (mean_loss, probs), the loss a 0-d array on the backend (no host transfer);
backward is (probs - onehot(labels)) / N. The device forward is two launches: one block per
row (max, sum of exp, probabilities, the row's loss) and a single-block mean in a fixed order,
so the loss is deterministic.

Labels outside [0, K) are a ValueError on every backend, with the same message
(:func:`label_range_message`). The CPU paths raise at once; a device kernel cannot raise, so it
records the bad labels in a small int32 buffer on the device and
:func:`raise_label_error_device` reports them when the host next reads it — the trainer does
that where it synchronises anyway, so a correct step costs no extra transfer.
"""
from __future__ import annotations

import numpy as np

from .dispatch import Op, api, plain
from .launch import plan_1d, plan_rows

__all__ = ["softmax_cross_entropy_reference", "softmax_cross_entropy_backward_reference",
           "softmax_cross_entropy_device", "softmax_cross_entropy_backward_device",
           "check_label_range", "label_range_message", "raise_label_error_device", "XENT",
           "XENT_BACKWARD", "softmax_cross_entropy_plan", "softmax_cross_entropy_backward_plan"]

_INT32_MIN, _INT32_MAX = -2 ** 31, 2 ** 31 - 1


def label_range_message(classes, lo, hi):
    """The one message for out-of-range labels, the smallest and largest bad ones named."""
    found = f"{lo}" if lo == hi else f"{lo} to {hi}"
    return (f"labels must lie in [0, {classes}) for {classes} classes, got out-of-range "
            f"labels {found}")


def check_label_range(labels, classes):
    bad = labels[(labels < 0) | (labels >= classes)]
    if bad.size:
        raise ValueError(label_range_message(classes, int(bad.min()), int(bad.max())))


def softmax_cross_entropy_reference(logits, labels):
    check_label_range(labels, logits.shape[1])
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(logits.shape[0])
    # log(s) - (logit[label] - m): the difference is taken first, so large logits do not
    # cancel (log(s) + m - logit[label] loses everything at |logits| ~ 1e7 in float32).
    nll = np.log(s[:, 0]) - (logits[rows, labels] - m[:, 0])
    return np.asarray(nll.mean(), dtype=logits.dtype), e / s


def softmax_cross_entropy_backward_reference(probs, labels):
    check_label_range(labels, probs.shape[1])
    d = probs.copy()
    d[np.arange(probs.shape[0]), labels] -= 1
    d /= probs.shape[0]
    return d


def _int32(labels):
    return labels if labels.dtype == np.int32 else labels.astype(np.int32)


# The device buffer the loss kernels flag bad labels in (kernels/loss.cu: xent_flag_label),
# kept on the backend object: {flag, smallest bad label, largest bad label, K}.
_LABEL_ERROR = "_xent_label_error"


def _label_error_buffer(ctx):
    buf = getattr(ctx, _LABEL_ERROR, None)
    if buf is None:
        # Filled on the device (no host-to-device copy, so a step stays transfer-free).
        xp = ctx.xp
        buf = xp.concatenate([xp.zeros(1, np.int32), xp.full(1, _INT32_MAX, np.int32),
                              xp.full(1, _INT32_MIN, np.int32), xp.zeros(1, np.int32)])
        setattr(ctx, _LABEL_ERROR, buf)
    return buf


def raise_label_error_device(ctx):
    """The ValueError for the bad labels the loss kernels flagged since the last call, if any
    (one 16-byte device-to-host read; the flag is cleared)."""
    buf = getattr(ctx, _LABEL_ERROR, None)
    if buf is None:
        return
    flag, lo, hi, classes = (int(v) for v in ctx.to_numpy(buf))
    if flag:
        setattr(ctx, _LABEL_ERROR, None)  # the next launch starts from a clear flag
        raise ValueError(label_range_message(classes, lo, hi)
                         + " (flagged by the device loss kernel)")


def softmax_cross_entropy_device(ctx, n, k):
    rows = plan_rows(ctx, "softmax_xent_forward", n, large_ok=("logits", "probs"))  # 64-bit
    mean = plan_rows(ctx, "softmax_xent_mean", 1)
    empty, N, K = ctx.empty, np.int32(n), np.int32(k)

    def run(logits, labels):
        probs, row_loss, loss = empty((n, k), np.float32), empty((n,), np.float32), empty(
            (), np.float32)
        rows.fire((logits, _int32(labels), probs, row_loss, _label_error_buffer(ctx), N, K))
        mean.fire((row_loss, loss, N))
        return loss, probs
    return run


def softmax_cross_entropy_backward_device(ctx, n, k):
    launch, empty, N, K = plan_1d(ctx, "softmax_xent_backward", n * k), ctx.empty, np.int32(
        n), np.int32(k)

    def run(probs, labels):
        dlogits = empty((n, k), np.float32)
        launch.fire((probs, _int32(labels), dlogits, _label_error_buffer(ctx), N, K))
        return dlogits
    return run


XENT = Op("softmax_cross_entropy", plain(softmax_cross_entropy_reference, False),
          device=softmax_cross_entropy_device)
XENT_BACKWARD = Op("softmax_cross_entropy_backward",
                   plain(softmax_cross_entropy_backward_reference, False),
                   device=softmax_cross_entropy_backward_device)
_LABELS = (np.dtype(np.int32), np.dtype(np.int64))


def softmax_cross_entropy_plan(backend, logits, labels):
    backend.check(logits, "logits", 2)
    backend.check_labels(labels, logits.shape[0])
    return backend.plan(XENT, logits.shape, ("logits", logits.shape, (logits.dtype,)),
                        ("labels", labels.shape, _LABELS))


def softmax_cross_entropy_backward_plan(backend, probs, labels):
    backend.check(probs, "probs", 2)
    backend.check_labels(labels, probs.shape[0])
    return backend.plan(XENT_BACKWARD, probs.shape, ("probs", probs.shape, (probs.dtype,)),
                        ("labels", labels.shape, _LABELS))


@api
def softmax_cross_entropy(backend, logits, labels):
    """(mean_loss, probs); mean_loss is a 0-d array on this backend (no host transfer).
    A label outside [0, K) is a ValueError: at once on the CPU backends, at the next
    raise_device_errors() on a device (which cannot raise without a host sync)."""
    return softmax_cross_entropy_plan(backend, logits, labels).run(logits, labels)


@api
def softmax_cross_entropy_backward(backend, probs, labels):
    """d(mean_loss)/d(logits) = (probs - onehot(labels)) / N."""
    return softmax_cross_entropy_backward_plan(backend, probs, labels).run(probs, labels)
