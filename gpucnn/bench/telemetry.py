"""GPU telemetry through NVML (``pynvml``, from the ``nvidia-ml-py`` package).

:class:`NvmlSampler` polls one GPU from a background thread every ``interval_s`` and files each
sample under the benchmark section that is open at that moment (``with sampler.section(name):``).
A section's summary gives min / median / max of every quantity:

* ``memory_used_mib`` — NVML's figure is **device-wide** (every process on the GPU, plus the
  driver's reservations), not this process's; CuPy's memory-pool figures are reported
  separately by the benchmark (``cupy_pool_used_bytes`` / ``cupy_pool_total_bytes``);
* ``gpu_util_pct``, ``mem_util_pct`` — NVML utilisation rates (percent of the sample period in
  which a kernel / a memory transfer was running);
* ``sm_clock_mhz``, ``mem_clock_mhz``, ``power_w``, ``temperature_c``.

The NVML module is injectable (``NvmlSampler(nvml=fake)``) so tests can drive it without a GPU.
When NVML cannot be initialised, :func:`open_sampler` returns ``(None, reason)`` and the
benchmark goes on without telemetry.
"""
from __future__ import annotations

import contextlib
import statistics
import threading
import time

__all__ = ["NvmlSampler", "open_sampler", "summarize_samples", "MEMORY_NOTE", "QUANTITIES"]

MEMORY_NOTE = ("NVML memory_used is device-wide (all processes on the GPU and driver "
               "reservations), not per process; see cupy_pool_* for this process's CuPy pool")

QUANTITIES = ("memory_used_mib", "gpu_util_pct", "mem_util_pct", "sm_clock_mhz",
              "mem_clock_mhz", "power_w", "temperature_c")


def _text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def summarize_samples(samples):
    """``{quantity: {"min", "median", "max"}}`` over the samples that have the quantity,
    plus ``"samples": n``."""
    out = {"samples": len(samples)}
    for q in QUANTITIES:
        vals = [s[q] for s in samples if s.get(q) is not None]
        if vals:
            out[q] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
    return out


class NvmlSampler:
    """Background NVML sampler for GPU ``index``; ``nvml`` is the pynvml module (or a fake)."""

    def __init__(self, nvml=None, index=0, interval_s=0.02):
        if nvml is None:
            import pynvml as nvml
        self.nvml = nvml
        self.interval_s = float(interval_s)
        nvml.nvmlInit()
        self._initialised = True
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        self.index = index
        self.sections = {}
        self._current = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.errors = {}

    # ---- static device facts -------------------------------------------------------------
    def _try(self, name, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # an unsupported query on this GPU: record it, go on
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            return None

    def device_info(self):
        n, h = self.nvml, self.handle
        info = {"index": self.index,
                "name": _text(self._try("name", n.nvmlDeviceGetName, h)),
                "driver_version": _text(self._try("driver", n.nvmlSystemGetDriverVersion))}
        cv = self._try("cuda_driver_version", getattr(n, "nvmlSystemGetCudaDriverVersion",
                                                      lambda: None))
        if cv:
            info["cuda_driver_version"] = f"{cv // 1000}.{cv % 1000 // 10}"
        mem = self._try("memory", n.nvmlDeviceGetMemoryInfo, h)
        if mem is not None:
            info["memory_total_mib"] = mem.total / 2**20
        for key, clock in (("max_sm_clock_mhz", "NVML_CLOCK_SM"),
                           ("max_mem_clock_mhz", "NVML_CLOCK_MEM")):
            if hasattr(n, clock):
                info[key] = self._try(key, n.nvmlDeviceGetMaxClockInfo, h, getattr(n, clock))
        if hasattr(n, "nvmlDeviceGetPowerManagementLimit"):
            lim = self._try("power_limit", n.nvmlDeviceGetPowerManagementLimit, h)
            if lim is not None:
                info["power_limit_w"] = lim / 1e3
        return info

    # ---- sampling ------------------------------------------------------------------------
    def sample_once(self):
        """One reading of every quantity (None where the GPU does not support it)."""
        n, h = self.nvml, self.handle
        s = {"t": time.monotonic()}
        mem = self._try("memory", n.nvmlDeviceGetMemoryInfo, h)
        s["memory_used_mib"] = None if mem is None else mem.used / 2**20
        util = self._try("utilization", n.nvmlDeviceGetUtilizationRates, h)
        s["gpu_util_pct"] = None if util is None else util.gpu
        s["mem_util_pct"] = None if util is None else util.memory
        s["sm_clock_mhz"] = self._try("sm_clock", n.nvmlDeviceGetClockInfo, h,
                                      getattr(n, "NVML_CLOCK_SM", 1))
        s["mem_clock_mhz"] = self._try("mem_clock", n.nvmlDeviceGetClockInfo, h,
                                       getattr(n, "NVML_CLOCK_MEM", 2))
        p = self._try("power", n.nvmlDeviceGetPowerUsage, h)
        s["power_w"] = None if p is None else p / 1e3
        s["temperature_c"] = self._try("temperature", n.nvmlDeviceGetTemperature, h,
                                       getattr(n, "NVML_TEMPERATURE_GPU", 0))
        with self._lock:
            if self._current is not None:
                self.sections[self._current].append(s)
        return s

    def _loop(self):
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_s)

    def start(self):
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="gpucnn-nvml", daemon=True)
            self._thread.start()
        return self

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def close(self):
        self.stop()
        if self._initialised:
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()
            self._initialised = False

    @contextlib.contextmanager
    def section(self, name):
        """Samples taken inside the block are filed under ``name`` (one sample is always
        taken at the start and one at the end, so short sections are not empty)."""
        with self._lock:
            self.sections.setdefault(name, [])
            self._current = name
        self.sample_once()
        try:
            yield
        finally:
            self.sample_once()
            with self._lock:
                self._current = None

    def summary(self, name):
        with self._lock:
            samples = list(self.sections.get(name, ()))
        return summarize_samples(samples)


def open_sampler(enabled=True, nvml=None, interval_s=0.02, index=0):
    """``(sampler, None)`` with the sampler started, or ``(None, reason)``."""
    if not enabled:
        return None, "telemetry disabled (--no-telemetry)"
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError as exc:
            return None, f"NVML not available: pynvml is not installed ({exc}); pip install " \
                         f"nvidia-ml-py"
    try:
        sampler = NvmlSampler(nvml, index=index, interval_s=interval_s)
    except Exception as exc:
        return None, f"NVML could not be initialised ({type(exc).__name__}: {exc})"
    return sampler.start(), None
