"""Runs a benchmark configuration and returns every figure as one JSON-able dict.

See :mod:`gpucnn.bench` for the method and :func:`run_suite` for the result's layout.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import env as _env
from . import layers as _layers
from . import nets as _nets
from .peak import copy_bandwidth, gemm_peak
from .roofline import H100_SXM, DevicePeaks, kernel_records, roofline_rows
from .telemetry import MEMORY_NOTE, open_sampler
from .timing import CupyEventTimer, Runner, TorchCudaEventTimer, WallTimer, run_interleaved

__all__ = ["BenchConfig", "run_suite", "SCHEMA"]

SCHEMA = "gpucnn-bench/1"


@dataclass
class BenchConfig:
    backend: str = "numpy"
    model: str = "lenet5"
    nets: list = field(default_factory=list)          # [(name, batch), ...]
    layer_specs: list = field(default_factory=list)   # [LayerSpec, ...]
    layer_sets: list = field(default_factory=list)    # names, for the record
    modes: tuple = _nets.NET_MODES
    repeat: int = 10
    warmup: int = 2
    rotate: int = 4
    compare: tuple = ()                                # ("torch",) or ()
    threads: int | None = None
    gemm_n: int = 2048
    bandwidth_mib: int = 128
    quick: bool = False
    telemetry: bool = True
    telemetry_interval_s: float = 0.02
    kernel_report: bool = False
    seed: int = 0
    notes: list = field(default_factory=list)

    def as_dict(self):
        d = asdict(self)
        d["layer_specs"] = [{"name": s.name, "kind": s.kind, "batch": s.batch,
                             "describe": s.describe()} for s in self.layer_specs]
        d["nets"] = [{"net": n, "batch": b} for n, b in self.nets]
        d["modes"] = list(self.modes)
        d["compare"] = list(self.compare)
        return d


def _now():
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class _Telemetry:
    """Wraps the optional NVML sampler and CuPy pool figures."""

    def __init__(self, cfg, B, nvml=None, log=print):
        self.B = B
        self.sampler, self.reason = open_sampler(cfg.telemetry, nvml=nvml,
                                                 interval_s=cfg.telemetry_interval_s)
        if self.sampler is None:
            log(f"telemetry: off — {self.reason}; benchmarks run without it")
        self.cupy = B.xp if getattr(B, "xp", np) is not np else None

    @contextlib.contextmanager
    def section(self, name):
        if self.sampler is None:
            yield
        else:
            with self.sampler.section(name):
                yield

    def summary(self, name):
        out = {}
        if self.sampler is not None:
            out["nvml"] = self.sampler.summary(name)
        if self.cupy is not None:
            try:
                pool = self.cupy.get_default_memory_pool()
                out["cupy_pool_used_bytes"] = int(pool.used_bytes())
                out["cupy_pool_total_bytes"] = int(pool.total_bytes())
            except Exception as exc:
                out["cupy_pool_error"] = str(exc)
        return out or None

    def header(self):
        if self.sampler is None:
            return {"available": False, "reason": self.reason}
        return {"available": True, "device": self.sampler.device_info(),
                "interval_s": self.sampler.interval_s, "memory_note": MEMORY_NOTE,
                "query_errors": dict(self.sampler.errors)}

    def close(self):
        if self.sampler is not None:
            self.sampler.close()


def _our_timer(B):
    if getattr(B, "xp", np) is not np:
        return CupyEventTimer(B.xp)
    return WallTimer(B.synchronize)


def _setup_torch(cfg, B, log):
    # Idle OpenMP workers of torch spin on the cores between its calls and slow down the
    # interleaved run of our backend (seen: 22 -> 29 ms per LeNet-5 step). PASSIVE makes them
    # sleep; it must be set before torch loads its OpenMP runtime. An explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch  # only here: torch is never a dependency of gpucnn
    except ImportError as exc:
        raise ImportError(f"--compare torch needs PyTorch, which is not importable: {exc}") \
            from exc
    threads = cfg.threads or _env.our_threads(B)
    torch.set_num_threads(int(threads))
    torch.manual_seed(cfg.seed)
    on_gpu = getattr(B, "xp", np) is not np
    device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
    timer = TorchCudaEventTimer(torch) if device == "cuda" else WallTimer()
    info = {"version": torch.__version__, "device": device,
            "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    try:
        info["config"] = torch.__config__.parallel_info().splitlines()[:12]
    except Exception:
        pass
    if device == "cuda":
        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name()
    elif on_gpu:
        info["note"] = "PyTorch has no CUDA here: compared on the CPU"
    log(f"torch {torch.__version__} on {device}, {info['num_threads']} threads")
    return torch, device, timer, info


def _stats_entry(timing, flops=None, nbytes=None, peak_gflops=None):
    e = {"timing": timing}
    med_s = timing["median_ms"] / 1e3
    if flops is not None:
        e["gflops"] = flops / med_s / 1e9
        e["pct_gemm_peak"] = (100.0 * e["gflops"] / peak_gflops) if peak_gflops else None
    if nbytes is not None:
        e["gbps_min_bytes"] = nbytes / med_s / 1e9
    return e


def run_suite(cfg, log=print, nvml=None, argv=None):
    """Run ``cfg``; returns the result dict (schema ``gpucnn-bench/1``):

    ``schema, created, argv, config, environment, telemetry, peak, layers, nets,
    comparisons, roofline, errors, notes, elapsed_s``.
    """
    from ..backends import get_backend
    t_start = time.perf_counter()
    B = get_backend(cfg.backend)
    notes = list(cfg.notes)
    restore_blas = None
    if cfg.threads:
        if B.name == "numpy":
            B = _numpy_with_threads(cfg.threads, notes)
        msg, restore_blas = _env.limit_blas_threads(cfg.threads)
        notes.append(msg)
        for n in notes[len(cfg.notes):]:
            log(f"note: {n}")
    try:
        return _run(cfg, B, notes, log, nvml, argv, t_start)
    finally:
        if restore_blas is not None:
            restore_blas()


def _run(cfg, B, notes, log, nvml, argv, t_start):
    res = {"schema": SCHEMA, "created": _now(), "argv": list(argv or []),
           "config": cfg.as_dict(), "environment": _env.environment(B),
           "layers": [], "nets": [], "comparisons": [], "errors": [], "notes": notes}
    envd = res["environment"]
    log(f"gpucnn bench: backend {B.describe()}; CPU {envd['cpu_model']} "
        f"({envd['usable_cpus']} usable CPUs), threads: "
        f"{', '.join(f'{k} {v}' for k, v in envd['threads'].items() if k != 'env')}, "
        f"load average {', '.join(f'{v:.2f}' for v in envd['loadavg'] or [])}")
    load, ncpu = (envd["loadavg"] or [0.0])[0], envd["usable_cpus"] or 1
    if load > 0.75 * ncpu:
        msg = (f"machine busy: 1-minute load average {load:.1f} on {ncpu} usable CPUs before "
               f"the run; timings are noisy, and multi-threaded runs that synchronise with "
               f"barriers (PyTorch's OpenMP) suffer most; --threads 1 compares more fairly")
        notes.append(msg)
        log(f"note: {msg}")
    tel = _Telemetry(cfg, B, nvml=nvml, log=log)
    res["telemetry"] = tel.header()
    torch = tdev = ttimer = None
    try:
        if "torch" in cfg.compare:
            torch, tdev, ttimer, res["environment"]["torch"] = _setup_torch(cfg, B, log)
        # ---- device peaks -----------------------------------------------------------------
        xp = getattr(B, "xp", np)
        peak = {}
        with tel.section("peak:gemm"):
            peak["gemm"] = gemm_peak(xp, cfg.gemm_n, warmup=1, repeat=3 if cfg.quick else 5)
        peak["gemm"]["telemetry"] = tel.summary("peak:gemm")
        if cfg.bandwidth_mib:
            peak["bandwidth"] = copy_bandwidth(xp, cfg.bandwidth_mib, warmup=1,
                                               repeat=3 if cfg.quick else 5)
        res["peak"] = peak
        pk = peak["gemm"]["gflops"]
        log(f"GEMM peak: {pk:.1f} GFLOP/s ({peak['gemm']['via']}, n={cfg.gemm_n}, best of "
            f"{peak['gemm']['timing']['n']})" + (
                f"; copy bandwidth {peak['bandwidth']['gbps']:.1f} GB/s"
                if "bandwidth" in peak else ""))
        rng = np.random.default_rng(cfg.seed)
        our_backend = B.name
        tname = f"torch-{tdev}" if torch is not None else None

        # ---- layers -------------------------------------------------------------------------
        for spec in cfg.layer_specs:
            try:
                data = _layers.host_data(spec, rng, cfg.rotate)
            except Exception as exc:
                res["errors"].append({"layer": spec.name, "error": repr(exc)})
                continue
            for p in spec.passes:
                label = f"layer:{spec.name}:{p}"
                base = {"layer": spec.name, "set": spec.source, "kind": spec.kind, "pass": p,
                        "describe": spec.describe(), "batch": spec.batch,
                        "flops": spec.flops(p), "min_bytes": spec.min_bytes(p)}
                try:
                    runners = [Runner("gpucnn", _layers.gpucnn_pass(spec, p, B, data),
                                      _our_timer(B))]
                    if torch is not None:
                        runners.append(Runner("torch", _layers.torch_pass(spec, p, torch, tdev,
                                                                          data), ttimer,
                                              framework="torch"))
                    with tel.section(label):
                        stats = run_interleaved(runners, cfg.warmup, cfg.repeat)
                except Exception as exc:
                    res["errors"].append({"layer": spec.name, "pass": p,
                                          "error": f"{type(exc).__name__}: {exc}"})
                    log(f"  {spec.name} {p}: FAILED: {type(exc).__name__}: {exc}")
                    continue
                telem = tel.summary(label)
                peak_for = pk if spec.kind != "pool" else None
                for fw, bk in (("gpucnn", our_backend), ("torch", tname)):
                    if fw in stats:
                        e = dict(base, framework=fw, backend=bk, telemetry=telem)
                        e.update(_stats_entry(stats[fw], base["flops"], base["min_bytes"],
                                              peak_for))
                        res["layers"].append(e)
                if "torch" in stats:
                    res["comparisons"].append(_compare("layer", spec.name, p, stats))
                log("  " + _progress(spec.name, p, stats))
            del data

        # ---- nets ---------------------------------------------------------------------------
        for name, batch in cfg.nets:
            try:
                batches = _nets.host_batches(name, batch, rng, cfg.rotate)
                ours = _nets.GpucnnNet(name, B, batches, seed=cfg.seed)
                theirs = (_nets.TorchNet(ours.model, torch, tdev, batches)
                          if torch is not None else None)
                fwd_flops = _nets.net_flops(ours.model)
            except Exception as exc:
                res["errors"].append({"net": name, "error": f"{type(exc).__name__}: {exc}"})
                log(f"  {name}: FAILED to build: {type(exc).__name__}: {exc}")
                continue
            for mode in cfg.modes:
                label = f"net:{name}:b{batch}:{mode}"
                try:
                    runners = [Runner("gpucnn", getattr(ours, mode), _our_timer(B))]
                    if theirs is not None:
                        runners.append(Runner("torch", getattr(theirs, mode), ttimer,
                                              framework="torch"))
                    with tel.section(label):
                        stats = run_interleaved(runners, cfg.warmup, cfg.repeat)
                except Exception as exc:
                    res["errors"].append({"net": name, "mode": mode,
                                          "error": f"{type(exc).__name__}: {exc}"})
                    log(f"  {name} {mode}: FAILED: {type(exc).__name__}: {exc}")
                    continue
                telem = tel.summary(label)
                for fw, bk in (("gpucnn", our_backend), ("torch", tname)):
                    if fw in stats:
                        t = stats[fw]
                        res["nets"].append({
                            "net": name, "mode": mode, "batch": batch, "framework": fw,
                            "backend": bk, "timing": t, "ms_per_iter": t["median_ms"],
                            "images_per_s": batch / (t["median_ms"] / 1e3),
                            "fwd_flops_per_image": fwd_flops, "telemetry": telem})
                if "torch" in stats:
                    res["comparisons"].append(_compare("net", f"{name} (batch {batch})", mode,
                                                       stats))
                log("  " + _progress(f"{name} b{batch}", mode, stats, batch))
            del ours, theirs, batches

        # ---- roofline -----------------------------------------------------------------------
        measured = None
        if "bandwidth" in peak:
            dev = (envd.get("gpu", {}).get("name") if xp is not np else envd["cpu_model"])
            measured = DevicePeaks(
                f"{dev} (measured)", pk * 1e9, peak["bandwidth"]["gbps"] * 1e9,
                f"measured in this run: {peak['gemm']['via']} n={cfg.gemm_n}, "
                f"{peak['bandwidth']['via']} {cfg.bandwidth_mib} MiB")
        timings = {(e["layer"], e["pass"]): e["timing"]["median_ms"] for e in res["layers"]
                   if e["framework"] == "gpucnn"}
        res["roofline"] = {
            "formula": "floor = max(flops / peak_flops, min_bytes / bandwidth); min_bytes = "
                       "inputs + weights + outputs, each once, float32 (int32 switches)",
            "reference_device": H100_SXM.as_dict(),
            "measured_device": measured.as_dict() if measured else None,
            "rows": roofline_rows(cfg.layer_specs, H100_SXM, measured, timings),
            "kernels": None}
        if cfg.kernel_report:
            recs, reason = kernel_records("sm_90")
            res["roofline"]["kernels"] = {"target": "sm_90", "available": reason is None,
                                          "reason": reason, "records": recs}
    finally:
        tel.close()
    # which convolution algorithm each benchmarked layer shape ran (auto's choices included)
    res["conv_algorithms"] = B.conv_algorithms()
    res["elapsed_s"] = time.perf_counter() - t_start
    return res


def _numpy_with_threads(n, notes):
    """A private numpy backend with ``n`` threads (the shared cached one is left alone)."""
    from ..backends.numpy_backend import NumpyBackend
    try:
        B = NumpyBackend(threads=n)
        notes.append(f"numpy backend with {n} threads (--threads)")
    except TypeError:  # a numpy backend without its own threads: only the BLAS matters
        B = NumpyBackend()
    return B


def _compare(kind, name, what, stats):
    ours, theirs = stats["gpucnn"]["median_ms"], stats["torch"]["median_ms"]
    return {"kind": kind, "name": name, "pass" if kind == "layer" else "mode": what,
            "ours_median_ms": ours, "torch_median_ms": theirs,
            "ratio_speed_ours_over_torch": theirs / ours}


def _progress(name, what, stats, batch=None):
    parts = []
    for fw, t in stats.items():
        s = f"{fw} {t['median_ms']:.3f} ms"
        if batch:
            s += f" ({batch / t['median_ms'] * 1e3:.0f} img/s)"
        parts.append(s)
    if "torch" in stats:
        parts.append(f"ratio {stats['torch']['median_ms'] / stats['gpucnn']['median_ms']:.2f}")
    return f"{name:22s} {what:17s} " + ", ".join(parts)
