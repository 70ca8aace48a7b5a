"""How much Python runs between a layer and its kernel, on the ``emu`` backend.

For the second call (same shape, so one-off work such as choosing a conv algorithm is done)
of ``MaxPool2d``, ``Conv2d`` (plain: no fused ReLU) and ``Linear``, measured with
``sys.setprofile``:

* depth: the frames from the layer's ``__call__`` down to the frame that launches the
  compiled kernel (the emulator kernel object's ``__call__``), both counted; the maximum over
  the call's launches;
* calls: Python function calls into gpucnn outside ``gpucnn/backends/emu`` during the call
  (the layer's ``__call__`` itself included), each call once: the profiler also reports a
  'call' event each time a generator resumes (a ``tuple(int(v) for v in ...)`` of 12 values
  gives 13), which are not calls; those raw events are shown as ``events``.

The targets (depth <= 5, calls <= 15) are the refactor's; the pre-refactor code misses them.
Backward numbers are printed for information only. Run with ``-s`` to see the numbers and the
frame stack of each layer's deepest launch.
"""
import functools
import inspect
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest

import gpucnn
from gpucnn import nn
from gpucnn.backends.device import make_emu_backend

GPUCNN_DIR = os.path.dirname(os.path.realpath(gpucnn.__file__))
EMU_DIR = os.path.join(GPUCNN_DIR, "backends", "emu")
KERNEL_FUNCTION = "__call__"

MAX_DEPTH = 5
MAX_CALLS = 15


@dataclass
class Dispatch:
    """What :func:`measure_dispatch` saw during one call."""
    depth: int = 0        # max frames from the entry frame to a kernel frame, both counted
    calls: int = 0        # package frames (outside the kernel directory) entered: calls
    events: int = 0       # their 'call' events: the calls plus every generator resumption
    launches: int = 0     # kernel frames reached from the entry frame
    deepest: list = field(default_factory=list)  # frame names of the deepest launch

    def __str__(self):
        return (f"depth {self.depth}, calls {self.calls} ({self.events} 'call' events), "
                f"launches {self.launches}; deepest: " + " > ".join(self.deepest))


def _under(directory):
    """filename -> whether it lies under ``directory`` (cached: called for every frame)."""
    prefix = os.path.realpath(directory) + os.sep

    @functools.lru_cache(maxsize=None)
    def test(filename):
        return os.path.realpath(filename).startswith(prefix)
    return test


def frame_name(frame):
    """``file.py:Qualified.name`` of a frame, short enough to print a stack on one line."""
    code = frame.f_code
    return f"{os.path.basename(code.co_filename)}:{getattr(code, 'co_qualname', code.co_name)}"


def measure_dispatch(fn, *args, package_dir=GPUCNN_DIR, kernel_dir=EMU_DIR):
    """Run ``fn(*args)`` under ``sys.setprofile`` and return a :class:`Dispatch`.

    The entry frame is the one ``fn(*args)`` opens (for a layer ``layer(x)``: the layer's
    ``__call__``). A kernel frame is the first frame, going down from the entry, whose code
    lies under ``kernel_dir`` and whose function is ``__call__``: how the emulator's kernel
    object launches, whatever the layers in between are called. A call counts when its
    code lies under ``package_dir`` but not under ``kernel_dir``, once per frame (a resumed
    generator reports 'call' again with the same frame). Only file locations and the
    name ``__call__`` are used, so a refactor that renames everything in between is measured
    the same way."""
    in_package, in_kernels = _under(package_dir), _under(kernel_dir)
    caller = inspect.currentframe()
    seen = Dispatch()
    entry = None
    entered = set()  # the counted frames, kept alive so that no id is reused meanwhile

    def is_kernel(frame):
        return frame.f_code.co_name == KERNEL_FUNCTION and in_kernels(frame.f_code.co_filename)

    def launch_stack(frame):
        """The frames from the entry down to ``frame``, or None when ``frame`` is not a
        first kernel frame below the entry (inside another one, or not below the entry)."""
        stack = [frame]
        f = frame.f_back
        while f is not None and f is not entry:
            if is_kernel(f):
                return None
            stack.append(f)
            f = f.f_back
        return None if f is None else [entry] + stack[::-1]

    def profile(frame, event, arg):
        nonlocal entry
        if event != "call":
            return
        if entry is None and frame.f_back is caller:
            entry = frame
        filename = frame.f_code.co_filename
        if in_package(filename) and not in_kernels(filename):
            seen.events += 1
            if frame not in entered:
                entered.add(frame)
                seen.calls += 1
        if entry is not None and is_kernel(frame):
            stack = launch_stack(frame)
            if stack is not None:
                seen.launches += 1
                if len(stack) > seen.depth:
                    seen.depth, seen.deepest = len(stack), [frame_name(f) for f in stack]

    sys.setprofile(profile)
    try:
        fn(*args)
    finally:
        sys.setprofile(None)
    return seen


# ---- the counter itself, on a planted call chain of known shape ----------------------------
PLANTED = {
    "planted_pkg/__init__.py": "",
    "planted_pkg/emu/__init__.py": "",
    "planted_pkg/emu/kernel.py": '''
class Inner:
    def __call__(self, n):
        return n


class Kernel:
    def __call__(self, n):
        # Inside the kernel directory: not counted, and INNER is no launch of its own.
        return INNER(n)


INNER, KERNEL = Inner(), Kernel()
''',
    "planted_pkg/ops.py": '''
import planted_outside
from planted_pkg.emu.kernel import KERNEL


def shallow(n):
    return KERNEL(n)


def launch(n):
    return KERNEL(n)


def deep(n):
    return launch(n)


def back(n):
    # One call of a generator that the profiler reports three times (start, two resumes).
    return sum(v for v in (n, n))


def via_outside(n):
    return planted_outside.relay(back, n)
''',
    "planted_pkg/layers.py": '''
from planted_pkg import ops


class Layer:
    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        ops.shallow(x)
        ops.deep(x)
        return ops.via_outside(x)
''',
    "planted_outside.py": '''
def relay(f, n):
    return f(n)
''',
}


def test_measure_dispatch_on_a_planted_chain(tmp_path, monkeypatch):
    for name, text in PLANTED.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    from planted_pkg.layers import Layer
    layer = Layer()
    seen = measure_dispatch(layer, 1, package_dir=tmp_path / "planted_pkg",
                            kernel_dir=tmp_path / "planted_pkg" / "emu")
    # Layer.__call__ > forward > deep > launch > Kernel.__call__ (shallow's launch has 4).
    assert seen.depth == 5
    assert seen.deepest == ["layers.py:Layer.__call__", "layers.py:Layer.forward",
                            "ops.py:deep", "ops.py:launch", "kernel.py:Kernel.__call__"]
    assert seen.launches == 2  # Inner.__call__ runs inside a kernel frame: not a launch
    # __call__, forward, shallow, deep, launch, via_outside, back and back's generator; not
    # relay (outside the package), nor Kernel/Inner.__call__ (kernel directory).
    assert seen.calls == 8
    assert seen.events == 10  # the generator's two resumptions
    # The entry frame is the one the call opens: a bound method works as well as a layer.
    seen = measure_dispatch(layer.forward, 1, package_dir=tmp_path / "planted_pkg",
                            kernel_dir=tmp_path / "planted_pkg" / "emu")
    assert (seen.depth, seen.launches, seen.calls) == (4, 2, 7)
    assert seen.deepest[0] == "layers.py:Layer.forward"


# ---- the layers -----------------------------------------------------------------------------
# layer factory, input shape: small shapes (the launches are what is counted, not their work).
LAYERS = {
    "MaxPool2d": (lambda: nn.MaxPool2d(2), (2, 3, 8, 8)),
    "Conv2d": (lambda: nn.Conv2d(3, 8, 3, padding=1), (2, 3, 8, 8)),
    "Linear": (lambda: nn.Linear(48, 16), (4, 48)),
}


def bound_layer(name):
    """(layer bound to emu, input x, output gradient dy); seed 0 for weights and data."""
    make, shape = LAYERS[name]
    rng = np.random.default_rng(0)
    # A fresh emu backend on the production launch path: each plan's first launch checked,
    # later ones straight to the kernel (the suite sets GPUCNN_CHECK_LAUNCHES=1 otherwise).
    backend = make_emu_backend()
    backend.ctx.check_launches = False
    layer = make().bind(backend, rng)
    assert not layer.fused_relu  # plain layers: the fused paths are Sequential's business
    x = layer.backend.asarray(rng.standard_normal(shape).astype(np.float32))
    dy = layer.backend.asarray(np.ones_like(layer.backend.to_numpy(layer(x))))
    return layer, x, dy


@pytest.mark.parametrize("name", list(LAYERS))
def test_forward_dispatch_depth_and_calls(name):
    layer, x, _ = bound_layer(name)  # bound_layer made the first call
    seen = measure_dispatch(layer, x)
    print(f"\n{name} forward: {seen}")
    assert seen.launches >= 1 and seen.deepest[0].endswith(".__call__"), seen
    assert seen.depth <= MAX_DEPTH and seen.calls <= MAX_CALLS, (
        f"{name} forward: {seen} (targets: depth <= {MAX_DEPTH}, calls <= {MAX_CALLS})")


@pytest.mark.parametrize("name", list(LAYERS))
def test_backward_dispatch_depth_and_calls_for_information(name):
    layer, x, dy = bound_layer(name)
    layer.backward(dy)  # the first backward
    layer(x)            # backward consumes what the forward stored
    seen = measure_dispatch(layer.backward, dy)
    print(f"\n{name} backward: {seen}")
    assert seen.launches >= 1, seen
