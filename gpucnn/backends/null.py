"""The ``null`` device: the device backend's whole host path, with launches that do nothing.

:func:`make_null_backend` returns the real :class:`~gpucnn.backends.device.DeviceBackend`
(every op's geometry, argument packing, workspaces and plans, exactly as on ``cuda``) over a
:class:`NullModule` whose kernels check a launch as a GPU would take it and then only count
it. Arrays are NumPy arrays and nothing is computed, so results are garbage: it measures what
the host spends per launch (``gpucnn bench --host-overhead``) and counts launches, with no GPU
and no CuPy. Its name is ``"null"``, so convolution algorithms are chosen by the heuristic
(as on ``emu``), never timed.

A :class:`NullKernel` has the same entry points as :class:`~gpucnn.backends.cuda.CudaKernel`
(``check``, ``launch``, ``k(...)`` = both) and the same checks: the geometry and argument
checks are :func:`gpucnn.toolchain.launch_args.check_launch`, shared with the ``cuda``
backend, with NumPy arrays standing for device arrays.
"""
from __future__ import annotations

import threading

import numpy as np

from ..toolchain import kernel_signatures
from ..toolchain.launch_args import check_launch
from ..toolchain.limits import GRID_DIM_MAX
from .device import DeviceBackend
from .graph import Capturing

__all__ = ["NullKernel", "NullModule", "make_null_backend", "H100_SMS"]

H100_SMS = 132  # the SM count whose grid-stride cap the null backend uses (H100 SXM)


class NullKernel:
    """A kernel that is checked like a GPU launch and then not run: ``check`` and ``k(...)``
    count in ``module.checks``, ``launch`` and ``k(...)`` in ``module.launches``."""

    ARRAY_NOTE = ("the null device's launches take NumPy arrays (make them with "
                  "backend.asarray or backend.empty)")

    def __init__(self, module, name, params):
        self.module = module
        self.name = name
        self.params = params

    def __repr__(self):
        sig = ", ".join(f"{p.ctype} {p.name}" for p in self.params)
        return f"<NullKernel {self.name}({sig})>"

    def check(self, grid, block, args, shared_mem=0):
        checked = check_launch(self.name, self.params, grid, block, args, shared_mem,
                               array_type=np.ndarray, array_note=self.ARRAY_NOTE)
        self.module.checks += 1
        return checked

    def launch(self, grid, block, args, shared_mem=0):
        # The whole cost of a launch here is this increment: what the host spends around it
        # is what a benchmark on this device measures.
        recording = self.module.recording
        if recording is not None:
            recording.add(self, grid, block, args, shared_mem)
            return
        self.module.launches += 1

    def replay(self, grid, block, args, shared_mem=0):
        self.module.launches += 1

    def __call__(self, grid, block, args, shared_mem=0):
        # No device to make current: the same order as CudaKernel.__call__ otherwise.
        self.launch(*self.check(grid, block, args, shared_mem))


class _NullGraph:
    """A recorded graph on the null device: replaying it costs one call, as launching a
    CUDA graph does, whatever the number of kernels (which it counts)."""

    def __init__(self, module, recording):
        self.module, self.recording, self.count = module, recording, len(recording.launches)

    def launch(self):
        self.module.launches += self.count


class NullModule(Capturing):
    """The gpucnn kernels' signatures (parsed from ``kernels/*.cu`` by the toolchain, as
    :class:`~gpucnn.backends.cuda.CudaModule` parses them), nothing compiled.

    ``get_function(name)`` -> :class:`NullKernel`; ``launches`` and ``checks`` count what its
    kernels were asked to do (``reset()`` sets both to 0). ``signatures``: ``{name: [Param]}``
    to use instead of the real kernels' (tests).
    """

    poison_outputs = False  # nothing writes the outputs: there is nothing to catch

    def __init__(self, signatures=None):
        self._params = dict(kernel_signatures() if signatures is None else signatures)
        self._kernels = {}
        self._lock = threading.Lock()
        self.launches = 0
        self.checks = 0

    def reset(self):
        self.launches = 0
        self.checks = 0

    def end_capture(self):
        return _NullGraph(self, super().end_capture())

    def kernel_names(self):
        return sorted(self._params)

    def get_function(self, name):
        k = self._kernels.get(name)
        if k is None:
            with self._lock:
                if name not in self._params:
                    raise KeyError(f"no kernel named {name!r} in the gpucnn kernel sources "
                                   f"(known: {', '.join(self.kernel_names())})")
                k = self._kernels.setdefault(name, NullKernel(self, name, self._params[name]))
        return k


def make_null_backend(module=None):
    """The ``null`` backend: :class:`DeviceBackend` over ``module`` (default: a fresh
    :class:`NullModule` of the gpucnn kernels) with NumPy arrays and an H100's grid-stride cap
    ``min(65535, 32 * 132)``, the cap the ``cuda`` backend would pick there."""
    module = NullModule() if module is None else module
    return DeviceBackend(module, np, "null", max_blocks=min(GRID_DIM_MAX[1], 32 * H100_SMS),
                         device_name="launches checked and counted, none run; NumPy arrays")
