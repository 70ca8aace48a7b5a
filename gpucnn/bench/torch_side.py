"""PyTorch's side of ``gpucnn bench --compare torch``, measured the way a user would compare:
in its OWN process, with its own default settings.

The parent (:func:`run_child`) starts ``python -m gpucnn.bench.torch_side`` with the
environment it was given, unchanged (we never set OMP_WAIT_POLICY or thread variables for
the competitor), and sends a JSON plan on stdin: the benchmarks (layer passes and net modes),
warm-up and timed runs, the thread count, the seed, and our precision: at ``fp32`` PyTorch
keeps its defaults; ``tf32``, ``3xtf32`` and ``bf16`` put it in the mode of the same
arithmetic (TF32 on, TF32 off, bf16 autocast: gpucnn/bench/torch_modes.py), recorded in
``info["precision"]``. The child sets the thread count through
PyTorch's own API, and only where it differs from PyTorch's default; it times each benchmark
alone (warm-up excluded) and prints one JSON line: ``{"info": {...}, "results": {label:
summarize(samples)}, "errors": {label: message}, "peak_rss_mib": float}``.

The suite alternates such processes with its own in-process rounds (ours, torch, torch, ours,
...), so a noisy machine affects both alike, and pools the samples of all rounds.

PyTorch is imported only in the child: it is never a dependency of gpucnn.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import numpy as np

from .torch_modes import TORCH_MODE, TORCH_MODE_NAME, mode_dtype, set_mode, tf32_state, under_mode

__all__ = ["plan_layer", "plan_net", "run_child", "main"]

CHILD_TIMEOUT_S = 3600


def plan_layer(label, spec, pass_, seed):
    """The plan entry of one layer pass (the child rebuilds the same random data)."""
    d = {f: getattr(spec, f) for f in ("name", "kind", "batch", "in_shape", "out_channels",
                                       "kernel", "stride", "padding", "groups", "source")}
    d["in_shape"] = list(d["in_shape"])
    return {"label": label, "type": "layer", "spec": d, "pass": pass_, "seed": int(seed)}


def plan_net(label, name, batch, mode, seed):
    """The plan entry of one net mode."""
    return {"label": label, "type": "net", "net": name, "batch": int(batch), "mode": mode,
            "seed": int(seed)}


def run_child(plan, env=None, timeout_s=CHILD_TIMEOUT_S):
    """Run one PyTorch process on ``plan`` (see the module docstring); its parsed JSON."""
    cmd = [sys.executable, "-m", "gpucnn.bench.torch_side"]
    try:
        out = subprocess.run(cmd, input=json.dumps(plan), capture_output=True, text=True,
                             env=dict(os.environ if env is None else env), check=False,
                             timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"the PyTorch benchmark process ran past {timeout_s} s") from exc
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        tail = out.stderr.strip()[-2000:]
        if "No module named 'torch'" in tail:
            raise ImportError("--compare torch needs PyTorch, which is not importable in "
                              f"{sys.executable}")
        raise RuntimeError(f"the PyTorch benchmark process failed (exit {out.returncode}):\n"
                           f"{tail}")
    return json.loads(lines[-1])


# ---- the child ------------------------------------------------------------------------------
def _info(torch, device):
    info = {"version": torch.__version__, "device": device,
            "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "process": "own",
            "pid": os.getpid()}
    try:
        info["config"] = torch.__config__.parallel_info().splitlines()[:12]
    except Exception:  # noqa: BLE001 - informational only
        pass
    if device == "cuda":
        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _bench_fn(entry, torch, device, rotate, mode):
    from . import layers as _layers
    from . import nets as _nets
    rng = np.random.default_rng(entry["seed"])
    if entry["type"] == "layer":
        s = dict(entry["spec"], in_shape=tuple(entry["spec"]["in_shape"]))
        spec = _layers.LayerSpec(**s)
        fn = _layers.torch_pass(spec, entry["pass"], torch, device,
                                _layers.host_data(spec, rng, rotate), mode_dtype(torch, mode))
    else:
        from ..models import build_model
        batches = _nets.host_batches(entry["net"], entry["batch"], rng, rotate)
        model = build_model(entry["net"].replace("-", "_").lower(), backend="reference",
                            seed=entry["seed"])
        fn = getattr(_nets.TorchNet(model, torch, device, batches), entry["mode"])
    return under_mode(torch, device, mode, fn)


def _precision_mode(plan, torch, device):
    """The PyTorch mode matching our precision (torch_modes.py), set, and what to record. At
    fp32, the default, PyTorch keeps its own defaults (whatever TF32 they allow: the user's
    comparison); a tensor-core precision gets the mode of the same arithmetic."""
    precision = plan.get("precision") or "fp32"
    if precision == "fp32":
        return None, {"precision": precision, "mode": "defaults", "settings": tf32_state(torch)}
    mode = TORCH_MODE[precision]
    return mode, {"precision": precision, "mode": TORCH_MODE_NAME[mode],
                  "settings": set_mode(torch, device, mode)}


def measure(plan):
    """Time ``plan`` on PyTorch in this process (the child's work)."""
    import torch
    from .timing import Runner, TorchCudaEventTimer, WallTimer, run_interleaved
    threads = plan.get("threads")
    if threads and int(threads) != torch.get_num_threads():
        torch.set_num_threads(int(threads))  # the same count as ours, through its own API
    torch.manual_seed(int(plan.get("seed", 0)))
    device = "cuda" if plan.get("device") == "cuda" and torch.cuda.is_available() else "cpu"
    timer = TorchCudaEventTimer(torch) if device == "cuda" else WallTimer()
    mode, matched = _precision_mode(plan, torch, device)
    results, errors = {}, {}
    for entry in plan["benchmarks"]:
        label = entry["label"]
        try:
            fn = _bench_fn(entry, torch, device, int(plan.get("rotate", 4)), mode)
            stats = run_interleaved([Runner("torch", fn, timer, framework="torch")],
                                    int(plan["warmup"]), int(plan["repeat"]))
            results[label] = stats["torch"]
        except Exception as exc:  # noqa: BLE001 - reported per benchmark
            errors[label] = f"{type(exc).__name__}: {exc}"
        fn = None
    return {"info": dict(_info(torch, device), precision=matched), "results": results,
            "errors": errors,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    plan = json.loads(sys.stdin.read())
    print(json.dumps(measure(plan)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
