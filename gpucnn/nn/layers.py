"""Layers. Each one owns its forward and backward; each call runs a plan of an op
(:mod:`gpucnn.ops`) that the layer keeps for its last input shape (``Module._plan``), so a
step goes from the layer to the kernel without re-deriving a geometry or re-validating a
hyper-parameter."""
from __future__ import annotations

import math

import numpy as np

from ..ops import activation, linear, lrn
from ..ops import loss as loss_op
from ..ops.common import pair
from ..ops.conv import api as conv_api
from ..ops.conv import conv_geometry
from .module import Module, Parameter
from .pooling import AvgPool2d, LPPool2d, MaxPool2d  # noqa: F401 - imported from here before

__all__ = ["Conv2d", "Linear", "ReLU", "Flatten", "Dropout", "LocalResponseNorm",
           "SoftmaxCrossEntropy"]


def _init_weight(rng, shape, fan_in, fan_out, init):
    if init == "he":  # He et al. 2015: keeps activation variance through ReLUs
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    if init == "glorot":  # Glorot & Bengio 2010, uniform
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, shape)
    raise ValueError(f"init must be 'he' or 'glorot', got {init!r}")


def _check_positive_int(value, name, layer):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{layer}: {name} must be a positive int, got {value!r}")


class _WeightLayer(Module):
    """Shared parameter handling of Conv2d and Linear (weight, optional bias, fused ReLU)."""
    can_fuse_relu = True
    needs_input_grad = True  # Sequential clears it on a first layer: nothing consumes its dx

    def _make_params(self, rng, shape, fan_in, fan_out):
        w = _init_weight(rng, shape, fan_in, fan_out, self.init)
        self.weight = Parameter(self.backend.asarray(w.astype(np.float32)))
        self.bias = (Parameter(self.backend.asarray(np.zeros(shape[0], np.float32)))
                     if self.use_bias else None)

    def named_parameters(self, prefix=""):
        out = [(prefix + "weight", self.weight)]
        if self.bias is not None:
            out.append((prefix + "bias", self.bias))
        return out

    def _bias_data(self):
        return None if self.bias is None else self.bias.data

    def _grad_outs(self):
        """(dw, db) outputs for the backward: the views of a flat gradient buffer, or None."""
        return (self.weight.grad_out(),
                None if self.bias is None else self.bias.grad_out())

    def _store_grads(self, dw, db):
        self.weight.grad = dw
        if self.bias is not None:
            self.bias.grad = db


class Conv2d(_WeightLayer):
    can_fuse_pool = True
    bf16_native = True  # implicit GEMM on bf16 x / dy (gpucnn/ops/conv/implicit.py)
    fused_pool = None  # the MaxPool2d folded into this layer (with its ReLU) by Sequential

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, init="he"):
        super().__init__()
        for v, n in ((in_channels, "in_channels"), (out_channels, "out_channels"),
                     (groups, "groups")):
            _check_positive_int(v, n, "Conv2d")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        # 'same' / 'valid' (PyTorch's strings) are resolved by conv_geometry per input.
        self.padding = padding if isinstance(padding, str) else pair(padding, "padding")
        self.dilation = pair(dilation, "dilation")
        self.use_bias, self.init = bool(bias), init
        self.weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
        # Validate hyperparameters now (a 1x1 probe input of the right size).
        self.geometry((1, in_channels, *self._min_input()))

    def _min_input(self):
        return tuple(self.dilation[i] * (self.kernel_size[i] - 1) + 1 for i in range(2))

    def geometry(self, x_shape):
        return conv_geometry(x_shape, (self.out_channels, self.in_channels // self.groups,
                                       *self.kernel_size),
                             self.stride, self.padding, self.dilation, self.groups)

    def bind(self, backend, rng):
        super().bind(backend, rng)
        fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        fan_out = self.out_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        self._make_params(rng, self.weight_shape, fan_in, fan_out)
        return self

    def _kw(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    def _pool_kw(self):
        p = self.fused_pool
        return dict(kernel_size=p.kernel_size, pool_stride=p.stride, pool_padding=p.padding)

    def forward(self, x):
        self.x = x
        w, b = self.weight.data, self._bias_data()
        if self.fused_pool is not None:  # conv + ReLU + max-pool (Sequential sets this up)
            plan = self._plan("_forward", x, lambda: conv_api.conv2d_relu_maxpool_plan(
                self.backend, x, w, b, **self._kw(), **self._pool_kw()))
            self.y, self.switches = plan.run(x, w, b)
            return self.y
        plan = self._plan("_forward", x, lambda: conv_api.conv2d_plan(
            self.backend, x, w, b, relu=self.fused_relu, **self._kw()))
        self.y = plan.run(x, w, b)
        return self.y

    def backward(self, dy):
        x, w, need_dx = self.x, self.weight.data, self.needs_input_grad
        if self.fused_pool is not None:
            switches, y = self.switches, self.y
            plan = self._plan("_backward", dy, lambda: (
                conv_api.conv2d_relu_maxpool_backward_plan(
                    self.backend, dy, switches, y, x, w, **self._kw(), **self._pool_kw(),
                    need_dx=need_dx)), need_dx)
            dx, dw, db = plan.run(dy, switches, y, x, w, *self._grad_outs())
            self.switches = None
        else:
            if self.fused_relu:
                dy = self._relu_backward(dy, self.y)
            plan = self._plan("_backward", dy, lambda: conv_api.conv2d_backward_plan(
                self.backend, dy, x, w, **self._kw(), need_dx=need_dx), need_dx)
            dx, dw, db = plan.run(dy, x, w, *self._grad_outs())
        self._store_grads(dw, db)
        self.x = self.y = None
        return dx

    def output_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"Conv2d expects a (C, H, W) input, got {in_shape}")
        g = self.geometry((1, *in_shape))
        return (g.F, g.Ho, g.Wo)

    def flops(self, in_shape):
        return self.geometry((1, *in_shape)).flops()

    def receptive(self):
        return self.dilation[0] * (self.kernel_size[0] - 1) + 1, self.stride[0]

    def __repr__(self):
        def hw(v):
            if isinstance(v, (str, int)):
                return str(v)
            return str(v[0]) if v[0] == v[1] else f"{v[0]}x{v[1]}"
        extra = "".join(f", {n} {hw(v)}" for n, v, d in (
            ("stride", self.stride, (1, 1)), ("pad", self.padding, (0, 0)),
            ("dilation", self.dilation, (1, 1)), ("groups", self.groups, 1)) if v != d)
        return (f"Conv2d({self.in_channels}->{self.out_channels}, "
                f"{self.kernel_size[0]}x{self.kernel_size[1]}{extra})")


class Linear(_WeightLayer):
    bf16_native = True  # bf16 x / dy (gpucnn/ops/linear.py: the sgemm_bf16_*_bf16io kernels)

    def __init__(self, in_features, out_features, bias=True, init="he"):
        super().__init__()
        _check_positive_int(in_features, "in_features", "Linear")
        _check_positive_int(out_features, "out_features", "Linear")
        self.in_features, self.out_features = in_features, out_features
        self.use_bias, self.init = bool(bias), init
        self.weight_shape = (out_features, in_features)

    def bind(self, backend, rng):
        super().bind(backend, rng)
        self._make_params(rng, self.weight_shape, self.in_features, self.out_features)
        return self

    def forward(self, x):
        self.x = x
        w, b = self.weight.data, self._bias_data()
        plan = self._plan("_forward", x, lambda: linear.linear_plan(self.backend, x, w, b,
                                                                    self.fused_relu))
        self.y = plan.run(x, w, b)
        return self.y

    def backward(self, dy):
        if self.fused_relu:
            dy = self._relu_backward(dy, self.y)
        x, w = self.x, self.weight.data
        plan = self._plan("_backward", dy, lambda: linear.linear_backward_plan(
            self.backend, dy, x, w))
        dx, dw, db = plan.run(dy, x, w, *self._grad_outs())
        self._store_grads(dw, db)
        self.x = self.y = None
        return dx

    def output_shape(self, in_shape):
        if tuple(in_shape) != (self.in_features,):
            raise ValueError(f"Linear expects ({self.in_features},) input features, got "
                             f"{tuple(in_shape)}")
        return (self.out_features,)

    def flops(self, in_shape):
        return 2 * self.in_features * self.out_features

    def __repr__(self):
        return f"Linear({self.in_features}->{self.out_features})"


class ReLU(Module):
    bf16_native = True
    def forward(self, x):
        self.y = self._plan("_forward", x, lambda: activation.relu_plan(self.backend,
                                                                        x)).run(x)
        return self.y

    def backward(self, dy):
        dx = self._relu_backward(dy, self.y)
        self.y = None
        return dx

    def __repr__(self):
        return "ReLU() [fused into the previous layer]" if self.fused_into is not None else "ReLU()"


class Flatten(Module):
    """(N, C, H, W) -> (N, C*H*W); a view, no copy."""
    bf16_native = True

    def forward(self, x):
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.x_shape)

    def output_shape(self, in_shape):
        return (int(np.prod(in_shape)),)


class Dropout(Module):
    """Inverted dropout. The mask comes from a counter-based hash of (seed, element index), so
    it is the same on every backend; the seed advances with every training forward pass and is
    part of the checkpoint, so a resumed run draws the same masks."""

    first_sample = _shift = _next_shift = 0  # gpucnn.distributed: a rank's first sample
    bf16_native = True

    def __init__(self, p=0.5, seed=0):
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p, self.seed, self.calls = float(p), int(seed), 0

    def bind(self, backend, rng):
        super().bind(backend, rng)
        self.seed = int(rng.integers(0, 2**31))
        return self

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self.mask = None
            return x
        per_sample = x.size // max(1, len(x))  # its masks: its slice of the global batch's
        self._next_shift = shift = activation.dropout_index_shift(self.first_sample * per_sample)
        seed = (self.seed + 0x9E3779B9 * self.calls + shift) & 0xFFFFFFFF
        plan = self._plan("_forward", x, lambda: activation.dropout_plan(self.backend, x,
                                                                         self.p))
        y, self.mask = plan.run(x, seed, self._device_state())
        self.calls += 1
        return y

    def _device_state(self):
        """On a device: uint32 [seed + shift, calls] the kernel reads and advances; else None."""
        if self.backend.kind != "device":
            return None
        if self.__dict__.get("_state") is None or self._shift != self._next_shift:
            self._shift = self._next_shift  # (self.calls counts the calls as state[1] does)
            self._state = self.backend.asarray(self._state_values(), dtype=np.uint32)
        return self._state

    def _state_values(self):
        return np.array([(self.seed + self._shift) & 0xFFFFFFFF, self.calls & 0xFFFFFFFF],
                        np.uint32)

    def after_replay(self):
        if self.training and self.p > 0.0:
            self.calls += 1  # the replayed step's dropout_advance did it on the device

    def backward(self, dy):
        if self.mask is None:
            return dy
        mask = self.mask
        return self._plan("_backward", dy, lambda: activation.dropout_backward_plan(
            self.backend, dy, mask)).run(dy, mask)

    def extra_state(self):
        return {"seed": self.seed, "calls": self.calls}

    def load_extra_state(self, state):
        self.seed, self.calls = int(state["seed"]), int(state["calls"])
        held = self.__dict__.get("_state")
        if held is not None:  # in place: a captured graph keeps reading this array
            held[...] = self.backend.asarray(self._state_values(), dtype=np.uint32)

    def __repr__(self):
        return f"Dropout(p={self.p})"


class LocalResponseNorm(Module):
    """Cross-channel LRN (AlexNet): b = a / (k + alpha/size * sum a^2)^beta."""
    bf16_native = True

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0):
        super().__init__()
        _check_positive_int(size, "size", "LocalResponseNorm")
        self.args = (int(size), float(alpha), float(beta), float(k))

    def forward(self, x):
        self.x = x
        self.y, self.scale = self._plan("_forward", x, lambda: lrn.local_response_norm_plan(
            self.backend, x, *self.args)).run(x)
        return self.y

    def backward(self, dy):
        x, y, scale = self.x, self.y, self.scale
        dx = self._plan("_backward", dy, lambda: lrn.local_response_norm_backward_plan(
            self.backend, dy, x, y, scale, *self.args)).run(dy, x, y, scale)
        self.x = self.y = self.scale = None
        return dx

    def flops(self, in_shape):
        return int(np.prod(in_shape)) * (self.args[0] + 4)

    def __repr__(self):
        return "LocalResponseNorm(size {}, alpha {:g}, beta {:g}, k {:g})".format(*self.args)


class SoftmaxCrossEntropy(Module):
    """Mean softmax cross-entropy; ``forward(logits, labels)`` returns the loss as a 0-d
    backend array (read it with ``float(B.to_numpy(loss))`` only when you need it)."""

    def forward(self, logits, labels):
        self.labels = labels
        loss, self.probs = self._plan("_forward", logits, lambda: (
            loss_op.softmax_cross_entropy_plan(self.backend, logits, labels)),
            labels.dtype).run(logits, labels)
        return loss

    def backward(self, dloss=1.0):
        probs, labels = self.probs, self.labels
        d = self._plan("_backward", probs, lambda: (
            loss_op.softmax_cross_entropy_backward_plan(self.backend, probs, labels)),
            labels.dtype).run(probs, labels)
        return d if dloss == 1.0 else d * dloss
