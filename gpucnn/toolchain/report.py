"""The kernel resource report: a table (and JSON) of every kernel's registers, spills, shared
memory and theoretical occupancy per target, with the gate verdicts; for GEMM-like kernels
(annotated ``gemm=1``) also their sm_90 SASS main loop (:mod:`.sass`): its instruction count,
FFMA count and share, and the widths of its shared loads, global loads and shared stores.

Command line (``gpucnn kernels --report`` calls :func:`main`)::

    python -m gpucnn.toolchain [--targets sm_80,sm_90] [--nvcc] [--nvcc-targets ...]
                               [--json PATH [--overwrite]] [--no-nvrtc] [--no-sass]
                               [--jobs N] [FILE.cu ...]

It prints the table and exits 0 when every gate passes, 1 when one fails, 2 when a compiler is
missing, no kernel sources exist or an argument is refused (a target the gates have no limits
for, a --json path gpucnn.outputs refuses).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from ..outputs import OutputRefused, check_outputs, write_json

from .compilers import ToolchainUnavailable, find_nvcc, get_nvrtc, nvcc_version
from .gates import DEFAULT_NVCC_TARGETS, DEFAULT_NVRTC_TARGETS, collect, gate_failures
from .limits import ARCHS
from .sass import SASS_TARGET, find_nvdisasm

__all__ = ["render_table", "report_dict", "toolchain_info", "build_parser", "main", "SCHEMA"]

SCHEMA = "gpucnn-kernels/1"  # the "schema" of the JSON report (gpucnn/outputs.py)


def _fmt_bytes(n):
    if n is None:
        return "-"
    return f"{n / 1024:.1f}K" if n >= 1024 else str(n)


def _bits(widths):
    return "-" if not widths else "/".join(str(w) for w in widths)


def render_table(records):
    """A plain-text table of the records, failures listed below it. The ``loop`` columns
    are the SASS main loop of GEMM-like kernels: instructions, FFMA (share), tensor-core
    HMMA (kind, share), and the bit widths of its LDS / LDG / STS."""
    head = ("kernel", "target", "compiler", "regs", "budget", "spill st/ld", "stack", "smem",
            "block", "occupancy", "loop", "ffma", "hmma", "lds", "ldg", "sts", "gate")
    rows = []
    for r in sorted(records, key=lambda r: (r.file, r.kernel != "*", r.kernel, r.compiler,
                                            r.target)):
        name = f"{r.file}" if r.kernel == "*" else f"{Path(r.file).stem}:{r.kernel}"
        occ = "-" if r.occupancy is None else f"{r.occupancy * 100:.0f}% ({r.blocks_per_sm} " \
                                               f"blk, {r.limiter})"
        block = "-" if r.block is None else (str(r.block) + (f"+{_fmt_bytes(r.dyn_smem)}dyn"
                                                              if r.dyn_smem else ""))
        rows.append((name, r.target, r.compiler,
                     "-" if r.registers is None else str(r.registers),
                     "-" if r.reg_budget is None else str(r.reg_budget),
                     "-" if r.spill_stores is None else f"{r.spill_stores}/{r.spill_loads}",
                     _fmt_bytes(r.stack), _fmt_bytes(r.smem), block, occ,
                     "-" if r.loop_instructions is None else str(r.loop_instructions)
                     + "".join(f"/{o['instructions']}" for o in r.other_loops or ()),
                     "-" if r.loop_ffma is None else f"{r.loop_ffma} ({r.ffma_share:.0%})",
                     "-" if not r.loop_hmma else
                     f"{r.loop_hmma} {'/'.join(r.hmma_kinds)} ({r.hmma_share:.0%})",
                     _bits(r.lds_bits), _bits(r.ldg_bits), _bits(r.sts_bits),
                     "ok" if r.ok else "FAIL"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    fails = gate_failures(records)
    notes = sorted({f"{r.file} [{r.compiler} {r.target}]: {n}" for r in records for n in r.notes})
    if notes:
        lines += ["", "notes:"] + [f"  {n}" for n in notes]
    lines += ["", f"gate failures: {len(fails)}" if fails else "all gates passed"]
    lines += [f"  {f}" for f in fails]
    return "\n".join(lines)


def toolchain_info(use_nvrtc=True, use_nvcc=False, use_sass=False):
    info = {}
    if use_sass:
        try:
            info["nvdisasm"] = {"path": find_nvdisasm(), "target": SASS_TARGET}
        except ToolchainUnavailable as exc:
            info["nvdisasm"] = {"error": str(exc)}
    if use_nvrtc:
        try:
            nv = get_nvrtc()
            info["nvrtc"] = {"path": nv.path, "version": "%d.%d" % nv.version()}
        except ToolchainUnavailable as exc:
            info["nvrtc"] = {"error": str(exc)}
    if use_nvcc:
        try:
            p = find_nvcc()
            info["nvcc"] = {"path": p, "version": "%d.%d" % nvcc_version(p)}
        except ToolchainUnavailable as exc:
            info["nvcc"] = {"error": str(exc)}
    return info


def report_dict(records, results=(), toolchain=None):
    """A JSON-serialisable report."""
    srcs = sorted({r.file for r in results})
    return {
        "schema": SCHEMA,
        "ok": not gate_failures(records),
        "toolchain": toolchain or {},
        "sources": {Path(s).name: hashlib.sha256(Path(s).read_bytes()).hexdigest()[:16]
                    for s in srcs if Path(s).exists()},
        "records": [r.as_dict() for r in records],
        "failures": gate_failures(records),
    }


def _targets(s):
    """Targets the gates know the limits of (an unknown one would be checked against
    nothing: a gate that cannot fail)."""
    out = tuple(t.strip() if t.strip().startswith("sm_") else f"sm_{t.strip()}"
                for t in s.split(",") if t.strip())
    bad = [t for t in out if t not in ARCHS]
    if bad or not out:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated targets among {', '.join(ARCHS)}, got {s!r}"
            + (f" ({', '.join(bad)}: no limits known for it)" if bad else ""))
    return tuple(dict.fromkeys(out))


def _jobs(text):
    try:
        v = int(text)
    except ValueError:
        v = 0
    if not 1 <= v <= 256:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 and <= 256, got {text!r}")
    return v


def build_parser(prog="python -m gpucnn.toolchain"):
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Compile the gpucnn CUDA kernels with NVRTC (and nvcc), gate them "
                    "(errors, warnings, spills, register budgets, the SASS main loop of "
                    "GEMM-like kernels) and report registers, shared memory, theoretical "
                    "occupancy and the main loop's FFMA share and load widths.")
    ap.add_argument("files", nargs="*", help=".cu files (default: every gpucnn kernel source)")
    ap.add_argument("--targets", type=_targets, default=DEFAULT_NVRTC_TARGETS,
                    help="NVRTC targets, comma separated (default: sm_80,sm_90)")
    ap.add_argument("--nvcc", action="store_true", help="also compile with nvcc (default: off)")
    ap.add_argument("--nvcc-targets", type=_targets, default=DEFAULT_NVCC_TARGETS,
                    help="nvcc targets (default: sm_75,sm_80,sm_86,sm_90)")
    ap.add_argument("--no-nvrtc", action="store_true",
                    help="skip NVRTC (default: compile with it)")
    ap.add_argument("--no-sass", action="store_true",
                    help="skip the SASS main-loop figures and gate of GEMM-like kernels "
                         "(default: read them from the sm_90 NVRTC build with nvdisasm)")
    ap.add_argument("--json", metavar="PATH",
                    help="also write the report as JSON to PATH; an existing file is replaced "
                         "only if it is a previous report (default: none)")
    ap.add_argument("--overwrite", action="store_true",
                    help="let --json replace a file that is not a previous report (default: "
                         "refuse)")
    ap.add_argument("--jobs", type=_jobs, default=None,
                    help="parallel nvcc processes (default: $GPUCNN_REPORT_JOBS or 2)")
    ap.add_argument("--verbose", "-v", action="store_true",
                    help="print the compiler logs (default: off)")
    return ap


def main(argv=None, prog="python -m gpucnn.toolchain"):
    """``python -m gpucnn.toolchain``; returns the exit status (0 ok, 1 gate failure,
    2 missing compiler or sources). ``prog`` names the command in the usage line."""
    args = build_parser(prog).parse_args(argv)
    try:
        check_outputs([("--json", args.json, "kernels")], args.overwrite, "nothing was compiled")
    except OutputRefused as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    use_nvrtc = not args.no_nvrtc
    try:
        records, results = collect(args.files or None, targets=args.targets if use_nvrtc else (),
                                   nvcc_targets=args.nvcc_targets if args.nvcc else (),
                                   use_nvrtc=use_nvrtc, jobs=args.jobs,
                                   use_sass=not args.no_sass)
    except (ToolchainUnavailable, FileNotFoundError) as exc:
        print(f"gpucnn kernel report: {exc}", file=sys.stderr)
        return 2
    tc = toolchain_info(use_nvrtc, args.nvcc, use_sass=use_nvrtc and not args.no_sass)
    for k, v in tc.items():
        print(f"{k}: {v.get('version', v.get('target', '?'))} "
              f"({v.get('path', v.get('error'))})")
    if args.verbose:
        for r in results:
            print(f"\n=== {r.compiler} {r.target} {Path(r.file).name}: {r.command}\n{r.log}")
    print(render_table(records))
    if args.json is not None:
        write_json(args.json, report_dict(records, results, tc))
    return 1 if gate_failures(records) else 0
