"""The backend contract: argument checking and geometry shared by every backend.

A backend is an object ``B`` exposing the functional API (``B.conv2d``, ``B.max_pool2d``, ...).
The public methods below validate their arguments once and reduce them to a small frozen
geometry record; subclasses implement only the ``_underscored`` methods, which receive
already-checked arrays and geometry. So the NumPy reference and the device backends (``cuda``,
``emu``) cannot drift apart in what they accept or in how output sizes are computed.

Conventions (PyTorch's): NCHW, float32, conv weight ``(C_out, C_in/groups, kH, kW)``, linear
weight ``(out, in)``, floor output size, zero padding for conv, -inf padding for max-pool.
Max-pool switches are int32 indices ``h * W + w`` into the *unpadded* input plane; ties go to the
first maximum in row-major window order (the GPU kernels match this exactly).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Backend", "ConvGeom", "PoolGeom", "pair", "conv_geometry", "pool_geometry",
           "dropout_hash", "dropout_threshold"]


def pair(value, name):
    """An int or a pair of ints -> a tuple of two Python ints, with a clear error otherwise."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


@dataclass(frozen=True)
class ConvGeom:
    N: int
    C: int
    H: int
    W: int
    F: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    groups: int
    Ho: int
    Wo: int

    @property
    def Cg(self):  # input channels per group
        return self.C // self.groups

    @property
    def Fg(self):  # output channels per group
        return self.F // self.groups

    @property
    def K(self):  # rows of one group's im2col matrix
        return self.Cg * self.kh * self.kw

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def w_shape(self):
        return (self.F, self.Cg, self.kh, self.kw)

    @property
    def y_shape(self):
        return (self.N, self.F, self.Ho, self.Wo)

    def flops(self):
        """Multiply-adds counted as 2 FLOPs, forward pass."""
        return 2 * self.N * self.F * self.Ho * self.Wo * self.K


@dataclass(frozen=True)
class PoolGeom:
    N: int
    C: int
    H: int
    W: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    Ho: int
    Wo: int

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def y_shape(self):
        return (self.N, self.C, self.Ho, self.Wo)


def _out_size(size, k, s, p, d, what, axis):
    out = (size + 2 * p - d * (k - 1) - 1) // s + 1
    if out <= 0:
        raise ValueError(
            f"{what}: output {axis} would be {out} (input {size}, kernel {k}, stride {s}, "
            f"padding {p}, dilation {d}); expected an output size >= 1 — use a smaller kernel "
            f"or more padding")
    return out


def _check_hparams(stride, padding, dilation, what):
    for name, (a, b), lo in (("stride", stride, 1), ("padding", padding, 0),
                             ("dilation", dilation, 1)):
        if a < lo or b < lo:
            raise ValueError(f"{what}: {name} must be >= {lo}, got {(a, b)}")


def conv_geometry(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1):
    what = "conv2d"
    stride, padding, dilation = (pair(stride, "stride"), pair(padding, "padding"),
                                 pair(dilation, "dilation"))
    _check_hparams(stride, padding, dilation, what)
    if len(x_shape) != 4:
        raise ValueError(f"{what}: x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"{what}: w must be 4-D (C_out, C_in/groups, kH, kW), got shape "
                         f"{tuple(w_shape)}")
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"{what}: groups must be a positive int, got {groups!r}")
    N, C, H, W = (int(s) for s in x_shape)
    F, Cg, kh, kw = (int(s) for s in w_shape)
    if C % groups or F % groups:
        raise ValueError(f"{what}: groups={groups} must divide in_channels ({C}) and "
                         f"out_channels ({F})")
    if Cg * groups != C:
        raise ValueError(f"{what}: w expects {Cg * groups} input channels (w.shape[1]={Cg} x "
                         f"groups={groups}) but x has C={C}")
    if min(N, kh, kw, F) < 1:
        raise ValueError(f"{what}: empty dimension in x {tuple(x_shape)} or w {tuple(w_shape)}")
    Ho = _out_size(H, kh, stride[0], padding[0], dilation[0], what, "height")
    Wo = _out_size(W, kw, stride[1], padding[1], dilation[1], what, "width")
    return ConvGeom(N, C, H, W, F, kh, kw, *stride, *padding, *dilation, int(groups), Ho, Wo)


def pool_geometry(x_shape, kernel_size, stride=None, padding=0, what="max_pool2d"):
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = (kh, kw) if stride is None else pair(stride, "stride")
    ph, pw = pair(padding, "padding")
    if kh < 1 or kw < 1:
        raise ValueError(f"{what}: kernel_size must be >= 1, got {(kh, kw)}")
    _check_hparams((sh, sw), (ph, pw), (1, 1), what)
    if ph > kh // 2 or pw > kw // 2:
        # Beyond half the kernel a window can lie wholly in the padding (PyTorch's rule).
        raise ValueError(f"{what}: padding {(ph, pw)} must be at most half of kernel_size "
                         f"{(kh, kw)}")
    if len(x_shape) != 4:
        raise ValueError(f"{what}: x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    N, C, H, W = (int(s) for s in x_shape)
    Ho = _out_size(H, kh, sh, ph, 1, what, "height")
    Wo = _out_size(W, kw, sw, pw, 1, what, "width")
    return PoolGeom(N, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)


# --- dropout's counter-based RNG: identical bit-for-bit in NumPy and in kernels/elementwise.cu ---
_M32 = 0xFFFFFFFF


def dropout_hash(seed, index):
    """32-bit hash of (seed, flat element index); ``index`` is a uint32 NumPy array.

    x = index * 0x9E3779B1 + seed * 0x85EBCA77 (mod 2^32), then the 'lowbias32' finaliser:
    x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16.
    """
    x = index.astype(np.uint32) * np.uint32(0x9E3779B1) + np.uint32(
        (int(seed) * 0x85EBCA77) & _M32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def dropout_threshold(p):
    """An element is kept iff (hash >> 8) >= threshold; threshold = round(p * 2^24)."""
    return int(round(float(p) * (1 << 24)))


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
    def conv2d(self, x, w, b=None, stride=1, padding=0, dilation=1, groups=1, relu=False):
        """y = conv(x, w) + b, optionally followed by ReLU fused in the same pass."""
        self._check(x, "x", 4)
        self._check(w, "w", 4)
        g = conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
        if b is not None:
            self._check(b, "b", 1, shape=(g.F,))
        return self._conv2d(x, w, b, g, bool(relu))

    def conv2d_backward(self, dy, x, w, stride=1, padding=0, dilation=1, groups=1,
                        need_dx=True, need_dw=True):
        """Gradients (dx, dw, db) of conv2d with respect to its input, weight and bias.

        ``need_dx=False`` skips the input gradient (a network's first layer needs none) and
        ``need_dw=False`` the weight and bias gradients; skipped ones are returned as None."""
        self._check(x, "x", 4)
        self._check(w, "w", 4)
        g = conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
        self._check(dy, "dy", 4, shape=g.y_shape)
        return self._conv2d_backward(dy, x, w, g, bool(need_dx), bool(need_dw))

    # ---- fused conv + ReLU + max-pool (a composed default; backends may override) -----------
    def conv2d_relu_maxpool(self, x, w, b=None, stride=1, padding=0, dilation=1, groups=1,
                            kernel_size=2, pool_stride=None, pool_padding=0):
        """(y, switches) of max_pool2d(relu(conv2d(x, w, b))): the pooled output and the
        pool's switches into the conv output planes, exactly as the three ops give them."""
        self._check(x, "x", 4)
        self._check(w, "w", 4)
        g = conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
        if b is not None:
            self._check(b, "b", 1, shape=(g.F,))
        pg = pool_geometry(g.y_shape, kernel_size, pool_stride, pool_padding)
        return self._conv2d_relu_maxpool(x, w, b, g, pg)

    def _conv2d_relu_maxpool(self, x, w, b, g, pg):
        a = self.conv2d(x, w, b, (g.sh, g.sw), (g.ph, g.pw), (g.dh, g.dw), g.groups, relu=True)
        return self.max_pool2d(a, (pg.kh, pg.kw), (pg.sh, pg.sw), (pg.ph, pg.pw))

    def conv2d_relu_maxpool_backward(self, dy, switches, y, x, w, stride=1, padding=0,
                                     dilation=1, groups=1, kernel_size=2, pool_stride=None,
                                     pool_padding=0, need_dx=True, need_dw=True):
        """(dx, dw, db) of conv2d_relu_maxpool, given the gradient ``dy`` of its pooled
        output ``y`` and the switches. The ReLU mask is taken on the pooled output: a switch
        points at a conv output equal to the window's pooled value, so ``y > 0`` there is the
        ReLU's own ``relu_out > 0`` at every position that receives a gradient."""
        self._check(x, "x", 4)
        self._check(w, "w", 4)
        g = conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
        pg = pool_geometry(g.y_shape, kernel_size, pool_stride, pool_padding)
        self._check(y, "y", 4, shape=pg.y_shape)
        self._check(dy, "dy", 4, shape=pg.y_shape)
        self._check(switches, "switches", 4, dtype=np.int32, shape=pg.y_shape)
        return self._conv2d_relu_maxpool_backward(dy, switches, y, x, w, g, pg, bool(need_dx),
                                                  bool(need_dw))

    def _conv2d_relu_maxpool_backward(self, dy, switches, y, x, w, g, pg, need_dx, need_dw):
        conv = dict(stride=(g.sh, g.sw), padding=(g.ph, g.pw), dilation=(g.dh, g.dw),
                    groups=g.groups)
        dy = self.relu_backward(dy, y)
        dy = self.max_pool2d_backward(dy, switches, g.y_shape, (pg.kh, pg.kw), (pg.sh, pg.sw),
                                      (pg.ph, pg.pw))
        return self.conv2d_backward(dy, x, w, **conv, need_dx=need_dx, need_dw=need_dw)

    # ---- pooling --------------------------------------------------------------------------
    def max_pool2d(self, x, kernel_size, stride=None, padding=0):
        """(y, switches): switches[n, c, i, j] = h * W + w of the window's (first) maximum."""
        self._check(x, "x", 4)
        return self._max_pool2d(x, pool_geometry(x.shape, kernel_size, stride, padding))

    def max_pool2d_backward(self, dy, switches, x_shape, kernel_size, stride=None, padding=0):
        g = pool_geometry(tuple(x_shape), kernel_size, stride, padding)
        self._check(dy, "dy", 4, shape=g.y_shape)
        self._check(switches, "switches", 4, dtype=np.int32, shape=g.y_shape)
        return self._max_pool2d_backward(dy, switches, g)

    def avg_pool2d(self, x, kernel_size, stride=None, padding=0):
        """Average over each window; padded zeros count in the divisor (kH * kW)."""
        self._check(x, "x", 4)
        return self._avg_pool2d(x, pool_geometry(x.shape, kernel_size, stride, padding,
                                                 "avg_pool2d"))

    def avg_pool2d_backward(self, dy, x_shape, kernel_size, stride=None, padding=0):
        g = pool_geometry(tuple(x_shape), kernel_size, stride, padding, "avg_pool2d")
        self._check(dy, "dy", 4, shape=g.y_shape)
        return self._avg_pool2d_backward(dy, g)

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
        """(mean_loss, probs); mean_loss is a 0-d array on this backend (no host transfer)."""
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
        if not k > 0:
            raise ValueError(f"local_response_norm: k must be > 0, got {k!r}")
        return self._local_response_norm(x, int(size), float(alpha), float(beta), float(k))

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
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"dropout: p must be in [0, 1), got {p!r}")
        if x.size >= 2 ** 32:
            raise ValueError("dropout: tensors of 2^32 elements or more are not supported")
        return self._dropout(x, float(p), int(seed) & _M32)

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
        self._sgd_update(param, grad, velocity, float(lr), float(momentum),
                         float(weight_decay), bool(nesterov))

    def adam_update(self, param, grad, m, v, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                    weight_decay=0.0, step=1):
        """PyTorch's Adam (L2 weight decay added to the gradient); step counts from 1."""
        self._check(param, "param")
        for a, n in ((grad, "grad"), (m, "m"), (v, "v")):
            self._check(a, n, shape=param.shape)
        if step < 1:
            raise ValueError(f"adam_update: step must be >= 1, got {step}")
        self._adam_update(param, grad, m, v, float(lr), float(beta1), float(beta2), float(eps),
                          float(weight_decay), int(step))


def adam_bias_corrections(beta1, beta2, step):
    """(1 - beta1^t, sqrt(1 - beta2^t)) computed in float64 on the host, shared by backends."""
    return 1.0 - beta1 ** step, math.sqrt(1.0 - beta2 ** step)
