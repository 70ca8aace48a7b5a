"""``gpucnn bench --host-overhead``: what the host spends per training step and per launch.

Training steps (:meth:`~gpucnn.bench.nets.GpucnnNet.train_step`: forward, loss, backward,
SGD momentum update) run on the ``null`` device (:mod:`gpucnn.backends.null`): the real
device backend and ops, kernels checked like GPU launches and counted, none run. The time a
step takes there is the Python/host time a GPU step needs to issue its launches, the floor
below which a GPU step cannot go without CUDA graphs; with ``--cuda-graphs`` each step is
one replay of the captured step (:mod:`gpucnn.backends.graph`).

Method: ``warmup`` untimed steps (the first builds the plans and picks the convolution
algorithms; the next let NumPy's allocations settle: glibc raises its mmap threshold as big
buffers are freed, after which ``numpy.empty`` stops mapping fresh memory), then
``time.perf_counter`` around each step: at least 30 timed steps, more until about
:data:`TIME_BUDGET_S` seconds of timed work, at most 200 (or exactly ``repeat``). The median
is reported with min, quartiles and max. The garbage collector stays on, as in training.
Launches per step are counted by the null module and must be the same in every step.
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np

from ..outputs import write_json
from .env import cpu_model
from .timing import Runner, run_interleaved

__all__ = ["HOST_OVERHEAD_MODELS", "run_host_overhead", "format_host_overhead",
           "write_host_overhead", "DEFAULT_WARMUP", "TIME_BUDGET_S"]

HOST_OVERHEAD_MODELS = ("lenet5", "alexnet_cifar")
DEFAULT_BATCH = 128
DEFAULT_WARMUP = 10     # AlexNet-CIFAR's step times settle after about 10 (see above)
MIN_STEPS, MAX_STEPS = 30, 200
TIME_BUDGET_S = 2.0     # timed work beyond MIN_STEPS, so a run takes a few seconds


def _us(seconds):
    return 1e6 * seconds


def run_host_overhead(model="lenet5", batch=DEFAULT_BATCH, warmup=DEFAULT_WARMUP,
                      repeat=None, seed=0, backend=None, cuda_graphs=False):
    """Time training steps of ``model`` on the null device; returns the JSON-able result.

    ``repeat``: exactly this many timed steps (default: 30 to 200, about
    :data:`TIME_BUDGET_S` seconds). ``backend``: a null backend to use (default: a fresh
    one), whose ``module`` counts ``launches`` and ``checks``. ``cuda_graphs``: after the
    first (eager) step, the step is captured as a graph and each timed step is one replay,
    its batch already in the graph's input arrays (where a device-side input pipeline would
    leave it); launches are still counted per kernel.
    """
    from ..backends.null import make_null_backend
    from .nets import GpucnnNet, host_batches
    if model not in HOST_OVERHEAD_MODELS:
        raise ValueError(f"--host-overhead runs {' or '.join(HOST_OVERHEAD_MODELS)}, "
                         f"not {model!r}")
    if warmup < 1:
        raise ValueError("the host-overhead benchmark needs at least 1 warm-up step (the "
                         "first step builds the plans)")
    B = make_null_backend() if backend is None else backend
    module = B.module
    net = GpucnnNet(model, B, host_batches(model, batch, np.random.default_rng(seed), 2),
                    seed=seed)

    module.reset()
    t0 = time.perf_counter()
    net.train_step(0)
    first_step_s = time.perf_counter() - t0
    first = (module.launches, module.checks)

    per_step = []  # (launches, checks) of each step after the first
    graph = B.capture(net.train_arrays, net.xs[0], net.ys[0]) if cuda_graphs else None

    def step(i):
        launches, checks = module.launches, module.checks
        if graph is None:
            net.train_step(i)
        else:
            net.opt.steps += 1  # the host-side count opt.step() keeps
            graph.replay(*graph.static)
        per_step.append((module.launches - launches, module.checks - checks))

    runner = Runner(model, step)
    if repeat is None:
        stats = run_interleaved([runner], warmup - 1, MIN_STEPS, min_time_s=TIME_BUDGET_S,
                                max_repeat=MAX_STEPS)[model]
    else:
        stats = run_interleaved([runner], warmup - 1, int(repeat))[model]
    timed = per_step[warmup - 1:]
    counts = sorted(set(timed))
    if len(counts) != 1:
        raise RuntimeError(f"{model}: the timed steps did not all make the same launches and "
                           f"checks (launches, checks): {counts}; the per-launch figure would "
                           f"be meaningless")
    launches, checks = counts[0]
    if launches < 1:
        raise RuntimeError(f"{model}: a training step made no launch on the null device")
    median_us = 1e3 * stats["median_ms"]
    return {
        "schema": "gpucnn-host-overhead/1",
        "model": model,
        "batch_size": int(batch),
        "backend": B.name,
        "device": B.describe(),
        "launches_per_step": int(launches),
        "checks_per_step": int(checks),
        "host_us_per_step": median_us,
        "host_us_per_launch": median_us / launches,
        "spread_us": {k: 1e3 * stats[f"{k}_ms"] for k in ("min", "q1", "q3", "max", "iqr")},
        "mean_us_per_step": 1e3 * stats["mean_ms"],
        "steps_timed": int(stats["n"]),
        "warmup_steps": int(warmup),
        "first_step_us": _us(first_step_s),
        "first_step_launches": int(first[0]),
        "first_step_checks": int(first[1]),
        "samples_us": [1e3 * s for s in stats["samples_ms"]],
        "cuda_graphs": bool(cuda_graphs),
        "check_launches_env": os.environ.get("GPUCNN_CHECK_LAUNCHES"),
        "cpu": cpu_model(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "timer": "time.perf_counter around each step",
    }


def format_host_overhead(res):
    """A short table of one result."""
    s = res["spread_us"]
    rows = [
        ("launches per step", f"{res['launches_per_step']}"),
        ("checks per step", f"{res['checks_per_step']}"),
        ("host time per step", f"{res['host_us_per_step']:.1f} us (median of "
                               f"{res['steps_timed']}; min {s['min']:.1f}, IQR {s['iqr']:.1f}, "
                               f"max {s['max']:.1f})"),
        ("host time per launch", f"{res['host_us_per_launch']:.2f} us"),
        ("first step", f"{res['first_step_us'] / 1e3:.1f} ms, {res['first_step_launches']} "
                       f"launches (builds the plans; not timed)"),
        ("CUDA graphs", "yes: each step one replay of the captured step (the driver's graph "
                        "launch not included)" if res["cuda_graphs"] else "no"),
    ]
    width = max(len(k) for k, _ in rows)
    head = (f"host overhead: {res['model']} training step, batch {res['batch_size']}, "
            f"{res['device']}\nCPU: {res['cpu']}, Python {res['python']}")
    return head + "\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def write_host_overhead(res, path):
    """Atomically, by the output rules of gpucnn/outputs.py (checked at start-up)."""
    return write_json(path, res, indent=1)
