"""The pure parts of bench/gpu_compare.py (step 3 of bench/gpu_validate.sh): which layers are
timed in which precision, which PyTorch mode each precision is compared with, the time budget,
and the markdown tables of summary.md built from a result dict. Nothing here imports CuPy or
PyTorch or needs a GPU (of gpucnn, only the modes of gpucnn.bench.torch_modes):
tests/test_gpu_validate.py feeds these fake timings.

The result dict (schema ``gpucnn-gpu-compare/2``, written by gpu_compare.py):

* ``precisions``: ``{precision: {"in_force", "fallback"}}`` (below compute capability 8.0 the
  tensor-core precisions run as fp32; such rows are not timed again);
* ``gemm``: ``{"n", "flops", "blas", "blas_stats", "rows": [{"precision", "in_force",
  "kernel", "ours", "max_rel_diff_vs_blas"} | {..., "skipped" | "error"}]}``;
* ``layers``: ``[{"layer", "pass", "precision", "in_force", "describe", "flops", "ours"} |
  {..., "skipped" | "error"}]``;
* ``torch``: ``{"info", "gemm": {mode: stats}, "layers": {"layer:pass": {mode: stats}},
  "errors", "skipped"}`` or ``{"error"}``; modes ``off`` / ``on`` (TF32) / ``bf16``
  (autocast).

Stats are ``{"median_ms", "min_ms", "n"}``.
"""
from __future__ import annotations

import time

PRECISIONS = ("fp32", "tf32", "3xtf32", "bf16")    # gpucnn.ops.precision.PRECISIONS
# the PyTorch mode with the same arithmetic as each of our precisions (stdlib-only module)
from gpucnn.bench.torch_modes import (MODE_PRECISION, TORCH_MODE,  # noqa: E402,F401
                                      TORCH_MODE_NAME, TORCH_MODES)
GOAL_RATIO = 1.5          # issue 18: each AlexNet conv pass within 1.5x of cuDNN's time
GOAL_LAYERS = "alexnet.conv"


class Deadline:
    """``seconds`` from now (0 or None: none); ``passed(share)``: more than ``share`` of it
    has gone; ``left()``: seconds left (inf without one). ``clock`` for tests."""

    def __init__(self, seconds, clock=time.monotonic):
        self.seconds, self.clock, self.t0 = seconds or 0, clock, clock()

    def elapsed(self):
        return self.clock() - self.t0

    def left(self):
        return self.seconds - self.elapsed() if self.seconds else float("inf")

    def passed(self, share=1.0):
        return bool(self.seconds) and self.elapsed() > share * self.seconds


# ---- what is timed in which precision (pure) ----------------------------------------------
def has_precision(kind):
    """Whether a layer kind multiplies (conv, linear: GEMM-backed) and so has a precision."""
    return kind in ("conv", "linear")


def precision_plan(layer, kind, precisions, precision_layers):
    """The precisions ours time ``layer`` in: fp32 (if asked) always; the others where the
    layer has a precision and its name starts with one of ``precision_layers`` (``["all"]``:
    every layer)."""
    chosen = "all" in precision_layers or any(layer.startswith(p) for p in precision_layers)
    return [p for p in precisions
            if p == "fp32" or (chosen and has_precision(kind))]


def torch_modes_for(precisions, modes):
    """PyTorch's modes for a benchmark ours ran in ``precisions``: ``off`` and ``on`` (as
    far as ``modes`` has them), and each other mode matching one of ``precisions``, in the
    order of ``modes``."""
    want = {"off", "on"} | {TORCH_MODE[p] for p in precisions}
    return [m for m in modes if m in want]


# ---- summary (pure: a result dict in, markdown lines out) ---------------------------------
def _ms(d):
    return f"{d['median_ms']:.3f}" if d else "-"


def _torch_ms(torch, label, precision):
    """PyTorch's stats for benchmark ``label`` in the mode matching ``precision``."""
    return ((torch.get("layers") or {}).get(label) or {}).get(TORCH_MODE[precision])


def layer_rows(res):
    """One dict per (layer pass, precision) row, grouped by layer pass in the order measured:
    ``ours`` and ``torch`` stats (or None), the PyTorch mode compared with, ``ratio`` = ours /
    torch time (None when either is missing), and ``state`` (``ok``, ``FAILED: ...``,
    ``skipped: ...``, or ``not timed`` for a PyTorch mode that none of our precisions in the
    run matches: PyTorch's TF32-on time of a layer ours timed in fp32 only)."""
    torch = res.get("torch") or {}
    tl = torch.get("layers") or {}
    groups = {}
    for e in res.get("layers", []):
        groups.setdefault(f"{e['layer']}:{e['pass']}", []).append(e)
    rows = []
    for label, entries in groups.items():
        covered = set()
        for e in entries:
            prec = e.get("precision", "fp32")
            ours = e.get("ours")
            t = _torch_ms(torch, label, prec)
            covered.add(TORCH_MODE[prec])
            state = ("ok" if ours else f"FAILED: {e['error']}" if "error" in e
                     else f"skipped: {e.get('skipped', '?')}")
            rows.append({"layer": e["layer"], "pass": e["pass"], "precision": prec,
                         "in_force": e.get("in_force", prec), "torch_mode": TORCH_MODE[prec],
                         "ours": ours, "torch": t, "state": state,
                         "ratio": ours["median_ms"] / t["median_ms"] if ours and t else None})
        for mode, t in (tl.get(label) or {}).items():
            if mode not in covered and mode in MODE_PRECISION:
                rows.append({"layer": entries[0]["layer"], "pass": entries[0]["pass"],
                             "precision": MODE_PRECISION[mode], "in_force": None,
                             "torch_mode": mode, "ours": None, "torch": t,
                             "state": "not timed", "ratio": None})
    return rows


def goal_mark(row, prefix=GOAL_LAYERS, goal=GOAL_RATIO):
    """A layer row's cell of the goal column: ``met`` / ``**MISSED**`` for the passes the goal
    is about (``prefix...``) timed on both sides, ``no ratio`` for those that were not, ``-``
    for the other layers."""
    if not row["layer"].startswith(prefix):
        return "-"
    if row["ratio"] is None:
        return "no ratio"
    return "met" if row["ratio"] <= goal else "**MISSED**"


def goal_lines(rows, prefix=GOAL_LAYERS, goal=GOAL_RATIO):
    """Per precision: how many passes of the layers named ``prefix...`` are within ``goal``
    times PyTorch's time in the matching mode (issue 18's goal for AlexNet's convolutions),
    and the worst of them."""
    by = {}
    for r in rows:
        if r["layer"].startswith(prefix):
            by.setdefault(r["precision"], []).append(r)
    lines = []
    for prec in sorted(by, key=lambda p: PRECISIONS.index(p) if p in PRECISIONS else 9):
        rs = by[prec]
        timed = [r for r in rs if r["ratio"] is not None]
        if not timed:
            lines.append(f"- {prec}: no pass timed on both sides ({len(rs)} rows)")
            continue
        met = sum(r["ratio"] <= goal for r in timed)
        worst = max(timed, key=lambda r: r["ratio"])
        lines.append(f"- {prec} vs PyTorch {TORCH_MODE_NAME[TORCH_MODE[prec]]}: {met} of "
                     f"{len(timed)} passes within {goal}x"
                     + (f" ({len(rs) - len(timed)} not timed on both sides)"
                        if len(timed) < len(rs) else "")
                     + f"; worst {worst['layer']} {worst['pass']} at {worst['ratio']:.2f}x")
    return lines


def _torch_lines(res, torch):
    info = torch.get("info") or {}
    lines = []
    if torch.get("error"):
        lines.append(f"PyTorch: {torch['error']}")
    elif info:
        state = lambda d: ", ".join(f"{k} = {v!r}" for k, v in d.items())  # noqa: E731
        lines.append(f"PyTorch {info['version']} ({info['device']}, CUDA {info['cuda']}, "
                     f"cuDNN {info['cudnn']}, cudnn.benchmark = {info['cudnn.benchmark']}); "
                     f"its defaults: {state(info['defaults'])}")
        lines += [f"PyTorch timed with {TORCH_MODE_NAME.get(m, m)}: {state(s)}"
                  for m, s in info["settings"].items()]
        if any("fp32_precision" in k for k in info["defaults"]):
            lines.append("(fp32_precision 'ieee' / 'tf32' is allow_tf32 False / True; 'none' "
                         "follows torch.backends.fp32_precision)")
    elif "torch" not in res:
        lines.append("PyTorch: not measured (the run stopped before it)")
    return lines


def _gemm_lines(g, torch):
    tg = torch.get("gemm") or {}
    tflops = lambda d: f"{g['flops'] / d['median_ms'] / 1e9:.1f}" if d else "-"  # noqa: E731
    lines = ["", f"| SGEMM {g['n']}^3 | precision | ours ms | ours TFLOP/s | "
                 f"max rel. diff vs {g['blas'].split(' ')[0]} | PyTorch mode | torch.matmul ms "
                 f"| torch TFLOP/s | ours ÷ torch (≤ 1: ours as fast) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in g.get("rows", []):
        p = r["precision"]
        t = tg.get(TORCH_MODE[p])
        ours = r.get("ours")
        what = (r.get("kernel", "ours") if ours else
                f"FAILED: {r['error'][:80]}" if "error" in r else
                f"skipped: {r.get('skipped', '?')[:80]}")
        lines.append(f"| {what} | {p} | {_ms(ours)} | {tflops(ours)} | "
                     + (f"{r['max_rel_diff_vs_blas']:.2g}" if "max_rel_diff_vs_blas" in r
                        else "-")
                     + f" | {TORCH_MODE_NAME[TORCH_MODE[p]]} | {_ms(t)} | {tflops(t)} | "
                     + (f"{ours['median_ms'] / t['median_ms']:.2f}" if ours and t else "-")
                     + " |")
    if "blas_stats" in g:
        lines.append(f"| {g['blas']} | - | {_ms(g['blas_stats'])} | "
                     f"{tflops(g['blas_stats'])} | - | - | - | - | - |")
    return lines


def summarize(res):
    """The ``@summary`` lines (markdown) of a result file, however far the run got."""
    lines = [f"backend: {res.get('backend', '?')}; convolutions: GPUCNN_CONV_ALGO="
             f"{res.get('conv_algo', '?')}; median of {res.get('repeat', '?')} timed runs "
             f"after {res.get('warmup', '?')} warm-up"]
    precisions = res.get("precisions") or {}
    if precisions:
        lines.append("precisions (ours): " + ", ".join(
            p + ("" if v.get("in_force", p) == p else
                 f" (runs as {v['in_force']}: {str(v.get('fallback'))[:120]})")
            for p, v in precisions.items())
            + "; each compared with PyTorch's mode of the same arithmetic: "
            + ", ".join(f"{p} with {TORCH_MODE_NAME[TORCH_MODE[p]]}" for p in precisions
                        if p in TORCH_MODE))
    torch = res.get("torch") or {}
    lines += _torch_lines(res, torch)
    g = res.get("gemm")
    if g:
        lines += _gemm_lines(g, torch)
    rows = layer_rows(res)
    if rows:
        lines += ["", f"| layer pass (batch {res.get('batch', '?')}) | precision | ours ms | "
                      f"PyTorch mode | torch ms | ours ÷ torch | {GOAL_RATIO}x goal |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            ours = _ms(r["ours"]) if r["ours"] else r["state"][:90]
            lines.append(f"| {r['layer']} {r['pass']} | {r['precision']} | {ours} | "
                         f"{TORCH_MODE_NAME[r['torch_mode']]} | {_ms(r['torch'])} | "
                         + (f"{r['ratio']:.2f}" if r["ratio"] is not None else "-")
                         + f" | {goal_mark(r)} |")
        goal = goal_lines(rows)
        if goal:
            lines += ["", f"Goal (issue 18): every AlexNet conv pass within {GOAL_RATIO}x of "
                          f"PyTorch/cuDNN's time at the same precision, batch "
                          f"{res.get('batch', '?')}:", ""] + goal
    skipped = torch.get("skipped") or []
    if skipped:
        lines.append(f"PyTorch skipped (time budget): {', '.join(skipped[:20])}"
                     + (f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""))
    for label, msg in (torch.get("errors") or {}).items():
        lines.append(f"PyTorch {label}: {msg[:200]}")
    if "stopped" in res:
        lines.append(f"(stopped: {res['stopped']})")
    return lines
