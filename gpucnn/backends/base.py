"""The backend contract: argument checking shared by every backend.

A backend is an object ``B`` exposing the functional API (``B.conv2d``, ``B.max_pool2d``, ...).
The public methods below validate their arguments once and reduce them to a small frozen
geometry record (computed by the op's module in :mod:`gpucnn.ops`); subclasses implement only
the ``_underscored`` methods, which receive already-checked arrays and geometry, each in one
line that names the op function doing the work. So the reference, the tuned NumPy path and
the device backends (``cuda``, ``emu``) cannot drift apart in what they accept or in how
output sizes are computed.

Conventions (PyTorch's): NCHW, float32, conv weight ``(C_out, C_in/groups, kH, kW)``, linear
weight ``(out, in)``, floor output size, zero padding for conv, -inf padding for max-pool.
Max-pool switches are int32 indices ``h * W + w`` into the *unpadded* input plane; ties go to the
first maximum in row-major window order (the GPU kernels match this exactly).
"""
from __future__ import annotations

import math

import numpy as np

from ..ops.conv import algos as conv_algos
from ..ops.conv import conv_geometry
from ..ops.pool import lp_norm_type, pool_geometry

__all__ = ["Backend"]

_M32 = 0xFFFFFFFF


def _hyper(op, name, value, low=None, high=None, low_open=False, high_open=False):
    """``value`` as a float, or a ValueError naming the op, the argument and its range. NaN
    and inf never pass: one NaN learning rate silently turns every parameter into NaN."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    ok = (math.isfinite(v) and (low is None or (v > low if low_open else v >= low))
          and (high is None or (v < high if high_open else v <= high)))
    if not ok:
        if low is not None and high is not None:
            want = f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            want = f" {'>' if low_open else '>='} {low}"
        else:
            want = ""
        raise ValueError(f"{op}: {name} must be a finite number{want}, got {value!r}")
    return v


class Backend:
    """Functional API; subclasses implement the ``_methods`` and ``asarray``/``to_numpy``."""

    name = "abstract"
    xp = np  # the array module of this backend's arrays (numpy, or cupy)
    float_dtypes = (np.dtype(np.float32),)  # the NumPy reference also takes float64

    # ---- arrays -------------------------------------------------------------------------
    def asarray(self, a, dtype=None):
        raise NotImplementedError  # abstract: implemented by every backend

    def to_numpy(self, a):
        raise NotImplementedError  # abstract: implemented by every backend

    def zeros(self, shape, dtype=np.float32):
        return self.xp.zeros(shape, dtype=dtype)

    def synchronize(self):
        """Wait for queued device work (no-op on the CPU)."""

    def raise_device_errors(self):
        """Raise the errors device kernels flagged since the last call: a label outside
        [0, K) given to softmax_cross_entropy is the same ValueError on every backend, but a
        kernel cannot raise, so device backends report it here (one small read; the trainer
        calls this where it synchronises anyway). The CPU backends raise at once: no-op."""

    def describe(self):
        """One line: which backend, on which device."""
        return self.name

    # ---- checks ---------------------------------------------------------------------------
    def _check(self, a, name, ndim=None, dtype="float", shape=None):
        if not isinstance(a, self.xp.ndarray):
            raise TypeError(f"{name} must be a {self.xp.__name__} array on the {self.name} "
                            f"backend (use B.asarray), got {type(a).__name__}")
        allowed = self.float_dtypes if dtype == "float" else (np.dtype(dtype),)
        if a.dtype not in allowed:
            raise TypeError(f"{name} must have dtype {' or '.join(d.name for d in allowed)}, "
                            f"got {a.dtype}")
        if ndim is not None and a.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(a.shape)}")
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (NCHW row-major)")

    def _check_labels(self, labels, n):
        if not isinstance(labels, self.xp.ndarray) or labels.dtype not in (np.int32, np.int64):
            raise TypeError(f"labels must be an int32 or int64 {self.xp.__name__} array, got "
                            f"{getattr(labels, 'dtype', type(labels).__name__)}")
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")

    # ---- convolution ----------------------------------------------------------------------
    # The algorithms (gpucnn/ops/conv/algos.py): this backend's kind of them, and how "auto"
    # picks one per layer shape: "heuristic", "timed" (cuda) or "fixed" (names checked only:
    # the reference runs the plain definition whatever the name).
    conv_kind = "cpu"
    conv_policy = "heuristic"

    @property
    def conv_selector(self):
        """This backend's :class:`gpucnn.ops.conv.algos.Selector` (its choices so far)."""
        sel = self.__dict__.get("_conv_selector")
        if sel is None:
            sel = self._conv_selector = conv_algos.Selector(self)
        return sel

    def conv_algorithms(self):
        """``{shape key: algorithm}`` of every convolution this backend ran so far (asked for
        or chosen by ``auto``), e.g. ``{"forward N128 C64 27x27 F192 k5x5 ...": "implicit"}``."""
        return dict(self.conv_selector.chosen)

    def set_conv_algorithms(self, mapping):
        """Make ``auto`` pick ``mapping[shape key]`` (a ``conv_algorithms()`` result, e.g.
        from a checkpoint: an exact resume runs the same algorithms)."""
        self.conv_selector.preset(mapping)

    def conv2d(self, x, w, b=None, stride=1, padding=0, dilation=1, groups=1, relu=False,
               algo=None):
        """y = conv(x, w) + b, optionally followed by ReLU fused in the same pass. ``algo``:
        a name of :mod:`gpucnn.ops.conv.algos` or "auto" (default: $GPUCNN_CONV_ALGO, else
        "auto")."""
        self._check(x, "x", 4)
        self._check(w, "w", 4)
        g = conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
        if b is not None:
            self._check(b, "b", 1, shape=(g.F,))
        relu = bool(relu)
        name = self.conv_selector.select("forward", g, algo,
                                         lambda n: self._conv2d(x, w, b, g, relu, n))
        return self._conv2d(x, w, b, g, relu, name)

    def conv2d_backward(self, dy, x, w, stride=1, padding=0, dilation=1, groups=1,
                        need_dx=True, need_dw=True, algo=None):
        """Gradients (dx, dw, db) of conv2d with respect to its input, weight and bias.

        ``need_dx=False`` skips the input gradient (a network's first layer needs none) and
        ``need_dw=False`` the weight and bias gradients; skipped ones are returned as None.
        ``algo`` as for conv2d (chosen separately from the forward's)."""
        self._check(x, "x", 4)
        self._check(w, "w", 4)
        g = conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
        self._check(dy, "dy", 4, shape=g.y_shape)
        need_dx, need_dw = bool(need_dx), bool(need_dw)
        name = self.conv_selector.select(
            "backward", g, algo, lambda n: self._conv2d_backward(dy, x, w, g, need_dx, need_dw, n),
            need_dx, need_dw)
        return self._conv2d_backward(dy, x, w, g, need_dx, need_dw, name)

    # ---- fused conv + ReLU + max-pool (a composed default; backends may override) -----------
    def conv2d_relu_maxpool(self, x, w, b=None, stride=1, padding=0, dilation=1, groups=1,
                            kernel_size=2, pool_stride=None, pool_padding=0, algo=None):
        """(y, switches) of max_pool2d(relu(conv2d(x, w, b))): the pooled output and the
        pool's switches into the conv output planes, exactly as the three ops give them.
        ``algo``: the convolution's, as for conv2d."""
        self._check(x, "x", 4)
        self._check(w, "w", 4)
        g = conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
        if b is not None:
            self._check(b, "b", 1, shape=(g.F,))
        pg = pool_geometry(g.y_shape, kernel_size, pool_stride, pool_padding)
        name = self.conv_selector.select("forward", g, algo,
                                         lambda n: self._conv2d(x, w, b, g, True, n))
        return self._conv2d_relu_maxpool(x, w, b, g, pg, name)

    def _conv2d_relu_maxpool(self, x, w, b, g, pg, algo):
        a = self.conv2d(x, w, b, **g.conv_kw, relu=True, algo=algo)
        return self.max_pool2d(a, (pg.kh, pg.kw), (pg.sh, pg.sw), (pg.ph, pg.pw))

    def conv2d_relu_maxpool_backward(self, dy, switches, y, x, w, stride=1, padding=0,
                                     dilation=1, groups=1, kernel_size=2, pool_stride=None,
                                     pool_padding=0, need_dx=True, need_dw=True, algo=None):
        """(dx, dw, db) of conv2d_relu_maxpool, given the gradient ``dy`` of its pooled
        output ``y`` and the switches. The ReLU mask is taken on the pooled output: a switch
        points at a conv output equal to the window's pooled value, so ``y > 0`` there is the
        ReLU's own ``relu_out > 0`` at every position that receives a gradient. ``algo``: the
        convolution backward's, as for conv2d_backward."""
        self._check(x, "x", 4)
        self._check(w, "w", 4)
        g = conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
        pg = pool_geometry(g.y_shape, kernel_size, pool_stride, pool_padding)
        self._check(y, "y", 4, shape=pg.y_shape)
        self._check(dy, "dy", 4, shape=pg.y_shape)
        self._check(switches, "switches", 4, dtype=np.int32, shape=pg.y_shape)
        need_dx, need_dw = bool(need_dx), bool(need_dw)
        # Timing (cuda's auto) runs the plain convolution backward on a stand-in dy of the
        # conv output's shape: the algorithms differ only there.
        name = self.conv_selector.select(
            "backward", g, algo, lambda n: self._conv2d_backward(
                self.zeros(g.y_shape, dy.dtype), x, w, g, need_dx, need_dw, n),
            need_dx, need_dw)
        return self._conv2d_relu_maxpool_backward(dy, switches, y, x, w, g, pg, need_dx,
                                                  need_dw, name)

    def _conv2d_relu_maxpool_backward(self, dy, switches, y, x, w, g, pg, need_dx, need_dw,
                                      algo):
        dy = self.relu_backward(dy, y)
        dy = self.max_pool2d_backward(dy, switches, g.y_shape, (pg.kh, pg.kw), (pg.sh, pg.sw),
                                      (pg.ph, pg.pw))
        return self.conv2d_backward(dy, x, w, **g.conv_kw, need_dx=need_dx, need_dw=need_dw,
                                    algo=algo)

    # ---- pooling (PyTorch's F.max_pool2d / avg_pool2d / lp_pool2d; gpucnn/ops/pool) ------
    def max_pool2d(self, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        """(y, switches): switches[n, c, i, j] = h * W + w of the window's (first) maximum.
        Taps ``dilation`` apart; padding (-inf) at most half the kernel; ``ceil_mode`` rounds
        the output size up as long as the last window starts inside the input or the left
        padding."""
        self._check(x, "x", 4)
        return self._max_pool2d(x, pool_geometry(x.shape, kernel_size, stride, padding,
                                                 dilation=dilation, ceil_mode=ceil_mode))

    def max_pool2d_backward(self, dy, switches, x_shape, kernel_size, stride=None, padding=0,
                            dilation=1, ceil_mode=False):
        g = pool_geometry(tuple(x_shape), kernel_size, stride, padding, dilation=dilation,
                          ceil_mode=ceil_mode)
        self._check(dy, "dy", 4, shape=g.y_shape)
        self._check(switches, "switches", 4, dtype=np.int32, shape=g.y_shape)
        return self._max_pool2d_backward(dy, switches, g)

    def avg_pool2d(self, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                   count_include_pad=True, divisor_override=None):
        """Average over each window. Divisor: ``divisor_override`` (a positive int) if given;
        else, with ``count_include_pad`` (the default), the window clipped to the padded
        input (kH * kW except for a ceil_mode window reaching past the right padding); else
        the number of its elements inside the input."""
        self._check(x, "x", 4)
        return self._avg_pool2d(x, pool_geometry(
            x.shape, kernel_size, stride, padding, "avg_pool2d", ceil_mode=ceil_mode,
            count_include_pad=count_include_pad, divisor_override=divisor_override))

    def avg_pool2d_backward(self, dy, x_shape, kernel_size, stride=None, padding=0,
                            ceil_mode=False, count_include_pad=True, divisor_override=None):
        g = pool_geometry(tuple(x_shape), kernel_size, stride, padding, "avg_pool2d",
                          ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                          divisor_override=divisor_override)
        self._check(dy, "dy", 4, shape=g.y_shape)
        return self._avg_pool2d_backward(dy, g)

    def lp_pool2d(self, x, norm_type, kernel_size, stride=None, ceil_mode=False):
        """Power-average pooling, exactly PyTorch's F.lp_pool2d: (avg_pool2d(x^p) * kH * kW)
        ^ (1/p) with p = norm_type (a finite number > 0; p = 2 is L2 pooling), no padding.
        That is the p-th root of the window's sum of x^p, except for a ceil_mode partial
        window of n elements, whose sum is scaled by kH * kW / n first. No abs: NaN where
        x^p is (a negative x, non-integer p) or where a window's sum is negative and p odd
        (its root)."""
        self._check(x, "x", 4)
        p = lp_norm_type(norm_type)
        return self._lp_pool2d(x, p, pool_geometry(x.shape, kernel_size, stride, 0,
                                                   "lp_pool2d", ceil_mode=ceil_mode))

    def lp_pool2d_backward(self, dy, x, y, norm_type, kernel_size, stride=None,
                           ceil_mode=False):
        """dx of lp_pool2d given its input x and output y: each window passes
        dy * y * x^(p-1) / S to its elements, S its sum of x^p. Convention: a window whose
        S is 0 passes no gradient, and an element's gradient is 0 where the sum over its
        windows of dy * y / S is 0 (even if x^(p-1) is infinite there, x = 0 with p < 1)."""
        self._check(x, "x", 4)
        p = lp_norm_type(norm_type)
        g = pool_geometry(x.shape, kernel_size, stride, 0, "lp_pool2d", ceil_mode=ceil_mode)
        self._check(y, "y", 4, shape=g.y_shape)
        self._check(dy, "dy", 4, shape=g.y_shape)
        return self._lp_pool2d_backward(dy, x, y, p, g)

    # ---- activations ----------------------------------------------------------------------
    def relu(self, x):
        self._check(x, "x")
        return self._relu(x)

    def relu_backward(self, dy, y):
        """dx = dy where the ReLU's *output* y > 0 (works for fused conv/linear + ReLU too)."""
        self._check(y, "y")
        self._check(dy, "dy", shape=y.shape)
        return self._relu_backward(dy, y)

    # ---- fully connected ------------------------------------------------------------------
    def linear(self, x, w, b=None, relu=False):
        """y = x @ w.T + b, optionally with a fused ReLU; w is (out_features, in_features)."""
        self._check(x, "x", 2)
        self._check(w, "w", 2)
        if x.shape[1] != w.shape[1]:
            raise ValueError(f"linear: x has {x.shape[1]} features but w expects in_features="
                             f"{w.shape[1]} (w.shape={tuple(w.shape)})")
        if b is not None:
            self._check(b, "b", 1, shape=(w.shape[0],))
        return self._linear(x, w, b, bool(relu))

    def linear_backward(self, dy, x, w):
        self._check(x, "x", 2)
        self._check(w, "w", 2)
        self._check(dy, "dy", 2, shape=(x.shape[0], w.shape[0]))
        return self._linear_backward(dy, x, w)

    # ---- loss -----------------------------------------------------------------------------
    def softmax_cross_entropy(self, logits, labels):
        """(mean_loss, probs); mean_loss is a 0-d array on this backend (no host transfer).
        A label outside [0, K) is a ValueError: at once on the CPU backends, at the next
        raise_device_errors() on a device (which cannot raise without a host sync)."""
        self._check(logits, "logits", 2)
        self._check_labels(labels, logits.shape[0])
        return self._softmax_cross_entropy(logits, labels)

    def softmax_cross_entropy_backward(self, probs, labels):
        """d(mean_loss)/d(logits) = (probs - onehot(labels)) / N."""
        self._check(probs, "probs", 2)
        self._check_labels(labels, probs.shape[0])
        return self._softmax_cross_entropy_backward(probs, labels)

    # ---- local response normalisation (AlexNet) --------------------------------------------
    def local_response_norm(self, x, size=5, alpha=1e-4, beta=0.75, k=1.0):
        """(y, scale): y = x / scale**beta, scale = k + alpha/size * sum of x^2 over the
        ``size`` neighbouring channels (PyTorch's window: size//2 before, (size-1)//2 after)."""
        self._check(x, "x", 4)
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"local_response_norm: size must be a positive int, got {size!r}")
        op = "local_response_norm"
        return self._local_response_norm(x, int(size), _hyper(op, "alpha", alpha),
                                         _hyper(op, "beta", beta), _hyper(op, "k", k, 0,
                                                                          low_open=True))

    def local_response_norm_backward(self, dy, x, y, scale, size=5, alpha=1e-4, beta=0.75,
                                     k=1.0):
        self._check(x, "x", 4)
        for a, n in ((dy, "dy"), (y, "y"), (scale, "scale")):
            self._check(a, n, 4, shape=x.shape)
        return self._local_response_norm_backward(dy, x, y, scale, int(size), float(alpha),
                                                  float(beta), float(k))

    # ---- dropout (counter-based RNG: the same mask on every backend for the same seed) ---
    def dropout(self, x, p, seed):
        """(y, mask) with mask = 0 or 1/(1-p); element i kept iff hash(seed, i) passes."""
        self._check(x, "x")
        p = _hyper("dropout", "p", p, 0, 1, high_open=True)
        if x.size >= 2 ** 32:
            raise ValueError("dropout: tensors of 2^32 elements or more are not supported")
        return self._dropout(x, p, int(seed) & _M32)

    def dropout_backward(self, dy, mask):
        self._check(mask, "mask")
        self._check(dy, "dy", shape=mask.shape)
        return self._dropout_backward(dy, mask)

    # ---- optimiser updates (in place; PyTorch's formulas) -----------------------------------
    def sgd_update(self, param, grad, velocity, lr, momentum=0.0, weight_decay=0.0,
                   nesterov=False):
        """PyTorch's SGD: d = g + wd*p; with momentum, v = momentum*v + d and the step is
        d + momentum*v (Nesterov) or v; without momentum the step is d and v is untouched."""
        self._check(param, "param")
        self._check(grad, "grad", shape=param.shape)
        self._check(velocity, "velocity", shape=param.shape)
        self._sgd_update(param, grad, velocity, _hyper("sgd_update", "lr", lr, 0),
                         _hyper("sgd_update", "momentum", momentum, 0),
                         _hyper("sgd_update", "weight_decay", weight_decay, 0), bool(nesterov))

    def adam_update(self, param, grad, m, v, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                    weight_decay=0.0, step=1):
        """PyTorch's Adam (L2 weight decay added to the gradient); step counts from 1."""
        self._check(param, "param")
        for a, n in ((grad, "grad"), (m, "m"), (v, "v")):
            self._check(a, n, shape=param.shape)
        if not isinstance(step, (int, np.integer)) or step < 1:
            raise ValueError(f"adam_update: step must be an int >= 1, got {step!r}")
        op = "adam_update"
        self._adam_update(param, grad, m, v, _hyper(op, "lr", lr, 0),
                          _hyper(op, "beta1", beta1, 0, 1, high_open=True),
                          _hyper(op, "beta2", beta2, 0, 1, high_open=True),
                          _hyper(op, "eps", eps, 0), _hyper(op, "weight_decay", weight_decay, 0),
                          int(step))
