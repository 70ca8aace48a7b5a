"""Timing primitives: warm-up excluded, device-synchronised, repeated, interleaved.

A *runner* is one thing to time (a layer pass or a network step on one framework). Its
``fn(i)`` performs iteration ``i`` (the runner picks input buffer ``i % pool`` itself, so
consecutive iterations read different memory); ``timer`` brackets one call:

* :class:`WallTimer` — ``time.perf_counter`` with a synchronize call before the start and
  after the end (a no-op on the CPU; ``B.synchronize()`` on the ``cuda`` backend);
* :class:`CupyEventTimer` / :class:`TorchCudaEventTimer` — CUDA events recorded on the current
  stream around the call, elapsed time read after the end event has completed.

:func:`run_interleaved` times several runners A B A B ... so a noisy, shared machine (or GPU
clock changes) affects all of them alike; :func:`summarize` reduces the samples to median,
min, max, quartiles and IQR.
"""
from __future__ import annotations

import statistics
import time

__all__ = ["Runner", "WallTimer", "CupyEventTimer", "TorchCudaEventTimer", "summarize",
           "run_interleaved", "quantile"]


class WallTimer:
    kind = "wall clock (time.perf_counter), synchronized before and after"

    def __init__(self, sync=None):
        self.sync = sync or (lambda: None)

    def time(self, fn, i):
        """Seconds taken by ``fn(i)``."""
        self.sync()
        t0 = time.perf_counter()
        fn(i)
        self.sync()
        return time.perf_counter() - t0


class CupyEventTimer:
    kind = "CUDA events (cupy.cuda.Event) on the current stream"

    def __init__(self, cupy):
        self.cupy = cupy

    def time(self, fn, i):
        cp = self.cupy
        cp.cuda.Device().synchronize()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end) / 1e3


class TorchCudaEventTimer:
    kind = "CUDA events (torch.cuda.Event) on the current stream"

    def __init__(self, torch):
        self.torch = torch

    def time(self, fn, i):
        tc = self.torch.cuda
        tc.synchronize()
        start, end = tc.Event(enable_timing=True), tc.Event(enable_timing=True)
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


class Runner:
    """One timed thing: ``fn(i)`` runs iteration ``i``; ``timer.time(fn, i)`` times it."""

    def __init__(self, label, fn, timer=None, framework="gpucnn", on_start=None, on_end=None):
        self.label = label
        self.fn = fn
        self.timer = timer or WallTimer()
        self.framework = framework
        self.on_start = on_start   # telemetry hooks: called around the timed block
        self.on_end = on_end
        self.samples = []


def quantile(sorted_values, q):
    """Linear-interpolation quantile (numpy's default) of an already sorted list."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("quantile of no samples")
    pos = (n - 1) * q
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_s):
    """Milliseconds: median, min, max, q1, q3, iqr, mean, n, and the raw samples."""
    if not samples_s:
        raise ValueError("no timing samples")
    ms = sorted(1e3 * s for s in samples_s)
    q1, q3 = quantile(ms, 0.25), quantile(ms, 0.75)
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1],
            "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1, "mean_ms": statistics.fmean(ms),
            "n": len(ms), "samples_ms": [1e3 * s for s in samples_s]}


def run_interleaved(runners, warmup, repeat, min_time_s=0.0, max_repeat=None):
    """Time every runner ``warmup`` untimed + ``repeat`` timed iterations, interleaved
    (A B A B ...). When ``min_time_s`` > 0 the timed phase goes on past ``repeat`` until each
    runner has at least that much timed work (capped at ``max_repeat`` iterations).
    Returns ``{label: summarize(samples)}``."""
    if repeat < 1:
        raise ValueError("repeat must be >= 1")
    for r in runners:
        r.samples = []
    i = 0
    for _ in range(warmup):
        for r in runners:
            r.fn(i)
        i += 1
    for r in runners:
        if r.on_start:
            r.on_start()
    try:
        limit = max_repeat if max_repeat is not None else repeat
        while True:
            for r in runners:
                r.samples.append(r.timer.time(r.fn, i))
            i += 1
            done = len(runners[0].samples)
            if done >= repeat and (min_time_s <= 0 or done >= limit or
                                   all(sum(r.samples) >= min_time_s for r in runners)):
                break
    finally:
        for r in runners:
            if r.on_end:
                r.on_end()
    return {r.label: summarize(r.samples) for r in runners}
