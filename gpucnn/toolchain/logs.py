"""What the CUDA compilers print: ``ptxas -v`` resource lines (registers, spills, stack,
shared and constant memory per kernel) and diagnostics (errors, warnings, notes), from NVRTC
and nvcc logs alike."""
from __future__ import annotations

import dataclasses
import re

__all__ = ["KernelStats", "parse_ptxas_log", "parse_diagnostics"]


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
