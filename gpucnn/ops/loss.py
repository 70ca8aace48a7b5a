"""Mean softmax cross-entropy (``kernels/loss.cu``; tests: ``tests/ops/test_loss.py``).

Forward returns (mean_loss, probs), the loss a 0-d array on the backend (no host transfer);
backward is (probs - onehot(labels)) / N. The device forward is two launches: one block per
row (max, sum of exp, probabilities, the row's loss) and a single-block mean in a fixed order,
so the loss is deterministic.
"""
from __future__ import annotations

import numpy as np

from .launch import launch_1d, launch_rows

__all__ = ["softmax_cross_entropy_reference", "softmax_cross_entropy_backward_reference",
           "softmax_cross_entropy_device", "softmax_cross_entropy_backward_device",
           "check_label_range"]


def check_label_range(labels, classes):
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes}) for {classes} classes, got "
                         f"values in [{labels.min()}, {labels.max()}]")


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


def softmax_cross_entropy_device(dev, logits, labels):
    N, K = logits.shape
    labels = _int32(labels)
    probs = dev.empty((N, K), np.float32)
    row_loss = dev.empty((N,), np.float32)
    loss = dev.empty((), np.float32)
    launch_rows(dev, "softmax_xent_forward", N, logits, labels, probs, row_loss,
                np.int32(N), np.int32(K))
    launch_rows(dev, "softmax_xent_mean", 1, row_loss, loss, np.int32(N))
    return loss, probs


def softmax_cross_entropy_backward_device(dev, probs, labels):
    N, K = probs.shape
    dlogits = dev.empty((N, K), np.float32)
    launch_1d(dev, "softmax_xent_backward", probs.size, probs, _int32(labels), dlogits,
              np.int32(N), np.int32(K))
    return dlogits
