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

import ctypes
import hashlib
import re
import os
import sys
import threading
from importlib import metadata
from pathlib import Path

import numpy as np

from .cuda_transfers import TransferCounter, count_host_transfers
from .device import DeviceBackend
from .errors import BackendUnavailable, GpuUnusable
from ..toolchain import COMPILE_OPTIONS, kernel_sources, parse_kernels
from ..toolchain.launch_args import check_launch
from ..toolchain.limits import GRID_DIM_MAX

__all__ = ["CudaModule", "CudaKernel", "GpuUnusable", "make_cuda_backend", "get_cuda_module",
           "count_host_transfers", "TransferCounter", "driver_cuda_version", "COMPILE_OPTIONS",
           "PROBE_SOURCE"]

PROBE_SOURCE = r'''
extern "C" __global__ void gpucnn_probe(float* y, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * (float)i + 1.0f;
}
'''


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

    def __init__(self, name, params, raw, cupy, sync=False, device_id=0):
        self.name = name
        self.params = params
        self.raw = raw               # the cupy.RawKernel
        self._cp = cupy
        self.sync = sync
        self.device_id = device_id   # the GPU its module was loaded on

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
        self.raw(grid, block, args, shared_mem=shared_mem)
        if self.sync:  # GPUCNN_CUDA_SYNC=1: debugging, so the extra device switch is fine
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


class CudaModule:
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
                kernels = parse_kernels(text)
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

    def kernel_names(self):
        return sorted(self._where)

    def source_of(self, name):
        return self._where[name]

    def raw_module(self, src):
        """The ``cupy.RawModule`` of one source file (created once)."""
        src = Path(src)
        with self._lock:
            if src not in self._modules:
                with self._cp.cuda.Device(self.device_id):
                    self._modules[src] = self._cp.RawModule(code=self._text[src],
                                                            options=self.options)
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
                               device_id=self.device_id)
                self._kernels[name] = k
            return k

    def compile_all(self):
        """Compile (or load from CuPy's cache) every kernel now; returns their names."""
        for name in self.kernel_names():
            self.get_function(name)
        return self.kernel_names()

    def attributes(self):
        """``{kernel: CuPy function attributes}`` (registers, local memory, ... as the driver
        sees them), for comparison with :mod:`gpucnn.toolchain`'s static numbers."""
        return {n: self.get_function(n).attributes for n in self.kernel_names()}


# --------------------------------------------------------------------------------------------
# Driver / CuPy diagnostics.
# --------------------------------------------------------------------------------------------

def driver_cuda_version():
    """``(major, minor)`` CUDA version the installed NVIDIA driver supports, ``None`` when no
    driver library (``libcuda.so.1``) can be loaded. Needs no GPU context."""
    names = ("libcuda.so.1", "libcuda.so") if sys.platform != "win32" else ("nvcuda.dll",)
    for n in names:
        try:
            lib = ctypes.CDLL(n)
        except OSError:
            continue
        v = ctypes.c_int()
        try:
            if lib.cuDriverGetVersion(ctypes.byref(v)) == 0 and v.value > 0:
                return v.value // 1000, (v.value % 1000) // 10
        except AttributeError:
            pass
        return (0, 0)
    return None


def _cupy_wheel_for(driver):
    if driver is None or driver == (0, 0):
        return None
    major = driver[0]
    if major >= 13:
        return "cupy-cuda13x"
    if major == 12:
        return "cupy-cuda12x"
    return "cupy-cuda11x"


def _cupy_missing_message(exc):
    driver = driver_cuda_version()
    wheel = _cupy_wheel_for(driver)
    msg = f"CuPy is not installed ({exc}): "
    if wheel:
        msg += (f"pip install {wheel} (or gpucnn[{wheel[5:-1]}]; the NVIDIA driver here "
                f"supports CUDA "
                f"{driver[0]}.{driver[1]}; cupy-cuda12x is for CUDA 12 drivers, cupy-cuda13x "
                f"for CUDA 13)")
    else:
        msg += ("pip install cupy-cuda12x (CUDA 12 driver) or cupy-cuda13x (CUDA 13 driver), "
                "or the extras gpucnn[cuda12] / gpucnn[cuda13]")
        if driver is None:
            msg += ("; note that no NVIDIA driver was found either (libcuda.so.1 cannot be "
                    "loaded), so there is no GPU to run on here")
    return msg


def _runtime_version(cp):
    try:
        v = int(cp.cuda.runtime.runtimeGetVersion())
        return v // 1000, (v % 1000) // 10
    except Exception:  # noqa: BLE001
        return None


def _no_device_message(cp, exc):
    driver = driver_cuda_version()
    runtime = _runtime_version(cp)
    text = str(exc)
    msg = f"no usable CUDA device: {text}"
    if driver is None:
        msg += " -- no NVIDIA driver is installed (libcuda.so.1 cannot be loaded)"
    elif "NoDevice" in text or "no CUDA-capable device" in text:
        vis = os.environ.get("CUDA_VISIBLE_DEVICES")
        msg += " -- the driver sees no GPU" + (f" (CUDA_VISIBLE_DEVICES={vis!r})"
                                                if vis is not None else "")
    elif "InsufficientDriver" in text and runtime:
        msg += (f" -- the driver supports CUDA {driver[0]}.{driver[1]} but this CuPy was "
                f"built for CUDA {runtime[0]}.{runtime[1]}: update the driver or install "
                f"{_cupy_wheel_for(driver) or 'a CuPy build for an older CUDA'}")
    return msg



_LIBRARY_RE = re.compile(r"\b(lib[A-Za-z_+-]+\.so(?:\.\d+)*)")


def _installed_cupy():
    """The CuPy wheel installed here (``cupy-cuda12x``, ...), or None."""
    for dist in ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy"):
        try:
            metadata.version(dist)
            return dist
        except metadata.PackageNotFoundError:
            continue
    return None


def _failure_text(exc):
    """``Type: message`` of a failed probe, plus what to do about it."""
    name = type(exc).__name__
    text = " ".join(str(exc).split())[:600]
    wheel = _installed_cupy() or "cupy-cuda12x"
    extra = {"cupy-cuda12x": "cuda12", "cupy-cuda13x": "cuda13"}.get(wheel)
    fix = f"pip install '{wheel}[ctk]>=14'" + (f" (or pip install 'gpucnn[{extra}]')"
                                              if extra else "")
    lib = _LIBRARY_RE.search(text)
    if lib:
        return (f"{name}: {text} -- the CUDA library {lib.group(1)} is missing; {wheel}'s "
                f"[ctk] extra brings it: {fix}")
    if "PTX" in text or "UNSUPPORTED_PTX_VERSION" in text:
        return (f"{name}: {text} -- the NVRTC used by CuPy is newer than the driver: update "
                f"the driver or use the CuPy/NVRTC wheels of the driver's CUDA version")
    if "nvrtc" in text.lower() or "Compile" in name:
        return (f"{name}: {text} -- CuPy's NVRTC failed; the NVRTC of {wheel} comes with its "
                f"[ctk] extra: {fix}")
    return f"{name}: {text}"


def _probe_cublas(cp):
    """With GPUCNN_CUBLAS=1 every GEMM goes to cuBLAS: check now that it loads, rather than
    fail in the middle of training."""
    try:
        a = cp.asarray(np.arange(4, dtype=np.float32).reshape(2, 2))
        got = cp.asnumpy(cp.matmul(a, a))
    except Exception as exc:  # noqa: BLE001
        raise GpuUnusable(f"GPUCNN_CUBLAS=1 but cuBLAS does not work: "
                          f"{_failure_text(exc)}") from exc
    if not np.array_equal(got, np.array([[2, 3], [6, 11]], np.float32)):
        raise GpuUnusable(f"GPUCNN_CUBLAS=1 but cuBLAS gave wrong results ({got.tolist()})")


def _probe(cp):
    """Compile and run a one-line kernel; raise BackendUnavailable unless it works."""
    try:
        k = cp.RawKernel(PROBE_SOURCE, "gpucnn_probe", options=COMPILE_OPTIONS)
        n = 64
        y = cp.full(n, np.nan, dtype=np.float32)
        k((1,), (n,), (y, np.float32(0.5), np.int32(n)))
        cp.cuda.Device().synchronize()
        got = cp.asnumpy(y)
    except Exception as exc:  # noqa: BLE001 - any failure makes the backend unavailable
        raise GpuUnusable(f"the probe kernel failed to compile or run on the GPU: "
                          f"{_failure_text(exc)}") from exc
    expected = 0.5 * np.arange(64, dtype=np.float32) + 1.0
    if not np.array_equal(got, expected):
        raise GpuUnusable(f"the probe kernel ran but gave wrong results "
                                 f"(first values {got[:4].tolist()}, expected "
                                 f"{expected[:4].tolist()})")


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
            raise BackendUnavailable(_cupy_missing_message(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - a broken install (two CuPy wheels, ...)
            raise BackendUnavailable(f"CuPy is installed but failed to import: "
                                     f"{type(exc).__name__}: {exc}") from exc
    cp = cupy
    runtime_error = getattr(cp.cuda.runtime, "CUDARuntimeError", RuntimeError)
    try:
        count = int(cp.cuda.runtime.getDeviceCount())
    except runtime_error as exc:
        raise BackendUnavailable(_no_device_message(cp, exc)) from exc
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
                _probe(cp)
                if use_cublas:
                    _probe_cublas(cp)
            try:
                module = get_cuda_module(cupy=cupy, device_id=dev_id)
            except FileNotFoundError as exc:
                raise BackendUnavailable(f"the gpucnn kernel sources are missing: {exc}") from exc
            if eager:
                try:
                    module.compile_all()
                except Exception as exc:  # noqa: BLE001
                    raise GpuUnusable(f"the gpucnn kernels failed to compile: "
                                      f"{_failure_text(exc)[:2000]}") from exc
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
