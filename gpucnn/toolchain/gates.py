"""The compile gates: each kernel's compiled resources checked against its budget.

A gate fails (and so does ``tests/toolchain/test_gates.py``, and CI) on

* any compiler error or warning (front end, ptxas, nvcc);
* any spill (spill stores or loads > 0 bytes), in a kernel or in a non-inlined device function;
* registers over the kernel's budget: its declared ``max_regs`` (default 255), and never more
  than lets one block of its declared launch size fit on the SM;
* a declared launch that cannot run at all (0 resident blocks) or, when declared, an occupancy
  below ``min_occupancy``;
* an annotation with an unknown key or naming a kernel that does not exist, or a declared
  ``extern "C" __global__`` kernel missing from the ptxas output;
* for a kernel annotated GEMM-like (``gemm=1``, ``min_ffma=``), its sm_90 SASS main loop
  below the FFMA share or reading shared memory narrower than 128 bits (:mod:`.sass`; the
  figures are in the record: ``loop_instructions``, ``loop_ffma``, ``ffma_share``,
  ``lds_bits``, ``ldg_bits``, ``sts_bits``).

Budgets come from the ``// gpucnn:`` annotations (:func:`~.parse.parse_kernel_decls`).
"""
from __future__ import annotations

import dataclasses
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import sass
from .compilers import ToolchainUnavailable, compile_nvcc, compile_nvrtc, find_nvcc, get_nvrtc
from .limits import ARCHS, MAX_REGS_PER_THREAD, occupancy, register_fit_limit
from .includes import with_local_headers
from .parse import KernelDecl, parse_kernel_decls
from .sources import kernel_sources

__all__ = ["Record", "evaluate", "apply_sass", "collect", "gate_failures",
           "DEFAULT_NVRTC_TARGETS", "DEFAULT_NVCC_TARGETS"]

DEFAULT_NVRTC_TARGETS = ("sm_80", "sm_90")
DEFAULT_NVCC_TARGETS = ("sm_75", "sm_80", "sm_86", "sm_90")


@dataclasses.dataclass
class Record:
    kernel: str                          # kernel name, or "*" for a file-level record
    file: str
    target: str
    compiler: str
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None
    smem: int | None = None
    cmem: int | None = None              # bytes in constant bank 0 (kernel parameters)
    block: int | None = None
    dyn_smem: int = 0
    reg_budget: int | None = None
    blocks_per_sm: int | None = None
    occupancy: float | None = None
    limiter: str = ""
    gemm: str = ""                       # the annotation: "" / "gate" / "report" (parse.py)
    # The SASS main loop (sass.py), for GEMM-like kernels on the SASS target only:
    loop_instructions: int | None = None
    loop_ffma: int | None = None
    ffma_share: float | None = None
    loop_hmma: int | None = None         # tensor-core instructions (tc= kernels)
    hmma_share: float | None = None
    hmma_kinds: list | None = None       # e.g. ["TF32"]
    lds_bits: list | None = None         # widths of its shared loads, e.g. [128]
    ldg_bits: list | None = None         # ... global loads, e.g. [32, 128]
    sts_bits: list | None = None         # ... shared stores
    other_loops: list | None = None      # the other main loops: [{instructions, ffma, hmma}]
    problems: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)

    @property
    def ok(self):
        return not self.problems

    @property
    def spills(self):
        return (self.spill_stores or 0) + (self.spill_loads or 0)

    def as_dict(self):
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        return d


def _base_name(symbol):
    """The function name in a simply mangled symbol (``_Z6kernelIfEvPT_`` -> ``kernel``)."""
    m = re.match(r"_Z(\d+)", symbol)
    if m:
        n = int(m.group(1))
        return symbol[m.end():m.end() + n]
    return symbol


def evaluate(result, decls, decl_problems=()):
    """Records (one per kernel, plus a file-level ``"*"`` record when something concerns the
    whole file) for one :class:`CompileResult`, with the gates applied."""
    fname = Path(result.file).name
    records = []
    file_rec = Record(kernel="*", file=fname, target=result.target, compiler=result.compiler)
    file_rec.problems += [f"error: {e}" for e in result.errors]
    file_rec.problems += [f"warning: {w}" for w in result.warnings]
    file_rec.problems += list(decl_problems)
    file_rec.notes += list(result.notes)
    if result.unsupported:
        file_rec.notes.append(f"{result.compiler} cannot build {result.target}; not gated")
        file_rec.problems = [p for p in file_rec.problems if not p.startswith("error: ")]
    arch = ARCHS.get(result.target)
    for name, st in sorted(result.stats.items()):
        if not st.entry:
            if st.spill_stores or st.spill_loads:
                file_rec.problems.append(
                    f"device function {name} spills ({st.spill_stores} bytes stores, "
                    f"{st.spill_loads} bytes loads)")
            continue
        d = decls.get(name) or decls.get(_base_name(name)) or KernelDecl(name=name, file=fname)
        rec = Record(kernel=name, file=fname, target=result.target, compiler=result.compiler,
                     registers=st.registers, spill_stores=st.spill_stores,
                     spill_loads=st.spill_loads, stack=st.stack_frame, smem=st.smem,
                     cmem=st.cmem.get(0), block=d.block, dyn_smem=d.dyn_smem, gemm=d.gemm)
        if st.spill_stores or st.spill_loads:
            rec.problems.append(f"spills: {st.spill_stores} bytes stores, "
                                f"{st.spill_loads} bytes loads")
        if arch is not None:
            fit = register_fit_limit(arch, d.block)
            budget = min(MAX_REGS_PER_THREAD if d.max_regs is None else d.max_regs, fit)
            rec.reg_budget = budget
            if d.max_regs is not None and st.registers > d.max_regs:
                rec.problems.append(f"registers {st.registers} > declared max_regs "
                                    f"{d.max_regs}")
            elif st.registers > fit:
                rec.problems.append(
                    f"registers {st.registers}: a block of {d.block} threads does not fit "
                    f"on {arch.name} (at most {fit} registers/thread for one block)")
            occ = occupancy(arch, d.block, st.registers, st.smem, d.dyn_smem)
            rec.blocks_per_sm, rec.occupancy, rec.limiter = (occ.blocks_per_sm, occ.occupancy,
                                                             occ.limiter)
            if occ.blocks_per_sm == 0 and not rec.problems:
                rec.problems.append(f"a block of {d.block} threads cannot run on {arch.name}: "
                                    f"no room ({occ.limiter}; smem/block {occ.smem_per_block} "
                                    f"bytes)")
            if (d.min_occupancy is not None and occ.occupancy + 1e-9 < d.min_occupancy):
                rec.problems.append(f"occupancy {occ.occupancy:.0%} < declared min_occupancy "
                                    f"{d.min_occupancy:.0%} (limited by {occ.limiter})")
        else:
            rec.notes.append(f"no occupancy data for {result.target}")
        records.append(rec)
    if result.ok and not result.unsupported:
        seen = {n for n, st in result.stats.items() if st.entry}
        seen |= {_base_name(n) for n in seen}
        for name, d in decls.items():
            if d.extern_c and name not in seen:
                file_rec.problems.append(
                    f"kernel {name} (line {d.line}) is missing from the ptxas output")
    if file_rec.problems or file_rec.notes or not records:
        if not records and not file_rec.problems and not result.unsupported:
            file_rec.notes.append("no kernels in this file")
        records.insert(0, file_rec)
    return records


def _decl_of(decls, name):
    return decls.get(name) or decls.get(_base_name(name))


def apply_sass(records, path, decls, nvrtc=None, source=None, target=sass.SASS_TARGET,
               nvdisasm=None):
    """Add the SASS main-loop figures and gate (:func:`.sass.sass_problems`) to the NVRTC
    ``target`` records of one source's GEMM-like kernels. Returns the analysed records.
    Without a disassembler the records get a note (the SASS gate did not run) and the error
    is re-raised when ``nvdisasm`` was given explicitly."""
    name = Path(path).name
    mine = [r for r in records if r.file == name and r.compiler == "nvrtc" and
            r.target == target and r.kernel != "*" and
            (d := _decl_of(decls, r.kernel)) is not None and d.gemm_like]
    if not mine:
        return []
    try:
        loops = sass.analyze_source(path, target, nvrtc, source, nvdisasm)
    except ToolchainUnavailable as exc:
        if nvdisasm is not None:
            raise
        for r in mine:
            r.notes.append(f"SASS gate not run: {exc}")
        return []
    for r in mine:
        st = loops.get(r.kernel)
        if st is not None:
            r.loop_instructions, r.loop_ffma = st.instructions, st.ffma
            r.ffma_share = round(st.ffma_share, 4)
            r.loop_hmma, r.hmma_share = st.hmma, round(st.hmma_share, 4)
            r.hmma_kinds = st.hmma_kinds
            r.lds_bits, r.ldg_bits, r.sts_bits = st.lds_bits, st.ldg_bits, st.sts_bits
            r.other_loops = [{"instructions": o.instructions, "ffma": o.ffma, "hmma": o.hmma}
                             for o in st.others] or None
        r.problems += sass.sass_problems(st, _decl_of(decls, r.kernel))
    return mine


def collect(sources=None, targets=DEFAULT_NVRTC_TARGETS, nvcc_targets=(), use_nvrtc=True,
            jobs=None, nvrtc=None, nvcc=None, use_sass=True):
    """Compile every source for every target and return ``(records, results)``.

    ``sources``: ``.cu`` paths (default :func:`~.sources.kernel_sources`);
    ``targets``: NVRTC targets (skipped when ``use_nvrtc`` is false); ``nvcc_targets``: nvcc
    targets (none by default). ``use_sass``: GEMM-like kernels also get their SASS figures
    and gate when :data:`.sass.SASS_TARGET` is among the NVRTC targets (:func:`apply_sass`).
    Raises :class:`ToolchainUnavailable` when a needed compiler is missing. ``jobs`` nvcc
    processes run at once (default 2, ``$GPUCNN_REPORT_JOBS``).
    """
    sources = [Path(s) for s in (sources if sources is not None else kernel_sources())]
    if jobs is None:
        jobs = int(os.environ.get("GPUCNN_REPORT_JOBS", "2"))
    nv = get_nvrtc(nvrtc) if (use_nvrtc and targets) else None
    nvcc_path = (nvcc or find_nvcc()) if nvcc_targets else None
    texts = {s: s.read_text() for s in sources}
    decls = {s: parse_kernel_decls(with_local_headers(texts[s], [s.parent]), s.name)
             for s in sources}
    results = []
    if nv is not None:
        for s in sources:           # NVRTC in this thread: simple and deterministic
            for t in targets:
                results.append(compile_nvrtc(s, t, nv, source=texts[s]))
    if nvcc_path:
        jobs_list = [(s, t) for s in sources for t in nvcc_targets]
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
            results += list(ex.map(lambda st: compile_nvcc(st[0], st[1], nvcc_path), jobs_list))
    records = []
    for r in results:
        d, probs = decls[Path(r.file)]
        records += evaluate(r, d, probs)
    if use_sass and nv is not None and sass.SASS_TARGET in targets:
        for src in sources:
            apply_sass(records, src, decls[src][0], nv, texts[src])
    return records, results


def gate_failures(records):
    """``["file:kernel [compiler target]: problem", ...]`` for every failed gate."""
    out = []
    for r in records:
        for p in r.problems:
            where = r.file if r.kernel == "*" else f"{r.file}:{r.kernel}"
            out.append(f"{where} [{r.compiler} {r.target}]: {p}")
    return out
