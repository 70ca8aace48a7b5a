"""Static performance figures from the SASS (the GPU's machine code), read without a GPU:
compile a ``.cu`` file to a cubin with NVRTC (the compiler CuPy uses at run time), disassemble
it with ``nvdisasm`` and measure each kernel's **main loop**.

The main loop is found the way one reads SASS by hand: every backward branch (a ``BRA`` whose
target is at or before it) closes a loop spanning the instructions from its target to itself;
an *innermost* loop contains no other backward branch; the *hottest* loop is the innermost
one with the most FFMA and HMMA (tensor-core) instructions (ties: the longest; a kernel with
neither: the longest). A kernel that holds a main loop per case (the tensor-core convolutions:
one for 128-bit operand loads, one for the scalar gathers, chosen once per launch) has several
innermost loops with that most math: the others are kept in ``LoopStats.others``, reported
beside it and gated like it.
In a GEMM that is the K-slice loop whose body the compiler unrolled. Its figures are static
counts over that instruction range (each instruction once, whatever the branches inside do):

* ``instructions`` and ``ffma`` (FFMA share = ffma / instructions: the fraction of issue slots
  doing math if the loop ran straight through; cuBLAS-class SGEMM main loops are 80-90%);
* ``hmma`` (tensor-core instructions, HMMA share = hmma / instructions) and their kinds
  (``TF32``, ``BF16``, from the opcode: ``HMMA.1684.F32.TF32``, ``HMMA.16816.F32.BF16``);
* the widths in bits of its shared loads (``LDS``, ``LDS.64``, ``LDS.128``), global loads
  (``LDG.E``, ``LDG.E.128``...) and shared stores.

The gate (:func:`sass_problems`) applies to kernels whose ``// gpucnn:`` annotation declares
them GEMM-like (``gemm=1``, or ``min_ffma=``): the main loop must reach the FFMA share (default
:data:`DEFAULT_MIN_FFMA`) and read shared memory only with 128-bit ``LDS``. ``gemm=report``
shows the figures without gating; kernels without the key are not analysed. A tensor-core
kernel (``tc=tf32`` / ``tc=bf16``) must hold HMMA instructions of its kind in that loop, and no
other kind, and no generic ``LD`` (its fragments come from shared memory: ``LDS``/``LDSM``). Spills are gated for every kernel by :mod:`.gates` already.

Where nvdisasm comes from: ``$GPUCNN_NVDISASM``, ``PATH``, the pip wheel
(``nvidia-cuda-nvdisasm``: ``nvidia/cu13/bin``; CUDA 12 layout ``nvidia/cuda_nvdisasm/bin``),
a CUDA toolkit (``$CUDA_HOME/bin``, ``/usr/local/cuda*/bin``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

from .compilers import _site_dirs, find_cuda_tool, get_nvrtc, nvrtc_options

__all__ = ["SASS_TARGET", "DEFAULT_MIN_FFMA", "GATED_LDS_BITS", "Instr", "LoopStats",
           "find_nvdisasm", "compile_cubin", "disassemble", "parse_sass", "loops",
           "hottest_loop", "access_bits", "analyze_cubin", "analyze_source", "sass_problems"]

SASS_TARGET = "sm_90"        # the architecture whose SASS the report reads (H100/H200)
DEFAULT_MIN_FFMA = 0.75      # the gate's FFMA share of a GEMM main loop
GATED_LDS_BITS = 128         # a GEMM main loop may read shared memory only this wide


# ---- the disassembler -------------------------------------------------------------------------

def find_nvdisasm():
    """Path of nvdisasm: as :func:`~.compilers.find_cuda_tool`, pip's wheels included."""
    wheels = [os.path.join(d, sub, "nvdisasm") for d in _site_dirs()
              for sub in ("nvidia/cu13/bin", "nvidia/cuda_nvdisasm/bin", "nvidia/cu12/bin")]
    return find_cuda_tool("nvdisasm", wheels, hint="it reads the SASS of the kernels: pip "
                          "install nvidia-cuda-nvdisasm (in gpucnn's [test] extra), or set "
                          "$GPUCNN_NVDISASM")


def disassemble(cubin: bytes, nvdisasm=None) -> str:
    """The SASS listing of a cubin (``nvdisasm -c -ndf``: code sections, no dataflow notes)."""
    exe = nvdisasm or find_nvdisasm()
    with tempfile.TemporaryDirectory(prefix="gpucnn-sass-") as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        p = subprocess.run([exe, "-c", "-ndf", path], capture_output=True, text=True,
                           timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"{exe} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return p.stdout


_cubin_lock = threading.Lock()
_cubins: dict = {}


def compile_cubin(path, target=SASS_TARGET, nvrtc=None, source=None) -> bytes:
    """The cubin NVRTC builds from ``path`` for ``target`` with the run-time options (the
    gates' options: :func:`~.compilers.nvrtc_options`); cached per process by source text."""
    path = Path(path)
    text = source if source is not None else path.read_text()
    nv = get_nvrtc(nvrtc) if not hasattr(nvrtc, "compile") else nvrtc
    opts = nvrtc_options(target, path, major=nv.version()[0], text=text)
    key = hashlib.sha256("\0".join([nv.path, str(path.resolve()), text, *opts])
                         .encode()).hexdigest()
    with _cubin_lock:
        if key in _cubins:
            return _cubins[key]
    rc, rc_name, log, cubin = nv.compile(text, path.name, opts)
    if rc != 0 or not cubin:
        tail = " | ".join(log.strip().splitlines()[-5:])
        raise RuntimeError(f"NVRTC could not build {path.name} for {target}: {rc_name}: {tail}")
    with _cubin_lock:
        _cubins[key] = cubin
    return cubin


# ---- the listing ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Instr:
    addr: int              # byte offset in the function
    opcode: str            # with modifiers, predicate removed: "LDS.128", "FFMA", "BRA"
    operands: str
    target: int | None     # branch target address (BRA), else None

    @property
    def op(self):
        """The opcode without modifiers: ``LDS.128`` -> ``LDS``."""
        return self.opcode.split(".", 1)[0]


_SECTION_RE = re.compile(r"^\s*\.section\s+\.text\.([^,\s]+)")
_LABEL_RE = re.compile(r"^\s*(\.L\w+):")
_INSTR_RE = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)"
                       r"\s*(.*?)\s*;")
_TARGET_RE = re.compile(r"`\((\.L\w+)\)|\b0x([0-9a-fA-F]+)\b")


def parse_sass(text: str) -> dict:
    """``{function name: [Instr, ...]}`` from an nvdisasm listing (branch targets resolved
    from its labels, or from hex addresses as cuobjdump prints them)."""
    funcs, labels, raw = {}, {}, {}
    name, pending = None, []
    for line in text.splitlines():
        m = _SECTION_RE.match(line)
        if m:
            name = m.group(1)
            funcs[name], labels[name], raw[name] = [], {}, []
            pending = []
            continue
        if name is None:
            continue
        m = _LABEL_RE.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR_RE.match(line)
        if m:
            addr = int(m.group(1), 16)
            for lab in pending:
                labels[name][lab] = addr
            pending = []
            raw[name].append((addr, m.group(2), m.group(3)))
    for fn, items in raw.items():
        for addr, opcode, operands in items:
            target = None
            if opcode.split(".", 1)[0] in ("BRA", "BRX", "JMP"):
                t = _TARGET_RE.search(operands)
                if t:
                    target = labels[fn].get(t.group(1)) if t.group(1) else int(t.group(2), 16)
            funcs[fn].append(Instr(addr, opcode, operands, target))
    return funcs


def loops(instrs) -> list:
    """``[(first index, last index), ...]`` of every loop: a backward branch at ``last`` whose
    target is the instruction at ``first``."""
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    out = []
    for i, ins in enumerate(instrs):
        if ins.target is not None and ins.target <= ins.addr and ins.target in index:
            out.append((index[ins.target], i))
    return out


_WIDTHS = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "32": 32, "64": 64, "128": 128}


def access_bits(opcode: str) -> int:
    """Bits moved per thread by a load/store: ``LDS`` 32, ``LDS.U16`` 16, ``LDG.E.128`` 128."""
    for mod in opcode.split(".")[1:]:
        if mod in _WIDTHS:
            return _WIDTHS[mod]
    return 32


@dataclasses.dataclass
class LoopStats:
    kernel: str
    start: int                 # address of the loop's first instruction
    end: int                   # address of its backward branch
    instructions: int
    ffma: int
    hmma: int                  # tensor-core instructions
    hmma_kinds: list           # their operand types: "TF32", "BF16", ... (sorted)
    lds_bits: list             # distinct widths of the shared loads, ascending
    ldg_bits: list             # ... of the global loads
    sts_bits: list             # ... of the shared stores
    counts: dict               # opcode (no modifiers) -> count
    others: list = dataclasses.field(default_factory=list)  # the other main loops (LoopStats)

    @property
    def ffma_share(self):
        return self.ffma / self.instructions if self.instructions else 0.0

    @property
    def hmma_share(self):
        return self.hmma / self.instructions if self.instructions else 0.0

    def widths(self, op):
        return {"LDS": self.lds_bits, "LDG": self.ldg_bits, "STS": self.sts_bits}[op]


def hottest_loop(name, instrs):
    """The :class:`LoopStats` of the kernel's hottest innermost loop, or None (no loop)."""
    found = loops(instrs)
    inner = [(a, b) for a, b in found
             if not any((c, d) != (a, b) and a <= c and d <= b for c, d in found)]
    if not inner:
        return None

    def math(a, b):
        return sum(1 for ins in instrs[a:b + 1] if ins.op in ("FFMA", "HMMA"))

    ranked = sorted(inner, key=lambda ab: (math(*ab), ab[1] - ab[0], -ab[0]), reverse=True)
    best = _loop_stats(name, instrs, *ranked[0])
    if math(*ranked[0]):
        best.others = [_loop_stats(name, instrs, a, b) for a, b in ranked[1:]
                       if math(a, b) == math(*ranked[0])]
    return best


def _loop_stats(name, instrs, a, b):
    """The :class:`LoopStats` of instructions ``a`` to ``b`` (a loop) of kernel ``name``."""
    body = instrs[a:b + 1]
    counts = {}
    for ins in body:
        counts[ins.op] = counts.get(ins.op, 0) + 1

    def bits(op):
        return sorted({access_bits(ins.opcode) for ins in body if ins.op == op})

    kinds = sorted({ins.opcode.rsplit(".", 1)[-1] for ins in body if ins.op == "HMMA"})
    return LoopStats(kernel=name, start=body[0].addr, end=body[-1].addr,
                     instructions=len(body), ffma=counts.get("FFMA", 0),
                     hmma=counts.get("HMMA", 0), hmma_kinds=kinds, lds_bits=bits("LDS"),
                     ldg_bits=bits("LDG"), sts_bits=bits("STS"), counts=counts)


def analyze_cubin(cubin: bytes, nvdisasm=None) -> dict:
    """``{kernel: LoopStats or None}`` for every function of a cubin."""
    return {name: hottest_loop(name, instrs)
            for name, instrs in parse_sass(disassemble(cubin, nvdisasm)).items()}


def analyze_source(path, target=SASS_TARGET, nvrtc=None, source=None, nvdisasm=None) -> dict:
    """:func:`analyze_cubin` of the NVRTC build of one ``.cu`` file."""
    return analyze_cubin(compile_cubin(path, target, nvrtc, source), nvdisasm)


# ---- the gate ---------------------------------------------------------------------------------

def sass_problems(stats, decl) -> list:
    """Why a GEMM-like kernel's main loop fails its gate (empty: it passes). ``decl`` is the
    kernel's :class:`~.parse.KernelDecl`; kernels not declared GEMM-like (or ``gemm=report``)
    are not gated."""
    out = _loop_problems(stats, decl)
    for other in getattr(stats, "others", ()):
        out += [f"{p} (the main loop at {other.start:#x})" for p in _loop_problems(other, decl)]
    return out


def _loop_problems(stats, decl):
    tc = getattr(decl, "tc", "")
    if tc:
        return _tensor_core_problems(stats, tc.upper())
    if not getattr(decl, "gemm_gated", False):
        return []
    if stats is None:
        return ["SASS: no loop found (a GEMM-like kernel must have a main loop)"]
    out = []
    need = decl.min_ffma if decl.min_ffma is not None else DEFAULT_MIN_FFMA
    if stats.ffma_share + 1e-12 < need:
        out.append(f"SASS main loop: {stats.ffma} FFMA of {stats.instructions} instructions = "
                   f"{stats.ffma_share:.0%} < {need:.0%} (min_ffma)")
    narrow = [b for b in stats.lds_bits if b < GATED_LDS_BITS]
    if narrow:
        out.append(f"SASS main loop reads shared memory {'/'.join(map(str, narrow))}-bit "
                   f"(LDS narrower than {GATED_LDS_BITS} bits; read float4)")
    return out


def _tensor_core_problems(stats, kind):
    """A tensor-core kernel's main loop must multiply on tensor cores of its kind only."""
    if stats is None or not stats.hmma:
        return [f"SASS: no HMMA in the main loop (a tc={kind.lower()} kernel must run its "
                f"products on tensor cores)"]
    other = [k for k in stats.hmma_kinds if k != kind]
    if other:
        return [f"SASS main loop: HMMA of kind {'/'.join(other)}, expected {kind} only"]
    # The fragments come from shared memory: a generic LD there means a fragment load lost
    # its state space (wmma::load_matrix_sync's generic pointer; tensor_core.cuh's
    # tc_load_shared is the .shared form), with 64-bit address arithmetic around it.
    generic = stats.counts.get("LD", 0)
    if generic:
        return [f"SASS main loop: {generic} generic LD (fragment loads must read shared "
                f"memory with LDS/LDSM: tc_load_shared)"]
    return []
