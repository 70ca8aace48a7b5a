"""The pooling layers: max (with switches), average and power-average (LP) pooling, each
running a plan of :mod:`gpucnn.ops.pool` kept for its last input shape."""
from __future__ import annotations

from ..ops.common import pair
from ..ops.pool import api as pool_api
from ..ops.pool import lp_norm_type, pool_geometry
from .module import Module

__all__ = ["MaxPool2d", "AvgPool2d", "LPPool2d"]


class _Pool(Module):
    """Shared by the pooling layers: kernel, stride (default: the kernel), padding and the
    op's other options (``self.options``, passed as keywords to the backend and to
    :func:`pool_geometry`)."""
    op = "max_pool2d"

    def __init__(self, kernel_size, stride=None, padding=0, **options):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        # None or () (PyTorch's spelling): the kernel size
        self.stride = self.kernel_size if stride is None or stride == () else pair(stride,
                                                                                   "stride")
        self.padding = pair(padding, "padding")
        self.options = options
        # Validate now on the smallest input every window reaches (a dilated one spans more).
        pool_geometry((1, 1, *self._span()), *self._args(), self.op, **options)

    def _span(self):
        d = self.options.get("dilation", (1, 1))
        return tuple(d[i] * (self.kernel_size[i] - 1) + 1 for i in range(2))

    def _args(self):
        return self.kernel_size, self.stride, self.padding

    def output_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"{type(self).__name__} expects a (C, H, W) input, got {in_shape}")
        g = pool_geometry((1, *in_shape), *self._args(), self.op, **self.options)
        return (g.C, g.Ho, g.Wo)

    def flops(self, in_shape):
        c, h, w = self.output_shape(in_shape)
        return c * h * w * self.kernel_size[0] * self.kernel_size[1]

    def receptive(self):
        return self._span()[0], self.stride[0]

    def _extra_repr(self):
        """The non-default options, for __repr__."""
        out = []
        for name, value in self.options.items():
            if name == "dilation" and value != (1, 1):
                out.append(f"dilation {value[0]}x{value[1]}")
            elif name == "ceil_mode" and value:
                out.append("ceil_mode")
            elif name == "count_include_pad" and not value:
                out.append("count_include_pad=False")
            elif name == "divisor_override" and value is not None:
                out.append(f"divisor {value}")
        return "".join(", " + o for o in out)

    def __repr__(self):
        k, s, p = self.kernel_size, self.stride, self.padding
        pad = f", pad {p[0]}x{p[1]}" if p != (0, 0) else ""
        fused = " [fused into the conv]" if self.fused_into is not None else ""
        return (f"{type(self).__name__}({k[0]}x{k[1]}, stride {s[0]}x{s[1]}{pad}"
                f"{self._extra_repr()}){fused}")


class MaxPool2d(_Pool):
    """Max-pool that keeps the argmax ("switch") of every window for the backward pass
    (PyTorch's nn.MaxPool2d options, without return_indices: the switches are kept)."""
    bf16_native = True

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, dilation=pair(dilation, "dilation"),
                         ceil_mode=ceil_mode)

    @property
    def fusable(self):
        """Whether Sequential may fold this pool into a preceding conv + ReLU: the fused op
        takes only kernel, stride and padding."""
        return self.options["dilation"] == (1, 1) and not self.options["ceil_mode"]

    def forward(self, x):
        self.x_shape = x.shape
        plan = self._plan("_forward", x, lambda: pool_api.max_pool2d_plan(
            self.backend, x, *self._args(), **self.options))
        y, self.switches = plan.run(x)
        return y

    def backward(self, dy):
        plan = self._plan("_backward", dy, lambda: pool_api.max_pool2d_backward_plan(
            self.backend, dy, self.switches, self.x_shape, *self._args(), **self.options))
        dx = plan.run(dy, self.switches)
        self.switches = None
        return dx


class AvgPool2d(_Pool):
    """PyTorch's nn.AvgPool2d (count_include_pad=True by default)."""
    op = "avg_pool2d"

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__(kernel_size, stride, padding, ceil_mode=ceil_mode,
                         count_include_pad=count_include_pad,
                         divisor_override=divisor_override)

    def forward(self, x):
        self.x_shape = x.shape
        return self._plan("_forward", x, lambda: pool_api.avg_pool2d_plan(
            self.backend, x, *self._args(), **self.options)).run(x)

    def backward(self, dy):
        return self._plan("_backward", dy, lambda: pool_api.avg_pool2d_backward_plan(
            self.backend, dy, self.x_shape, *self._args(), **self.options)).run(dy)


class LPPool2d(_Pool):
    """PyTorch's nn.LPPool2d: (avg_pool2d(x^p) * kH * kW)^(1/p), p = norm_type (2: L2
    pooling); no padding. See ``Backend.lp_pool2d`` for ceil_mode and the gradient's
    convention where a window sums to 0."""
    op = "lp_pool2d"

    def __init__(self, norm_type, kernel_size, stride=None, ceil_mode=False):
        self.norm_type = lp_norm_type(norm_type, "LPPool2d")
        super().__init__(kernel_size, stride, 0, ceil_mode=ceil_mode)

    def forward(self, x):
        self.x = x
        self.y = self._plan("_forward", x, lambda: pool_api.lp_pool2d_plan(
            self.backend, x, self.norm_type, self.kernel_size, self.stride,
            **self.options)).run(x)
        return self.y

    def backward(self, dy):
        x, y = self.x, self.y
        dx = self._plan("_backward", dy, lambda: pool_api.lp_pool2d_backward_plan(
            self.backend, dy, x, y, self.norm_type, self.kernel_size, self.stride,
            **self.options)).run(dy, x, y)
        self.x = self.y = None
        return dx

    def flops(self, in_shape):
        return 2 * super().flops(in_shape)  # a power per tap, a root per window

    def _extra_repr(self):
        return f", p={self.norm_type:g}" + super()._extra_repr()
