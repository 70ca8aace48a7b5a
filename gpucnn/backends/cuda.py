"""The ``cuda`` backend: gpucnn's CUDA C kernels (``kernels/*.cu``) run on an NVIDIA GPU
through CuPy.

* :class:`CudaModule` wraps one ``cupy.RawModule`` per ``.cu`` file (files are compiled
  separately, as the compile gates in :mod:`gpucnn.toolchain` check them, with the same
  options :data:`COMPILE_OPTIONS`). A file is compiled the first time one of its kernels is
  asked for, once per process (:func:`get_cuda_module` keeps the module). ``get_function(name)``
  returns a :class:`CudaKernel` ``f(grid, block, args, shared_mem=0)`` that checks ``args``
  against the kernel's C signature (:mod:`gpucnn.toolchain.launch_args`: arrays must be
  C-contiguous CuPy arrays of the pointee dtype, scalars NumPy scalars of the exact C type)
  before launching; ``f.check`` and ``f.launch`` are the two halves, for a caller that checks
  a launch's shape once and then launches it unchecked.
* :func:`make_cuda_backend` returns a :class:`~gpucnn.backends.device.DeviceBackend`, or raises
  :class:`~gpucnn.backends.BackendUnavailable` saying precisely why not: CuPy missing (and
  which wheel to install for the driver found), no driver or device, or the probe kernel (a
  one-line kernel compiled and run, its result checked) failing.
* :func:`count_host_transfers` (in ``cuda_transfers.py``, re-exported here) counts
  host<->device copies made through CuPy's Python API inside a ``with`` block.

Compiled-kernel cache: CuPy stores every compiled module on disk in ``$CUPY_CACHE_DIR``
(default ``~/.cupy/kernel_cache``), keyed by the source text, the options and the NVRTC/driver
versions, so a second process starts without recompiling. gpucnn does not change that setting;
set ``CUPY_CACHE_DIR`` to move the cache (e.g. to a writable path in a container) and
``CUPY_CACHE_IN_MEMORY=1`` to keep it in memory only. When the kernel folder holds headers
(``*.cuh``/``*.h``) their hash is added to the options as ``-DGPUCNN_HEADERS_HASH=...`` so an
edited header cannot reuse a stale cached module.

Environment: ``GPUCNN_CUDA_DEVICE`` (device ordinal, default: CuPy's current device),
``GPUCNN_CUDA_MAX_BLOCKS`` (grid-stride cap, default ``min(65535, 32 * SM count)``),
``GPUCNN_CUBLAS=1`` (GEMMs through cuBLAS instead of our sgemm kernel), ``GPUCNN_CUDA_SYNC=1``
(synchronize and check for errors after every launch: slow, for debugging),
``GPUCNN_CUDA_POISON=1`` (output buffers from ``backend.empty`` start as NaN, as on ``emu``
with checks; ``bench/gpu_validate.sh`` sets it for the equivalence suite).
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from . import cuda_probe
from .cuda_probe import (PROBE_SOURCE, cupy_missing_message, driver_cuda_version,
                         failure_text, no_device_message)
from .cuda_transfers import TransferCounter, count_host_transfers
from .device import DeviceBackend
from .errors import BackendUnavailable, GpuUnusable
from .cuda_capture import allocator_blocker, capture_mode
from .graph import Capturing, GraphCaptureError
from ..toolchain import COMPILE_OPTIONS, kernel_sources, parse_kernels, with_local_headers
from ..toolchain.compilers import wmma_include_dirs
from ..toolchain.includes import uses_tensor_cores
from ..toolchain.launch_args import check_launch
from ..toolchain.limits import GRID_DIM_MAX

__all__ = ["CudaModule", "CudaKernel", "GpuUnusable", "make_cuda_backend", "get_cuda_module",
           "count_host_transfers", "TransferCounter", "driver_cuda_version", "COMPILE_OPTIONS",
           "PROBE_SOURCE"]


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class CudaKernel:
    """A launcher for one kernel, with three entry points:

    * ``check(grid, block, args, shared_mem=0)`` -> the normalised ``(grid, block, args,
      shared_mem)`` after every check (geometry against CUDA's limits, arguments against the
      C signature, arrays CuPy arrays): :func:`~gpucnn.toolchain.launch_args.check_launch`;
    * ``launch(grid, block, args, shared_mem=0)`` launches with no check and no device switch:
      for a caller that checked this launch's shape once (``check``'s output: 3-tuples, an
      args tuple) and has made the module's GPU current itself (the backend, once per op);
    * ``k(grid, block, args, shared_mem=0)`` = check + launch on the module's GPU: the safe
      path for direct callers.
    """

    # Says what to do when a host array reaches a launch (check's CuPy-array check).
    ARRAY_NOTE = ("the cuda backend launches need CuPy arrays (copy host data with "
                  "backend.asarray)")

    def __init__(self, name, params, raw, cupy, sync=False, device_id=0, module=None):
        self.name = name
        self.params = params
        self.raw = raw               # the cupy.RawKernel
        self._cp = cupy
        self.sync = sync
        self.device_id = device_id   # the GPU its module was loaded on
        self.module = module         # its CudaModule (graph capture keeps launches' arrays)

    def __repr__(self):
        sig = ", ".join(f"{p.ctype} {p.name}" for p in self.params)
        return f"<CudaKernel {self.name}({sig})>"

    @property
    def attributes(self):
        """CuPy's function attributes (``num_regs``, ``local_size_bytes``, ...)."""
        return dict(self.raw.attributes)

    def check(self, grid, block, args, shared_mem=0):
        return check_launch(self.name, self.params, grid, block, args, shared_mem,
                            array_type=self._cp.ndarray, array_note=self.ARRAY_NOTE)

    def launch(self, grid, block, args, shared_mem=0):
        recording = getattr(self.module, "recording", None)
        if recording is not None:
            # The driver records the launch on the capturing stream; the recording keeps its
            # arrays alive (and out of CuPy's pool) for as long as the graph may replay it.
            recording.add(self, grid, block, args, shared_mem)
        self.raw(grid, block, args, shared_mem=shared_mem)
        if self.sync and recording is None:  # GPUCNN_CUDA_SYNC=1 (no sync while capturing)
            self._cp.cuda.Device(self.device_id).synchronize()

    def __call__(self, grid, block, args, shared_mem=0):
        checked = self.check(grid, block, args, shared_mem)
        # CuPy's current device is per thread: launch on the module's own GPU, whichever
        # thread calls (a fresh Device object: its enter/exit stack is not thread-safe).
        with self._cp.cuda.Device(self.device_id):
            self.launch(*checked)


def _headers_hash(folder):
    heads = sorted(list(folder.glob("*.cuh")) + list(folder.glob("*.h")))
    if not heads:
        return None
    h = hashlib.sha256()
    for f in heads:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


class _CudaGraph:
    """A captured CUDA graph, the recording that keeps its launches' arrays alive and the
    capture stream whose pool arena they came from (cuda_capture.py); ``launch()`` replays
    it on the current stream (ordered with the eager work there)."""

    def __init__(self, graph, recording, stream=None):
        self.graph, self.recording, self.stream = graph, recording, stream

    def launch(self):
        self.graph.launch()


class CudaModule(Capturing):
    """The kernels of ``sources`` (``.cu`` paths), compiled with NVRTC through CuPy, one
    ``RawModule`` per file, each compiled on first use.

    ``get_function(name)`` -> :class:`CudaKernel`. Kernel names must be unique across files.
    """

    def __init__(self, sources, options=COMPILE_OPTIONS, cupy=None, sync=None, poison=None,
                 device_id=0):
        if cupy is None:
            import cupy
        self._cp = cupy
        self.device_id = int(device_id)  # modules are loaded per GPU: one CudaModule each
        self.sources = [Path(s) for s in sources]
        if not self.sources:
            raise FileNotFoundError("CudaModule: no kernel sources given")
        opts = list(options)
        folders = sorted({s.resolve().parent for s in self.sources})
        for d in folders:
            opts.append(f"-I{d}")
            hh = _headers_hash(d)
            if hh:
                opts.append(f"-DGPUCNN_HEADERS_HASH=0x{hh}")
        self.options = tuple(opts)
        self.sync = _env_flag("GPUCNN_CUDA_SYNC") if sync is None else bool(sync)
        # DeviceBackend.empty fills output buffers with NaN / a sentinel when this is set, so
        # a kernel that skips an element fails the equivalence tests on a GPU too.
        self.poison_outputs = (_env_flag("GPUCNN_CUDA_POISON") if poison is None
                               else bool(poison))
        self._text = {}
        self._where = {}             # kernel name -> source path
        self._params = {}            # kernel name -> [Param]
        for src in self.sources:
            text = src.read_text()
            self._text[src] = text
            try:
                kernels = parse_kernels(with_local_headers(text, [src.parent]))
            except ValueError as exc:
                raise ValueError(f"{src.name}: {exc}") from exc
            for name, params in kernels.items():
                if name in self._where:
                    raise ValueError(f"kernel {name} is defined in both "
                                     f"{self._where[name].name} and {src.name}")
                self._where[name] = src
                self._params[name] = params
        self._modules = {}
        self._kernels = {}
        self._lock = threading.RLock()
        # Sources on tensor cores: they need CUDA's mma.h, which CuPy's header search may
        # not bring (the crt headers are a wheel of their own), so its folders are added;
        # and a failure to compile them costs the tensor-core precisions, not the backend.
        self.tensor_core_sources = {src for src in self.sources
                                    if uses_tensor_cores(with_local_headers(
                                        self._text[src], [src.parent]))}
        self.tensor_core_error = None

    def kernel_names(self):
        return sorted(self._where)

    def begin_capture(self):
        """Stream capture on a fresh non-blocking stream made current (CuPy's
        ``Stream.begin_capture``): the launches until :meth:`end_capture` are recorded by the
        driver, not run. In the relaxed mode, with CuPy's default memory pool: what capture
        relies on for allocation is in cuda_capture.py. Not yet run on a GPU (no GPU was
        available to this project)."""
        blocker = allocator_blocker(self._cp)
        if blocker:
            raise GraphCaptureError(blocker)
        super().begin_capture()
        stream = self._cp.cuda.Stream(non_blocking=True)
        stream.__enter__()
        try:
            stream.begin_capture(mode=capture_mode(self._cp))
        except BaseException:
            stream.__exit__(None, None, None)
            self.recording = None
            raise
        self._capture_stream = stream

    def end_capture(self):
        recording = super().end_capture()
        stream, self._capture_stream = self._capture_stream, None
        try:
            graph = stream.end_capture()
        finally:
            stream.__exit__(None, None, None)
        return _CudaGraph(graph, recording, stream)

    def source_of(self, name):
        return self._where[name]

    def raw_module(self, src):
        """The ``cupy.RawModule`` of one source file (created once)."""
        src = Path(src)
        with self._lock:
            if src not in self._modules:
                options = self.options
                if src in self.tensor_core_sources:
                    options += tuple(f"-I{d}" for d in wmma_include_dirs(_nvrtc_major(self._cp)))
                with self._cp.cuda.Device(self.device_id):
                    self._modules[src] = self._cp.RawModule(code=self._text[src],
                                                            options=options)
            return self._modules[src]

    def get_function(self, name):
        with self._lock:
            k = self._kernels.get(name)
            if k is None:
                if name not in self._where:
                    known = ", ".join(self.kernel_names())
                    raise KeyError(f"no kernel named {name!r} in the gpucnn kernel sources "
                                   f"(known: {known})")
                src = self._where[name]
                try:
                    with self._cp.cuda.Device(self.device_id):
                        raw = self.raw_module(src).get_function(name)
                except Exception as exc:
                    raise RuntimeError(f"{src.name}: cannot load kernel {name}: "
                                       f"{type(exc).__name__}: {exc}") from exc
                k = CudaKernel(name, self._params[name], raw, self._cp, sync=self.sync,
                               device_id=self.device_id, module=self)
                self._kernels[name] = k
            return k

    def compile_all(self):
        """Compile (or load from CuPy's cache) every kernel now; returns their names. A
        tensor-core source that does not compile is recorded in ``tensor_core_error`` (the
        tensor-core precisions then fall back to fp32, saying why) instead of raising."""
        for name in self.kernel_names():
            try:
                self.get_function(name)
            except RuntimeError as exc:
                if self._where[name] not in self.tensor_core_sources:
                    raise
                self.tensor_core_error = self.tensor_core_error or str(exc)[:2000]
        return self.kernel_names()

    def attributes(self):
        """``{kernel: CuPy function attributes}`` (registers, local memory, ... as the driver
        sees them), for comparison with :mod:`gpucnn.toolchain`'s static numbers."""
        return {n: self.get_function(n).attributes for n in self.kernel_names()}


def _nvrtc_major(cp):
    """The CUDA major version of CuPy's NVRTC (None if it cannot say)."""
    try:
        return int(cp.cuda.nvrtc.getVersion()[0])
    except Exception:  # noqa: BLE001 - a stub or an old CuPy
        return None


_module_lock = threading.Lock()
_modules: dict = {}


def get_cuda_module(sources=None, options=COMPILE_OPTIONS, cupy=None, device_id=0):
    """The process-wide :class:`CudaModule` of the gpucnn kernels on GPU ``device_id``
    (created once per GPU)."""
    srcs = tuple(Path(s) for s in (sources if sources is not None else kernel_sources()))
    key = (srcs, tuple(options), id(cupy) if cupy is not None else None, int(device_id))
    with _module_lock:
        if key not in _modules:
            _modules[key] = CudaModule(srcs, options=options, cupy=cupy, device_id=device_id)
        return _modules[key]


def make_cuda_backend(use_cublas=None, device=None, probe=True, eager=True, cupy=None):
    """The ``cuda`` backend, or :class:`BackendUnavailable` with the precise reason.

    ``use_cublas`` (default ``$GPUCNN_CUBLAS``) routes GEMMs to cuBLAS; ``device`` (default
    ``$GPUCNN_CUDA_DEVICE``, else the current device) picks the GPU; ``eager`` compiles every
    kernel now, so a kernel that does not build on this GPU makes the backend unavailable
    (``auto`` then falls back to numpy) instead of failing mid-training. ``cupy`` injects a
    CuPy module (tests).
    """
    if cupy is None:
        try:
            import cupy
        except ImportError as exc:
            raise BackendUnavailable(cupy_missing_message(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - a broken install (two CuPy wheels, ...)
            raise BackendUnavailable(f"CuPy is installed but failed to import: "
                                     f"{type(exc).__name__}: {exc}") from exc
    cp = cupy
    runtime_error = getattr(cp.cuda.runtime, "CUDARuntimeError", RuntimeError)
    try:
        count = int(cp.cuda.runtime.getDeviceCount())
    except runtime_error as exc:
        raise BackendUnavailable(no_device_message(cp, exc)) from exc
    except Exception as exc:  # noqa: BLE001
        raise BackendUnavailable(f"no usable CUDA device: CuPy could not query the devices: "
                                 f"{type(exc).__name__}: {exc}") from exc
    if count < 1:
        raise BackendUnavailable("no usable CUDA device: the driver reports 0 GPUs")
    if device is None and os.environ.get("GPUCNN_CUDA_DEVICE"):
        device = int(os.environ["GPUCNN_CUDA_DEVICE"])
    try:
        if device is not None:
            if not 0 <= int(device) < count:
                raise BackendUnavailable(f"no usable CUDA device: device {device} requested, "
                                         f"{count} present")
        # The backend keeps its GPU and makes it current around its own work only
        # (Device.use() would be per thread, and change the caller's device).
        dev_id = int(device) if device is not None else int(cp.cuda.Device().id)
        props = cp.cuda.runtime.getDeviceProperties(dev_id)
    except BackendUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001
        raise BackendUnavailable(f"no usable CUDA device: {type(exc).__name__}: {exc}") from exc
    name = props.get("name", b"GPU")
    name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    cc = (int(props.get("major", 0)), int(props.get("minor", 0)))
    sms = int(props.get("multiProcessorCount", 0)) or 1
    mem = float(props.get("totalGlobalMem", 0)) / 2**30
    gpu = f"{name}, sm_{cc[0]}{cc[1]}"
    use_cublas = _env_flag("GPUCNN_CUBLAS") if use_cublas is None else bool(use_cublas)
    try:
        with cp.cuda.Device(dev_id):
            if probe:
                cuda_probe.probe(cp)
                if use_cublas:
                    cuda_probe.probe_cublas(cp)
            try:
                module = get_cuda_module(cupy=cupy, device_id=dev_id)
            except FileNotFoundError as exc:
                raise BackendUnavailable(f"the gpucnn kernel sources are missing: {exc}") from exc
            if eager:
                try:
                    module.compile_all()
                except Exception as exc:  # noqa: BLE001
                    raise GpuUnusable(f"the gpucnn kernels failed to compile: "
                                      f"{failure_text(exc)[:2000]}") from exc
    except GpuUnusable as exc:
        raise GpuUnusable(f"a GPU is present ({gpu}, device {dev_id}) but gpucnn cannot use "
                          f"it: {exc}") from exc.__cause__
    # Capped at the grid y/z limit so the cap is valid on whichever grid axis a launch uses.
    max_blocks = (int(os.environ.get("GPUCNN_CUDA_MAX_BLOCKS", "0"))
                  or min(GRID_DIM_MAX[1], 32 * sms))
    backend = DeviceBackend(module, cp, "cuda", max_blocks=max_blocks,
                            device_name=f"{gpu}, {sms} SMs, {mem:.0f} GiB",
                            device_id=dev_id)
    backend.use_cublas = use_cublas
    backend.compute_capability = cc
    return backend
