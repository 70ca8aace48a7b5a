"""The device backend: the functional API implemented by launching our CUDA C kernels.

One class serves ``cuda`` (CuPy arrays, ``cupy.RawModule``), ``emu`` (NumPy arrays, the same
``.cu`` files compiled for the CPU by :mod:`gpucnn.backends.emu`) and the null device
(:mod:`.null`: the cuda code path with launches that do nothing). They differ only in
``module`` — an object whose ``get_function(name)`` returns a kernel ``k(grid, block, args,
shared_mem=0)``, optionally with an unchecked ``k.launch`` and a ``k.check`` — in the array
module ``xp`` and in ``max_blocks``. The ops' device implementations (``gpucnn/ops``) receive
the backend's :class:`DeviceContext`, never the backend, so the emulator executes exactly the
launches a GPU gets.
"""
from __future__ import annotations

import logging
import os
import threading

import numpy as np

from ..cpu import default_workspace_bytes
from ..ops import loss
from ..ops.conv.im2col import DW_TARGET_BLOCKS
from ..ops.precision import PRECISIONS, TENSOR_CORE_MIN_CC
from .base import Backend
from .capture_rules import (HOST_READ, HOST_VALUE, OUTSIDE_CONTEXT, CaptureArrayModule,
                            capture_error)
from .graph import GraphUnsupported, StepGraph

log = logging.getLogger("gpucnn")

__all__ = ["DeviceBackend", "DeviceContext", "make_emu_backend"]


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# What an unwritten output element holds on the emulator: NaN for floats; for bf16 bits
# (uint16, gpucnn/ops/storage.py) a NaN no rounding makes (round_bf16 gives 0x7FFF).
_POISON = {np.dtype(np.float32): np.nan, np.dtype(np.float64): np.nan,
           np.dtype(np.uint16): 0xFFC1, np.dtype(np.uint8): 0xC1, np.dtype(np.uint32): 0xFFFFE0A1}


class DeviceContext:
    """What a device implementation may use: ``empty`` (allocate; NaN-poisoned where the
    module asks for it), ``workspace`` (shared, grown buffers), ``kernel``, ``xp``, the limits
    (``max_blocks``, ``workspace_bytes``, ``dw_target_blocks``), ``use_cublas``, ``stream``
    (where launches go: None, the array module's current stream), ``precision`` (of the
    GEMMs and convolutions, gpucnn/ops/precision.py) and ``check_launches``
    (check every launch, not only each plan's first: ``GPUCNN_CHECK_LAUNCHES=1``).
    During a graph capture ``xp`` refuses its constructors (capture_rules.py);
    ``array_module`` is the module itself, for the context's own allocations."""

    def __init__(self, module, xp, max_blocks, workspace_bytes=None, device_id=None,
                 check_launches=None):
        self.module = module
        self.xp = xp
        # xp itself: during a capture ``xp`` refuses its constructors (capture_rules.py),
        # the context's own allocations (the route a graph may own) use this.
        self.array_module = xp
        self.max_blocks = int(max_blocks)
        self.workspace_bytes = (default_workspace_bytes() if workspace_bytes is None
                                else int(workspace_bytes))
        self.device_id = device_id
        self.use_cublas = False
        self.precision = "fp32"  # of the GEMMs and convolutions (gpucnn/ops/precision.py)
        self.capturing = False  # a graph capture is under way (backends/graph.py)
        self.stream = None
        self.check_launches = (_env_flag("GPUCNN_CHECK_LAUNCHES") if check_launches is None
                               else bool(check_launches))
        self.empty = self._poisoned if getattr(module, "poison_outputs", False) else xp.empty
        self._buffers = {}

    def kernel(self, name):
        return self.module.get_function(name)

    def _poisoned(self, shape, dtype=np.float32):
        """An output buffer filled with NaN (float) or a sentinel (int), so a kernel that
        skips an element cannot pass a test."""
        out = self.array_module.empty(shape, dtype=dtype)
        out.fill(_POISON.get(np.dtype(dtype), -7777))
        return out

    def workspace(self, tag, count):
        """A float32 buffer of at least ``count`` elements, kept under ``tag`` and reused
        (grown, never shrunk, when a layer needs more)."""
        buf = self._buffers.get(tag)
        if buf is None or buf.size < count:
            self._buffers.pop(tag, None)  # free the old one before allocating
            buf = self._buffers[tag] = self.empty((int(count),), np.float32)
        return buf[:count]

    def from_host(self, values, what):
        """A host value (a small NumPy array) copied to the device for op ``what``: fine in an
        eager call, an error during graph capture (a graph would freeze the value; what
        changes per step must already live on the device)."""
        if self.capturing:
            raise capture_error(self.module, f"{what}: a host value copied to the device",
                                HOST_VALUE)
        return self.array_module.asarray(values)

    def buffer(self, tag):
        """The workspace buffer kept under ``tag`` (None before its first use)."""
        return self._buffers.get(tag)

    def to_numpy(self, a):
        xp = self.array_module
        return np.array(a, copy=True) if xp is np else xp.asnumpy(a)


class _Pinned:
    """``with pinned:`` makes the backend's GPU current, once: nested op calls see the depth
    and skip it (CuPy's current device is per thread, so the depth is too)."""

    def __init__(self, backend):
        self.backend = backend
        self.local = threading.local()

    def depth(self):
        return getattr(self.local, "depth", 0)

    def __enter__(self):
        d = self.depth()
        if d == 0:
            self.local.device = self.backend.xp.cuda.Device(self.backend.device_id)
            self.local.device.__enter__()
        self.local.depth = d + 1
        return self

    def __exit__(self, *exc):
        self.local.depth -= 1
        if self.local.depth == 0:
            self.local.device.__exit__(*exc)


class DeviceBackend(Backend):
    kind = "device"
    conv_kind = "device"  # its convolution algorithms (gpucnn/ops/conv/algos.py)

    @property
    def conv_policy(self):
        """How ``auto`` picks a convolution algorithm: timed per layer shape on a GPU, by the
        documented heuristic on the emulator and the null device (whose timings say nothing
        about a GPU)."""
        return "timed" if self.name == "cuda" else "heuristic"

    def __init__(self, module, xp, name, max_blocks, device_name="", workspace_bytes=None,
                 device_id=None):
        self.module = module
        self.xp = xp
        self.name = name
        self.device_name = device_name
        self.device_id = device_id  # the GPU (cuda); None on emu and the null device
        self.ctx = DeviceContext(module, xp, max_blocks, workspace_bytes, device_id)
        self._pinned = _Pinned(self) if device_id is not None else None

    precisions = PRECISIONS
    compute_capability = None   # (major, minor) on a GPU

    def use_precision(self, precision):
        """As :meth:`Backend.use_precision`; below compute capability 8.0, or when the
        tensor-core kernels did not compile, a tensor-core precision falls back to fp32 with
        one log line saying why (``B.precision`` then says fp32)."""
        why = None
        cc = self.compute_capability
        if precision != "fp32" and cc is not None and tuple(cc) < TENSOR_CORE_MIN_CC:
            why = (f"compute capability {cc[0]}.{cc[1]} has no TF32/BF16 tensor cores "
                   f"(they need {TENSOR_CORE_MIN_CC[0]}.{TENSOR_CORE_MIN_CC[1]})")
        elif precision != "fp32" and getattr(self.module, "tensor_core_error", None):
            why = f"the tensor-core kernels did not compile: {self.module.tensor_core_error}"
        if why:
            log.warning("gpucnn: precision %s falls back to fp32 on %s: %s", precision,
                        self.describe(), why)
            precision = "fp32"
        super().use_precision(precision)
        self.ctx.precision = precision
        self.fallback_reason = why

    def plan(self, op, setup, *specs):
        """As :meth:`Backend.plan`; on a GPU the run makes it current around the call (one
        frame more), unless it already is (inside ``on_device()``: the trainer's step)."""
        plan = super().plan(op, setup, *specs)
        pinned = self._pinned
        if pinned is not None:
            run = plan.run

            def pinned_run(*args):
                if pinned.depth():
                    return run(*args)
                with pinned:
                    return run(*args)
            plan.run = pinned_run
        return plan

    # The limits plans are worked out from: setting one drops the plans made with the old.
    @property
    def max_blocks(self):
        return self.ctx.max_blocks

    @property
    def workspace_bytes(self):
        """Bound on the im2col workspace (larger batches run in chunks)."""
        return self.ctx.workspace_bytes

    @workspace_bytes.setter
    def workspace_bytes(self, n):
        self.ctx.workspace_bytes = int(n)
        self.forget_plans()

    @property
    def dw_target_blocks(self):
        """Below this many blocks a weight-gradient GEMM splits its reduction over grid z."""
        return getattr(self.ctx, "dw_target_blocks", DW_TARGET_BLOCKS)

    @dw_target_blocks.setter
    def dw_target_blocks(self, n):
        self.ctx.dw_target_blocks = int(n)
        self.forget_plans()

    @property
    def use_cublas(self):
        """GEMMs through cuBLAS (``GPUCNN_CUBLAS=1`` on cuda) instead of our SGEMM."""
        return self.ctx.use_cublas

    @use_cublas.setter
    def use_cublas(self, on):
        self.ctx.use_cublas = bool(on)
        self.forget_plans()

    def on_device(self):
        return self._pinned if self._pinned is not None else super().on_device()

    def describe(self):
        return f"{self.name} ({self.device_name})" if self.device_name else self.name

    def asarray(self, a, dtype=None):
        self._refuse_in_capture("asarray (a host-to-device copy)", HOST_VALUE)
        with self.on_device():
            a = np.asarray(a) if not isinstance(a, self.xp.ndarray) else a
            if dtype is None:
                dtype = np.int32 if np.issubdtype(a.dtype, np.integer) else np.float32
            return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def empty(self, shape, dtype=np.float32):
        """An uninitialised array (NaN-poisoned where the module asks for it)."""
        with self.on_device():
            return self.ctx.empty(shape, dtype)

    def zeros(self, shape, dtype=np.float32):
        # Zeroed once when made: a graph would not zero it again at each replay.
        self._refuse_in_capture("zeros (an allocation outside the device context)",
                                OUTSIDE_CONTEXT)
        with self.on_device():
            return self.xp.zeros(shape, dtype=dtype)

    def to_numpy(self, a):
        self._refuse_in_capture("to_numpy (a host read of device data)")
        with self.on_device():
            return self.ctx.to_numpy(a)

    def synchronize(self):
        self._refuse_in_capture("synchronize")
        if self.device_id is not None:
            self.xp.cuda.Device(self.device_id).synchronize()

    def raise_device_errors(self):
        """Raise what the kernels flagged since the last call (out-of-range labels)."""
        self._refuse_in_capture("raise_device_errors (a host read of device data)")
        with self.on_device():
            loss.raise_label_error_device(self.ctx)

    # ---- graphs (gpucnn/backends/graph.py) ------------------------------------------------
    def capture(self, fn, *static):
        """Capture the launches of ``fn(*static)`` as a :class:`~.graph.StepGraph` (nothing
        runs until ``replay(*inputs)``, which copies its inputs into ``static`` first). Run
        ``fn`` once eagerly before: its plans and workspaces then exist, and a capture
        records only launches."""
        module = self.module
        if not hasattr(module, "begin_capture"):
            raise GraphUnsupported(f"the {self.name} backend's kernels cannot be captured")
        ctx, xp, ctx_xp = self.ctx, self.xp, self.ctx.xp
        with self.on_device():
            module.begin_capture()
            # The array module's constructors are refused while capturing (capture_rules.py):
            # a graph owns only what the context allocates.
            ctx.capturing, ctx.xp = True, CaptureArrayModule(ctx_xp, module)
            self.xp = CaptureArrayModule(xp, module)
            try:
                outputs = fn(*static)
            except BaseException:
                module.end_capture()
                raise
            finally:
                ctx.capturing, ctx.xp, self.xp = False, ctx_xp, xp
            graph = module.end_capture()
        return StepGraph(self, graph, static, outputs)

    def _refuse_in_capture(self, what, why=HOST_READ):
        if self.ctx.capturing:
            raise capture_error(self.module, what, why)


def make_emu_backend(**emu_options):
    """The ``emu`` backend; options (order, checks, ...) go to :class:`EmuModule`."""
    from ..toolchain import kernel_sources
    from .emu import EmuModule  # compiles with g++ on first use: only when asked for
    module = EmuModule(kernel_sources(), **emu_options)
    return DeviceBackend(module, np, "emu", max_blocks=int(os.environ.get(
        "GPUCNN_EMU_MAX_BLOCKS", "8")), device_name="CUDA emulator on the CPU")
