"""Graphs: a step's launches recorded once and replayed (CUDA graphs; the emulator's and the
null device's equivalent).

``backend.capture(fn)`` runs ``fn()`` with the device in capture mode and returns a
:class:`StepGraph`; ``graph.replay()`` runs every launch ``fn`` made, in order, on the same
arrays and with the same scalar arguments. As with CUDA stream capture, nothing runs during
capture (so ``fn``'s outputs are only valid after a replay), and capture has rules, which every
device backend enforces — the emulator and the null device included, so a graph-unsafe change
is caught on the CPU — with a :class:`GraphCaptureError` naming the call, its caller and the
last kernel recorded:

* no host read of device data (``to_numpy``, ``raise_device_errors``) and no synchronise;
* no upload and no allocation outside the device context (gpucnn/backends/capture_rules.py):
  a graph owns only what ``ctx.empty`` / ``B.empty`` and ``ctx.workspace`` hand out during
  capture (uninitialised buffers its kernels write; the recording keeps them alive, so every
  replay reuses them) and what plans and layers allocated before it. ``B.asarray``,
  ``ctx.from_host``, ``B.zeros`` and the array module's constructors (``B.xp`` / ``ctx.xp``:
  ``zeros``, ``asarray``, ``concatenate``, ...) are refused: on a GPU they copy host data into
  the graph or fill memory outside our kernels, on the emulator they would run once, at
  capture, and never at a replay. On ``cuda`` the context's allocations come from CuPy's
  default memory pool, captured in the relaxed mode (gpucnn/backends/cuda_capture.py says
  why, and why a stream-ordered ``MemoryAsyncPool`` is refused);
* every kernel argument is frozen: arrays by identity (a step's input must be copied into
  the captured input arrays before each replay, :meth:`StepGraph.replay` does it) and
  scalars by value. So what changes per step lives in device memory the kernels read
  (gpucnn/train_graph.py): the learning rate (``device_lr``, a one-element array written in
  place before a replay when a schedule changed it), Adam's step count and bias corrections
  (advanced by ``adam_prepare``, one launch inside the graph), each dropout layer's call
  count (advanced by ``dropout_advance``, likewise). A per-step value passed from
  the host instead is a host-to-device copy: the capture refuses it (above), and the trainer
  runs its steps eagerly, saying why once.

A module supports capture when it has ``begin_capture()`` and ``end_capture() -> graph``
(``graph.launch()`` replays): the emulator's and the null device's record their kernels'
calls; the cuda backend's uses CuPy's stream capture (not yet run on a GPU).
"""
from __future__ import annotations

__all__ = ["GraphCaptureError", "GraphUnsupported", "Recording", "Capturing", "StepGraph"]


class GraphCaptureError(RuntimeError):
    """Something a graph cannot hold happened during capture (the message says what)."""


class GraphUnsupported(RuntimeError):
    """This backend cannot capture graphs (the CPU backends)."""


class Recording:
    """The launches a module's kernels were asked for during capture, replayed in order by
    ``launch()``: each entry ``(kernel, grid, block, args, shared_mem)``, replayed as
    ``kernel.replay(grid, block, args, shared_mem)``."""

    def __init__(self):
        self.launches = []

    def add(self, kernel, grid, block, args, shared_mem):
        self.launches.append((kernel, grid, block, args, shared_mem))

    def last_kernel(self):
        return self.launches[-1][0].name if self.launches else None

    def launch(self):
        for kernel, grid, block, args, shared_mem in self.launches:
            kernel.replay(grid, block, args, shared_mem)


class Capturing:
    """What a kernel module needs to record a graph: ``recording`` (a :class:`Recording`
    while capturing, else None), ``begin_capture()``, ``end_capture() -> graph``. Its
    kernels add their calls to ``recording`` instead of running while it is set, and have
    ``replay(grid, block, args, shared_mem)``."""
    recording = None

    def begin_capture(self):
        if self.recording is not None:
            raise GraphCaptureError("a capture is already under way on this device")
        self.recording = Recording()

    def end_capture(self):
        recording, self.recording = self.recording, None
        return recording


class StepGraph:
    """A captured step: ``replay(*inputs)`` copies each input into the array the capture saw
    in its place (``static``), then replays the launches. ``outputs`` is what the captured
    function returned (arrays the replays write)."""

    def __init__(self, backend, graph, static, outputs):
        self.backend = backend
        self.graph = graph
        self.static = static
        self.outputs = outputs
        self.replays = 0

    def replay(self, *inputs):
        if len(inputs) != len(self.static):
            raise ValueError(f"the graph was captured with {len(self.static)} inputs, got "
                             f"{len(inputs)}")
        with self.backend.on_device():  # the graph and the copies on the backend's GPU
            for dst, src in zip(self.static, inputs):
                if src is not dst:
                    if src.shape != dst.shape or src.dtype != dst.dtype:
                        raise ValueError(f"a graph input must keep its shape and dtype "
                                         f"({dst.shape} {dst.dtype}), got {src.shape} "
                                         f"{src.dtype}")
                    dst[...] = src
            self.graph.launch()
        self.replays += 1
        return self.outputs
