"""Module, Parameter and Sequential: the small core of the layer graph.

Every layer owns its forward and backward (Chainer's function-object style): ``forward`` keeps
what ``backward`` needs, ``backward(dy)`` returns dx and *overwrites* each parameter's ``grad``.
All arrays live on the module's backend; nothing is copied to the host.
"""
from __future__ import annotations

import numpy as np

from ..backends import get_backend
from ..ops.activation import relu_backward_plan
from ..ops.cast import from_bf16_plan, to_bf16_plan
from ..ops.storage import BF16, activation_dtype
from .flat import FlatParameters

__all__ = ["Parameter", "Module", "Sequential"]


class Parameter:
    """A trainable array and its gradient, both on the backend."""

    def __init__(self, data):
        self.data = data
        self.grad = None
        # Set by FlatParameters: this parameter's views into its model's flat buffers.
        self.data_view = self.grad_view = self.flat = None

    def grad_out(self):
        """Where the backward should write this parameter's gradient: its view in the flat
        gradient buffer while ``data`` is still its flat view, else None (the op allocates)."""
        return self.grad_view if self.data is self.data_view else None

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def size(self):
        return int(np.prod(self.shape))


class Module:
    training = True
    fused_relu = False  # set by Sequential when a following ReLU is folded into this layer
    fused_into = None  # set by Sequential on a layer folded into the previous one
    # Whether forward/backward take and return bf16 activations (uint16 bits,
    # gpucnn/ops/storage.py): its ops have _bf16io kernels (and reference definitions that
    # round where they do). Sequential converts around the others when it holds activations
    # in bf16.
    bf16_native = False

    def __init__(self):
        self.backend = None

    @property
    def B(self):
        """The backend, by its name before 0.2 (read-only; use ``backend``)."""
        return self.backend

    # -- backend and parameters ----------------------------------------------------------------
    def bind(self, backend, rng=None):
        """Attach to a backend and create parameters (host-side init with ``rng``)."""
        self.backend = get_backend(backend)
        return self

    def named_parameters(self, prefix=""):
        return [(prefix + n, p) for n, p in vars(self).items() if isinstance(p, Parameter)]

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def extra_state(self):
        """JSON-able state besides parameters (e.g. dropout's call counter)."""
        return {}

    def load_extra_state(self, state):
        pass

    def after_replay(self):
        """A captured step was replayed (gpucnn/train_graph.py): advance what the layer
        counts on the host per step (the graph advanced its device copy)."""

    # -- modes -------------------------------------------------------------------------------------
    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # -- shape bookkeeping for summaries ----------------------------------------------------------
    def output_shape(self, in_shape):
        """(C, H, W) or (features,) for one sample; raises on an invalid input shape."""
        return in_shape

    def flops(self, in_shape):
        """Forward FLOPs for one sample (a multiply-add counts 2)."""
        return 0

    def receptive(self):
        """(kernel extent, stride) along H for receptive-field arithmetic."""
        return 1, 1

    def __call__(self, x):
        return self.forward(x)

    # -- plans: an op worked out once for the last input shape ---------------------------------
    def _plan(self, slot, a, make, *extra):
        """The plan kept in ``slot`` if it was made for ``a``'s shape and dtype (and
        ``extra``) on the backend's current plans, else a new one from ``make()``. The plan's
        run still checks every array it gets."""
        key = (a.shape, a.dtype, *extra)
        plan = self.__dict__.get(slot)
        if plan is None or plan.key != key or plan.cache is not self.backend.plans:
            plan = make()
            plan.key = key
            setattr(self, slot, plan)
        return plan

    def _to_bf16(self, slot, a):
        """``a`` rounded to bf16 by a plan this layer keeps (Sequential's conversions)."""
        return self._plan(slot, a, lambda: to_bf16_plan(self.backend, a)).run(a)

    def _from_bf16(self, slot, a):
        return self._plan(slot, a, lambda: from_bf16_plan(self.backend, a)).run(a)

    def _relu_backward(self, dy, y):
        """dx of a ReLU (a layer's own, or one fused into it) given its output y."""
        return self._plan("_relu_backward_plan", dy, lambda: relu_backward_plan(
            self.backend, dy, y)).run(dy, y)

    def __repr__(self):
        return type(self).__name__ + "()"


class Sequential(Module):
    """Layers applied in order. A Conv2d or Linear directly followed by ReLU is fused: the
    producer computes bias + ReLU in one pass and the ReLU layer is skipped; a Conv2d, ReLU,
    MaxPool2d triple runs as one ``conv2d_relu_maxpool`` call (the pool layer is skipped). The first
    layer computes no input gradient (nothing consumes it), so ``backward`` returns None
    when the first layer is a Conv2d (set ``layers[0].needs_input_grad = True`` to get it)."""

    def __init__(self, *layers):
        super().__init__()
        self.layers = list(layers)
        for a, b in zip(self.layers, self.layers[1:]):
            if getattr(a, "can_fuse_relu", False) and type(b).__name__ == "ReLU":
                a.fused_relu = True
                b.fused_into = a
        # Conv2d, ReLU, MaxPool2d: the conv layer also does the pooling (one backend call
        # forward and one backward); the ReLU and pool layers stay listed but are skipped.
        # Only a pool whose options the fused op takes (no dilation or ceil_mode) is folded.
        for a, b, c in zip(self.layers, self.layers[1:], self.layers[2:]):
            if (getattr(a, "can_fuse_pool", False) and b.fused_into is a
                    and type(c).__name__ == "MaxPool2d" and c.fusable):
                a.fused_pool = c
                c.fused_into = a
        if self.layers and hasattr(self.layers[0], "needs_input_grad"):
            self.layers[0].needs_input_grad = False

    def bind(self, backend, rng):
        self.backend = get_backend(backend)
        for layer in self.layers:
            layer.bind(self.backend, rng)
        self.flat = FlatParameters.of(self.backend, self.parameters())
        return self

    def named_parameters(self, prefix=""):
        out = []
        for i, layer in enumerate(self.layers):
            out += layer.named_parameters(f"{prefix}{i}.")
        return out

    def extra_state(self):
        return {str(i): s for i, l in enumerate(self.layers) if (s := l.extra_state())}

    def load_extra_state(self, state):
        for i, layer in enumerate(self.layers):
            if str(i) in state:
                layer.load_extra_state(state[str(i)])

    def after_replay(self):
        for layer in self.layers:
            layer.after_replay()

    def train(self, mode=True):
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def _bf16(self):
        # (layers bound one by one, the Sequential itself never: float32, as they are)
        return self.backend is not None and activation_dtype(self.backend) == BF16

    def _active(self):
        return [layer for layer in self.layers if getattr(layer, "fused_into", None) is None]

    def forward(self, x):
        """The output (float32) of the layers applied in order. Under precision bf16 on a
        device backend (gpucnn/ops/storage.py) the layers pass bf16 tensors: the input is
        rounded to bf16, each layer without bf16 kernels gets its input as float32 and its
        output rounded to bf16, and the last output is returned as float32."""
        if not self._bf16():
            for layer in self._active():
                x = layer.forward(x)
            return x
        x = self._to_bf16("_input_to_bf16", x)
        for layer in self._active():
            if layer.bf16_native:
                x = layer.forward(x)
            else:
                x = layer._to_bf16("_out_to_bf16", layer.forward(
                    layer._from_bf16("_in_from_bf16", x)))
        return self._from_bf16("_output_from_bf16", x)

    def backward(self, dy):
        """dx of the input (float32, or None when the first layer computes none) given the
        output's gradient dy (float32); bf16 in between as in :meth:`forward`."""
        if not self._bf16():
            for layer in reversed(self._active()):
                dy = layer.backward(dy)
            return dy
        dy = self._to_bf16("_dout_to_bf16", dy)
        for layer in reversed(self._active()):
            if layer.bf16_native:
                dy = layer.backward(dy)
            else:
                dx = layer.backward(layer._from_bf16("_dout_from_bf16", dy))
                dy = None if dx is None else layer._to_bf16("_din_to_bf16", dx)
        return None if dy is None else self._from_bf16("_din_from_bf16", dy)

    def output_shape(self, in_shape):
        for layer in self.layers:
            in_shape = layer.output_shape(in_shape)
        return in_shape

    def state_dict(self):
        """Parameters as host NumPy arrays, keyed '<layer index>.<name>'."""
        return {n: self.backend.to_numpy(p.data) for n, p in self.named_parameters()}

    def load_state_dict(self, arrays):
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(arrays))
        unexpected = sorted(set(arrays) - set(params))
        if missing or unexpected:
            raise ValueError(f"state dict does not fit this model: missing {missing}, "
                             f"unexpected {unexpected}")
        for name, p in params.items():
            a = np.asarray(arrays[name])
            if a.shape != p.shape:
                raise ValueError(f"state dict entry {name!r} has shape {a.shape}, the model "
                                 f"expects {p.shape}")
            # into the parameter's array (a view of the flat buffer), never replacing it
            p.data[...] = self.backend.asarray(a.astype(np.float32))

    def __repr__(self):
        inner = "\n".join(f"  ({i}) {l!r}" for i, l in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"
