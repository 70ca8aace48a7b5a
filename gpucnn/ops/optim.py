"""Optimiser updates, in place, with PyTorch's formulas (``kernels/optim.cu``; tests:
``tests/ops/test_optim.py``). The optimiser classes are in :mod:`gpucnn.optim`.

SGD: d = g + wd*p; with momentum, v = momentum*v + d and the step is d + momentum*v
(Nesterov) or v; without momentum the step is d and v is untouched. Adam: L2 weight decay
added to the gradient; bias corrections computed in float64 on the host.
"""
from __future__ import annotations

import math

import numpy as np

from .common import hyper
from .dispatch import Op, api
from .launch import plan_1d

__all__ = ["adam_bias_corrections", "sgd_update_reference", "adam_update_reference",
           "sgd_update_device", "adam_update_device", "SGD_UPDATE", "ADAM_UPDATE", "sgd_hyper",
           "adam_hyper", "adam_step", "sgd_update_plan", "adam_update_plan", "ADAM_PREPARE",
           "adam_prepare_device", "adam_prepare_plan"]


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


def _on_device(ctx, lr_dev, lr, dtype):
    """The learning rate where the kernels read it: an optimiser's device copy, else (a single
    call) one made from the host value."""
    return lr_dev if lr_dev is not None else ctx.from_host(np.array([lr], dtype), "lr")


def sgd_update_device(ctx, shape, momentum, weight_decay, nesterov):
    n = math.prod(shape)
    launch, count = plan_1d(ctx, "sgd_update", n), np.int32(n)
    tail = (np.float32(momentum), np.float32(weight_decay), np.int32(1 if nesterov else 0))

    def run(param, grad, velocity, lr, lr_dev):
        launch.fire((param, grad, velocity, count, _on_device(ctx, lr_dev, lr, np.float32),
                     *tail))
    return run


def adam_update_device(ctx, shape, beta1, beta2, eps, weight_decay):
    n = math.prod(shape)
    launch, count = plan_1d(ctx, "adam_update", n), np.int32(n)
    betas = (np.float32(beta1), np.float32(1.0 - beta1), np.float32(beta2),
             np.float32(1.0 - beta2), np.float32(eps), np.float32(weight_decay))

    def run(param, grad, m, v, lr, step, scalars):
        if scalars is None:  # a single call (B.adam_update): the corrections from the host
            bias1, bias2_sqrt = adam_bias_corrections(beta1, beta2, step)
            scalars = ctx.from_host(np.array([lr / bias1, bias2_sqrt], np.float32),
                                    "adam_update")
        launch.fire((param, grad, m, v, count, scalars, *betas))
    return run


def adam_prepare_device(ctx, beta1, beta2):
    """``run(step, scalars, lr_dev)``: Adam's step counter (int32[1], on the device) advanced
    and its bias corrections written to ``scalars`` (float32[2]) by one kernel thread, with the
    learning rate read from ``lr_dev`` (float64[1]), so the updates (and a captured graph)
    need no host value per step."""
    launch = plan_1d(ctx, "adam_prepare", 1)
    b1, b2 = np.float64(beta1), np.float64(beta2)

    def run(step, scalars, lr_dev):
        launch.fire((step, scalars, lr_dev, b1, b2))
    return run


SGD_UPDATE = Op("sgd_update", lambda ctx, shape, *hp: (
    lambda p, g, v, lr, lr_dev: sgd_update_reference(p, g, v, lr, *hp)),
    device=sgd_update_device)
ADAM_UPDATE = Op("adam_update", lambda ctx, shape, b1, b2, eps, wd: (
    lambda p, g, m, v, lr, step, scalars: adam_update_reference(p, g, m, v, lr, b1, b2, eps, wd,
                                                                step)),
    device=adam_update_device)
# Device backends only (the CPU paths take the step count on the host).
ADAM_PREPARE = Op("adam_prepare", reference=None, device=adam_prepare_device)


def sgd_hyper(momentum, weight_decay, nesterov):
    return (hyper("sgd_update", "momentum", momentum, 0),
            hyper("sgd_update", "weight_decay", weight_decay, 0), bool(nesterov))


def adam_hyper(beta1, beta2, eps, weight_decay):
    op = "adam_update"
    return (hyper(op, "beta1", beta1, 0, 1, high_open=True),
            hyper(op, "beta2", beta2, 0, 1, high_open=True), hyper(op, "eps", eps, 0),
            hyper(op, "weight_decay", weight_decay, 0))


def sgd_update_plan(backend, shape, dtype, hp):
    """The run takes (param, grad, velocity, lr, lr_dev); lr is checked by the caller;
    ``lr_dev``: the same value as a float32[1] on the device (an optimiser's, written when lr
    changes), or None."""
    spec = (shape, (dtype,))
    return backend.plan(SGD_UPDATE, (shape, *hp), ("param", *spec), ("grad", *spec),
                        ("velocity", *spec), None, ("lr_dev", (1,), (np.dtype(np.float32),),
                                                    True))


def adam_update_plan(backend, shape, dtype, hp):
    """The run takes (param, grad, m, v, lr, step, scalars); lr and step are checked by the
    caller; ``scalars``: a device backend's float32[2] of :func:`adam_prepare_plan`, or None
    (then the bias corrections come from the host's step count)."""
    spec = (shape, (dtype,))
    return backend.plan(ADAM_UPDATE, (shape, *hp), ("param", *spec), ("grad", *spec),
                        ("m", *spec), ("v", *spec), None, None,
                        ("scalars", (2,), (np.dtype(np.float32),), True))


def adam_prepare_plan(backend, hp):
    """Device backends: the plan whose run(step, scalars, lr) advances Adam's device step
    counter and writes the step's bias corrections (see adam_prepare_device)."""
    return backend.plan(ADAM_PREPARE, hp[:2], ("step", (1,), (np.dtype(np.int32),)),
                        ("scalars", (2,), (np.dtype(np.float32),)),
                        ("lr_dev", (1,), (np.dtype(np.float64),)))


def adam_step(step):
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 1:
        raise ValueError(f"adam_update: step must be an int >= 1, got {step!r}")
    return int(step)


@api
def sgd_update(backend, param, grad, velocity, lr, momentum=0.0, weight_decay=0.0,
               nesterov=False):
    """PyTorch's SGD: d = g + wd*p; with momentum, v = momentum*v + d and the step is
    d + momentum*v (Nesterov) or v; without momentum the step is d and v is untouched."""
    backend.check(param, "param")
    sgd_update_plan(backend, param.shape, param.dtype, sgd_hyper(
        momentum, weight_decay, nesterov)).run(param, grad, velocity,
                                               hyper("sgd_update", "lr", lr, 0), None)


@api
def adam_update(backend, param, grad, m, v, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.0, step=1):
    """PyTorch's Adam (L2 weight decay added to the gradient); step counts from 1."""
    backend.check(param, "param")
    adam_update_plan(backend, param.shape, param.dtype, adam_hyper(
        beta1, beta2, eps, weight_decay)).run(param, grad, m, v,
                                              hyper("adam_update", "lr", lr, 0), adam_step(step),
                                              None)
