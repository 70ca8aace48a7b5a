"""How a call reaches an implementation: ops, their implementations per backend kind, plans.

* An :class:`Op` names one computation (``max_pool2d``, ``conv2d_backward``, ...) and holds a
  plan factory per backend kind: ``"reference"`` (the plain definition), ``"cpu"`` (the tuned
  NumPy path; the reference where there is none) and ``"device"`` (launches of our kernels).
  A factory ``make(ctx, *setup) -> run(*args)`` works out everything that depends only on the
  validated ``setup`` (a geometry record and flags) once; ``run`` does the call's work. ``ctx``
  is the backend's context: its CpuRuntime on ``numpy``, a DeviceContext on ``cuda``/``emu``,
  None on ``reference``.
* Each op's module defines its public entry points, e.g. ``max_pool2d(backend, x, ...)``: the
  argument checks (the op owns them), then ``backend.plan(OP, setup, specs)`` — the
  implementation for that setup, made once per backend and cached — and the run. Entry points
  are registered with :func:`api`; :class:`FunctionalAPI` (the base of every backend) exposes
  them as methods, so ``B.max_pool2d(x, 2)`` *is* the op's entry point, one frame.
* A :class:`Plan` checks the arrays of each call against the shapes and dtypes it was made for
  (cheap: type, dtype, shape, contiguity) and runs the implementation. Layers and optimisers
  keep their plans, so a training step neither re-derives a geometry nor re-validates a
  hyper-parameter: they were checked when the plan was made.
"""
from __future__ import annotations

from .precision import bf16_to_float32, round_bf16, round_operand
from .storage import BF16, is_bf16

__all__ = ["Op", "Plan", "api", "plain", "with_ctx", "grads_into", "into", "rounded",
           "bf16_activations", "FunctionalAPI", "API"]

API = {}  # public name -> entry point function(backend, ...)


def api(fn):
    """Register ``fn(backend, ...)`` as the functional-API method ``B.<fn.__name__>``."""
    if fn.__name__ in API:
        raise ValueError(f"op entry point {fn.__name__} is registered twice")
    API[fn.__name__] = fn
    return fn


def plain(fn, takes_setup=True):
    """A plan factory for a plain function ``fn(*args, *setup)`` (or ``fn(*args)``) that
    takes no context: the reference implementations."""
    if not takes_setup:
        return lambda ctx, *setup: fn

    def make(ctx, *setup):
        return lambda *args: fn(*args, *setup)
    return make


def with_ctx(fn, takes_setup=True):
    """A plan factory for ``fn(ctx, *args, *setup)`` (or ``fn(ctx, *args)``): the tuned CPU
    implementations, whose context is the CpuRuntime."""
    def make(ctx, *setup):
        if not takes_setup:
            return lambda *args: fn(ctx, *args)
        return lambda *args: fn(ctx, *args, *setup)
    return make


def into(result, out):
    """``result`` copied into ``out`` (returned), or ``result`` itself when out is None."""
    if out is None or result is None or result is out:
        return result
    out[...] = result
    return out


def rounded(make, operands, bias_axes=None):
    """The plan factory of a multiplying op's plain definition under the context's precision
    (the reference backend's): its first ``operands`` arrays rounded as the tensor cores of
    ``tf32`` / ``bf16`` round them (:func:`~gpucnn.ops.precision.round_operand`), kept in
    their dtype. ``fp32`` and ``3xtf32`` run the definition as it is. A backward returning
    (dx, dw, db) passes ``bias_axes``: db is a plain sum of the unrounded dy over them, as on
    the devices, where it is no tensor-core product."""
    def factory(ctx, *setup):
        run = make(ctx, *setup)
        precision = getattr(ctx, "precision", "fp32")
        if precision not in ("tf32", "bf16"):
            return run

        def run_rounded(*args):
            ops = [round_operand(a, precision).astype(a.dtype, copy=False)
                   for a in args[:operands]]
            out = run(*ops, *args[operands:])
            if bias_axes is None or out[2] is None:
                return out
            return out[0], out[1], args[0].sum(axis=bias_axes)
        return run_rounded
    return factory


def bf16_activations(make):
    """The plan factory of a plain definition over activations that may be held in bf16
    (gpucnn/ops/storage.py): when the setup's last element, the activations' dtype, is bf16
    bits, the run widens every uint16 argument to float32 (exactly), runs the definition and
    rounds its activation result — the value, or the first of the values it returns — to
    bf16 once, where the device's _bf16io kernels round. The reference backend's ops are
    thereby the oracle of those kernels, fused compositions included."""
    def factory(ctx, *setup):
        run = make(ctx, *setup)
        if not setup or not is_bf16(setup[-1]):
            return run

        def run_bf16(*args):
            out = run(*(bf16_to_float32(a) if getattr(a, "dtype", None) == BF16 else a
                        for a in args))
            if isinstance(out, tuple):
                return (None if out[0] is None else round_bf16(out[0]), *out[1:])
            return round_bf16(out)
        return run_bf16
    return factory


def grads_into(make):
    """The plan factory of a backward whose run returns (dx, dw, db), taking two more
    arguments: where dw and db go (None: where the implementation put them). For the
    implementations that allocate their own (reference, CPU): they are copied there."""
    def factory(ctx, *setup):
        run = make(ctx, *setup)

        def run_into(*args):
            dx, dw, db = run(*args[:-2])
            return dx, into(dw, args[-2]), into(db, args[-1])
        return run_into
    return factory


class Op:
    """One op and its plan factories per backend kind (see the module docstring)."""
    __slots__ = ("name", "makers")

    def __init__(self, name, reference, cpu=None, device=None):
        self.name = name
        self.makers = {"reference": reference, "cpu": cpu, "device": device}

    def maker(self, kind):
        make = self.makers.get(kind)
        if make is None and kind == "cpu":  # no tuned CPU path: the plain definition
            make = self.makers["reference"]
        if make is None:
            raise LookupError(f"op {self.name} has no implementation for {kind} backends")
        return make

    def __repr__(self):
        return f"<Op {self.name}>"


class Plan:
    """``run(*args)``: the arrays checked against ``specs`` (one per argument: ``(name,
    shape, dtypes[, optional])``, or None for an argument passed through unchecked), then the
    op's implementation. ``key`` and ``cache`` are the holder's: what it was made for, and the
    backend plan cache it came from (a cleared cache makes held plans stale)."""
    __slots__ = ("run", "key", "cache")

    def __init__(self, check, impl, specs, cache):
        self.key = None
        self.cache = cache

        def run(*args):
            for a, spec in zip(args, specs):
                if spec is not None:
                    check(a, *spec)
            return impl(*args)
        self.run = run


class FunctionalAPI:
    """The public functional API (``B.conv2d``, ``B.max_pool2d``, ...) as methods: each is the
    entry point its op module registered with :func:`api`. Installed from :data:`API` when the
    op modules are imported (gpucnn.ops.catalog)."""

    @classmethod
    def install(cls):
        for name, fn in API.items():
            if name not in vars(cls):
                setattr(cls, name, fn)
