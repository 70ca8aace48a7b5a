"""The ``reference`` backend: every op's plain definition (``gpucnn/ops/*reference*``), in
float32 or float64. It is the oracle the tests compare every fast path with (the tuned
``numpy`` backend, and the kernels on ``emu`` and ``cuda``); users can select it
(``--backend reference``) to check a result. Slow on purpose: no threads, caches or fusion.
"""
from __future__ import annotations

import numpy as np

from ..ops import activation, linear, loss, lrn, optim
from ..ops.conv import reference as conv
from ..ops.pool import reference as pool
from .base import Backend

__all__ = ["ReferenceBackend"]


class ReferenceBackend(Backend):
    name = "reference"
    xp = np
    float_dtypes = (np.dtype(np.float32), np.dtype(np.float64))

    def describe(self):
        return "reference (plain NumPy definitions, CPU)"

    def asarray(self, a, dtype=None):
        a = np.asarray(a)
        if dtype is None:
            dtype = np.int32 if np.issubdtype(a.dtype, np.integer) else np.float32
        return np.ascontiguousarray(a, dtype=dtype)

    def to_numpy(self, a):
        return np.array(a, copy=True)

    conv_policy = "fixed"  # algo= is checked (a "cpu" name or "auto"), then ignored

    def _conv2d(self, x, w, b, g, relu, algo):
        return conv.conv2d(x, w, b, g, relu)

    def _conv2d_backward(self, dy, x, w, g, need_dx, need_dw, algo):
        return conv.conv2d_backward(dy, x, w, g, need_dx, need_dw)

    def _max_pool2d(self, x, g):
        return pool.max_pool2d(x, g)

    def _max_pool2d_backward(self, dy, switches, g):
        return pool.max_pool2d_backward(dy, switches, g)

    def _avg_pool2d(self, x, g):
        return pool.avg_pool2d(x, g)

    def _avg_pool2d_backward(self, dy, g):
        return pool.avg_pool2d_backward(dy, g)

    def _lp_pool2d(self, x, p, g):
        return pool.lp_pool2d(x, p, g)

    def _lp_pool2d_backward(self, dy, x, y, p, g):
        return pool.lp_pool2d_backward(dy, x, y, p, g)

    def _relu(self, x):
        return activation.relu_reference(x)

    def _relu_backward(self, dy, y):
        return activation.relu_backward_reference(dy, y)

    def _linear(self, x, w, b, relu):
        return linear.linear_reference(x, w, b, relu)

    def _linear_backward(self, dy, x, w):
        return linear.linear_backward_reference(dy, x, w)

    def _softmax_cross_entropy(self, logits, labels):
        return loss.softmax_cross_entropy_reference(logits, labels)

    def _softmax_cross_entropy_backward(self, probs, labels):
        return loss.softmax_cross_entropy_backward_reference(probs, labels)

    def _local_response_norm(self, x, size, alpha, beta, k):
        return lrn.local_response_norm_reference(x, size, alpha, beta, k)

    def _local_response_norm_backward(self, dy, x, y, scale, size, alpha, beta, k):
        return lrn.local_response_norm_backward_reference(dy, x, y, scale, size, alpha, beta, k)

    def _dropout(self, x, p, seed):
        return activation.dropout_reference(x, p, seed)

    def _dropout_backward(self, dy, mask):
        return activation.dropout_backward_reference(dy, mask)

    def _sgd_update(self, param, grad, velocity, lr, momentum, weight_decay, nesterov):
        optim.sgd_update_reference(param, grad, velocity, lr, momentum, weight_decay, nesterov)

    def _adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
        optim.adam_update_reference(param, grad, m, v, lr, beta1, beta2, eps, weight_decay,
                                    step)
