"""What a captured step may allocate, and the error for what it may not
(gpucnn/backends/graph.py has the other rules).

A graph owns only memory the device context hands out: ``ctx.empty`` / ``B.empty`` and
``ctx.workspace`` (uninitialised buffers the captured kernels write, kept alive by the
recording for as long as the graph may replay them) and what plans and layers allocated
before the capture (the eager step that precedes it makes them). During capture the array
module is replaced, for ``ctx.xp`` and ``B.xp``, by :class:`CaptureArrayModule`, which refuses
the array module's constructors — ``zeros``, ``full``, ``asarray``, ``concatenate``, ... —
with a :class:`~gpucnn.backends.graph.GraphCaptureError` naming the call, the caller and the
last kernel recorded:

* on a GPU they are a host-to-device copy (``asarray`` of a host value: a graph would freeze
  that value, or refuse a copy from pageable memory) or an allocation whose contents are set
  by a copy or a fill CuPy issues, outside our kernels and the context;
* on the emulator and the null device arrays are NumPy arrays: a constructor runs once, at
  capture, on the host, and not at any replay, so a graph would silently diverge from the
  eager step (an accumulator made with ``zeros`` would never be zeroed again).

So every device backend refuses them, and a graph-unsafe change fails on the CPU. Not
intercepted: array functions that compute (``matmul``, ``maximum``: only the cuBLAS path uses
them, and graph mode refuses it on the emulator, gpucnn/train_graph.py), and array methods and
operators (``a + b``, ``a.fill(0)``, ``a[...] = v``), which on the emulator also run once, at
capture — the replay-equals-eager tests (tests/test_train_graph.py) are what catch those.
The refusal is for the whole process while a capture is under way, as the host-read rule is:
a second thread that uploads during a capture is refused too.
"""
from __future__ import annotations

import os
import sys

from .graph import GraphCaptureError

__all__ = ["CaptureArrayModule", "REFUSED", "capture_error", "HOST_READ", "OUTSIDE_CONTEXT",
           "HOST_VALUE"]

# Why each kind of call cannot be captured (the end of the error message).
HOST_READ = ("nothing has run yet while a graph is captured; read results after a replay, "
             "outside the captured step")
OUTSIDE_CONTEXT = ("a graph owns only what the device context allocates (ctx.empty, "
                   "ctx.workspace, B.empty: buffers its kernels write); anything else made "
                   "during capture is made once, not at every replay: allocate it before the "
                   "capture (a plan's or a layer's buffer) or through the context")
HOST_VALUE = ("a graph would freeze the value copied; what changes per step must already "
              "live on the device (pass its device copy)")

# The array module's constructors: each allocates outside the context; the first group may
# copy host data to the device as well.
_COPIES = ("array", "asarray", "asanyarray", "ascontiguousarray", "asfortranarray", "copy",
           "frombuffer", "fromiter")
_MAKES = ("empty", "empty_like", "zeros", "zeros_like", "ones", "ones_like", "full",
          "full_like", "arange", "linspace", "eye", "identity", "concatenate", "stack",
          "hstack", "vstack", "tile", "repeat")
REFUSED = {**{n: "a host-to-device copy or an allocation outside the device context"
              for n in _COPIES},
           **{n: "an allocation outside the device context" for n in _MAKES}}

# What a caller's file is named relative to: the folder holding the gpucnn package (the
# checkout: gpucnn/ops/..., tests/...).
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Frames in these files are the machinery, not the caller an error should name.
_OWN_FILES = {os.path.join(os.path.dirname(os.path.abspath(__file__)), f)
              for f in ("capture_rules.py", "device.py", "graph.py")}


def _caller():
    """``fn (path:line)`` of the innermost frame outside the capture machinery: the op (or
    the test) that made the call."""
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename) in _OWN_FILES:
        frame = frame.f_back
    if frame is None:
        return None
    path = os.path.abspath(frame.f_code.co_filename)
    short = (os.path.relpath(path, _ROOT) if path.startswith(_ROOT + os.sep)
             else os.path.basename(path)).replace(os.sep, "/")
    return f"{frame.f_code.co_name} ({short}:{frame.f_lineno})"


def capture_error(module, what, why=HOST_READ):
    """The :class:`GraphCaptureError` for ``what`` done during capture on ``module``'s
    device: the call, the last kernel recorded, the caller, ``why``."""
    recording = getattr(module, "recording", None)
    last = recording.last_kernel() if recording is not None else None
    caller = _caller()
    return GraphCaptureError(
        f"{what} during graph capture"
        + (f" (after kernel {last})" if last else " (before any kernel)")
        + (f", in {caller}" if caller else "") + f": {why}")


class CaptureArrayModule:
    """The array module ``xp`` as a captured step sees it (``ctx.xp``, ``B.xp``): every
    attribute is ``xp``'s, except the constructors in :data:`REFUSED`, which raise
    :func:`capture_error` naming themselves."""

    def __init__(self, xp, module):
        self._xp = xp
        self._module = module

    def __getattr__(self, name):
        kind = REFUSED.get(name)
        if kind is None:
            return getattr(self._xp, name)
        module = self._module

        def refused(*args, **kwargs):
            raise capture_error(module, f"{self._xp.__name__}.{name} ({kind})",
                                OUTSIDE_CONTEXT)
        return refused

    def __repr__(self):
        return f"<{self._xp.__name__} during graph capture: constructors refused>"
