"""The environment a benchmark ran in: CPU, threads, BLAS, library versions, GPU."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import numpy as np

from ..ops.storage import activation_storage

__all__ = ["cpu_model", "blas_info", "blas_threads", "package_versions", "environment",
           "limit_blas_threads", "our_threads"]

_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "GPUCNN_NUMPY_THREADS")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def blas_info():
    """``(source, [pool info...])``: threadpoolctl's view of the BLAS / OpenMP pools when it is
    installed, else what numpy's build config says (threads then come from the environment)."""
    try:
        from threadpoolctl import threadpool_info
        return "threadpoolctl", [
            {k: d.get(k) for k in ("user_api", "internal_api", "version", "num_threads",
                                   "threading_layer", "architecture", "filepath")}
            for d in threadpool_info()]
    except ImportError:
        pass
    info = {}
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info.update(name=blas.get("name"), version=blas.get("version"),
                    openblas_configuration=blas.get("openblas configuration"))
    except Exception as exc:  # older numpy without dict mode
        info["error"] = f"numpy.show_config(mode='dicts') failed: {exc}"
    info["num_threads"] = blas_threads()
    return "numpy.show_config (threadpoolctl not installed)", [info]


def blas_threads():
    """Threads the BLAS under numpy uses: threadpoolctl if installed, else OpenBLAS asked
    directly (the numpy backend's query), else the usual environment variables, else the
    usable CPU count (OpenBLAS's and MKL's default)."""
    try:
        from threadpoolctl import threadpool_info
        n = [d.get("num_threads") for d in threadpool_info() if d.get("user_api") == "blas"]
        if n and n[0]:
            return int(n[0])
    except ImportError:
        pass
    try:
        from ..cpu import blas_threads as _query
        n = _query()
        if n:
            return int(n)
    except (ImportError, OSError):
        pass
    for k in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        v = os.environ.get(k, "").split(",")[0].strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    return _usable_cpus()


def our_threads(backend):
    """The thread count of our backend's CPU work: the numpy backend's own thread count
    where it has one, else the BLAS's."""
    n = getattr(backend, "threads", None)
    return int(n) if n else blas_threads()


def limit_blas_threads(n):
    """Limit the BLAS pool to ``n`` threads; returns ``(description, restore)`` where
    ``restore()`` puts the previous limits back (threadpoolctl is needed to change a running
    pool; without it nothing changes and ``restore`` does nothing)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return (f"threadpoolctl not installed: BLAS threads cannot be changed in a running "
                f"process; set OPENBLAS_NUM_THREADS={n} before starting to use {n}"), \
            (lambda: None)
    limiter = threadpool_limits(limits=int(n), user_api="blas")
    return f"BLAS limited to {n} threads (threadpoolctl)", limiter.restore_original_limits


def _version(dist_names):
    for d in dist_names:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def package_versions():
    """Versions read from package metadata: nothing (torch, cupy) is imported for this."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": _version(("torch",)),
        "cupy": _version(("cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x", "cupy")),
        "nvidia-ml-py": _version(("nvidia-ml-py", "pynvml")),
        "matplotlib": _version(("matplotlib",)),
        "threadpoolctl": _version(("threadpoolctl",)),
        "gpucnn": _gpucnn_version(),
    }


def _gpucnn_version():
    try:
        from .. import __version__
        return __version__
    except ImportError:
        return None


def environment(backend=None):
    src, pools = blas_info()
    env = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python_executable": sys.executable,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": _usable_cpus(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "threads": {"blas": blas_threads(),
                    "env": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ}},
        "blas": {"source": src, "pools": pools},
        "versions": package_versions(),
    }
    if backend is not None:
        env["backend"] = {"name": backend.name, "describe": backend.describe(),
                          "precision": backend.precision,
                          "activations": activation_storage(backend)}
        if getattr(backend, "threads", None):
            # the numpy backend splits batches over its own Python threads (OpenBLAS is held
            # to one thread inside those regions)
            env["threads"]["backend"] = int(backend.threads)
        if getattr(backend, "xp", np) is not np:
            env["gpu"] = cupy_device_info(backend.xp)
    return env


def cupy_device_info(cp):
    """GPU facts through CuPy's runtime API (name, SMs, clocks, memory, versions)."""
    out = {}
    try:
        dev = cp.cuda.Device()
        props = cp.cuda.runtime.getDeviceProperties(dev.id)
        name = props.get("name", b"")
        out.update(
            index=dev.id, name=name.decode() if isinstance(name, bytes) else str(name),
            compute_capability=f"{props.get('major')}.{props.get('minor')}",
            multiprocessors=props.get("multiProcessorCount"),
            sm_clock_khz=props.get("clockRate"), mem_clock_khz=props.get("memoryClockRate"),
            memory_bus_width_bits=props.get("memoryBusWidth"),
            total_memory_bytes=props.get("totalGlobalMem"),
            runtime_version=cp.cuda.runtime.runtimeGetVersion(),
            driver_version=cp.cuda.runtime.driverGetVersion())
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out
