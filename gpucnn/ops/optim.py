"""Optimiser updates, in place, with PyTorch's formulas (``kernels/optim.cu``; tests:
``tests/ops/test_optim.py``). The optimiser classes are in :mod:`gpucnn.optim`.

SGD: d = g + wd*p; with momentum, v = momentum*v + d and the step is d + momentum*v
(Nesterov) or v; without momentum the step is d and v is untouched. Adam: L2 weight decay
added to the gradient; bias corrections computed in float64 on the host.
"""
from __future__ import annotations

import math

import numpy as np

from .launch import launch_1d

__all__ = ["adam_bias_corrections", "sgd_update_reference", "adam_update_reference",
           "sgd_update_device", "adam_update_device"]


def adam_bias_corrections(beta1, beta2, step):
    """(1 - beta1^t, sqrt(1 - beta2^t)) computed in float64 on the host, shared by backends."""
    return 1.0 - beta1 ** step, math.sqrt(1.0 - beta2 ** step)


def sgd_update_reference(param, grad, velocity, lr, momentum, weight_decay, nesterov):
    d = grad + weight_decay * param if weight_decay else grad
    if momentum:
        velocity *= momentum
        velocity += d
        d = d + momentum * velocity if nesterov else velocity
    param -= (lr * d).astype(param.dtype)


def adam_update_reference(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    g = grad + weight_decay * param if weight_decay else grad
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    c1, c2 = adam_bias_corrections(beta1, beta2, step)
    param -= ((lr / c1) * m / (np.sqrt(v) / c2 + eps)).astype(param.dtype)


def sgd_update_device(dev, param, grad, velocity, lr, momentum, weight_decay, nesterov):
    launch_1d(dev, "sgd_update", param.size, param, grad, velocity, np.int32(param.size),
              np.float32(lr), np.float32(momentum), np.float32(weight_decay),
              np.int32(1 if nesterov else 0))


def adam_update_device(dev, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    bias1, bias2_sqrt = adam_bias_corrections(beta1, beta2, step)
    launch_1d(dev, "adam_update", param.size, param, grad, m, v, np.int32(param.size),
              np.float32(lr / bias1), np.float32(beta1), np.float32(1.0 - beta1),
              np.float32(beta2), np.float32(1.0 - beta2), np.float32(eps),
              np.float32(weight_decay), np.float32(bias2_sqrt))
