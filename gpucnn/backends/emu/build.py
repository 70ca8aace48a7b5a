"""Building a module: each ``.cu`` compiled by g++ against :file:`cuda_emu.h` with a generated
trampoline per kernel, the runtime (:file:`emu_runtime.cpp`) and a generated assembly file for
dynamic shared memory, linked into one shared library; every output cached (:mod:`.cache`) and
keyed by what it was built from."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

from ...cpu import native
from ...filerules import parse_json
from ...toolchain import parse_kernels, parse_launch_bounds, with_local_headers
from ...toolchain.includes import uses_tensor_cores
from . import cache
from .cache import cache_dir
from .faults import EmuBuildError
from .runtime import ABI, DEFINES, DYN_SMEM_MAX, Library

__all__ = ["HEADER", "RUNTIME", "CXX", "COMMON_FLAGS", "KERNEL_FLAGS", "RUNTIME_FLAGS",
           "LINK_FLAGS", "compiler_version", "build_library"]

_HERE = Path(__file__).resolve().parent
HEADER = _HERE / "cuda_emu.h"
RUNTIME = _HERE / "emu_runtime.cpp"
CXX = os.environ.get("GPUCNN_EMU_CXX", "g++")


def _cpu_flags():
    """-mfma / -mavx2 when this CPU has them (the flags are part of every cache key)."""
    try:
        with open("/proc/cpuinfo") as f:
            words = set()
            for line in f:
                if line.startswith("flags"):
                    words = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return []
    return [f"-m{x}" for x in ("avx2", "fma") if x in words]


# -O2 not -O3 (path splitting duplicates barrier calls); -mfma so fmaf is one instruction;
# hidden visibility + no gnu-unique so separately loaded modules never share statics;
# TLS descriptors (gnu2) make thread-local lookups (threadIdx, __shared__) cheaper.
COMMON_FLAGS = ["-O2", *_cpu_flags(), "-mtls-dialect=gnu2", "-fPIC", "-fvisibility=hidden",
                "-fno-gnu-unique", "-fno-math-errno", "-fno-strict-aliasing", "-fno-exceptions",
                "-fno-stack-protector"]
# -fstack-clash-protection: a big local array probes the stack page by page, so it hits the
# fiber's guard page (an error) instead of jumping over it into other memory.
KERNEL_FLAGS = ["-std=gnu++17", "-fno-rtti", "-fstack-clash-protection", "-nostdinc",
                "-include", str(HEADER)]
RUNTIME_FLAGS = ["-std=gnu++17", "-pthread", *native.define_flags(DEFINES)]
LINK_FLAGS = ["-shared", "-pthread", "-Wl,-z,noexecstack"]
# Names the runtime defines as thread-local; everything else thread-local in a kernel object is
# __shared__ storage.
_RUNTIME_TLS = {"__emu_ctx", "__emu_dyn_smem"}


_compiler_id = None


def compiler_version():
    """``$CXX --version`` (part of every cache key); EmuBuildError without a compiler."""
    global _compiler_id
    if _compiler_id is None:
        try:
            _compiler_id = subprocess.run([CXX, "--version"], capture_output=True, text=True,
                                          check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise EmuBuildError(f"the emulator needs a C++ compiler ({CXX}): {e}") from None
    return _compiler_id


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _atomic_write_text(path: Path, text: str):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_if_changed(path: Path, text: str):
    """A generated source in the cache, rewritten when missing or damaged (a damaged one
    would otherwise fail the build forever)."""
    try:
        if path.read_text() == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    _atomic_write_text(path, text)


def _needs_build(obj: Path) -> bool:
    """True when the cached object must be compiled: missing, or damaged (then removed, with
    a warning naming it)."""
    reason = cache.problem(obj, "object")
    if reason is None:
        return False
    if reason != "missing":
        cache.rebuild_warning(obj, reason)
        cache.discard(obj, ".tls.json")
    return True


def _run_compiler(cmd, what):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise EmuBuildError(f"emu: compiling {what} failed:\n{r.stderr.strip()}\n"
                            f"(command: {' '.join(cmd)})")
    return r.stderr


def _compile_many(jobs, parallel=2):
    """jobs: list of (cmd, tmp_out, final_out, what); compile up to `parallel` at a time."""
    pending = list(jobs)
    running = []
    errors = []
    while pending or running:
        while pending and len(running) < parallel:
            cmd, tmp, final, what = pending.pop(0)
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            running.append((p, cmd, tmp, final, what))
        p, cmd, tmp, final, what = running.pop(0)
        _, err = p.communicate()
        if p.returncode != 0:
            errors.append(f"emu: compiling {what} failed:\n{err.strip()}")
            try:
                os.unlink(tmp)
            except OSError:
                pass
        else:
            cache.publish(tmp, final)
    if errors:
        raise EmuBuildError("\n\n".join(errors))


_TRAMP_PRELUDE = r"""
namespace {
template <int I, class... A> struct __emu_nth;
template <class H, class... T> struct __emu_nth<0, H, T...> { typedef H type; };
template <int I, class H, class... T> struct __emu_nth<I, H, T...> { typedef typename __emu_nth<I - 1, T...>::type type; };
template <int I, class F> struct __emu_arg;
template <int I, class... A> struct __emu_arg<I, void (*)(A...)> { typedef typename __emu_nth<I, A...>::type type; };
}
"""


def _wrapper_text(src_path: Path, kernels: dict) -> str:
    lines = [f'#include "{src_path}"', _TRAMP_PRELUDE]
    for name, params in kernels.items():
        a = ", ".join(f"*(typename __emu_arg<{i}, decltype(&{name})>::type*)a[{i}]"
                      for i in range(len(params)))
        lines.append(f'extern "C" __attribute__((visibility("default"))) '
                     f"void __emu_k_{name}(void** a) {{ {name}({a}); }}")
    return "\n".join(lines) + "\n"


def _readelf_tls(path: Path):
    """(undefined TLS names, [(name, value, size, section)] defined TLS symbols)."""
    r = subprocess.run(["readelf", "-sW", str(path)], capture_output=True, text=True)
    undef, defined = set(), []
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) >= 8 and f[3] == "TLS":
            name = f[7]
            if f[6] == "UND":
                undef.add(name)
            else:
                defined.append((name, int(f[1], 16), int(f[2], 0) if not f[2].startswith("0x")
                                else int(f[2], 16), f[6]))
    return undef, defined


def _obj_tls(obj: Path):
    """_readelf_tls of a cached object, itself cached in a sidecar file."""
    side = obj.with_suffix(".tls.json")
    try:
        if side.stat().st_size > 1 << 20:
            raise ValueError("oversized")
        d = parse_json(side.read_bytes(), side.name, ValueError, 1 << 20)
        undef, defined = set(d["undef"]), [tuple(x) for x in d["defined"]]
        # Names go into generated assembly: anything but symbol names is a damaged file.
        if not all(isinstance(n, str) and _SYMBOL_RE.fullmatch(n) for n in undef) or not all(
                x and all(isinstance(v, (str, int)) for v in x) and isinstance(x[0], str)
                and _SYMBOL_RE.fullmatch(x[0]) for x in defined):
            raise ValueError("not a symbol table")
        return undef, defined
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing or damaged: read the object again
    undef, defined = _readelf_tls(obj)
    _atomic_write_text(side, json.dumps({"undef": sorted(undef), "defined": defined}))
    return undef, defined


def _dyn_smem_asm(names) -> str:
    out = ['\t.section .tbss,"awT",@nobits', "\t.p2align 6",
           "\t.globl __emu_dyn_smem", "\t.hidden __emu_dyn_smem",
           "\t.type __emu_dyn_smem,@object", f"\t.size __emu_dyn_smem,{DYN_SMEM_MAX}"]
    for n in sorted(names):
        out += [f"\t.globl {n}", f"\t.hidden {n}", f"\t.type {n},@object",
                f"\t.size {n},{DYN_SMEM_MAX}"]
    out.append("__emu_dyn_smem:")
    out += [f"{n}:" for n in sorted(names)]
    out += [f"\t.zero {DYN_SMEM_MAX}", '\t.section .note.GNU-stack,"",@progbits', ""]
    return "\n".join(out)


_SYMBOL_RE = re.compile(r"[A-Za-z_.$][\w.$]*")
_VECTOR_RE = re.compile(r"\b(float4|int4|uint4|double2|float2|int2|uint2)\b")


def copy_alignment(text):
    """The alignment of a source's guarded argument copies (checks on): 32 bytes where it
    uses WMMA (its loads and stores need 256-bit aligned pointers), 16 where it uses vector
    types (g++ emits aligned vector moves), else none: the copy ends at the guard page."""
    return 32 if uses_tensor_cores(text) else 16 if _VECTOR_RE.search(text) else 1
_loaded = {}   # (.so path, sha256) -> Library (a library is loaded once per process)


def build_library(sources, retry=True) -> Library:
    """The loaded module library of ``sources`` (paths or source texts), built or taken from
    the cache."""
    cdir = cache_dir()
    objdir = cdir / "obj"
    header = HEADER.read_bytes()
    runtime = RUNTIME.read_bytes()
    cver = compiler_version()
    kflags = COMMON_FLAGS + KERNEL_FLAGS
    paths = _source_paths(sources, cdir / "src")
    kernels = {}
    vector_sources = {}
    objs = []
    jobs = []
    for p in paths:
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise EmuBuildError(f"emu: cannot read kernel source {p}: {e}") from None
        try:
            full = with_local_headers(text, [p.parent])   # the macros its headers define
            ks = parse_kernels(full)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise EmuBuildError(f"emu: {p}: {e}") from None
        bounds = parse_launch_bounds(full)
        vector_sources[str(p)] = copy_alignment(full)
        for k, params in ks.items():
            if k in kernels:
                raise EmuBuildError(f"emu: kernel {k} is defined in both {kernels[k][1]} and {p}")
            kernels[k] = (params, p, bounds.get(k))
        wrapper = _wrapper_text(p, ks)
        siblings = sorted(q for q in p.parent.iterdir()
                          if q.suffix in (".cuh", ".h", ".hpp") and q.is_file())
        key = _sha(ABI, cver, kflags, header, text, wrapper,
                   *[q.name.encode() + q.read_bytes() for q in siblings])
        obj = objdir / f"k_{p.stem[:40]}_{key}.o"
        objs.append(obj)
        if _needs_build(obj):
            wpath = objdir / f"k_{key}.wrap.cpp"
            _write_if_changed(wpath, wrapper)
            tmp = objdir / f".{obj.name}.{os.getpid()}.{threading.get_ident()}.tmp"
            jobs.append(([CXX] + kflags + ["-c", str(wpath), "-o", str(tmp)], tmp, obj, str(p)))
    rkey = _sha(ABI, cver, COMMON_FLAGS, RUNTIME_FLAGS, runtime, header)
    robj = objdir / f"rt_{rkey}.o"
    if _needs_build(robj):
        tmp = objdir / f".{robj.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        jobs.append(([CXX] + COMMON_FLAGS + RUNTIME_FLAGS + ["-c", str(RUNTIME), "-o", str(tmp)],
                     tmp, robj, "the emulator runtime"))
    _compile_many(jobs)

    # extern __shared__ names: undefined thread-local symbols of the kernel objects
    ext_shared = set()
    static_shared = set()
    for o in objs:
        undef, defined = _obj_tls(o)
        ext_shared |= {u for u in undef - _RUNTIME_TLS if not u.startswith("_TLS_")}
        static_shared |= {d[0] for d in defined} - _RUNTIME_TLS
    asm = _dyn_smem_asm(ext_shared)
    akey = _sha(ABI, cver, asm)
    aobj = objdir / f"smem_{akey}.o"
    if _needs_build(aobj):
        apath = objdir / f"smem_{akey}.s"
        _write_if_changed(apath, asm)
        tmp = objdir / f".{aobj.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        _compile_many([([CXX, "-c", str(apath), "-o", str(tmp)], tmp, aobj, "shared memory")])

    all_objs = [robj] + objs + [aobj]
    mkey = _sha(ABI, cver, LINK_FLAGS, *[o.name for o in all_objs])
    so = cdir / f"mod_{mkey}.so"
    meta = cdir / f"mod_{mkey}.json"
    m = cache.module_record(meta)
    reason = "missing" if m is None else cache.problem(so, "library", m)
    if reason is not None:
        if reason != "missing":
            cache.rebuild_warning(so, reason)
        try:
            m = _link(all_objs, so, meta, static_shared, bool(ext_shared))
        except EmuBuildError as e:
            return _rebuild_once(sources, so, all_objs, retry, e)
    # Keyed by content too: a library rebuilt under the same name is a new one.
    built = _loaded.get((so, m["sha256"]))
    if built is None:
        try:
            built = Library(so, kernels, [tuple(x) for x in m["poison"]], m["has_dyn"],
                            vector_sources)
        except EmuBuildError as e:
            return _rebuild_once(sources, so, all_objs, retry, e)
        built.check_facts()  # not retried: a mismatch is in the sources, not the cache
        _loaded[(so, m["sha256"])] = built
    return built


def _source_paths(sources, srcdir):
    """The path of each source: a path as given, a source text written to the cache."""
    paths = []
    for s in sources:
        if isinstance(s, Path) or ("\n" not in str(s) and "{" not in str(s)):
            p = Path(s).resolve()
            if not p.is_file():
                raise FileNotFoundError(f"emu: kernel source {s} not found")
            paths.append(p)
        else:
            p = srcdir / f"src_{_sha(s)}.cu"
            _write_if_changed(p, s)
            paths.append(p)
    return paths


def _link(objs, so, meta, static_shared, has_dyn) -> dict:
    """Link ``so`` and write its record ``meta``, which it returns: size, digest, has_dyn and
    where the static __shared__ variables lie (``poison``)."""
    tmp = so.parent / f".{so.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    _run_compiler([CXX] + LINK_FLAGS + [str(o) for o in objs] + ["-o", str(tmp), "-lm"],
                  f"(link of {so})")
    # static __shared__ variables: thread-local symbols other than the runtime's; offsets
    # are relative to the module's TLS block -> make them relative to __emu_dyn_smem.
    _, defined = _readelf_tls(tmp)
    base = [v for n, v, s, sec in defined if n == "__emu_dyn_smem"]
    poison = []
    if base:
        for n, v, s, sec in defined:
            if n not in static_shared or s == 0:
                continue
            poison.append((v - base[0], s))
    data = tmp.read_bytes()
    m = {"poison": [list(r) for r in sorted(set(poison))], "has_dyn": has_dyn,
         "size": len(data), "sha256": cache.digest(data)}
    _atomic_write_text(meta, json.dumps(m))
    os.replace(tmp, so)
    return m


def _rebuild_once(sources, so, objs, retry, error):
    """After a link or load failure: an object that passed its checks can still be bad (one
    cached before digests were recorded, from elsewhere), so build everything of this module
    afresh, once; a second failure is a real error and raised."""
    if not retry:
        raise error
    lines = str(error).strip().splitlines() or [type(error).__name__]
    detail = lines[min(1, len(lines) - 1)][:200]  # the linker's first message, if any
    warnings.warn(f"emu: {so} failed to link or load from the cached objects ({detail}); "
                  f"rebuilding all of them once", RuntimeWarning, stacklevel=4)
    cache.discard(so, ".json")
    for o in objs:
        cache.discard(o, ".tls.json")
    return build_library(sources, retry=False)
