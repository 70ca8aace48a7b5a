"""Layer benchmarks: the convnet-benchmarks AlexNet layer set and LeNet-5's layers.

Each :class:`LayerSpec` knows its passes, FLOPs and minimum bytes moved, and builds a timed
callable ``fn(i)`` for one pass on a gpucnn backend (:func:`gpucnn_pass`) or on PyTorch
(:func:`torch_pass`), both from the same random host data (never zeros). Inputs (and output
gradients) come from a small pool of different buffers used in rotation, so a pass does not
find its input already in cache from the previous iteration.

Each pass is timed in isolation on its own copies of the inputs: a backward pass does not
profit from a forward having run on the same array (the numpy backend caches the forward's
column matrix for the backward; the network benchmarks include that effect).

Passes: conv ``fwd`` / ``bwd_data`` / ``bwd_weights`` (the last includes the bias gradient);
max-pool ``fwd`` (values and switches) / ``bwd``; linear ``fwd`` / ``bwd`` (data and weights
together: the backend's ``linear_backward`` computes both in one call).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ops.conv import conv_geometry
from ..ops.pool import pool_geometry
from ..ops.storage import BF16, activation_dtype

__all__ = ["LayerSpec", "LAYER_SETS", "layer_set", "gpucnn_pass", "torch_pass",
           "ROTATE_BUDGET_BYTES"]

F32 = 4
I32 = 4
ROTATE_BUDGET_BYTES = 512 * 2**20  # at most this much rotated input per pass


@dataclass(frozen=True)
class LayerSpec:
    name: str
    kind: str                     # "conv" | "pool" | "linear"
    batch: int
    in_shape: tuple               # (C, H, W) for conv/pool, (features,) for linear
    out_channels: int = 0         # conv F, linear out features
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    source: str = ""              # which set it comes from
    note: str = field(default="", compare=False)

    # ---- geometry -------------------------------------------------------------------------
    def geom(self):
        if self.kind == "conv":
            return conv_geometry((self.batch, *self.in_shape),
                                 (self.out_channels, self.in_shape[0] // self.groups,
                                  self.kernel, self.kernel), self.stride, self.padding, 1,
                                 self.groups)
        if self.kind == "pool":
            return pool_geometry((self.batch, *self.in_shape), self.kernel, self.stride)
        return None

    @property
    def passes(self):
        return ("fwd", "bwd_data", "bwd_weights") if self.kind == "conv" else ("fwd", "bwd")

    def with_batch(self, batch):
        return LayerSpec(self.name, self.kind, int(batch), self.in_shape, self.out_channels,
                         self.kernel, self.stride, self.padding, self.groups, self.source,
                         self.note)

    def describe(self):
        if self.kind == "conv":
            g = self.geom()
            return (f"conv {g.C}->{g.F} {g.kh}x{g.kw}/{g.sh} pad {g.ph} on {g.H}x{g.W} "
                    f"-> {g.Ho}x{g.Wo}, batch {g.N}")
        if self.kind == "pool":
            g = self.geom()
            return (f"maxpool {g.kh}/{g.sh} on {g.C}x{g.H}x{g.W} -> {g.Ho}x{g.Wo}, "
                    f"batch {g.N}")
        return f"linear {self.in_shape[0]}->{self.out_channels}, batch {self.batch}"

    def shapes(self):
        """Host shapes of x, w, b, y (w, b None for pools)."""
        if self.kind == "conv":
            g = self.geom()
            return g.x_shape, g.w_shape, (g.F,), g.y_shape
        if self.kind == "pool":
            g = self.geom()
            return g.x_shape, None, None, g.y_shape
        n, i, o = self.batch, self.in_shape[0], self.out_channels
        return (n, i), (o, i), (o,), (n, o)

    # ---- work -----------------------------------------------------------------------------
    def flops(self, pass_):
        """FLOPs of one pass (multiply-add = 2). Conv: 2*N*F*Ho*Wo*Cin/groups*kh*kw for each
        of fwd, bwd_data, bwd_weights. Linear: 2*N*in*out forward, twice that backward (data
        and weights). Pool: comparisons (fwd, k*k per output) or adds (bwd, one per output)."""
        if self.kind == "conv":
            return self.geom().flops()
        if self.kind == "linear":
            f = 2 * self.batch * self.in_shape[0] * self.out_channels
            return f if pass_ == "fwd" else 2 * f
        g = self.geom()
        outs = g.N * g.C * g.Ho * g.Wo
        return outs * g.kh * g.kw if pass_ == "fwd" else outs

    def min_bytes(self, pass_, act=F32):
        """Bytes every input and output of the pass occupies, each touched once (activations
        x, y, dx, dy at ``act`` bytes: 2 where they are held in bf16; weights float32; int32
        pool switches): the compulsory traffic of a perfect kernel."""
        x, w, b, y = self.shapes()
        n = lambda s: int(np.prod(s)) if s is not None else 0  # noqa: E731
        if self.kind == "conv" or self.kind == "linear":
            if pass_ == "fwd":
                return act * (n(x) + n(y)) + F32 * (n(w) + n(b))
            if pass_ == "bwd_data":
                return act * (n(y) + n(x)) + F32 * n(w)             # dy, w -> dx
            if pass_ == "bwd_weights":
                return act * (n(y) + n(x)) + F32 * (n(w) + n(b))    # dy, x -> dw, db
            return act * (n(y) + 2 * n(x)) + F32 * (2 * n(w) + n(b))  # linear: dy,x,w->dx,dw,db
        if pass_ == "fwd":
            return act * (n(x) + n(y)) + I32 * n(y)             # x -> y, switches
        return act * (n(y) + n(x)) + I32 * n(y)                 # dy, switches -> dx


def _alexnet_layers(batch):
    s = "alexnet"
    return [
        LayerSpec("alexnet.conv1", "conv", batch, (3, 224, 224), 64, 11, 4, 2, source=s),
        LayerSpec("alexnet.pool1", "pool", batch, (64, 55, 55), kernel=3, stride=2, source=s),
        LayerSpec("alexnet.conv2", "conv", batch, (64, 27, 27), 192, 5, 1, 2, source=s),
        LayerSpec("alexnet.conv3", "conv", batch, (192, 13, 13), 384, 3, 1, 1, source=s),
        LayerSpec("alexnet.conv4", "conv", batch, (384, 13, 13), 256, 3, 1, 1, source=s),
        LayerSpec("alexnet.conv5", "conv", batch, (256, 13, 13), 256, 3, 1, 1, source=s),
        LayerSpec("alexnet.fc6", "linear", batch, (9216,), 4096, source=s),
    ]


def _lenet5_layers(batch):
    s = "lenet5"
    return [
        LayerSpec("lenet5.conv1", "conv", batch, (1, 28, 28), 6, 5, 1, 2, source=s),
        LayerSpec("lenet5.pool1", "pool", batch, (6, 28, 28), kernel=2, stride=2, source=s),
        LayerSpec("lenet5.conv2", "conv", batch, (6, 14, 14), 16, 5, 1, 0, source=s),
    ]


def _tiny_layers(batch):
    """Very small shapes for smoke runs (the emulator, tests)."""
    s = "tiny"
    return [
        LayerSpec("tiny.conv", "conv", batch, (3, 12, 12), 4, 5, 1, 2, source=s),
        LayerSpec("tiny.pool", "pool", batch, (4, 12, 12), kernel=3, stride=2, source=s),
        LayerSpec("tiny.fc", "linear", batch, (64,), 16, source=s),
    ]


LAYER_SETS = {"alexnet": _alexnet_layers, "lenet5": _lenet5_layers, "tiny": _tiny_layers}
DEFAULT_LAYER_BATCH = {"alexnet": 128, "lenet5": 128, "tiny": 2}


def layer_set(name, batch=None):
    """The specs of set ``name`` (``alexnet``, ``lenet5``, ``tiny``; ``all`` = alexnet +
    lenet5) at ``batch`` (default: 128, tiny 2)."""
    if name == "all":
        return layer_set("alexnet", batch) + layer_set("lenet5", batch)
    if name not in LAYER_SETS:
        raise ValueError(f"layer set must be one of {', '.join(LAYER_SETS)} or all; got "
                         f"{name!r}")
    return LAYER_SETS[name](batch or DEFAULT_LAYER_BATCH[name])


# ---- data ---------------------------------------------------------------------------------

def _pool_count(rotate, nbytes):
    return max(1, min(int(rotate), ROTATE_BUDGET_BYTES // max(int(nbytes), 1)))


def host_data(spec, rng, rotate):
    """Random host arrays: a pool of (x, dy) pairs plus w and b. Scaled so values stay O(1)."""
    x_shape, w_shape, b_shape, y_shape = spec.shapes()
    k = _pool_count(rotate, F32 * (int(np.prod(x_shape)) + int(np.prod(y_shape))))
    xs = [rng.standard_normal(x_shape, dtype=np.float32) for _ in range(k)]
    dys = [rng.standard_normal(y_shape, dtype=np.float32) for _ in range(k)]
    w = b = None
    if w_shape is not None:
        fan_in = int(np.prod(w_shape[1:]))
        w = (rng.standard_normal(w_shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)
        b = rng.standard_normal(b_shape, dtype=np.float32) * np.float32(0.1)
    return xs, dys, w, b


def gpucnn_pass(spec, pass_, B, data):
    """``fn(i)`` running one ``pass_`` of ``spec`` on backend ``B`` with rotated inputs."""
    xs_h, dys_h, w_h, b_h = data
    # Fresh arrays for every pass (B.asarray may return the host array itself): a backend
    # that caches per input array between forward and backward (the numpy backend keeps the
    # forward's column matrix) must not find the fwd pass's entries here — each pass is timed
    # in isolation. The nets benchmarks include such forward->backward reuse.
    xs = [B.asarray(np.array(x, copy=True)) for x in xs_h]
    dys = [B.asarray(np.array(d, copy=True)) for d in dys_h]
    if activation_dtype(B) == BF16:
        # as a network holds them under bf16 (gpucnn/ops/storage.py): the _bf16io kernels
        # (min_bytes(pass_, 2) counts them so)
        xs, dys = [B.to_bf16(x) for x in xs], [B.to_bf16(d) for d in dys]
    k = len(xs)
    if spec.kind == "conv":
        w, b = B.asarray(w_h), B.asarray(b_h)
        kw = dict(stride=spec.stride, padding=spec.padding, groups=spec.groups)
        if pass_ == "fwd":
            return lambda i: B.conv2d(xs[i % k], w, b, **kw)
        if pass_ == "bwd_data":
            return lambda i: B.conv2d_backward(dys[i % k], xs[i % k], w, need_dw=False, **kw)
        if pass_ == "bwd_weights":
            return lambda i: B.conv2d_backward(dys[i % k], xs[i % k], w, need_dx=False, **kw)
    elif spec.kind == "pool":
        ks, st = spec.kernel, spec.stride
        if pass_ == "fwd":
            return lambda i: B.max_pool2d(xs[i % k], ks, st)
        if pass_ == "bwd":
            sw = [B.max_pool2d(x, ks, st)[1] for x in xs]
            return lambda i: B.max_pool2d_backward(dys[i % k], sw[i % k], xs[i % k].shape,
                                                   ks, st)
    elif spec.kind == "linear":
        w, b = B.asarray(w_h), B.asarray(b_h)
        if pass_ == "fwd":
            return lambda i: B.linear(xs[i % k], w, b)
        if pass_ == "bwd":
            return lambda i: B.linear_backward(dys[i % k], xs[i % k], w)
    raise ValueError(f"{spec.name}: no pass {pass_!r}")


def torch_pass(spec, pass_, torch, device, data, dtype=None):
    """The same pass through PyTorch's native operators (what autograd calls), under
    ``torch.no_grad``: conv ``aten.convolution_backward`` with an output mask selecting the
    data or the weight+bias gradient, ``aten.max_pool2d_with_indices_backward``, and the
    three matrix products of a linear layer's backward. ``dtype`` (e.g. ``torch.bfloat16``):
    every tensor is held in it on the device (default: float32, as the host data)."""
    F = torch.nn.functional
    aten = torch.ops.aten
    xs_h, dys_h, w_h, b_h = data
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device=device,  # noqa: E731
                                                                dtype=dtype)
    xs = [t(x) for x in xs_h]
    dys = [t(d) for d in dys_h]
    k = len(xs)

    def nograd(f):
        def g(i):
            with torch.no_grad():
                return f(i)
        return g

    if spec.kind == "conv":
        w, b = t(w_h), t(b_h)
        st, pd = [spec.stride] * 2, [spec.padding] * 2
        if pass_ == "fwd":
            return nograd(lambda i: F.conv2d(xs[i % k], w, b, st, pd, 1, spec.groups))
        mask = [True, False, False] if pass_ == "bwd_data" else [False, True, True]
        bias_sizes = [w.shape[0]] if mask[2] else None
        return nograd(lambda i: aten.convolution_backward(
            dys[i % k], xs[i % k], w, bias_sizes, st, pd, [1, 1], False, [0, 0], spec.groups,
            mask))
    if spec.kind == "pool":
        ks, st = [spec.kernel] * 2, [spec.stride] * 2
        if pass_ == "fwd":
            return nograd(lambda i: F.max_pool2d(xs[i % k], ks, st, return_indices=True))
        with torch.no_grad():
            idx = [F.max_pool2d(x, ks, st, return_indices=True)[1] for x in xs]
        return nograd(lambda i: aten.max_pool2d_with_indices_backward(
            dys[i % k], xs[i % k], ks, st, [0, 0], [1, 1], False, idx[i % k]))
    if spec.kind == "linear":
        w, b = t(w_h), t(b_h)
        if pass_ == "fwd":
            return nograd(lambda i: F.linear(xs[i % k], w, b))

        def bwd(i):
            dy = dys[i % k]
            return dy @ w, dy.t() @ xs[i % k], dy.sum(0)
        return nograd(bwd)
    raise ValueError(f"{spec.name}: no pass {pass_!r}")
