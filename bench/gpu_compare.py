"""Our SGEMM and layers against cuBLAS and PyTorch/cuDNN (bench/gpu_validate.sh, step 3).

    python bench/gpu_compare.py --json compare.json            # on the cuda backend
    python bench/gpu_compare.py --summarize compare.json       # its markdown tables

Measures, on one backend (default cuda):

* an n x n x n SGEMM (default n = 4096): our kernel (``kernels/sgemm.cu``, whatever
  GPUCNN_CUBLAS says), the array module's matmul (``cupy.matmul``: cuBLAS; TF32 only with
  CUPY_TF32=1) and ``torch.matmul``;
* every pass of the AlexNet and LeNet-5 layer sets of ``gpucnn bench`` (gpucnn/bench/layers.py)
  at batch 128, ours and PyTorch's (the same operators ``gpucnn bench --compare torch`` uses).

``gpucnn bench`` covers the layers, but not our SGEMM, and its PyTorch side runs with
PyTorch's own defaults, which differ between its two paths (matmul TF32 off, cuDNN
convolution TF32 on): a comparison that does not say which one ran is not worth much. Here
PyTorch runs in one child process (``--torch-child``), each benchmark twice: with
``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` both off
(full float32, like ours), then both on; the flags are read back and recorded with
PyTorch's defaults. Ours are timed first, then PyTorch's, no alternation (a GPU is not the
noisy shared CPU that ``gpucnn bench --rounds`` is for).

The JSON file is rewritten after every measurement, so a run stopped at its time limit
keeps what it measured; ``--summarize`` turns it into the tables of summary.md (``@summary``
lines).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's gpucnn

from gpu_steps import print_summary_file  # noqa: E402 - beside this script

SCHEMA = "gpucnn-gpu-compare/1"
TF32 = ("off", "on")


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
def measure_gemm(B, timer, args, res, save, log):
    """Our SGEMM kernel (even with GPUCNN_CUBLAS=1) and the array module's matmul, n^3."""
    import numpy as np
    from gpucnn.bench.timing import Runner, run_interleaved
    from gpucnn.ops import gemm as G
    xp, n = B.xp, args.gemm_n
    rng = np.random.default_rng(args.seed)
    a, b = (B.asarray(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
    c, c_blas = B.empty((n, n)), B.empty((n, n))
    ours = G.SgemmLaunch(B.ctx, n, n, n, n, n, n)
    blas = "numpy.matmul" if xp is np else "cupy.matmul (cuBLAS), TF32 " + (
        "on (CUPY_TF32=1)" if os.environ.get("CUPY_TF32") == "1" else "off")
    t = run_interleaved([Runner("ours", lambda i: ours(a, b, c), timer),
                         Runner("blas", lambda i: xp.matmul(a, b, out=c_blas), timer)],
                        args.warmup, args.repeat)
    diff = float(xp.abs(c - c_blas).max()) / max(float(xp.abs(c_blas).max()), 1e-30)
    res["gemm"] = {"n": n, "flops": 2.0 * n ** 3, "kernel": ours.name, "blas": blas,
                   "ours": _stats(t["ours"]), "blas_stats": _stats(t["blas"]),
                   "max_rel_diff_ours_vs_blas": diff}
    save()
    log(f"SGEMM {n}^3: ours {t['ours']['median_ms']:.3f} ms, {blas} "
        f"{t['blas']['median_ms']:.3f} ms (max |ours - blas| / max |blas| = {diff:.2g})")


def measure_ours(args, res, save, log):
    import numpy as np
    from gpucnn.backends import get_backend
    from gpucnn.bench import layers as L
    from gpucnn.bench.timing import CupyEventTimer, Runner, WallTimer, run_interleaved
    B = get_backend(args.backend)
    on_gpu = B.xp is not np
    timer = CupyEventTimer(B.xp) if on_gpu else WallTimer(B.synchronize)
    res["backend"] = B.describe()
    res["conv_algo"] = os.environ.get("GPUCNN_CONV_ALGO") or "auto"
    res["torch_device"] = "cuda" if on_gpu else "cpu"
    save()

    if args.gemm_n:
        measure_gemm(B, timer, args, res, save, log)
    for si, spec in enumerate(_specs(args.layers, args.batch)):
        data = L.host_data(spec, np.random.default_rng(_layer_seed(args.seed, si)),
                           args.rotate)
        for p in spec.passes:
            entry = {"layer": spec.name, "pass": p, "describe": spec.describe(),
                     "flops": spec.flops(p)}
            try:
                fn = L.gpucnn_pass(spec, p, B, data)
                entry["ours"] = _stats(run_interleaved([Runner("x", fn, timer)], args.warmup,
                                                       args.repeat)["x"])
            except Exception as exc:  # noqa: BLE001 - one failed pass must not hide the rest
                entry["error"] = f"{type(exc).__name__}: {exc}"
            res["layers"].append(entry)
            save()
            log(f"{spec.name:16s} {p:12s} ours "
                + (f"{entry['ours']['median_ms']:.3f} ms" if "ours" in entry
                   else entry["error"]))
        del data
    res["conv_algorithms"] = B.conv_algorithms()
    save()


# ---- PyTorch, in its own process ----------------------------------------------------------
def _new_tf32_api(torch):
    """PyTorch >= 2.9's successors of the allow_tf32 flags (fp32_precision), or None."""
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        return matmul, conv
    return None


def set_tf32(torch, on):
    """TF32 for matmul (cuBLAS) and convolutions (cuDNN) to ``on``; the switches as read
    back. Where PyTorch has fp32_precision ('tf32' / 'ieee': allow_tf32 True / False) only it
    is used: mixing it with the old flags is an error there."""
    new = _new_tf32_api(torch)
    if new:
        for switch in new:
            switch.fp32_precision = "tf32" if on else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
    return tf32_state(torch)


def tf32_state(torch):
    new = _new_tf32_api(torch)
    if new:
        return {"torch.backends.cuda.matmul.fp32_precision": new[0].fp32_precision,
                "torch.backends.cudnn.conv.fp32_precision": new[1].fp32_precision}
    return {"torch.backends.cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "torch.backends.cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32)}


def torch_child(plan):
    """PyTorch's figures for ``plan`` (the child's work): {"info", "gemm": {tf32: stats},
    "layers": {label: {tf32: stats}}, "errors": {label: message}}."""
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
    out = {"info": info, "gemm": {}, "layers": {}, "errors": {}}
    torch.manual_seed(plan["seed"])

    def time_both(label, fn, sink):
        for tf in plan["tf32"]:
            info["settings"][tf] = set_tf32(torch, tf == "on")
            try:
                sink[tf] = _stats(run_interleaved([Runner("x", fn, timer)], plan["warmup"],
                                                  plan["repeat"])["x"])
            except Exception as exc:  # noqa: BLE001 - reported per benchmark
                out["errors"][f"{label} tf32 {tf}"] = f"{type(exc).__name__}: {exc}"

    n = plan["gemm_n"]
    if n:
        a, b = (torch.randn(n, n, device=device) for _ in range(2))
        c = torch.empty(n, n, device=device)
        time_both("gemm", lambda i: torch.matmul(a, b, out=c), out["gemm"])
        del a, b, c
    for si, spec in enumerate(_specs(plan["layers"], plan["batch"])):
        data = L.host_data(spec, np.random.default_rng(_layer_seed(plan["seed"], si)),
                           plan["rotate"])
        for p in spec.passes:
            label = f"{spec.name}:{p}"
            try:
                fn = L.torch_pass(spec, p, torch, device, data)
            except Exception as exc:  # noqa: BLE001
                out["errors"][label] = f"{type(exc).__name__}: {exc}"
                continue
            time_both(label, fn, out["layers"].setdefault(label, {}))
        del data
    return out


def measure_torch(args, res, save, log):
    if not args.tf32:
        res["torch"] = {"error": "not asked for (--tf32 none)"}
        save()
        return
    plan = {"device": res["torch_device"], "layers": args.layers, "batch": args.batch,
            "gemm_n": args.gemm_n, "seed": args.seed, "rotate": args.rotate,
            "warmup": args.warmup, "repeat": args.repeat, "tf32": args.tf32}
    log(f"PyTorch in its own process, TF32 {' then '.join(args.tf32)} ...")
    try:
        run = subprocess.run([sys.executable, __file__, "--torch-child"],
                             input=json.dumps(plan), capture_output=True, text=True,
                             timeout=args.torch_timeout)
        lines = run.stdout.strip().splitlines()
        if run.returncode != 0 or not lines:
            raise RuntimeError(f"the PyTorch process failed (exit {run.returncode}): "
                               f"{run.stderr.strip()[-1500:]}")
        torch_res = json.loads(lines[-1])
        if not isinstance(torch_res, dict):
            raise ValueError("the PyTorch process printed no JSON object")
        res["torch"] = torch_res
    except subprocess.TimeoutExpired:
        res["torch"] = {"error": f"the PyTorch process ran past {args.torch_timeout} s"}
    except (RuntimeError, ValueError) as exc:
        res["torch"] = {"error": str(exc)}
    save()
    log(res["torch"].get("error") or "PyTorch: done")


# ---- summary ------------------------------------------------------------------------------
def _ms(d):
    return f"{d['median_ms']:.3f}" if d else "-"


def summarize(res):
    """The ``@summary`` lines (markdown) of a result file, however far the run got."""
    lines = [f"backend: {res.get('backend', '?')}; convolutions: GPUCNN_CONV_ALGO="
             f"{res.get('conv_algo', '?')}; median of {res.get('repeat', '?')} timed runs "
             f"after {res.get('warmup', '?')} warm-up"]
    torch = res.get("torch") or {}
    info = torch.get("info") or {}
    if torch.get("error"):
        lines.append(f"PyTorch: {torch['error']}")
    elif info:
        state = lambda d: ", ".join(f"{k} = {v!r}" for k, v in d.items())  # noqa: E731
        lines.append(f"PyTorch {info['version']} ({info['device']}, CUDA {info['cuda']}, "
                     f"cuDNN {info['cudnn']}, cudnn.benchmark = {info['cudnn.benchmark']}); "
                     f"its defaults: {state(info['defaults'])}")
        lines += [f"PyTorch timed with TF32 {tf}: {state(s)}"
                  for tf, s in info["settings"].items()]
        if any("fp32_precision" in k for k in info["defaults"]):
            lines.append("(fp32_precision 'ieee' / 'tf32' is allow_tf32 False / True; 'none' "
                         "follows torch.backends.fp32_precision)")
    elif "torch" not in res:
        lines.append("PyTorch: not measured (the run stopped before it)")
    tg = torch.get("gemm") or {}
    g = res.get("gemm")
    if g:
        tflops = lambda d: f"{g['flops'] / d['median_ms'] / 1e9:.1f}" if d else "-"  # noqa: E731
        lines += ["", f"| SGEMM {g['n']}^3 | ours ({g['kernel']}) | {g['blas']} | "
                      f"torch.matmul TF32 off | torch.matmul TF32 on |",
                  "| --- | --- | --- | --- | --- |",
                  f"| median ms | {_ms(g['ours'])} | {_ms(g['blas_stats'])} | "
                  f"{_ms(tg.get('off'))} | {_ms(tg.get('on'))} |",
                  f"| TFLOP/s | {tflops(g['ours'])} | {tflops(g['blas_stats'])} | "
                  f"{tflops(tg.get('off'))} | {tflops(tg.get('on'))} |",
                  "", f"ours vs {g['blas']}: max relative difference "
                      f"{g['max_rel_diff_ours_vs_blas']:.2g}"]
    if res.get("layers"):
        lines += ["", f"| layer pass (batch {res.get('batch', '?')}) | ours ms | torch ms "
                      f"TF32 off | torch ÷ ours (> 1: ours faster) | torch ms TF32 on |",
                  "| --- | --- | --- | --- | --- |"]
        tl = torch.get("layers") or {}
        for e in res["layers"]:
            t = tl.get(f"{e['layer']}:{e['pass']}", {})
            ours = e.get("ours")
            ratio = (f"{t['off']['median_ms'] / ours['median_ms']:.2f}"
                     if ours and t.get("off") else "-")
            lines.append(f"| {e['layer']} {e['pass']} | "
                         f"{_ms(ours) if ours else 'FAILED: ' + e.get('error', '?')[:80]} | "
                         f"{_ms(t.get('off'))} | {ratio} | {_ms(t.get('on'))} |")
    for label, msg in (torch.get("errors") or {}).items():
        lines.append(f"PyTorch {label}: {msg[:200]}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="cuda",
                   help="gpucnn backend whose kernels are timed (default: cuda)")
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
    p.add_argument("--tf32", default="off,on",
                   help="PyTorch runs: TF32 settings in order, or none (default: off,on)")
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
    tf = [s.strip() for s in args.tf32.split(",") if s.strip()]
    if tf != ["none"] and not set(tf) <= set(TF32):
        p.error(f"--tf32: off, on or none, got {args.tf32!r}")
    args.tf32 = [] if tf == ["none"] else tf
    res = {"schema": SCHEMA, "batch": args.batch, "warmup": args.warmup,
           "repeat": args.repeat, "layers": []}
    out = Path(args.json) if args.json else None

    def save():
        if out is not None:
            out.write_text(json.dumps(res, indent=1))

    def log(msg):
        print(msg, flush=True)

    t0 = time.perf_counter()
    try:
        measure_ours(args, res, save, log)
        measure_torch(args, res, save, log)
    except KeyboardInterrupt:  # the step's time limit (SIGINT): keep what was measured
        res["stopped"] = "interrupted (time limit)"
        save()
        log("interrupted: results so far kept")
        return 130
    log(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
