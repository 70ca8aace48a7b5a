"""The cuda backend's start-up diagnostics: which driver and CuPy are here, the probe kernel
(compiled and run, its result checked), and the messages that say what is missing and the
command that fixes it (``make_cuda_backend`` in :mod:`.cuda` raises them)."""
from __future__ import annotations

import ctypes
import os
import re
import sys
from importlib import metadata

import numpy as np

from ..toolchain import COMPILE_OPTIONS
from .errors import GpuUnusable

__all__ = ["PROBE_SOURCE", "driver_cuda_version", "cupy_missing_message", "no_device_message",
           "failure_text", "probe", "probe_cublas"]

PROBE_SOURCE = r'''
extern "C" __global__ void gpucnn_probe(float* y, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * (float)i + 1.0f;
}
'''



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


def cupy_missing_message(exc):
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


def no_device_message(cp, exc):
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


def failure_text(exc):
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


def probe_cublas(cp):
    """With GPUCNN_CUBLAS=1 every GEMM goes to cuBLAS: check now that it loads, rather than
    fail in the middle of training."""
    try:
        a = cp.asarray(np.arange(4, dtype=np.float32).reshape(2, 2))
        got = cp.asnumpy(cp.matmul(a, a))
    except Exception as exc:  # noqa: BLE001
        raise GpuUnusable(f"GPUCNN_CUBLAS=1 but cuBLAS does not work: "
                          f"{failure_text(exc)}") from exc
    if not np.array_equal(got, np.array([[2, 3], [6, 11]], np.float32)):
        raise GpuUnusable(f"GPUCNN_CUBLAS=1 but cuBLAS gave wrong results ({got.tolist()})")


def probe(cp):
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
                          f"{failure_text(exc)}") from exc
    expected = 0.5 * np.arange(64, dtype=np.float32) + 1.0
    if not np.array_equal(got, expected):
        raise GpuUnusable(f"the probe kernel ran but gave wrong results "
                                 f"(first values {got[:4].tolist()}, expected "
                                 f"{expected[:4].tolist()})")
