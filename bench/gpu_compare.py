"""Our SGEMM and layers against cuBLAS and PyTorch/cuDNN, per precision (bench/gpu_validate.sh,
step 3).

    python bench/gpu_compare.py --json compare.json            # on the cuda backend
    python bench/gpu_compare.py --summarize compare.json       # its markdown tables

Measures, on one backend (default cuda), in each precision of ``--precisions`` (fp32, tf32,
3xtf32, bf16: gpucnn/ops/precision.py; one backend object per precision,
``get_backend(name, precision)``):

* an n x n x n SGEMM (default n = 4096): our kernel (``kernels/sgemm.cu`` in fp32,
  ``kernels/sgemm_tc.cu`` on tensor cores otherwise; whatever GPUCNN_CUBLAS says), against the
  array module's matmul (``cupy.matmul``: cuBLAS, FP32 unless CUPY_TF32=1; timed once, with
  the fp32 run) and ``torch.matmul``;
* every pass of the AlexNet and LeNet-5 layer sets of ``gpucnn bench`` (gpucnn/bench/layers.py)
  at batch 128, ours and PyTorch's (the same operators ``gpucnn bench --compare torch`` uses).
  Precisions other than fp32 are timed on the layers named by ``--precision-layers`` (name
  prefixes; default all: the quick mode of gpu_validate.sh names AlexNet's convolutions, the
  layers the 1.5x goal is about). Pools have no precision: fp32 only.

PyTorch runs in one child process (``--torch-child``), each benchmark in up to three modes
(``--torch``): ``off`` (``torch.backends.cuda.matmul.allow_tf32`` and
``torch.backends.cudnn.allow_tf32`` off, or their successors ``fp32_precision = 'ieee'``:
full float32), ``on`` (both on: TF32), ``bf16`` (under ``torch.autocast(device,
dtype=torch.bfloat16)`` with every operand held in bfloat16, as an autocast training step
runs a layer: its input is the previous layer's bf16 output, the backward runs on the bf16
tensors autograd saved). The flags are read back and recorded with PyTorch's defaults. Each
of our precisions is compared with the PyTorch mode of the same arithmetic
(:data:`TORCH_MODE`): fp32 and 3xtf32 (FP32-accurate; PyTorch has no such mode for cuDNN)
with ``off``, tf32 with ``on``, bf16 with ``bf16``; every layer also gets ``off`` and ``on``,
the others only where ours ran in that precision. Ours are timed first, then PyTorch's, no
alternation (a GPU is not the noisy shared CPU that ``gpucnn bench --rounds`` is for).

``--budget S`` bounds the whole run: ours start no new measurement after
:data:`OURS_SHARE` of it (all of it with ``--torch none``; what they skip is listed), and the
PyTorch child gets what is left (it, too, starts nothing new past its share), so a step
stopped at its time limit still has both sides of what it compared.

The JSON file (schema ``gpucnn-gpu-compare/2``) is rewritten after every measurement, so a
run stopped at its time limit keeps what it measured; each row records its precision (asked
for, and in force: below compute capability 8.0 the tensor-core precisions fall back to fp32,
and such rows are not timed again). ``--summarize`` turns it into the tables of summary.md
(``@summary`` lines). The pure parts (which layer in which precision, the PyTorch mode of
each, the budget, the tables) are in bench/gpu_tables.py, tested with fake timings.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's gpucnn

from gpu_steps import print_summary_file  # noqa: E402 - beside this script
from gpu_tables import (PRECISIONS, TORCH_MODES, Deadline, precision_plan,  # noqa: E402
                        summarize, torch_modes_for)

from gpucnn.bench.torch_modes import mode_dtype, set_mode, set_tf32, tf32_state, under_mode  # noqa: E402,E501

SCHEMA = "gpucnn-gpu-compare/2"
OURS_SHARE = 0.65         # of --budget: ours, then PyTorch gets the rest
TORCH_MARGIN_S = 3.0      # of the budget kept for writing the results after the child


def _stats(s):
    """The figures kept per measurement: median and best time (ms), sample count."""
    return {"median_ms": s["median_ms"], "min_ms": s["min_ms"], "n": s["n"]}


def _layer_seed(seed, index):
    # the same scheme as gpucnn bench: both processes rebuild the same random data
    return seed * 1000 + index


def _specs(names, batch):
    from gpucnn.bench.layers import layer_set
    return [spec for name in names for spec in layer_set(name, batch)]


# ---- ours ---------------------------------------------------------------------------------
def ours_share(args):
    """The share of ``--budget`` after which ours start nothing new: :data:`OURS_SHARE`, or
    all of it when PyTorch is not run (``--torch none``)."""
    return OURS_SHARE if args.torch_modes else 1.0


def _backends(args, res, save):
    """``{precision: backend}`` for the precisions asked for; ``res["precisions"]`` says which
    is in force (a fallback to fp32 is timed once, as fp32)."""
    from gpucnn.backends import get_backend
    out = {}
    for p in args.precisions:
        B = get_backend(args.backend, p)
        res["precisions"][p] = {"in_force": B.precision,
                                "fallback": getattr(B, "fallback_reason", None)}
        out[p] = B
    save()
    return out


def _fell_back(res, p):
    """Why precision ``p``'s rows are not timed (it runs as fp32), or None."""
    info = res["precisions"].get(p, {})
    if p != "fp32" and info.get("in_force", p) != p:
        return f"runs as {info['in_force']} here: {info.get('fallback') or '?'}"
    return None


def measure_gemm(backends, timer, args, res, save, log, deadline):
    """Our SGEMM kernel (even with GPUCNN_CUBLAS=1) in each precision and the array module's
    matmul (with the fp32 run), n^3."""
    import numpy as np
    from gpucnn.bench.timing import Runner, run_interleaved
    from gpucnn.ops import gemm as G
    B0 = next(iter(backends.values()))
    xp, n = B0.xp, args.gemm_n
    rng = np.random.default_rng(args.seed)
    a, b = (B0.asarray(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
    c, c_blas = B0.empty((n, n)), B0.empty((n, n))
    blas = "numpy.matmul" if xp is np else "cupy.matmul (cuBLAS), TF32 " + (
        "on (CUPY_TF32=1)" if os.environ.get("CUPY_TF32") == "1" else "off")
    g = res["gemm"] = {"n": n, "flops": 2.0 * n ** 3, "blas": blas, "rows": []}
    t = run_interleaved([Runner("blas", lambda i: xp.matmul(a, b, out=c_blas), timer)],
                        args.warmup, args.repeat)
    g["blas_stats"] = _stats(t["blas"])
    save()
    scale = max(float(xp.abs(c_blas).max()), 1e-30)
    for p, B in backends.items():
        row = {"precision": p, "in_force": res["precisions"][p]["in_force"]}
        why = _fell_back(res, p)
        if why or deadline.passed(ours_share(args)):
            row["skipped"] = why or "time budget"
            g["rows"].append(row)
            save()
            continue
        try:
            ours = G.SgemmLaunch(B.ctx, n, n, n, n, n, n)
            row["kernel"] = ours.name
            row["ours"] = _stats(run_interleaved([Runner("ours", lambda i: ours(a, b, c),
                                                         timer)],
                                                 args.warmup, args.repeat)["ours"])
            row["max_rel_diff_vs_blas"] = float(xp.abs(c - c_blas).max()) / scale
        except Exception as exc:  # noqa: BLE001 - one precision failing must not hide the rest
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        g["rows"].append(row)
        save()
        log(f"SGEMM {n}^3 {p}: " + (f"ours {row['ours']['median_ms']:.3f} ms ({row['kernel']}), "
                                    f"max |ours - blas| / max |blas| = "
                                    f"{row['max_rel_diff_vs_blas']:.2g}" if "ours" in row
                                    else row.get("error", "")))
    log(f"SGEMM {n}^3: {blas} {g['blas_stats']['median_ms']:.3f} ms")


def measure_ours(args, res, save, log, deadline):
    import numpy as np
    from gpucnn.bench import layers as L
    from gpucnn.bench.timing import CupyEventTimer, Runner, WallTimer, run_interleaved
    backends = _backends(args, res, save)
    B0 = next(iter(backends.values()))
    on_gpu = B0.xp is not np
    timer = CupyEventTimer(B0.xp) if on_gpu else WallTimer(B0.synchronize)
    res["backend"] = B0.describe()
    res["conv_algo"] = os.environ.get("GPUCNN_CONV_ALGO") or "auto"
    res["torch_device"] = "cuda" if on_gpu else "cpu"
    save()

    if args.gemm_n:
        measure_gemm(backends, timer, args, res, save, log, deadline)
    for si, spec in enumerate(_specs(args.layers, args.batch)):
        precisions = precision_plan(spec.name, spec.kind, args.precisions,
                                    args.precision_layers)
        if not precisions:
            continue
        data = L.host_data(spec, np.random.default_rng(_layer_seed(args.seed, si)),
                           args.rotate)
        for p in spec.passes:
            for prec in precisions:
                entry = {"layer": spec.name, "pass": p, "precision": prec,
                         "in_force": res["precisions"][prec]["in_force"],
                         "describe": spec.describe(), "flops": spec.flops(p)}
                why = _fell_back(res, prec)
                if why or deadline.passed(ours_share(args)):
                    entry["skipped"] = why or "time budget"
                    res["layers"].append(entry)
                    continue
                try:
                    fn = L.gpucnn_pass(spec, p, backends[prec], data)
                    entry["ours"] = _stats(run_interleaved([Runner("x", fn, timer)],
                                                           args.warmup, args.repeat)["x"])
                except Exception as exc:  # noqa: BLE001 - one failed pass must not hide the rest
                    entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
                fn = None
                res["layers"].append(entry)
                save()
                log(f"{spec.name:16s} {p:12s} {prec:7s} ours "
                    + (f"{entry['ours']['median_ms']:.3f} ms" if "ours" in entry
                       else entry["error"]))
        del data
    save()
    res["conv_algorithms"] = B0.conv_algorithms()
    save()


# ---- PyTorch, in its own process ----------------------------------------------------------
def torch_child(plan):
    """PyTorch's figures for ``plan`` (the child's work): {"info", "gemm": {mode: stats},
    "layers": {label: {mode: stats}}, "errors": {label: message}, "skipped": [label]}."""
    deadline = Deadline(plan.get("budget_s"))
    import numpy as np
    try:
        import torch
    except ImportError as exc:
        return {"error": f"PyTorch is not importable here: {exc}"}
    from gpucnn.bench import layers as L
    from gpucnn.bench.timing import Runner, TorchCudaEventTimer, WallTimer, run_interleaved
    device = plan["device"]
    if device == "cuda" and not torch.cuda.is_available():
        return {"error": f"torch {torch.__version__} has no usable CUDA here "
                         f"(torch.version.cuda = {torch.version.cuda}): no comparison"}
    timer = TorchCudaEventTimer(torch) if device == "cuda" else WallTimer()
    info = {"version": torch.__version__, "device": device, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
            "cudnn.benchmark": bool(torch.backends.cudnn.benchmark),
            "defaults": tf32_state(torch), "settings": {}}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    out = {"info": info, "gemm": {}, "layers": {}, "errors": {}, "skipped": []}
    torch.manual_seed(plan["seed"])

    def time_modes(label, modes, make_fn, sink):
        for mode in modes:
            if deadline.passed():
                out["skipped"].append(f"{label} {mode}")
                continue
            info["settings"][mode] = set_mode(torch, device, mode)
            try:
                fn = under_mode(torch, device, mode, make_fn(mode))
                sink[mode] = _stats(run_interleaved([Runner("x", fn, timer)], plan["warmup"],
                                                    plan["repeat"])["x"])
            except Exception as exc:  # noqa: BLE001 - reported per benchmark
                out["errors"][f"{label} {mode}"] = f"{type(exc).__name__}: {exc}"[:500]
            fn = None

    n = plan["gemm_n"]
    if n and plan.get("gemm_modes"):
        a, b = (torch.randn(n, n, device=device) for _ in range(2))
        c = torch.empty(n, n, device=device)

        def gemm_fn(mode):
            if mode == "bf16":
                a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
                return lambda i: torch.matmul(a16, b16)  # autocast takes no out=
            return lambda i: torch.matmul(a, b, out=c)
        time_modes("gemm", plan["gemm_modes"], gemm_fn, out["gemm"])
        del a, b, c
    modes_of = plan["layer_modes"]
    for si, spec in enumerate(_specs(plan["layers"], plan["batch"])):
        if not any(f"{spec.name}:{p}" in modes_of for p in spec.passes):
            continue
        data = L.host_data(spec, np.random.default_rng(_layer_seed(plan["seed"], si)),
                           plan["rotate"])
        for p in spec.passes:
            label = f"{spec.name}:{p}"
            if label not in modes_of:
                continue

            def make_fn(mode, spec=spec, p=p, data=data):
                return L.torch_pass(spec, p, torch, device, data, mode_dtype(torch, mode))
            time_modes(label, modes_of[label], make_fn, out["layers"].setdefault(label, {}))
        del data
    set_tf32(torch, False)
    return out


def torch_plan(args, res, budget_s):
    """The PyTorch child's plan: the benchmarks ours measured (or tried), each in the modes
    of :func:`torch_modes_for`."""
    measured = {}
    for e in res["layers"]:
        if "skipped" not in e:
            measured.setdefault(f"{e['layer']}:{e['pass']}", []).append(e["precision"])
    gemm_precisions = [r["precision"] for r in (res.get("gemm") or {}).get("rows", [])
                       if "skipped" not in r]
    return {"device": res["torch_device"], "layers": args.layers, "batch": args.batch,
            "gemm_n": args.gemm_n if gemm_precisions else 0,
            "gemm_modes": torch_modes_for(gemm_precisions, args.torch_modes),
            "layer_modes": {label: torch_modes_for(ps, args.torch_modes)
                            for label, ps in measured.items()},
            "seed": args.seed, "rotate": args.rotate, "warmup": args.warmup,
            "repeat": args.repeat, "budget_s": budget_s}


def measure_torch(args, res, save, log, deadline):
    if not args.torch_modes:
        res["torch"] = {"error": "not asked for (--torch none)"}
        save()
        return
    left = deadline.left() - TORCH_MARGIN_S
    if left <= 1:
        res["torch"] = {"error": "not measured: no time left in the budget"}
        save()
        return
    budget = None if left == float("inf") else left
    plan = torch_plan(args, res, budget)
    timeout = args.torch_timeout if budget is None else min(args.torch_timeout, budget + 10)
    log(f"PyTorch in its own process, {', '.join(args.torch_modes)}"
        + (f", within {budget:.0f} s" if budget else "") + " ...")
    try:
        run = subprocess.run([sys.executable, __file__, "--torch-child"],
                             input=json.dumps(plan), capture_output=True, text=True,
                             timeout=timeout)
        lines = run.stdout.strip().splitlines()
        if run.returncode != 0 or not lines:
            raise RuntimeError(f"the PyTorch process failed (exit {run.returncode}): "
                               f"{run.stderr.strip()[-1500:]}")
        torch_res = json.loads(lines[-1])
        if not isinstance(torch_res, dict):
            raise ValueError("the PyTorch process printed no JSON object")
        res["torch"] = torch_res
    except subprocess.TimeoutExpired:
        res["torch"] = {"error": f"the PyTorch process ran past {timeout:.0f} s"}
    except (RuntimeError, ValueError) as exc:
        res["torch"] = {"error": str(exc)}
    save()
    log(res["torch"].get("error") or "PyTorch: done")


def _csv(value, allowed, what, p):
    items = [s.strip().lower() for s in value.split(",") if s.strip()]
    if items == ["none"]:
        return []
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        p.error(f"--{what}: comma-separated from {', '.join(allowed)} (or none), got {value!r}")
    return list(dict.fromkeys(items))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="cuda",
                   help="gpucnn backend whose kernels are timed (default: cuda)")
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help="our precisions, comma-separated (default: all four)")
    p.add_argument("--precision-layers", default="all",
                   help="layers timed in precisions other than fp32: comma-separated name "
                        "prefixes (alexnet.conv, lenet5., ...) or all (default: all)")
    p.add_argument("--gemm-n", type=int, default=4096,
                   help="SGEMM size n, 0: no SGEMM (default: 4096)")
    p.add_argument("--layers", default="alexnet,lenet5",
                   help="comma-separated layer sets of gpucnn bench (default: alexnet,lenet5)")
    p.add_argument("--batch", type=int, default=128, help="layer batch size (default: 128)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs (default: 2)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs (default: 5)")
    p.add_argument("--rotate", type=int, default=1,
                   help="input buffers used in rotation (default: 1: at batch 128 most "
                        "inputs exceed the L2 cache anyway, and building more costs time)")
    p.add_argument("--torch", "--tf32", dest="torch_modes", default=",".join(TORCH_MODES),
                   help="PyTorch's modes: off (TF32 off), on (TF32 on), bf16 (autocast), "
                        "comma-separated, or none (default: off,on,bf16)")
    p.add_argument("--budget", type=float, default=0,
                   help="seconds for the whole run, 0: none (ours stop starting new "
                        f"measurements after {OURS_SHARE:.0%} of it, PyTorch gets the rest; "
                        "with --torch none ours get all of it)")
    p.add_argument("--torch-timeout", type=float, default=300,
                   help="seconds the PyTorch process may take (default: 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="result file, rewritten after every measurement")
    p.add_argument("--summarize", metavar="JSON", help="print the tables of a result file")
    p.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.torch_child:
        print(json.dumps(torch_child(json.loads(sys.stdin.read()))), flush=True)
        return 0
    if args.summarize:
        return print_summary_file(args.summarize, summarize)
    args.layers = [s for s in args.layers.split(",") if s and s != "none"]
    args.precisions = _csv(args.precisions, PRECISIONS, "precisions", p)
    if not args.precisions:
        p.error("--precisions: at least one")
    args.precision_layers = [s.strip() for s in args.precision_layers.split(",") if s.strip()]
    args.torch_modes = _csv(args.torch_modes, TORCH_MODES, "torch", p)
    res = {"schema": SCHEMA, "batch": args.batch, "warmup": args.warmup,
           "repeat": args.repeat, "precisions": {}, "precision_layers": args.precision_layers,
           "budget_s": args.budget or None, "layers": []}
    out = Path(args.json) if args.json else None

    def save():
        if out is not None:
            out.write_text(json.dumps(res, indent=1))

    def log(msg):
        print(msg, flush=True)

    deadline = Deadline(args.budget)
    try:
        measure_ours(args, res, save, log, deadline)
        measure_torch(args, res, save, log, deadline)
    except KeyboardInterrupt:  # the step's time limit (SIGINT): keep what was measured
        res["stopped"] = "interrupted (time limit)"
        save()
        log("interrupted: results so far kept")
        return 130
    log(f"done in {deadline.elapsed():.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
