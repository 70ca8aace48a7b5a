"""Terminal tables and the JSON file of a benchmark result."""
from __future__ import annotations

import math

from ..outputs import write_json as write_output_json
from .roofline import H100_SXM, DevicePeaks, format_kernels, format_roofline

__all__ = ["format_layers", "format_nets", "format_header", "format_result", "write_json",
           "format_roofline_section", "REQUIRED_KEYS"]

# Top-level keys (and their types) every result has: what tests and consumers rely on.
REQUIRED_KEYS = {"schema": str, "created": str, "argv": list, "config": dict,
                 "environment": dict, "telemetry": dict, "peak": dict, "layers": list,
                 "nets": list, "comparisons": list, "roofline": dict, "errors": list,
                 "notes": list, "elapsed_s": float}


def _table(head, rows, right=()):
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]


def _ms(t):
    return f"{t['median_ms']:.3f}"


def _spread(t):
    return f"{t['min_ms']:.3f}-{t['max_ms']:.3f} (IQR {t['iqr_ms']:.3f})"


def _index(entries, keys):
    return {tuple(e[k] for k in keys) + (e["framework"],): e for e in entries}


def _round_spreads(res, kind):
    """{(name, pass or mode): "min-max" of the per-round speed ratios} of the comparisons."""
    what = "pass" if kind == "layer" else "mode"
    return {(c["name"], c[what]): f"{c['ratio_min']:.2f}-{c['ratio_max']:.2f}"
            for c in res.get("comparisons", ()) if c["kind"] == kind and "ratio_min" in c}


def format_layers(res):
    entries = res["layers"]
    if not entries:
        return ""
    idx = _index(entries, ("layer", "pass"))
    has_torch = any(e["framework"] == "torch" for e in entries)
    ours = [e for e in entries if e["framework"] == "gpucnn"]
    backend = ours[0]["backend"] if ours else "?"
    head = ["layer", "pass", "ms", "min-max (IQR)", "GFLOP/s", "% peak", "GB/s"]
    if has_torch:
        head += ["torch ms", "torch GFLOP/s", "speed ratio", "rounds"]
    rounds = _round_spreads(res, "layer")
    rows = []
    for e in ours:
        pct = e.get("pct_gemm_peak")
        row = [e["layer"], e["pass"], _ms(e["timing"]), _spread(e["timing"]),
               f"{e['gflops']:.1f}", "-" if pct is None else f"{pct:.1f}%",
               f"{e['gbps_min_bytes']:.1f}"]
        if has_torch:
            t = idx.get((e["layer"], e["pass"], "torch"))
            row += ["-", "-", "-", "-"] if t is None else [
                _ms(t["timing"]), f"{t['gflops']:.1f}",
                f"{t['timing']['median_ms'] / e['timing']['median_ms']:.2f}",
                rounds.get((e["layer"], e["pass"]), "-")]
        rows.append(row)
    pk = res["peak"]["gemm"]
    lines = [f"Layers on {backend} (median of {ours[0]['timing']['n'] if ours else 0} timed "
             f"runs; % peak = of the measured GEMM peak {pk['gflops']:.1f} GFLOP/s; GB/s from "
             f"the minimum bytes; linear bwd = data + weights)"]
    seen = []
    for e in ours:
        if e["layer"] not in seen:
            seen.append(e["layer"])
            lines.append(f"  {e['layer']}: {e['describe']}")
    if has_torch:
        lines.append("  speed ratio = ours / torch speed (torch ms / ours ms; > 1: ours faster); "
                     "rounds = min-max of the per-round ratios (PyTorch in its own process)")
    return "\n".join(lines + _table(head, rows, right={2, 4, 5, 6, 7, 8, 9, 10}))


def format_nets(res):
    entries = res["nets"]
    if not entries:
        return ""
    idx = _index(entries, ("net", "batch", "mode"))
    has_torch = any(e["framework"] == "torch" for e in entries)
    ours = [e for e in entries if e["framework"] == "gpucnn"]
    head = ["net", "batch", "mode", "ms/iter", "min-max (IQR)", "images/s"]
    if has_torch:
        head += ["torch ms/iter", "torch images/s", "speed ratio", "rounds"]
    rounds = _round_spreads(res, "net")
    rows = []
    for e in ours:
        row = [e["net"], str(e["batch"]), e["mode"], _ms(e["timing"]), _spread(e["timing"]),
               f"{e['images_per_s']:.1f}"]
        if has_torch:
            t = idx.get((e["net"], e["batch"], e["mode"], "torch"))
            row += ["-", "-", "-", "-"] if t is None else [
                _ms(t["timing"]), f"{t['images_per_s']:.1f}",
                f"{t['timing']['median_ms'] / e['timing']['median_ms']:.2f}",
                rounds.get((f"{e['net']} (batch {e['batch']})", e["mode"]), "-")]
        rows.append(row)
    backend = ours[0]["backend"] if ours else "?"
    return "\n".join([f"Networks on {backend} (training mode; forward_backward includes the "
                      f"loss; train_step adds SGD momentum)"]
                     + _table(head, rows, right={1, 3, 5, 6, 7, 8, 9}))


def format_header(res):
    env = res["environment"]
    v = env["versions"]
    blas = env["blas"]["pools"][0] if env["blas"]["pools"] else {}
    th = env["threads"]
    lines = [f"environment: {env['cpu_model']}, {env['usable_cpus']} usable CPUs, "
             + (f"backend threads {th['backend']}, " if th.get("backend") else "")
             + f"BLAS threads {th['blas']} ({blas.get('name') or blas.get('internal_api') or '?'}"
             f" {blas.get('version') or ''}; via {env['blas']['source']}), numpy {v['numpy']}"
             + (f", torch {v['torch']}" if v.get("torch") else "")
             + (f", cupy {v['cupy']}" if v.get("cupy") else "")]
    if "torch" in env:
        tp = env["torch"].get("precision") or {}
        lines.append(f"torch: {env['torch']['device']}, {env['torch']['num_threads']} threads"
                     + (f"; ours in {tp['precision']}, torch in {tp['mode']}" if tp else ""))
    if "gpu" in env:
        lines.append(f"GPU: {env['gpu']}")
    tel = res["telemetry"]
    lines.append(f"GPU telemetry: NVML on {tel['device'].get('name')}, min/median/max per "
                 f"benchmark in the JSON" if tel["available"]
                 else f"GPU telemetry: not recorded: {tel['reason']}")
    return "\n".join(lines)


def format_roofline_section(res):
    rf = res["roofline"]
    ref = rf["reference_device"]
    reference = DevicePeaks(ref["name"], ref["peak_gflops"] * 1e9, ref["bandwidth_gbps"] * 1e9,
                            ref["source"]) if ref else H100_SXM
    m = rf.get("measured_device")
    measured = DevicePeaks(m["name"], m["peak_gflops"] * 1e9, m["bandwidth_gbps"] * 1e9,
                           m["source"]) if m else None
    out = [format_roofline(rf["rows"], reference, measured)]
    k = rf.get("kernels")
    if k is not None:
        out.append(format_kernels(k["records"], k["reason"], k["target"]))
    return "\n\n".join(out)


def format_result(res, roofline=False):
    parts = [format_header(res), format_layers(res), format_nets(res)]
    if roofline:
        parts.append(format_roofline_section(res))
    algos = res.get("conv_algorithms") or {}
    if algos:
        parts.append("convolution algorithms:\n" + "\n".join(f"  {v:9s} {k}"
                                                         for k, v in sorted(algos.items())))
    if res["notes"]:
        parts.append("notes:\n" + "\n".join(f"  {n}" for n in res["notes"]))
    if res["errors"]:
        parts.append("errors:\n" + "\n".join(f"  {e}" for e in res["errors"]))
    parts.append(f"done in {res['elapsed_s']:.1f} s")
    return "\n\n".join(p for p in parts if p)


def _clean(o):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):
        try:
            o = o.item()
        except Exception:
            return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if o is None or isinstance(o, (bool, int, float, str)):
        return o
    return str(o)


def write_json(res, path):
    """Atomically, by the output rules of gpucnn/outputs.py (checked at start-up)."""
    return write_output_json(path, _clean(res), indent=1)
