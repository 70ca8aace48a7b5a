"""Roofline floors of the benchmarked layers, and the kernels' resource report.

For each layer pass: FLOPs, the minimum bytes moved (every input, weight and output touched
exactly once, float32), the arithmetic intensity (FLOP/byte), and the time floor

    floor = max(FLOPs / peak FLOP/s, bytes / memory bandwidth)

on a reference device — by default the NVIDIA H100 SXM5 datasheet figures (FP32 without tensor
cores 67 TFLOP/s, HBM3 3.35 TB/s) — and, when figures were measured in the run (the GEMM peak
and copy bandwidth of the device the backend ran on), on the measured device too, with the
measured time as a percentage of that floor.

The per-kernel part (registers, spills, shared memory, occupancy) comes from
:mod:`gpucnn.toolchain` (NVRTC + ptxas, no GPU needed); a missing compiler leaves that part
out with the reason.
"""
from __future__ import annotations

F32 = 4  # bytes of a float32

from ..toolchain.gates import collect as _collect

__all__ = ["H100_SXM", "H200_SXM", "DevicePeaks", "roofline_rows", "kernel_records",
           "format_roofline", "format_kernels", "conv_algo_bytes", "conv_algo_rows",
           "format_conv_algos"]


class DevicePeaks:
    def __init__(self, name, flops_per_s, bytes_per_s, source):
        self.name, self.flops_per_s, self.bytes_per_s, self.source = (
            name, float(flops_per_s), float(bytes_per_s), source)

    @property
    def balance(self):
        """FLOP/byte at the ridge point: above it a kernel can be compute-bound."""
        return self.flops_per_s / self.bytes_per_s

    def floor_s(self, flops, nbytes):
        return max(flops / self.flops_per_s, nbytes / self.bytes_per_s)

    def bound(self, flops, nbytes):
        return "compute" if flops / self.flops_per_s >= nbytes / self.bytes_per_s else "memory"

    def as_dict(self):
        return {"name": self.name, "peak_gflops": self.flops_per_s / 1e9,
                "bandwidth_gbps": self.bytes_per_s / 1e9, "balance_flop_per_byte": self.balance,
                "source": self.source}


H100_SXM = DevicePeaks(
    "NVIDIA H100 SXM5 (datasheet)", 67e12, 3.35e12,
    "assumed: NVIDIA H100 Tensor Core GPU datasheet, SXM5 form factor: FP32 (non-tensor-core) "
    "67 TFLOP/s, HBM3 3.35 TB/s; boost clock, no thermal/power throttling")


H200_SXM = DevicePeaks(
    "NVIDIA H200 SXM (datasheet)", 67e12, 4.8e12,
    "assumed: NVIDIA H200 datasheet, SXM: FP32 (non-tensor-core) 67 TFLOP/s as the H100, "
    "HBM3e 4.8 TB/s")


def conv_algo_bytes(spec, pass_, algo):
    """Estimated DRAM traffic of one conv pass with algorithm ``algo``: "implicit" touches
    each input and output once (the compulsory bytes; its split-K partial sums are left
    out); "im2col" also writes the column matrix (C*kh*kw x N*Ho*Wo floats) and reads it
    back once: x -> cols -> GEMM (forward, weight gradient), GEMM -> dcols -> col2im (data
    gradient). GEMM tile re-reads are ignored by both: a floor, not a prediction."""
    compulsory = spec.min_bytes(pass_)
    if algo == "implicit":
        return compulsory
    g = spec.geom()
    cols = F32 * g.C * g.kh * g.kw * g.Ho * g.Wo * g.N
    return compulsory + 2 * cols


def conv_algo_rows(specs, devices=(H100_SXM, H200_SXM)):
    """Per conv layer and pass: FLOPs, estimated bytes and time floors of both algorithms."""
    rows = []
    for spec in specs:
        if spec.kind != "conv":
            continue
        for p in spec.passes:
            fl = spec.flops(p)
            row = {"layer": spec.name, "pass": p, "flops": fl}
            for algo in ("im2col", "implicit"):
                nb = conv_algo_bytes(spec, p, algo)
                row[f"{algo}_bytes"] = nb
                for d in devices:
                    row[f"{algo}_floor_ms[{d.name}]"] = 1e3 * d.floor_s(fl, nb)
                    row[f"{algo}_bound[{d.name}]"] = d.bound(fl, nb)
            rows.append(row)
    return rows


def format_conv_algos(rows, devices=(H100_SXM, H200_SXM)):
    """A Markdown table of :func:`conv_algo_rows` (an estimate: say so where it is shown)."""
    head = ("| layer | pass | GFLOP | im2col GB | implicit GB | "
            + " | ".join(f"floor im2col / implicit, {d.name.split(' (')[0]} (ms)"
                         for d in devices) + " |")
    lines = [head, "|" + "---|" * (5 + len(devices))]
    for r in rows:
        floors = " | ".join(
            f"{r[f'im2col_floor_ms[{d.name}]']:.3f} ({r[f'im2col_bound[{d.name}]'][0]}) / "
            f"{r[f'implicit_floor_ms[{d.name}]']:.3f} ({r[f'implicit_bound[{d.name}]'][0]})"
            for d in devices)
        lines.append(f"| {r['layer']} | {r['pass']} | {r['flops'] / 1e9:.1f} | "
                     f"{r['im2col_bytes'] / 1e9:.2f} | {r['implicit_bytes'] / 1e9:.2f} | "
                     f"{floors} |")
    return "\n".join(lines)


def roofline_rows(specs, reference=H100_SXM, measured=None, timings=None):
    """One dict per (layer, pass). ``measured``: :class:`DevicePeaks` of the device the run
    used (or None); ``timings``: ``{(layer, pass): median_ms}`` of our backend."""
    rows = []
    timings = timings or {}
    for spec in specs:
        for p in spec.passes:
            fl, nb = spec.flops(p), spec.min_bytes(p)
            row = {"layer": spec.name, "pass": p, "kind": spec.kind, "flops": fl,
                   "min_bytes": nb, "intensity_flop_per_byte": fl / nb,
                   "reference_floor_ms": 1e3 * reference.floor_s(fl, nb),
                   "reference_bound": reference.bound(fl, nb)}
            if spec.kind == "pool":
                row["note"] = "pool FLOPs are comparisons/adds; memory-bound by nature"
            if measured is not None:
                row["measured_floor_ms"] = 1e3 * measured.floor_s(fl, nb)
                row["measured_bound"] = measured.bound(fl, nb)
                t = timings.get((spec.name, p))
                if t:
                    row["measured_ms"] = t
                    row["pct_of_floor"] = 100.0 * row["measured_floor_ms"] / t
            rows.append(row)
    return rows


def kernel_records(target="sm_90", collect=None):
    """``(records, None)`` — per-kernel dicts (kernel, file, registers, spills, smem, block,
    occupancy, limiter) from :mod:`gpucnn.toolchain` for ``target`` — or ``([], reason)``
    when NVRTC or the kernel sources are missing."""
    collect = _collect if collect is None else collect
    try:
        records, _ = collect(targets=(target,))
    except Exception as exc:
        return [], f"kernel report failed ({type(exc).__name__}: {exc})"
    out = []
    for r in records:
        if getattr(r, "kernel", "*") == "*":
            continue
        d = r.as_dict() if hasattr(r, "as_dict") else dict(r)
        out.append({k: d.get(k) for k in ("kernel", "file", "target", "compiler", "registers",
                                          "spill_stores", "spill_loads", "smem", "block",
                                          "dyn_smem", "blocks_per_sm", "occupancy",
                                          "limiter", "ok")})
    return out, None


def _fmt_n(v, unit=""):
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f}{suf}{unit}"
    return f"{v:.0f}{unit}"


def _table(head, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return lines


def format_roofline(rows, reference=H100_SXM, measured=None):
    lines = ["Roofline floors: floor = max(FLOPs / peak, min bytes / bandwidth); min bytes = "
             "inputs + weights + outputs once (float32)",
             f"  reference: {reference.name}: {reference.flops_per_s / 1e12:.1f} TFLOP/s, "
             f"{reference.bytes_per_s / 1e12:.2f} TB/s, ridge "
             f"{reference.balance:.1f} FLOP/B ({reference.source})"]
    if measured is not None:
        lines.append(f"  measured: {measured.name}: {measured.flops_per_s / 1e9:.1f} GFLOP/s, "
                     f"{measured.bytes_per_s / 1e9:.1f} GB/s, ridge {measured.balance:.1f} "
                     f"FLOP/B ({measured.source})")
    head = ["layer", "pass", "FLOPs", "bytes", "FLOP/B", "ref floor", "bound"]
    if measured is not None:
        head += ["meas floor", "measured", "% of floor"]
    body = []
    for r in rows:
        row = [r["layer"], r["pass"], _fmt_n(r["flops"]), _fmt_n(r["min_bytes"], "B"),
               f"{r['intensity_flop_per_byte']:.1f}", f"{r['reference_floor_ms'] * 1e3:.1f} us",
               r["reference_bound"]]
        if measured is not None:
            row += [f"{r['measured_floor_ms']:.3f} ms",
                    f"{r['measured_ms']:.3f} ms" if "measured_ms" in r else "-",
                    f"{r['pct_of_floor']:.1f}%" if "pct_of_floor" in r else "-"]
        body.append(row)
    return "\n".join(lines + _table(head, body))


def format_kernels(records, reason=None, target="sm_90"):
    if reason:
        return f"Kernel resources: not available: {reason}"
    head = ["kernel", "file", "regs", "spill st/ld", "smem", "block", "occupancy", "limiter"]
    body = [[r["kernel"], r["file"], str(r["registers"]),
             f"{r['spill_stores']}/{r['spill_loads']}", str(r["smem"]),
             str(r["block"]) + (f"+{r['dyn_smem']}B dyn" if r.get("dyn_smem") else ""),
             "-" if r["occupancy"] is None else f"{100 * r['occupancy']:.0f}%",
             r.get("limiter") or ""] for r in records]
    return "\n".join([f"Kernel resources ({target}, from gpucnn.toolchain; theoretical "
                      f"occupancy at the declared block size):"] + _table(head, body))
