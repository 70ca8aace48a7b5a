"""Compile gates and resource report for the CUDA kernels (``kernels/*.cu``).

Every kernel source is compiled *without a GPU*:

* by **NVRTC** — the compiler CuPy uses at run time — called directly through ``ctypes``
  (CuPy's own compile path needs a CUDA driver), for ``sm_80`` and ``sm_90`` by default, and
* optionally by **nvcc** (``-cubin``) for ``sm_75``, ``sm_80``, ``sm_86`` and ``sm_90``,

both with ``ptxas -v`` so the log carries each kernel's registers, spill stores/loads, stack
frame, static shared memory and constant memory. The log is parsed, every kernel is checked
against its budget, and the theoretical occupancy at its launch block size is computed with
the standard occupancy-calculator rules.

Gate failures (each one fails ``tests/test_compile_gates.py`` and CI):

* any compiler error or warning (front end, ptxas, nvcc);
* any spill (spill stores or loads > 0 bytes), in a kernel or in a non-inlined device function;
* registers over the kernel's budget: its declared ``max_regs`` (default 255), and never more
  than lets one block of its declared launch size fit on the SM;
* a declared launch that cannot run at all (0 resident blocks) or, when declared, an occupancy
  below ``min_occupancy``;
* an annotation with an unknown key or naming a kernel that does not exist, or a declared
  ``extern "C" __global__`` kernel missing from the ptxas output.

Per-kernel budgets are declared in the ``.cu`` file, in a ``//`` comment directly above the
kernel (or on its declaration line)::

    // gpucnn: block=256 max_regs=128
    extern "C" __global__ void relu_forward(...)

Keys: ``block`` (threads per block at launch, ``256`` or ``16x16`` or ``8x8x4``; default: the
``__launch_bounds__`` value, else 256), ``max_regs`` (registers per thread), ``dyn_smem``
(dynamic shared memory bytes per block at launch, ``4096`` or ``4K``), ``min_occupancy``
(``0.5`` or ``50%``). ``// gpucnn: kernel=NAME block=...`` anywhere in the file targets NAME;
``// gpucnn: defaults block=128`` sets the file's defaults.

Command line (``gpucnn kernels --report`` calls :func:`main`)::

    python -m gpucnn.kernel_report [--targets sm_80,sm_90] [--nvcc] [--nvcc-targets ...]
                                   [--json PATH] [--no-nvrtc] [--jobs N] [FILE.cu ...]

It prints the table and exits 0 when every gate passes, 1 when one fails, 2 when a compiler is
missing or no kernel sources exist.

Where the compilers come from: NVRTC is ``$GPUCNN_NVRTC`` (a ``libnvrtc.so*`` file or a folder
holding one), else the pip wheel (``nvidia-cuda-nvrtc-cu12``: ``nvidia/cuda_nvrtc/lib``; the
CUDA 13 wheels: ``nvidia/cu13/lib``), else a CUDA toolkit (``$CUDA_HOME``, ``/usr/local/cuda*``).
nvcc is ``$GPUCNN_NVCC``, else ``nvcc`` on ``PATH``, else a toolkit's ``bin/nvcc``.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = [
    "ARCHS", "ArchLimits", "CompileResult", "KernelDecl", "KernelStats", "Occupancy", "Record",
    "ToolchainUnavailable", "Nvrtc", "find_nvrtc", "get_nvrtc", "nvrtc_version_string",
    "find_nvcc", "nvcc_version",
    "compile_nvrtc", "compile_nvcc", "parse_ptxas_log", "parse_diagnostics",
    "parse_kernel_decls", "occupancy", "register_fit_limit", "evaluate", "collect",
    "gate_failures", "render_table", "report_dict", "main",
    "DEFAULT_NVRTC_TARGETS", "DEFAULT_NVCC_TARGETS", "DEFAULT_BLOCK", "NVRTC_OPTIONS",
]

DEFAULT_NVRTC_TARGETS = ("sm_80", "sm_90")
DEFAULT_NVCC_TARGETS = ("sm_75", "sm_80", "sm_86", "sm_90")
DEFAULT_BLOCK = 256
MAX_REGS_PER_THREAD = 255          # what ptxas can allocate per thread (sm_50+)
# The options the kernels are compiled with at run time (kept equal to gpucnn.backends.cuda's,
# which imports them from here, so the gate checks exactly what CuPy will build).
NVRTC_OPTIONS = ("-std=c++17",)


class ToolchainUnavailable(RuntimeError):
    """NVRTC or nvcc could not be found or loaded; the message says where it looked."""


# --------------------------------------------------------------------------------------------
# Per-architecture limits (CUDA C Programming Guide, "Compute capabilities" table, and the
# occupancy calculator's allocation rules).
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ArchLimits:
    name: str
    max_warps_per_sm: int
    max_blocks_per_sm: int
    regs_per_sm: int = 65536
    regs_per_block: int = 65536
    reg_alloc_unit: int = 256           # registers are allocated per warp in units of 256
    sub_partitions: int = 4             # register file split over 4 schedulers' partitions
    smem_per_sm: int = 0                # usable shared memory per SM at the largest carveout
    smem_per_block_optin: int = 0       # max per block (dynamic opt-in), reserved part excluded
    smem_static_max: int = 48 * 1024    # max static __shared__ per block
    smem_reserved_per_block: int = 0    # driver-reserved shared memory per block (sm_80+: 1 KB)
    smem_alloc_unit: int = 128
    max_threads_per_block: int = 1024
    warp_size: int = 32


ARCHS = {
    "sm_75": ArchLimits("sm_75", max_warps_per_sm=32, max_blocks_per_sm=16,
                        smem_per_sm=64 * 1024, smem_per_block_optin=64 * 1024,
                        smem_reserved_per_block=0, smem_alloc_unit=256),
    "sm_80": ArchLimits("sm_80", max_warps_per_sm=64, max_blocks_per_sm=32,
                        smem_per_sm=164 * 1024, smem_per_block_optin=163 * 1024,
                        smem_reserved_per_block=1024),
    "sm_86": ArchLimits("sm_86", max_warps_per_sm=48, max_blocks_per_sm=16,
                        smem_per_sm=100 * 1024, smem_per_block_optin=99 * 1024,
                        smem_reserved_per_block=1024),
    "sm_89": ArchLimits("sm_89", max_warps_per_sm=48, max_blocks_per_sm=24,
                        smem_per_sm=100 * 1024, smem_per_block_optin=99 * 1024,
                        smem_reserved_per_block=1024),
    "sm_90": ArchLimits("sm_90", max_warps_per_sm=64, max_blocks_per_sm=32,
                        smem_per_sm=228 * 1024, smem_per_block_optin=227 * 1024,
                        smem_reserved_per_block=1024),
}


def _ceil_div(a, b):
    return -(-int(a) // int(b))


def _round_up(a, b):
    return _ceil_div(a, b) * int(b)


@dataclasses.dataclass
class Occupancy:
    arch: str
    block: int
    registers: int
    smem_per_block: int                 # static + dynamic + reserved, rounded to the alloc unit
    blocks_per_sm: int
    active_warps: int
    max_warps: int
    occupancy: float                    # active warps / max warps per SM, 0..1
    limiter: str                        # what bounds blocks_per_sm
    limits: dict                        # blocks per SM allowed by each resource

    def describe(self):
        return f"{self.occupancy * 100:.0f}% ({self.blocks_per_sm} blk, {self.limiter})"


def occupancy(arch, block, registers, smem_static=0, smem_dynamic=0):
    """Theoretical occupancy of a kernel on ``arch`` (a name in :data:`ARCHS` or an
    :class:`ArchLimits`) launched with ``block`` threads per block.

    The occupancy-calculator rules: blocks per SM are the minimum of the limits set by

    * the block slots (``max_blocks_per_sm``) and the warp slots (``max_warps_per_sm`` over the
      block's warps, a partial warp counting as a whole one);
    * the registers: each warp gets ``registers * 32`` registers rounded up to 256; the register
      file is split over 4 sub-partitions, each holding ``floor(16384 / regs_per_warp)`` warps;
      a block whose registers (warps rounded up to a multiple of 4, the hardware's check) exceed
      64K registers cannot launch;
    * the shared memory: static + dynamic + the 1 KB the driver reserves per block (sm_80+),
      rounded up to 128 bytes (256 before sm_80), out of the SM's largest carveout.
    """
    a = ARCHS[arch] if isinstance(arch, str) else arch
    block = int(block)
    registers = int(registers)
    warps_per_block = _ceil_div(block, a.warp_size)
    limits = {}
    if block <= 0 or block > a.max_threads_per_block:
        limits["block size"] = 0
    limits["blocks"] = a.max_blocks_per_sm
    limits["warps"] = a.max_warps_per_sm // max(1, warps_per_block)
    # Registers.
    if registers > MAX_REGS_PER_THREAD:
        limits["registers"] = 0
    elif registers > 0:
        regs_per_warp = _round_up(registers * a.warp_size, a.reg_alloc_unit)
        per_block = regs_per_warp * warps_per_block
        per_block_hw = regs_per_warp * _round_up(warps_per_block, a.sub_partitions)
        if per_block > a.regs_per_block or per_block_hw > a.regs_per_block:
            limits["registers"] = 0
        else:
            warps_per_part = (a.regs_per_sm // a.sub_partitions) // regs_per_warp
            limits["registers"] = (warps_per_part * a.sub_partitions) // max(1, warps_per_block)
    # Shared memory.
    smem = int(smem_static) + int(smem_dynamic) + a.smem_reserved_per_block
    smem_alloc = _round_up(smem, a.smem_alloc_unit) if smem else 0
    if (int(smem_static) > a.smem_static_max
            or smem_alloc > a.smem_per_block_optin + a.smem_reserved_per_block):
        limits["shared memory"] = 0
    elif smem_alloc:
        limits["shared memory"] = a.smem_per_sm // smem_alloc
    limiter = min(limits, key=lambda k: (limits[k], k != "block size"))
    blocks = max(0, min(limits.values()))
    warps = blocks * warps_per_block
    return Occupancy(arch=a.name, block=block, registers=registers, smem_per_block=smem_alloc,
                     blocks_per_sm=blocks, active_warps=warps, max_warps=a.max_warps_per_sm,
                     occupancy=warps / a.max_warps_per_sm, limiter=limiter, limits=limits)


def register_fit_limit(arch, block):
    """The most registers per thread with which one block of ``block`` threads still fits."""
    a = ARCHS[arch] if isinstance(arch, str) else arch
    for r in range(MAX_REGS_PER_THREAD, 0, -1):
        if occupancy(a, block, r).limits.get("registers", 1) >= 1:
            return r
    return 0


# --------------------------------------------------------------------------------------------
# Kernel declarations and their budgets, from the .cu source.
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class KernelDecl:
    name: str
    file: str = ""
    line: int = 0
    block: int = DEFAULT_BLOCK
    block_dims: tuple = (DEFAULT_BLOCK, 1, 1)
    max_regs: int | None = None
    dyn_smem: int = 0
    min_occupancy: float | None = None
    launch_bounds: int | None = None
    extern_c: bool = True
    annotated: bool = False


_ANNOT_RE = re.compile(r"//\s*gpucnn\s*:(?P<body>.*)$")
_KNOWN_KEYS = ("block", "max_regs", "dyn_smem", "min_occupancy", "kernel")


def _strip_comments(text):
    """``text`` with comments and string literals blanked (newlines kept, so offsets and line
    numbers stay valid)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(n, j + 1)
            # keep the quotes, and the content of "C" (for extern "C")
            lit = text[i:j]
            out.append(lit if lit == '"C"' else c + " " * max(0, len(lit) - 2) + lit[-1])
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _parse_size(v):
    v = v.strip().lower()
    mult = 1
    if v.endswith("kb") or v.endswith("k"):
        mult, v = 1024, v.rstrip("b")[:-1]
    return int(float(v) * mult)


def _int(v, macros):
    v = v.strip()
    return int(macros[v]) if v in macros else int(v)


def _parse_annotation(body, macros=None):
    """``"block=256 max_regs=128"`` -> (values dict, flags set, problems list). Integer values
    may name an integer ``#define`` of the file (``block=XENT_THREADS``)."""
    macros = macros or {}
    values, flags, problems = {}, set(), []
    for tok in body.replace(",", " ").split():
        if "=" not in tok:
            flags.add(tok.lower())
            continue
        k, v = tok.split("=", 1)
        k = k.strip().lower()
        try:
            if k == "block":
                dims = [_int(x, macros) for x in ([v] if v in macros else v.split("x"))]
                if not 1 <= len(dims) <= 3 or min(dims) < 1:
                    raise ValueError(v)
                dims = (dims + [1, 1])[:3]
                values["block_dims"] = tuple(dims)
                values["block"] = dims[0] * dims[1] * dims[2]
            elif k == "max_regs":
                values["max_regs"] = _int(v, macros)
            elif k == "dyn_smem":
                values["dyn_smem"] = (int(macros[v]) if v in macros else _parse_size(v))
            elif k == "min_occupancy":
                values["min_occupancy"] = (float(v[:-1]) / 100 if v.endswith("%")
                                           else float(v))
            elif k == "kernel":
                values["kernel"] = v.strip()
            else:
                problems.append(f"unknown annotation key {k!r} (known: "
                                f"{', '.join(_KNOWN_KEYS)})")
        except ValueError:
            problems.append(f"bad value in annotation: {tok!r}")
    for f in flags - {"defaults"}:
        problems.append(f"unknown annotation word {f!r}")
    return values, flags, problems


def _skip_ws(s, i):
    while i < len(s) and s[i].isspace():
        i += 1
    return i


def _match_paren(s, i):
    """Index just past the parenthesis group opening at ``s[i] == '('``."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "(":
            depth += 1
        elif s[j] == ")":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(s)


_IDENT = re.compile(r"[A-Za-z_]\w*")


def _find_global_functions(code, macros=None):
    """``[(name, offset, launch_bounds_or_None, extern_c, params_end_offset)]`` for each
    ``__global__`` function in comment-stripped ``code``."""
    found = []
    blocks = []                       # extern "C" { ... } spans
    for m in re.finditer(r'extern\s+"C"\s*\{', code):
        depth, j = 0, m.end() - 1
        for j in range(m.end() - 1, len(code)):
            if code[j] == "{":
                depth += 1
            elif code[j] == "}":
                depth -= 1
                if depth == 0:
                    break
        blocks.append((m.end(), j))
    for m in re.finditer(r"\b__global__\b", code):
        i = m.end()
        lb = None
        name = None
        while i < len(code):
            i = _skip_ws(code, i)
            im = _IDENT.match(code, i)
            if not im:
                if code.startswith("*", i) or code.startswith("&", i):
                    i += 1
                    continue
                break
            word = im.group(0)
            j = _skip_ws(code, im.end())
            if word == "__launch_bounds__" and code.startswith("(", j):
                end = _match_paren(code, j)
                try:
                    lb = _int(code[j + 1:end - 1].split(",")[0], macros or {})
                except ValueError:
                    lb = None
                i = end
                continue
            if code.startswith("(", j):
                name = word
                params_end = _match_paren(code, j)
                break
            i = im.end()
        if name:
            stmt_start = max(code.rfind(";", 0, m.start()), code.rfind("}", 0, m.start()),
                             code.rfind("{", 0, m.start())) + 1
            extern_c = (bool(re.search(r'extern\s+"C"', code[stmt_start:m.start()]))
                        or any(a <= m.start() < b for a, b in blocks))
            found.append((name, m.start(), lb, extern_c, params_end))
    return found


def parse_kernel_decls(text, file=""):
    """Kernels declared in a ``.cu`` source and their budgets.

    Returns ``(decls, problems)``: ``decls`` maps kernel name -> :class:`KernelDecl`;
    ``problems`` lists annotation errors (unknown keys, a ``kernel=`` naming no kernel).
    """
    problems = []
    lines = text.splitlines()
    code = _strip_comments(text)
    macros = dict(re.findall(r"(?m)^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+\(?(\d+)\)?[ \t]*$", code))
    # Annotations by line (1-based), and file defaults / explicit kernel= targets.
    annots = {}
    defaults, explicit = {}, {}
    for ln, raw in enumerate(lines, 1):
        m = _ANNOT_RE.search(raw)
        if not m:
            continue
        values, flags, probs = _parse_annotation(m.group("body"), macros)
        problems += [f"{file}:{ln}: {p}" for p in probs]
        if "defaults" in flags:
            defaults.update(values)
        elif "kernel" in values:
            explicit.setdefault(values.pop("kernel"), {}).update(values | {"_line": ln})
        else:
            annots[ln] = values
    decls = {}
    used = set()
    for name, off, lb, extern_c, params_end in _find_global_functions(code, macros):
        line = code.count("\n", 0, off) + 1
        values = dict(defaults)
        # The declaration's own line, then the comment block right above it (blank lines,
        # comments, `extern "C"` and `template <...>` lines are part of the block).
        near = {}
        ln = line - 1
        while ln >= 1:
            s = lines[ln - 1].strip()
            if (s == "" or s.startswith("//") or s.startswith("/*") or s.startswith("*")
                    or re.fullmatch(r'extern\s+"C"\s*\{?', s) or s.startswith("template")):
                if ln in annots:
                    near = annots[ln] | near      # the nearest annotation wins
                    used.add(ln)
                ln -= 1
                continue
            break
        # annotations on the declaration's own lines (up to its closing parenthesis)
        for k in range(line, code.count("\n", 0, params_end) + 2):
            if k in annots:
                near = near | annots[k]
                used.add(k)
        values.update(near)
        values.update(explicit.get(name, {}))
        values.pop("_line", None)
        annotated = bool(near) or name in explicit or bool(defaults)
        d = KernelDecl(name=name, file=file, line=line, launch_bounds=lb, extern_c=extern_c,
                       annotated=annotated)
        if "block" in values:
            d.block, d.block_dims = values["block"], values["block_dims"]
        elif lb:
            d.block, d.block_dims = lb, (lb, 1, 1)
        d.max_regs = values.get("max_regs")
        d.dyn_smem = int(values.get("dyn_smem", 0))
        d.min_occupancy = values.get("min_occupancy")
        decls[name] = d
    for ln in sorted(set(annots) - used):
        problems.append(f"{file}:{ln}: annotation is not next to a kernel (put it in the "
                        f"comment block right above one, or name it with kernel=NAME)")
    for name, values in explicit.items():
        if name not in decls:
            problems.append(f"{file}:{values.get('_line', 0)}: annotation names kernel "
                            f"{name!r}, which is not declared in this file")
    return decls, problems


# --------------------------------------------------------------------------------------------
# Compiler logs.
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class KernelStats:
    name: str
    target: str = ""
    entry: bool = True                  # False: a non-inlined device function
    registers: int = 0
    barriers: int = 0
    stack_frame: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    smem: int = 0
    cmem: dict = dataclasses.field(default_factory=dict)     # bank -> bytes
    cumulative_stack: int = 0
    lmem: int = 0


_RE_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_RE_PROPS = re.compile(r"Function properties for (\S+)")
_RE_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                       r"(\d+) bytes spill loads")
_RE_USED = re.compile(r"Used (\d+) registers")
_RE_BARRIERS = re.compile(r"used (\d+) barriers")
_RE_SMEM = re.compile(r"(\d+) bytes smem")
_RE_CMEM = re.compile(r"(\d+) bytes cmem\[(\d+)\]")
_RE_CUMSTACK = re.compile(r"(\d+) bytes cumulative stack size")
_RE_LMEM = re.compile(r"(\d+) bytes lmem")


def parse_ptxas_log(log, target=""):
    """Parse ``ptxas -v`` output (from NVRTC or nvcc) into ``{(name, target): KernelStats}``.

    Entry functions (kernels) have ``entry=True``; a non-inlined device function shows up with
    ``entry=False`` (only its stack frame and spills are known). ``target`` is used when the
    log does not name one.
    """
    stats = {}
    cur_target = target
    entry = None          # the kernel that the next "Used N registers" line belongs to
    props = None          # the function that the next stack-frame line belongs to
    for line in log.splitlines():
        m = _RE_ENTRY.search(line)
        if m:
            cur_target = m.group(2) or target
            key = (m.group(1), cur_target)
            entry = stats.setdefault(key, KernelStats(m.group(1), cur_target, entry=True))
            entry.entry = True
            props = None
            continue
        m = _RE_PROPS.search(line)
        if m:
            key = (m.group(1), cur_target)
            props = stats.get(key) or stats.setdefault(
                key, KernelStats(m.group(1), cur_target, entry=False))
            continue
        m = _RE_FRAME.search(line)
        if m and props is not None:
            props.stack_frame, props.spill_stores, props.spill_loads = map(int, m.groups())
            continue
        m = _RE_USED.search(line)
        if m and entry is not None:
            entry.registers = int(m.group(1))
            if (b := _RE_BARRIERS.search(line)):
                entry.barriers = int(b.group(1))
            if (s := _RE_SMEM.search(line)):
                entry.smem = int(s.group(1))
            for c in _RE_CMEM.finditer(line):
                entry.cmem[int(c.group(2))] = int(c.group(1))
            if (c := _RE_CUMSTACK.search(line)):
                entry.cumulative_stack = int(c.group(1))
            if (lm := _RE_LMEM.search(line)):
                entry.lmem = int(lm.group(1))
    return stats


_RE_EDG = re.compile(r"^(?P<loc>.*?\(\d+\)): (?P<sev>catastrophic error|error|warning|remark)"
                     r"(?P<code>[^:]*): (?P<msg>.*)$")
_RE_TOOL = re.compile(r"^(?P<tool>ptxas|nvcc|nvlink|fatbinary|cicc|nvrtc)\s+"
                      r"(?P<sev>info|warning|error|fatal)\s*:\s*(?P<msg>.*)$", re.I)
_RE_BARE = re.compile(r"^(?P<sev>error|fatal error|warning)\s*:\s*(?P<msg>.*)$", re.I)
_TOOLCHAIN_NOTE = re.compile(r"deprecated|will be removed|-Wno-deprecated", re.I)


def parse_diagnostics(log):
    """``(errors, warnings, notes)`` from a compiler log: front-end diagnostics
    (``file(12): warning #177-D: ...``), ``ptxas``/``nvcc`` warnings and errors and bare
    ``error: ...`` lines. Toolchain deprecation notices (``nvcc warning : ... deprecated``)
    go to ``notes``: they are about the compiler, not the kernels."""
    errors, warnings, notes = [], [], []
    for raw in log.splitlines():
        line = raw.strip()
        if not line:
            continue
        m = _RE_EDG.match(line)
        if m:
            sev = m.group("sev")
            text = f"{m.group('loc')}: {sev}{m.group('code')}: {m.group('msg')}"
            if "error" in sev:
                errors.append(text)
            elif sev == "warning":
                warnings.append(text)
            continue
        m = _RE_TOOL.match(line)
        if m:
            sev = m.group("sev").lower()
            text = f"{m.group('tool')} {sev}: {m.group('msg').strip()}"
            if sev in ("error", "fatal"):
                errors.append(text)
            elif sev == "warning":
                if m.group("tool").lower() == "nvcc" and _TOOLCHAIN_NOTE.search(line):
                    notes.append(text)
                else:
                    warnings.append(text)
            continue
        m = _RE_BARE.match(line)
        if m:
            (warnings if m.group("sev").lower() == "warning" else errors).append(line)
    return errors, warnings, notes


# --------------------------------------------------------------------------------------------
# The compilers.
# --------------------------------------------------------------------------------------------

_NVRTC_NAME = re.compile(r"^libnvrtc\.so(\.\d+)*$")


def _site_dirs():
    dirs = []
    try:
        import site
        dirs += list(site.getsitepackages())
        dirs.append(site.getusersitepackages())
    except Exception:  # noqa: BLE001 - virtualenvs without site helpers
        pass
    dirs += [p for p in sys.path if p]
    seen, out = set(), []
    for d in dirs:
        if d not in seen and os.path.isdir(d):
            seen.add(d)
            out.append(d)
    return out


def _libs_in(folder):
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    libs = [os.path.join(folder, n) for n in names if _NVRTC_NAME.match(n)]
    # libnvrtc.so.13 before libnvrtc.so (a dev symlink), highest version first
    return sorted(libs, key=lambda p: (p.count("."), p), reverse=True)


def nvrtc_candidates():
    """Where :func:`find_nvrtc` looks, in order (existing files only)."""
    cands = []
    for d in _site_dirs():
        for sub in ("nvidia/cuda_nvrtc/lib", "nvidia/cu13/lib", "nvidia/cu12/lib",
                    "nvidia/cuda_nvrtc/lib64"):
            cands += _libs_in(os.path.join(d, sub))
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home:
            cands += _libs_in(os.path.join(home, "lib64"))
            cands += _libs_in(os.path.join(home, "lib"))
    for home in sorted(glob.glob("/usr/local/cuda*"), reverse=True):
        cands += _libs_in(os.path.join(home, "lib64"))
        for t in glob.glob(os.path.join(home, "targets", "*", "lib")):
            cands += _libs_in(t)
    found = ctypes.util.find_library("nvrtc")
    if found:
        cands.append(found)
    seen, out = set(), []
    for c in cands:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def find_nvrtc():
    """Path of the NVRTC library to use (see the module docstring for the search order)."""
    env = os.environ.get("GPUCNN_NVRTC")
    if env:
        if os.path.isdir(env):
            libs = _libs_in(env)
            if libs:
                return libs[0]
            raise ToolchainUnavailable(f"$GPUCNN_NVRTC={env} is a folder without libnvrtc.so*")
        if os.path.exists(env):
            return env
        raise ToolchainUnavailable(f"$GPUCNN_NVRTC={env} does not exist")
    cands = nvrtc_candidates()
    if not cands:
        raise ToolchainUnavailable(
            "NVRTC (libnvrtc.so) was not found: pip install nvidia-cuda-nvrtc-cu12 (or the "
            "CUDA 13 wheel nvidia-cuda-nvrtc), or set $GPUCNN_NVRTC to the library's path. "
            "Looked in the site-packages folders nvidia/cuda_nvrtc/lib, nvidia/cu13/lib, "
            "$CUDA_HOME, /usr/local/cuda*/lib64 and the system library path.")
    return cands[0]


_NVRTC_ERRORS = {0: "NVRTC_SUCCESS", 1: "NVRTC_ERROR_OUT_OF_MEMORY",
                 2: "NVRTC_ERROR_PROGRAM_CREATION_FAILURE", 3: "NVRTC_ERROR_INVALID_INPUT",
                 4: "NVRTC_ERROR_INVALID_PROGRAM", 5: "NVRTC_ERROR_INVALID_OPTION",
                 6: "NVRTC_ERROR_COMPILATION", 7: "NVRTC_ERROR_BUILTIN_OPERATION_FAILURE"}


class Nvrtc:
    """The NVRTC C API through ``ctypes`` (no CUDA driver needed)."""

    def __init__(self, path=None):
        self.path = path or find_nvrtc()
        # NVRTC dlopen()s libnvrtc-builtins by soname; some wheels (CUDA 13) lack an $ORIGIN
        # runpath, so load the builtins next to the library first (already-loaded sonames
        # satisfy the later dlopen).
        folder = os.path.dirname(os.path.abspath(self.path))
        for b in sorted(glob.glob(os.path.join(folder, "libnvrtc-builtins.so*"))):
            if ".alt." not in os.path.basename(b):
                try:
                    ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    pass
        try:
            self.lib = ctypes.CDLL(self.path)
        except OSError as exc:
            raise ToolchainUnavailable(f"NVRTC at {self.path} could not be loaded: {exc}") from exc
        lib = self.lib
        P = ctypes.c_void_p
        cp = ctypes.c_char_p
        sz = ctypes.POINTER(ctypes.c_size_t)
        lib.nvrtcGetErrorString.restype = cp
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        lib.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int)] * 2
        lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(P), cp, cp, ctypes.c_int,
                                           ctypes.POINTER(cp), ctypes.POINTER(cp)]
        lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(P)]
        lib.nvrtcCompileProgram.argtypes = [P, ctypes.c_int, ctypes.POINTER(cp)]
        lib.nvrtcGetProgramLogSize.argtypes = [P, sz]
        lib.nvrtcGetProgramLog.argtypes = [P, ctypes.c_char_p]
        for f in ("nvrtcGetCUBINSize", "nvrtcGetPTXSize"):
            getattr(lib, f).argtypes = [P, sz]
        for f in ("nvrtcGetCUBIN", "nvrtcGetPTX"):
            getattr(lib, f).argtypes = [P, ctypes.c_char_p]
        for f in ("nvrtcCreateProgram", "nvrtcDestroyProgram", "nvrtcCompileProgram",
                  "nvrtcGetProgramLogSize", "nvrtcGetProgramLog", "nvrtcGetCUBINSize",
                  "nvrtcGetPTXSize", "nvrtcGetCUBIN", "nvrtcGetPTX", "nvrtcVersion"):
            getattr(lib, f).restype = ctypes.c_int
        self._lock = threading.Lock()

    def version(self):
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)),
                    "nvrtcVersion")
        return major.value, minor.value

    def supported_archs(self):
        """The ``sm_XX`` targets this NVRTC can build (empty when it cannot say)."""
        try:
            n = ctypes.c_int()
            if self.lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)) != 0:
                return []
            arr = (ctypes.c_int * n.value)()
            if self.lib.nvrtcGetSupportedArchs(arr) != 0:
                return []
            return [f"sm_{v}" for v in arr]
        except AttributeError:
            return []

    def error_string(self, rc):
        s = self.lib.nvrtcGetErrorString(rc)
        return s.decode() if s else _NVRTC_ERRORS.get(rc, f"NVRTC error {rc}")

    def _check(self, rc, what):
        if rc != 0:
            raise RuntimeError(f"{what} failed: {self.error_string(rc)}")

    def compile(self, source, name="kernel.cu", options=()):
        """Compile ``source``; returns ``(rc, rc_name, log, cubin_bytes_or_None)``.

        ``rc`` is ``nvrtcCompileProgram``'s result (0 on success). A cubin is produced when
        an ``sm_XX`` (real) architecture is given.
        """
        prog = ctypes.c_void_p()
        src = source.encode() if isinstance(source, str) else source
        self._check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), src, name.encode(), 0,
                                                None, None), "nvrtcCreateProgram")
        try:
            opts = [o.encode() for o in options]
            arr = (ctypes.c_char_p * max(1, len(opts)))(*opts)
            rc = self.lib.nvrtcCompileProgram(prog, len(opts), arr)
            n = ctypes.c_size_t()
            self._check(self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n)),
                        "nvrtcGetProgramLogSize")
            buf = ctypes.create_string_buffer(max(1, n.value))
            self._check(self.lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
            log = buf.value.decode(errors="replace")
            cubin = None
            if rc == 0:
                size = ctypes.c_size_t()
                if self.lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)) == 0 and size.value:
                    out = ctypes.create_string_buffer(size.value)
                    if self.lib.nvrtcGetCUBIN(prog, out) == 0:
                        cubin = out.raw
            return rc, self.error_string(rc), log, cubin
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


_nvrtc_lock = threading.Lock()
_nvrtc_cache: dict = {}


def get_nvrtc(path=None):
    """A process-wide :class:`Nvrtc` (one per library path)."""
    path = path or find_nvrtc()
    with _nvrtc_lock:
        if path not in _nvrtc_cache:
            _nvrtc_cache[path] = Nvrtc(path)
        return _nvrtc_cache[path]


def nvrtc_version_string():
    """``"12.9 (/path/to/libnvrtc.so.12)"``; raises :class:`ToolchainUnavailable`."""
    nv = get_nvrtc()
    return "%d.%d (%s)" % (*nv.version(), nv.path)


def find_nvcc():
    """Path of nvcc: ``$GPUCNN_NVCC``, ``PATH``, ``$CUDA_HOME/bin``, ``/usr/local/cuda*/bin``."""
    env = os.environ.get("GPUCNN_NVCC")
    if env:
        if os.path.exists(env):
            return env
        raise ToolchainUnavailable(f"$GPUCNN_NVCC={env} does not exist")
    w = shutil.which("nvcc")
    if w:
        return w
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    homes += sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for h in homes:
        if h and os.path.exists(os.path.join(h, "bin", "nvcc")):
            return os.path.join(h, "bin", "nvcc")
    raise ToolchainUnavailable(
        "nvcc was not found (not on PATH, $GPUCNN_NVCC, $CUDA_HOME/bin or /usr/local/cuda*/bin): "
        "install the CUDA toolkit's compiler (e.g. pip install nvidia-cuda-nvcc-cu12 and put "
        "its bin/ on PATH, or apt's nvidia-cuda-toolkit)")


def nvcc_version(nvcc=None):
    """``(major, minor)`` of nvcc, from ``nvcc --version``."""
    nvcc = nvcc or find_nvcc()
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    m = re.search(r"release (\d+)\.(\d+)", out.stdout + out.stderr)
    if not m:
        raise ToolchainUnavailable(f"{nvcc} --version gave no release number: "
                                   f"{(out.stdout + out.stderr).strip()[-300:]}")
    return int(m.group(1)), int(m.group(2))


@dataclasses.dataclass
class CompileResult:
    file: str
    target: str
    compiler: str                        # "nvrtc" or "nvcc"
    ok: bool = False                     # compiled (rc 0)
    unsupported: bool = False            # the compiler cannot build this target at all
    errors: list = dataclasses.field(default_factory=list)
    warnings: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    stats: dict = dataclasses.field(default_factory=dict)   # name -> KernelStats
    log: str = ""
    command: str = ""


def _include_opts(path):
    return [f"--include-path={Path(path).resolve().parent}"]


def nvrtc_options(target, path=None, extra=()):
    """The NVRTC options of the gate: the run-time options plus the target and ``ptxas -v``."""
    opts = [f"--gpu-architecture={target}", "--ptxas-options=-v", *NVRTC_OPTIONS]
    if path is not None:
        opts += _include_opts(path)
    return opts + list(extra)


def _finish(res, log, rc_ok, rc_desc):
    res.log = log
    res.errors, res.warnings, res.notes = parse_diagnostics(log)
    res.ok = rc_ok
    if not rc_ok and not res.errors:
        tail = " | ".join(log.strip().splitlines()[-5:])
        res.errors.append(f"{rc_desc}{': ' + tail if tail else ''}")
    res.stats = {name: st for (name, _t), st in parse_ptxas_log(log, res.target).items()}
    return res


def compile_nvrtc(path, target, nvrtc=None, extra_options=(), source=None):
    """Compile one ``.cu`` file with NVRTC for ``target`` (``sm_80``...) -> CompileResult."""
    path = Path(path)
    res = CompileResult(file=str(path), target=target, compiler="nvrtc")
    nv = nvrtc if isinstance(nvrtc, Nvrtc) else get_nvrtc(nvrtc)
    opts = nvrtc_options(target, path, extra_options)
    res.command = f"nvrtc({path.name}, {' '.join(opts)})"
    text = source if source is not None else path.read_text()
    rc, rc_name, log, _cubin = nv.compile(text, path.name, opts)
    if rc == 5 and "arch" in log.lower():      # NVRTC_ERROR_INVALID_OPTION for the target
        res.unsupported = True
    return _finish(res, log, rc == 0, f"NVRTC returned {rc_name}")


def compile_nvcc(path, target, nvcc=None, extra_options=(), timeout=600):
    """Compile one ``.cu`` file with ``nvcc -cubin -Xptxas -v`` for ``target`` -> CompileResult."""
    path = Path(path)
    res = CompileResult(file=str(path), target=target, compiler="nvcc")
    nvcc = nvcc or find_nvcc()
    with tempfile.TemporaryDirectory(prefix="gpucnn-nvcc-") as tmp:
        cmd = [nvcc, f"-arch={target}", "-cubin", "-Xptxas", "-v", "-std=c++17",
               "-Wno-deprecated-gpu-targets", f"-I{path.resolve().parent}",
               "-o", os.path.join(tmp, "out.cubin"), str(path), *extra_options]
        res.command = " ".join(cmd)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            res.errors.append(f"nvcc timed out after {timeout} s")
            return res
    log = (p.stdout or "") + (p.stderr or "")
    if p.returncode != 0 and re.search(r"Unsupported gpu architecture|"
                                       r"not defined for option 'gpu-architecture'|"
                                       r"Value '\w+' is not defined", log):
        res.unsupported = True
        res.log = log
        res.notes.append(f"nvcc does not support {target}: {log.strip().splitlines()[-1]}")
        return res
    return _finish(res, log, p.returncode == 0, f"nvcc exited with status {p.returncode}")


# --------------------------------------------------------------------------------------------
# Gates and records.
# --------------------------------------------------------------------------------------------

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
                     cmem=st.cmem.get(0), block=d.block, dyn_smem=d.dyn_smem)
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


def _default_sources():
    try:
        from gpucnn.backends.device import kernel_sources
    except ImportError:
        # device.py imports the other backend modules; fall back to the same search.
        here = Path(__file__).resolve().parent
        for d in (here / "kernels", here.parent / "kernels"):
            files = sorted(d.glob("*.cu"))
            if files:
                return files
        raise FileNotFoundError("gpucnn's CUDA sources (kernels/*.cu) were not found")
    return kernel_sources()


def collect(sources=None, targets=DEFAULT_NVRTC_TARGETS, nvcc_targets=(), use_nvrtc=True,
            jobs=None, nvrtc=None, nvcc=None):
    """Compile every source for every target and return ``(records, results)``.

    ``sources``: ``.cu`` paths (default :func:`gpucnn.backends.device.kernel_sources`);
    ``targets``: NVRTC targets (skipped when ``use_nvrtc`` is false); ``nvcc_targets``: nvcc
    targets (none by default). Raises :class:`ToolchainUnavailable` when a needed compiler is
    missing. ``jobs`` nvcc processes run at once (default 2, ``$GPUCNN_REPORT_JOBS``).
    """
    sources = [Path(s) for s in (sources if sources is not None else _default_sources())]
    if jobs is None:
        jobs = int(os.environ.get("GPUCNN_REPORT_JOBS", "2"))
    nv = get_nvrtc(nvrtc) if (use_nvrtc and targets) else None
    nvcc_path = (nvcc or find_nvcc()) if nvcc_targets else None
    texts = {s: s.read_text() for s in sources}
    decls = {s: parse_kernel_decls(texts[s], s.name) for s in sources}
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
    return records, results


def gate_failures(records):
    """``["file:kernel [compiler target]: problem", ...]`` for every failed gate."""
    out = []
    for r in records:
        for p in r.problems:
            where = r.file if r.kernel == "*" else f"{r.file}:{r.kernel}"
            out.append(f"{where} [{r.compiler} {r.target}]: {p}")
    return out


def _fmt_bytes(n):
    if n is None:
        return "-"
    return f"{n / 1024:.1f}K" if n >= 1024 else str(n)


def render_table(records):
    """A plain-text table of the records, failures listed below it."""
    head = ("kernel", "target", "compiler", "regs", "budget", "spill st/ld", "stack", "smem",
            "block", "occupancy", "gate")
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


def toolchain_info(use_nvrtc=True, use_nvcc=False):
    info = {}
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
        "ok": not gate_failures(records),
        "toolchain": toolchain or {},
        "sources": {Path(s).name: hashlib.sha256(Path(s).read_bytes()).hexdigest()[:16]
                    for s in srcs if Path(s).exists()},
        "records": [r.as_dict() for r in records],
        "failures": gate_failures(records),
    }


def _targets(s):
    return tuple(t.strip() if t.strip().startswith("sm_") else f"sm_{t.strip()}"
                 for t in s.split(",") if t.strip())


def main(argv=None):
    """``python -m gpucnn.kernel_report``; returns the exit status (0 ok, 1 gate failure,
    2 missing compiler or sources)."""
    ap = argparse.ArgumentParser(
        prog="python -m gpucnn.kernel_report",
        description="Compile the gpucnn CUDA kernels with NVRTC (and nvcc), gate them "
                    "(errors, warnings, spills, register budgets) and report registers, "
                    "shared memory and theoretical occupancy.")
    ap.add_argument("files", nargs="*", help=".cu files (default: every gpucnn kernel source)")
    ap.add_argument("--targets", type=_targets, default=DEFAULT_NVRTC_TARGETS,
                    help="NVRTC targets, comma separated (default: sm_80,sm_90)")
    ap.add_argument("--nvcc", action="store_true", help="also compile with nvcc")
    ap.add_argument("--nvcc-targets", type=_targets, default=DEFAULT_NVCC_TARGETS,
                    help="nvcc targets (default: sm_75,sm_80,sm_86,sm_90)")
    ap.add_argument("--no-nvrtc", action="store_true", help="skip NVRTC")
    ap.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    ap.add_argument("--jobs", type=int, default=None, help="parallel nvcc processes")
    ap.add_argument("--verbose", "-v", action="store_true", help="print the compiler logs")
    args = ap.parse_args(argv)
    use_nvrtc = not args.no_nvrtc
    try:
        records, results = collect(args.files or None, targets=args.targets if use_nvrtc else (),
                                   nvcc_targets=args.nvcc_targets if args.nvcc else (),
                                   use_nvrtc=use_nvrtc, jobs=args.jobs)
    except (ToolchainUnavailable, FileNotFoundError) as exc:
        print(f"gpucnn kernel report: {exc}", file=sys.stderr)
        return 2
    tc = toolchain_info(use_nvrtc, args.nvcc)
    for k, v in tc.items():
        print(f"{k}: {v.get('version', '?')} ({v.get('path', v.get('error'))})")
    if args.verbose:
        for r in results:
            print(f"\n=== {r.compiler} {r.target} {Path(r.file).name}: {r.command}\n{r.log}")
    print(render_table(records))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report_dict(records, results, tc), indent=2))
    return 1 if gate_failures(records) else 0


if __name__ == "__main__":
    sys.exit(main())
