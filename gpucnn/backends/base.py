"""The backend contract: arrays, a context, and one way to run an op (``plan``).

A backend is an object ``B`` exposing the functional API (``B.conv2d``, ``B.max_pool2d``, ...).
Those methods are not defined here: each is the entry point of its op's module in
:mod:`gpucnn.ops` (see :mod:`gpucnn.ops.dispatch`), which checks the arguments, reduces them
to a frozen geometry record and asks ``B.plan`` for the implementation of the backend's kind
— ``reference`` (plain definitions), ``cpu`` (tuned NumPy) or ``device`` (our kernels) — made
once per geometry and cached. So the reference, the tuned NumPy path and the device backends
(``cuda``, ``emu``) cannot drift apart in what they accept or in how output sizes are computed.

Conventions (PyTorch's): NCHW, float32, conv weight ``(C_out, C_in/groups, kH, kW)``, linear
weight ``(out, in)``, floor output size, zero padding for conv, -inf padding for max-pool.
Max-pool switches are int32 indices ``h * W + w`` into the *unpadded* input plane; ties go to the
first maximum in row-major window order (the GPU kernels match this exactly).
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..ops import catalog  # noqa: F401 - registers every op's entry points
from ..ops.conv.selector import Selector
from ..ops.dispatch import FunctionalAPI, Plan
from ..ops.storage import BF16

__all__ = ["Backend", "MAX_PLANS"]

# Plans cached per backend (one per op and geometry seen); past this many the cache starts
# over, so a stream of ever-new shapes cannot grow it without bound.
MAX_PLANS = 1024


class Backend(FunctionalAPI):
    """Arrays (``asarray``/``to_numpy``), the context its implementations get (``ctx``), and
    ``plan``; subclasses set ``kind`` and implement the array methods."""

    name = "abstract"
    kind = "reference"  # which implementation of each op runs: reference, cpu or device
    xp = np  # the array module of this backend's arrays (numpy, or cupy)
    float_dtypes = (np.dtype(np.float32),)  # the NumPy reference also takes float64
    ctx = None

    plans = None  # {(op, *setup): implementation} made so far; replaced, never shrunk
    # The arithmetic of its GEMMs and convolutions (gpucnn/ops/precision.py); one backend
    # object per precision (get_backend caches them by name and precision).
    precision = "fp32"
    precisions = ("fp32",)   # what this kind of backend can compute in

    def use_precision(self, precision):
        """Set the precision once, when :func:`gpucnn.get_backend` makes the backend (plans
        are worked out from it: they are dropped)."""
        if precision not in self.precisions:
            raise ValueError(f"the {self.name} backend computes in {', '.join(self.precisions)} "
                             f"only, not {precision} (tensor-core precisions need a device "
                             f"backend, cuda or emu, or the reference backend's rounding)")
        self.precision = precision
        self.forget_plans()

    def forget_plans(self):
        """Drop every cached plan (and so make the plans layers hold stale): after a change
        to something plans were worked out from (a preset algorithm, a workspace bound)."""
        self.plans = {}

    def plan(self, op, setup, *specs):
        """The :class:`~gpucnn.ops.dispatch.Plan` of ``op`` for ``setup`` (a tuple of
        hashable, validated values) whose run checks its arguments against ``specs``."""
        plans = self.plans
        key = (op, *setup)
        impl = None if plans is None else plans.get(key)
        if impl is None:
            if plans is None or len(plans) >= MAX_PLANS:
                self.forget_plans()
                plans = self.plans
            impl = plans[key] = op.maker(self.kind)(self.ctx, *setup)
        return Plan(self.check_array, impl, specs, plans)

    # ---- arrays -------------------------------------------------------------------------
    def asarray(self, a, dtype=None):
        raise NotImplementedError  # abstract: implemented by every backend

    def to_numpy(self, a):
        raise NotImplementedError  # abstract: implemented by every backend

    def zeros(self, shape, dtype=np.float32):
        return self.xp.zeros(shape, dtype=dtype)

    def synchronize(self):
        """Wait for queued device work (no-op on the CPU)."""

    def on_device(self):
        """A context in which this backend's device is current (no-op on the CPU). Op calls
        inside it skip making it current themselves: the trainer enters it once per step."""
        return contextlib.nullcontext()

    def capture(self, fn, *static):
        """A graph of ``fn(*static)``'s launches (gpucnn/backends/graph.py): device backends
        only; GraphUnsupported here."""
        from .graph import GraphUnsupported
        raise GraphUnsupported(f"the {self.name} backend runs on the CPU: there are no "
                               f"kernel launches to capture")

    def raise_device_errors(self):
        """Raise the errors device kernels flagged since the last call: a label outside
        [0, K) given to softmax_cross_entropy is the same ValueError on every backend, but a
        kernel cannot raise, so device backends report it here (one small read; the trainer
        calls this where it synchronises anyway). The CPU backends raise at once: no-op."""

    def describe(self):
        """One line: which backend, on which device."""
        return self.name

    # ---- checks (the ops call these with their own names and shapes) ---------------------
    def check(self, a, name, ndim=None, dtype="float", shape=None):
        """A full check of one argument when a call is planned: the backend's array type, a
        dtype it computes in ("float"; "activation": also bf16 bits, gpucnn/ops/storage.py,
        on device backends and the reference under precision bf16), the number of dimensions or the shape, C order."""
        if not isinstance(a, self.xp.ndarray):
            raise TypeError(f"{name} must be a {self.xp.__name__} array on the {self.name} "
                            f"backend (use B.asarray), got {type(a).__name__}")
        if dtype == "float":
            allowed = self.float_dtypes
        elif dtype == "activation":  # float, or bf16 bits (device kernels, reference)
            allowed = self.float_dtypes + ((BF16,) if self.kind != "cpu" else ())
            if a.dtype == BF16 and BF16 in allowed and self.precision != "bf16":
                # a uint16 tensor is bf16 bits only where the backend holds activations so
                # (16-bit pixels, say, must not be read as bfloat16 values)
                raise TypeError(f"{name} has dtype uint16, which the ops read as bf16 "
                                f"activations under precision bf16 only; the {self.name} "
                                f"backend computes in {self.precision} (pass float32)")
        else:
            allowed = (np.dtype(dtype),)
        if a.dtype not in allowed:
            raise TypeError(f"{name} must have dtype {' or '.join(d.name for d in allowed)}, "
                            f"got {a.dtype}")
        if ndim is not None and a.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(a.shape)}")
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (NCHW row-major)")

    def check_array(self, a, name, shape, dtypes, optional=False):
        """The per-call check of a planned argument: what the plan was made for, exactly
        (an ``optional`` one may be None: an output the op allocates then)."""
        if (not isinstance(a, self.xp.ndarray) or a.dtype not in dtypes or a.shape != shape
                or not a.flags.c_contiguous):
            self._refuse(a, name, shape, dtypes, optional)

    def _refuse(self, a, name, shape, dtypes, optional):
        if a is None and optional:
            return
        if not isinstance(a, self.xp.ndarray):
            raise TypeError(f"{name} must be a {self.xp.__name__} array on the {self.name} "
                            f"backend (use B.asarray), got {type(a).__name__}")
        if a.dtype not in dtypes:
            raise TypeError(f"{name} must have dtype {' or '.join(d.name for d in dtypes)}, "
                            f"got {a.dtype}")
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
        raise ValueError(f"{name} must be C-contiguous (NCHW row-major)")

    def check_labels(self, labels, n):
        if not isinstance(labels, self.xp.ndarray) or labels.dtype not in (np.int32, np.int64):
            raise TypeError(f"labels must be an int32 or int64 {self.xp.__name__} array, got "
                            f"{getattr(labels, 'dtype', type(labels).__name__)}")
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")

    # ---- convolution algorithms ----------------------------------------------------------
    # The algorithms (gpucnn/ops/conv/algos.py): this backend's kind of them, and how "auto"
    # picks one per layer shape: "heuristic", "timed" (cuda) or "fixed" (names checked only:
    # the reference runs the plain definition whatever the name).
    conv_kind = "cpu"
    conv_policy = "heuristic"

    @property
    def conv_selector(self):
        """This backend's :class:`gpucnn.ops.conv.selector.Selector` (its choices so far)."""
        sel = self.__dict__.get("_conv_selector")
        if sel is None:
            sel = self._conv_selector = Selector(self)
        return sel

    def conv_algorithms(self):
        """``{shape key: algorithm}`` of every convolution this backend planned so far (asked
        for or chosen by ``auto``), e.g. ``{"forward N128 C64 27x27 F192 k5x5 ...":
        "implicit"}``."""
        return dict(self.conv_selector.chosen)

    def set_conv_algorithms(self, mapping):
        """Make ``auto`` pick ``mapping[shape key]`` (a ``conv_algorithms()`` result, e.g.
        from a checkpoint: an exact resume runs the same algorithms)."""
        self.conv_selector.preset(mapping)
        self.forget_plans()
