"""Runs a benchmark configuration and returns every figure as one JSON-able dict.

See :mod:`gpucnn.bench` for the method and :func:`run_suite` for the result's layout.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.util
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import env as _env
from . import layers as _layers
from . import nets as _nets
from .peak import copy_bandwidth, gemm_peak
from .roofline import H100_SXM, DevicePeaks, kernel_records, roofline_rows
from .telemetry import MEMORY_NOTE, open_sampler
from .timing import CupyEventTimer, Runner, WallTimer, run_interleaved, summarize
from .torch_side import run_child
from ..ops.storage import BF16, activation_dtype

__all__ = ["BenchConfig", "run_suite", "SCHEMA"]

SCHEMA = "gpucnn-bench/1"


@dataclass
class BenchConfig:
    backend: str = "numpy"
    precision: str | None = None   # of the GEMMs and convolutions (None: $GPUCNN_PRECISION)
    model: str = "lenet5"
    nets: list = field(default_factory=list)          # [(name, batch), ...]
    layer_specs: list = field(default_factory=list)   # [LayerSpec, ...]
    layer_sets: list = field(default_factory=list)    # names, for the record
    modes: tuple = _nets.NET_MODES
    repeat: int = 10
    warmup: int = 2
    rotate: int = 4
    compare: tuple = ()                                # ("torch",) or ()
    rounds: int = 3                                    # alternated rounds when comparing
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
        self.backend = B
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


def _torch_plan(cfg, B, per_round):
    """The PyTorch child's plan (gpucnn.bench.torch_side): every benchmark of ``cfg``."""
    from .torch_side import plan_layer, plan_net
    bench = [plan_layer(_layer_label(spec, p), spec, p, _layer_seed(cfg, si))
             for si, spec in enumerate(cfg.layer_specs) for p in spec.passes]
    bench += [plan_net(_net_label(name, batch, mode), name, batch, mode, cfg.seed)
              for name, batch in cfg.nets for mode in cfg.modes]
    on_gpu = getattr(B, "xp", np) is not np
    return {"threads": int(cfg.threads or _env.our_threads(B)), "seed": cfg.seed,
            "rotate": cfg.rotate, "warmup": cfg.warmup, "repeat": per_round,
            "device": "cuda" if on_gpu else "cpu", "precision": B.precision,
            "benchmarks": bench}


def _layer_label(spec, p):
    return f"layer:{spec.name}:{p}"


def _net_label(name, batch, mode):
    return f"net:{name}:b{batch}:{mode}"


def _layer_seed(cfg, index):
    # each layer's random data from its own seed, so both processes rebuild the same arrays
    return cfg.seed * 1000 + index


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
    B = get_backend(cfg.backend, cfg.precision)
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
    try:
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
        ours, theirs = _alternate(cfg, B, tel, res, log)
        _file_layers(cfg, B, ours, theirs, tel, pk, res, log)
        _file_nets(cfg, B, ours, theirs, tel, res, log)

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


def _alternate(cfg, B, tel, res, log):
    """Every benchmark, ours in this process and (``--compare torch``) PyTorch's in its own
    processes, in ``cfg.rounds`` alternated rounds (ours, torch, torch, ours, ...). Returns
    ``({label: [seconds]}, {label: [[seconds] per round]})`` for ours and theirs (theirs
    empty without a comparison); failures go to ``res["errors"]``."""
    compare = "torch" in cfg.compare
    if compare and importlib.util.find_spec("torch") is None:
        raise ImportError(f"--compare torch needs PyTorch, which is not installed for "
                          f"{sys.executable} (pip install torch)")
    rounds = max(1, cfg.rounds) if compare else 1
    per_round = max(1, -(-cfg.repeat // rounds))
    ours, theirs = {}, {}
    plan = _torch_plan(cfg, B, per_round) if compare else None
    failed = set()
    for r in range(rounds):
        order = ("gpucnn", "torch") if r % 2 == 0 else ("torch", "gpucnn")
        for side in order:
            if side == "gpucnn":
                if rounds > 1:
                    log(f"round {r + 1}/{rounds}: gpucnn (this process)")
                _our_round(cfg, B, per_round if compare else cfg.repeat, tel, ours, failed,
                           res, log)
            elif compare:
                log(f"round {r + 1}/{rounds}: PyTorch (its own process, its own defaults)")
                out = run_child(plan)
                env = res["environment"].setdefault("torch", out["info"])
                env["peak_rss_mib"] = max(env.get("peak_rss_mib", 0.0), out["peak_rss_mib"])
                env["processes"] = env.get("processes", 0) + 1
                for label, msg in out["errors"].items():
                    if label not in failed:
                        failed.add(label)
                        res["errors"].append({"benchmark": label, "framework": "torch",
                                              "error": msg})
                for label, stats in out["results"].items():
                    theirs.setdefault(label, []).append(
                        [v / 1e3 for v in stats["samples_ms"]])
    if compare:
        info = res["environment"]["torch"]
        log(f"torch {info['version']} on {info['device']}, {info['num_threads']} threads, "
            f"{rounds} processes alternated with ours")
    return ours, theirs


def _our_round(cfg, B, repeat, tel, ours, failed, res, log):
    """One round of our benchmarks: samples appended to ``ours[label]`` (a list per round)."""
    for si, spec in enumerate(cfg.layer_specs):
        labels = [_layer_label(spec, p) for p in spec.passes]
        if all(lb in failed for lb in labels):
            continue
        try:
            data = _layers.host_data(spec, np.random.default_rng(_layer_seed(cfg, si)),
                                     cfg.rotate)
        except Exception as exc:
            failed.update(labels)
            res["errors"].append({"layer": spec.name, "error": repr(exc)})
            continue
        for p, label in zip(spec.passes, labels):
            _time_ours(label, lambda p=p, d=data: _layers.gpucnn_pass(spec, p, B, d), cfg, B,
                       repeat, tel, ours, failed, res, log)
        del data
    for name, batch in cfg.nets:
        labels = [_net_label(name, batch, m) for m in cfg.modes]
        if all(lb in failed for lb in labels):
            continue
        try:
            net = _nets.GpucnnNet(name, B, _nets.host_batches(
                name, batch, np.random.default_rng(cfg.seed), cfg.rotate), seed=cfg.seed)
        except Exception as exc:
            failed.update(labels)
            res["errors"].append({"net": name, "error": f"{type(exc).__name__}: {exc}"})
            log(f"  {name}: FAILED to build: {type(exc).__name__}: {exc}")
            continue
        for mode, label in zip(cfg.modes, labels):
            _time_ours(label, lambda mode=mode, n=net: getattr(n, mode), cfg, B, repeat, tel,
                       ours, failed, res, log)
        del net


def _time_ours(label, make, cfg, B, repeat, tel, ours, failed, res, log):
    if label in failed:
        return
    try:
        with tel.section(label):
            stats = run_interleaved([Runner("gpucnn", make(), _our_timer(B))], cfg.warmup,
                                    repeat)
    except Exception as exc:
        failed.add(label)
        res["errors"].append({"benchmark": label, "framework": "gpucnn",
                              "error": f"{type(exc).__name__}: {exc}"})
        log(f"  {label}: FAILED: {type(exc).__name__}: {exc}")
        return
    ours.setdefault(label, []).append([v / 1e3 for v in stats["gpucnn"]["samples_ms"]])


def _pooled(label, ours, theirs):
    """{framework: summarize(all rounds' samples)} and the per-round speed ratios."""
    stats, ratios = {}, None
    if label in ours:
        stats["gpucnn"] = summarize([v for rnd in ours[label] for v in rnd])
    if label in theirs and "gpucnn" in stats:
        stats["torch"] = summarize([v for rnd in theirs[label] for v in rnd])
        med = statistics.median
        ratios = [med(t) / med(o) for o, t in zip(ours[label], theirs[label])]
    return stats, ratios


def _file_layers(cfg, B, ours, theirs, tel, pk, res, log):
    tname = f"torch-{res['environment']['torch']['device']}" if theirs else None
    act = 2 if activation_dtype(B) == BF16 else 4  # bytes per activation (both frameworks')
    for spec in cfg.layer_specs:
        for p in spec.passes:
            label = _layer_label(spec, p)
            stats, ratios = _pooled(label, ours, theirs)
            if not stats:
                continue
            base = {"layer": spec.name, "set": spec.source, "kind": spec.kind, "pass": p,
                    "describe": spec.describe(), "batch": spec.batch,
                    "flops": spec.flops(p), "min_bytes": spec.min_bytes(p, act)}
            telem = tel.summary(label)
            peak_for = pk if spec.kind != "pool" else None
            for fw, bk in (("gpucnn", B.name), ("torch", tname)):
                if fw in stats:
                    e = dict(base, framework=fw, backend=bk, telemetry=telem)
                    e.update(_stats_entry(stats[fw], base["flops"], base["min_bytes"],
                                          peak_for))
                    res["layers"].append(e)
            if "torch" in stats:
                res["comparisons"].append(_compare("layer", spec.name, p, stats, ratios))
            log("  " + _progress(spec.name, p, stats))


def _file_nets(cfg, B, ours, theirs, tel, res, log):
    tname = f"torch-{res['environment']['torch']['device']}" if theirs else None
    for name, batch in cfg.nets:
        fwd_flops = None
        for mode in cfg.modes:
            label = _net_label(name, batch, mode)
            stats, ratios = _pooled(label, ours, theirs)
            if not stats:
                continue
            if fwd_flops is None:
                from ..models import build_model
                fwd_flops = _nets.net_flops(build_model(name, backend="reference"))
            telem = tel.summary(label)
            for fw, bk in (("gpucnn", B.name), ("torch", tname)):
                if fw in stats:
                    t = stats[fw]
                    res["nets"].append({
                        "net": name, "mode": mode, "batch": batch, "framework": fw,
                        "backend": bk, "timing": t, "ms_per_iter": t["median_ms"],
                        "images_per_s": batch / (t["median_ms"] / 1e3),
                        "fwd_flops_per_image": fwd_flops, "telemetry": telem})
            if "torch" in stats:
                res["comparisons"].append(_compare("net", f"{name} (batch {batch})", mode,
                                                   stats, ratios))
            log("  " + _progress(f"{name} b{batch}", mode, stats, batch))


def _numpy_with_threads(n, notes):
    """A private numpy backend with ``n`` threads (the shared cached one is left alone)."""
    from ..backends.numpy_backend import NumpyBackend
    try:
        B = NumpyBackend(threads=n)
        notes.append(f"numpy backend with {n} threads (--threads)")
    except TypeError:  # a numpy backend without its own threads: only the BLAS matters
        B = NumpyBackend()
    return B


def _compare(kind, name, what, stats, ratios):
    ours, theirs = stats["gpucnn"]["median_ms"], stats["torch"]["median_ms"]
    return {"kind": kind, "name": name, "pass" if kind == "layer" else "mode": what,
            "ours_median_ms": ours, "torch_median_ms": theirs,
            "ratio_speed_ours_over_torch": theirs / ours,
            "ratio_per_round": ratios, "ratio_min": min(ratios), "ratio_max": max(ratios)}


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
