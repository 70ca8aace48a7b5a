"""The CUDA emulator: run our unmodified ``.cu`` kernels on the CPU.

Each ``.cu`` file is compiled by g++ against :file:`cuda_emu.h` (force-included, ``-nostdinc``:
like NVRTC, no host header is reachable, so e.g. ``INFINITY`` does not exist), linked with the
runtime (:file:`emu_runtime.cpp`: fibers, block scheduler, barriers, warp ops, fault recovery)
into a shared library, cached under ``$GPUCNN_CACHE_DIR`` (default ``~/.cache/gpucnn/emu``) and
loaded with ctypes. Every cached file is checked before use and rebuilt when damaged
(:mod:`.cache`).

    mod = EmuModule(sources, order="forward", checks=False, seed=0, watchdog_s=20.0)
    f = mod.get_function("vec_add")
    f(grid, block, (x, y, out, np.int32(n)), shared_mem=0)

``sources``: list of ``.cu`` paths, or of source texts (a string containing a newline).
Arrays are NumPy arrays used in place as device memory; scalars must be NumPy scalars of the
parameter's exact type (see :mod:`gpucnn.toolchain.launch_args`).

``order``: how threads of a block run between barriers: "forward" (0..n-1), "reverse",
"random" (seeded shuffle per phase). ``checks``: guarded copies of the array arguments (an
out-of-bounds access faults and raises :class:`EmuMemoryError`), NaN-poisoned shared memory,
``poison_outputs`` for :class:`DeviceBackend`. Barrier deadlocks raise
:class:`EmuDeadlockError`, a launch running longer than ``watchdog_s`` :class:`EmuTimeoutError`.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import re
import signal
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from ...toolchain import check_launch_args, parse_kernels, parse_launch_bounds
from ...toolchain.limits import SMEM_PER_BLOCK_DEFAULT as DYN_SMEM_MAX
from . import cache
from .cache import cache_dir

__all__ = ["EmuModule", "EmuKernel", "emulator_info", "EmuError", "EmuBuildError",
           "EmuMemoryError", "EmuDeadlockError", "EmuTimeoutError", "EmuLaunchError",
           "EmuArithmeticError", "cache_dir", "ORDERS"]

_HERE = Path(__file__).resolve().parent
HEADER = _HERE / "cuda_emu.h"
RUNTIME = _HERE / "emu_runtime.cpp"
ORDERS = {"forward": 0, "reverse": 1, "random": 2}
ABI = 2

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
RUNTIME_FLAGS = ["-std=gnu++17", "-pthread"]
LINK_FLAGS = ["-shared", "-pthread", "-Wl,-z,noexecstack"]
# Names the runtime defines as thread-local; everything else thread-local in a kernel object is
# __shared__ storage.
_RUNTIME_TLS = {"__emu_ctx", "__emu_dyn_smem"}


class EmuError(RuntimeError):
    """A kernel failed on the emulator."""


class EmuBuildError(EmuError):
    """g++ rejected a kernel source (message has the compiler output)."""


class EmuMemoryError(EmuError):
    """Invalid memory access (out of bounds of an argument buffer, wild pointer, stack overflow)."""


class EmuDeadlockError(EmuError):
    """Barrier deadlock / divergent barrier / warp operation waiting for lanes that never come."""


class EmuTimeoutError(EmuError):
    """The launch ran longer than watchdog_s (e.g. a hung spin loop)."""


class EmuArithmeticError(EmuError):
    """SIGFPE in a kernel: integer division by zero (silently undefined on a GPU)."""


class EmuLaunchError(EmuError):
    """Invalid launch configuration, __trap(), ..."""


class _Err(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("signo", ctypes.c_int),
                ("block", ctypes.c_uint * 3), ("thread", ctypes.c_uint * 3),
                ("addr", ctypes.c_ulonglong), ("msg", ctypes.c_char * 2048)]


_lock = threading.Lock()
_compiler_id = None


def _compiler_version():
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
        d = json.loads(side.read_text())
        return set(d["undef"]), [tuple(x) for x in d["defined"]]
    except (OSError, ValueError, KeyError):
        pass
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


class _Built:
    """A loaded shared library plus what we know about it."""

    def __init__(self, path: Path, kernels: dict, poison, has_dyn):
        try:
            self._load(path, kernels, poison, has_dyn)
        except (OSError, AttributeError) as e:  # dlopen failed, or a symbol is missing
            raise EmuBuildError(f"emu: cannot load the module {path}: {e}") from None

    def _load(self, path, kernels, poison, has_dyn):
        self.path = path
        self.has_dyn = has_dyn      # some kernel uses extern __shared__
        self.lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL)
        self.kernels = kernels      # name -> (params, source)
        self.launch = self.lib["gpucnn_emu_launch"]
        self.launch.restype = ctypes.c_int
        self.launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_void_p, ctypes.c_ulonglong, ctypes.c_int,
                                ctypes.c_ulonglong, ctypes.c_int, ctypes.c_double,
                                ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                ctypes.POINTER(_Err)]
        self.guard_alloc = self.lib["gpucnn_emu_guard_alloc"]
        self.guard_alloc.restype = ctypes.c_void_p
        self.guard_alloc.argtypes = [ctypes.c_ulonglong, ctypes.c_ulonglong,
                                     ctypes.POINTER(ctypes.c_void_p),
                                     ctypes.POINTER(ctypes.c_ulonglong)]
        self.guard_free = self.lib["gpucnn_emu_guard_free"]
        self.guard_free.restype = None
        self.guard_free.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong]
        self.cpu_ns = self.lib["gpucnn_emu_last_cpu_ns"]
        self.cpu_ns.restype = ctypes.c_longlong
        self.cpu_ns.argtypes = []
        self.poison = np.ascontiguousarray(np.array(poison, dtype=np.int64).reshape(-1))
        self.npoison = len(poison)
        self.tramps = {name: ctypes.cast(self.lib["__emu_k_" + name], ctypes.c_void_p).value
                       for name in kernels}


_VECTOR_RE = re.compile(r"\b(float4|int4|uint4|double2|float2|int2|uint2)\b")
_loaded = {}   # (.so path, sha256) -> _Built (a library is loaded once per process)


def _build(sources, retry=True) -> _Built:
    cdir = cache_dir()
    objdir = cdir / "obj"
    srcdir = cdir / "src"
    header = HEADER.read_bytes()
    runtime = RUNTIME.read_bytes()
    cver = _compiler_version()
    kflags = COMMON_FLAGS + KERNEL_FLAGS
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
            ks = parse_kernels(text)
        except ValueError as e:
            raise EmuBuildError(f"emu: {p}: {e}") from None
        bounds = parse_launch_bounds(text)
        vector_sources[str(p)] = bool(_VECTOR_RE.search(text))
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
        tmp = cdir / f".{so.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            _run_compiler([CXX] + LINK_FLAGS + [str(o) for o in all_objs]
                          + ["-o", str(tmp), "-lm"], f"(link of {so})")
        except EmuBuildError as e:
            return _rebuild_once(sources, so, all_objs, retry, e)
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
        m = {"poison": [list(r) for r in sorted(set(poison))], "has_dyn": bool(ext_shared),
             "size": len(data), "sha256": cache.digest(data)}
        _atomic_write_text(meta, json.dumps(m))
        os.replace(tmp, so)
    # Keyed by content too: a library rebuilt under the same name is a new one.
    built = _loaded.get((so, m["sha256"]))
    if built is None:
        try:
            built = _Built(so, kernels, [tuple(x) for x in m["poison"]], m["has_dyn"])
        except EmuBuildError as e:
            return _rebuild_once(sources, so, all_objs, retry, e)
        built.vector_sources = vector_sources
        _loaded[(so, m["sha256"])] = built
    return built


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
    return _build(sources, retry=False)


def _as_dim3(v, what):
    if isinstance(v, (int, np.integer)):
        t = (int(v), 1, 1)
    else:
        t = tuple(int(x) for x in v)
        if not 1 <= len(t) <= 3:
            raise ValueError(f"{what} must be an int or a tuple of 1..3 ints, got {v!r}")
        t = t + (1,) * (3 - len(t))
    if any(x < 1 for x in t):
        raise ValueError(f"{what} must be positive, got {v!r}")
    return t


_SCALAR_CTYPES = {
    np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
    np.dtype(np.int32): ctypes.c_int32, np.dtype(np.uint32): ctypes.c_uint32,
    np.dtype(np.int64): ctypes.c_int64, np.dtype(np.uint64): ctypes.c_uint64,
    np.dtype(np.int16): ctypes.c_int16, np.dtype(np.uint16): ctypes.c_uint16,
    np.dtype(np.int8): ctypes.c_int8, np.dtype(np.uint8): ctypes.c_uint8,
    np.dtype(np.bool_): ctypes.c_bool,
}
_KIND_ERRORS = {1: EmuMemoryError, 2: EmuDeadlockError, 3: EmuTimeoutError, 4: EmuLaunchError,
                5: EmuLaunchError, 6: EmuMemoryError}


class EmuKernel:
    """A launchable kernel: ``k(grid, block, args, shared_mem=0)``."""

    def __init__(self, module, name, params, source, max_threads=None):
        self.module = module
        self.max_threads = max_threads    # from __launch_bounds__, if any
        self.name = name
        self.params = params
        self.source = source
        self._tramp = module._built.tramps[name]
        self.last_cpu_s = 0.0   # CPU seconds the emulator's workers spent in the last launch
        # Guarded copies normally end exactly at a guard page (their start may then be only
        # 4-byte aligned). A kernel whose source uses 16-byte vector types gets 16-byte aligned
        # copies instead (a past-the-end write within the last 16 bytes is then found by a
        # canary check, a read there sees NaN).
        self.align = 16 if module._built.vector_sources.get(str(source)) else 1

    def __repr__(self):
        return f"<EmuKernel {self.name} from {self.source}>"

    def __call__(self, grid, block, args, shared_mem=0, **kw):
        mod = self.module
        if kw:
            # accept cupy's keyword spelling too
            shared_mem = kw.pop("shared_mem", shared_mem)
            if kw:
                raise TypeError(f"unexpected keyword arguments {sorted(kw)}")
        vals = check_launch_args(self.name, self.params, args)
        g = _as_dim3(grid, "grid")
        b = _as_dim3(block, "block")
        nthreads = b[0] * b[1] * b[2]
        if self.max_threads is not None and nthreads > self.max_threads:
            raise EmuLaunchError(f"kernel {self.name}: block={b} has {nthreads} threads but the "
                                 f"kernel is declared __launch_bounds__({self.max_threads}); CUDA "
                                 f"refuses this launch")
        shared_mem = int(shared_mem)
        if shared_mem < 0 or shared_mem > DYN_SMEM_MAX:
            raise ValueError(f"kernel {self.name}: shared_mem={shared_mem} outside "
                             f"0..{DYN_SMEM_MAX}")
        built = mod._built
        n = len(vals)
        slots = []            # ctypes objects holding each argument's value
        guards = []           # (param index, array, data ptr, base, total, nbytes)
        ranges = []           # (param, lo, hi) of what each pointer points to
        by_buffer = {}
        try:
            for p, v in zip(self.params, vals):
                if p.is_pointer:
                    if not isinstance(v, np.ndarray):
                        raise TypeError(f"kernel {self.name}: argument {p.index} ({p.name}): the "
                                        f"emulator needs NumPy arrays, got {type(v).__name__}")
                    addr = v.ctypes.data
                    nbytes = v.nbytes
                    if mod.checks:
                        key = (addr, nbytes)
                        if key in by_buffer:
                            ptr = by_buffer[key]
                        else:
                            base = ctypes.c_void_p()
                            total = ctypes.c_ulonglong()
                            ptr = built.guard_alloc(nbytes, self.align, ctypes.byref(base),
                                                    ctypes.byref(total))
                            if not ptr:
                                raise MemoryError("emu: could not map a guarded buffer")
                            if nbytes:
                                ctypes.memmove(ptr, addr, nbytes)
                            guards.append((p, v, ptr, base.value, total.value, nbytes))
                            by_buffer[key] = ptr
                        ranges.append((p, v, ptr, nbytes))
                        slots.append(ctypes.c_void_p(ptr))
                    else:
                        ranges.append((p, v, addr, nbytes))
                        slots.append(ctypes.c_void_p(addr))
                else:
                    slots.append(_SCALAR_CTYPES[p.dtype](v.item()))
            argv = (ctypes.c_void_p * max(n, 1))(*[ctypes.addressof(s) for s in slots])
            g3 = (ctypes.c_uint * 3)(*g)
            b3 = (ctypes.c_uint * 3)(*b)
            err = _Err()
            rc = built.launch(self._tramp, argv, g3, b3, shared_mem, mod._order, mod.seed,
                              (1 | (2 if built.has_dyn else 0)) if mod.checks else 0,
                              float(mod.watchdog_s),
                              built.poison.ctypes.data if built.npoison else None,
                              built.npoison, mod.workers, ctypes.byref(err))
            self.last_cpu_s = built.cpu_ns() * 1e-9
            if rc == 0 and mod.checks:
                for p, v, ptr, base, total, nbytes in guards:
                    self._check_canaries(p, v, ptr, base, total, nbytes, g, b)
                for p, v, ptr, base, total, nbytes in guards:
                    if nbytes and v.flags.writeable:
                        ctypes.memmove(v.ctypes.data, ptr, nbytes)
            if rc != 0:
                raise self._error(rc, err, g, b, ranges, shared_mem)
        finally:
            for p, v, ptr, base, total, nbytes in guards:
                built.guard_free(base, total)

    def _check_canaries(self, p, v, ptr, base, total, nbytes, g, b):
        page = mmap_page()
        pad = ptr - base - page
        what = f"argument {p.index} ({p.ctype} {p.name}, {v.size} elements of {v.dtype})"
        if pad > 0:
            raw = ctypes.string_at(base + page, pad)
            if raw != b"\xff" * pad:
                first = next(i for i, c in enumerate(raw) if c != 0xFF)
                raise EmuMemoryError(
                    f"kernel {self.name} grid={g} block={b}: out-of-bounds write before the start "
                    f"of {what}: byte {pad - first} before element 0 was modified")
        end = ptr + nbytes
        tail = base + total - page - end
        if tail > 0:
            raw = ctypes.string_at(end, tail)
            if raw != b"\xff" * tail:
                first = next(i for i, c in enumerate(raw) if c != 0xFF)
                raise EmuMemoryError(
                    f"kernel {self.name} grid={g} block={b}: out-of-bounds write past the end of "
                    f"{what}: byte {first} past the end was modified")

    def _error(self, rc, err, g, b, ranges, shared_mem):
        msg = err.msg.decode(errors="replace")
        cls = _KIND_ERRORS.get(rc, EmuError)
        where = (f"kernel {self.name} grid={g} block={b} shared_mem={shared_mem}, "
                 f"block ({err.block[0]},{err.block[1]},{err.block[2]}) "
                 f"thread ({err.thread[0]},{err.thread[1]},{err.thread[2]})")
        if rc == 5:
            return EmuLaunchError(f"kernel {self.name}: {msg}")
        if rc == 6:
            return EmuMemoryError(f"kernel {self.name} grid={g} block={b} shared_mem={shared_mem}, "
                                  f"block ({err.block[0]},{err.block[1]},{err.block[2]}): {msg}")
        if rc == 3:
            return EmuTimeoutError(f"{where}: watchdog: the launch ran longer than "
                                   f"watchdog_s={self.module.watchdog_s} s (hung spin loop?); "
                                   f"{msg}. The launch was abandoned")
        if rc == 1 and err.signo == signal.SIGFPE:
            return EmuArithmeticError(f"{where}: {msg}. The launch was abandoned")
        if rc == 1:
            near = ("" if "stack overflow" in msg
                    else _describe_addr(err.addr, ranges, self.module.checks))
            return EmuMemoryError(f"{where}: {msg}{near}. The launch was abandoned")
        return cls(f"{where}: {msg}")


_page = None


def mmap_page():
    global _page
    if _page is None:
        _page = os.sysconf("SC_PAGESIZE")
    return _page


def _describe_addr(addr, ranges, checks):
    if not addr:
        return ""
    best = None
    for p, v, ptr, nbytes in ranges:
        item = v.itemsize or 1
        if ptr <= addr < ptr + max(nbytes, 1) and nbytes:
            d = (f" -- inside argument {p.index} ({p.ctype} {p.name}) at element "
                 f"{(addr - ptr) // item}")
            return d
        if addr >= ptr + nbytes:
            dist = addr - (ptr + nbytes)
            txt = (f" -- {dist} bytes past the end of argument {p.index} ({p.ctype} {p.name}, "
                   f"{v.size} elements of {v.dtype}): element index {(addr - ptr) // item}")
        else:
            dist = ptr - addr
            txt = (f" -- {dist} bytes before the start of argument {p.index} ({p.ctype} {p.name}, "
                   f"{v.size} elements of {v.dtype}): element index -{-((addr - ptr) // item)}")
        if best is None or dist < best[0]:
            best = (dist, txt)
    if best is None or (not checks and best[0] > 1 << 20):
        return "" if best is None else " (not near any argument buffer)"
    if checks and best[0] > 2 * mmap_page():
        return " (not near any argument buffer)"
    return best[1]


def emulator_info() -> str:
    """One line for ``gpucnn info``: compiler, cache, model. Builds nothing."""
    try:
        cver = _compiler_version().splitlines()[0]
    except EmuError as e:
        cver = f"no compiler ({e})"
    cdir = cache.configured_dir()
    return (f"g++ fibers (one per CUDA thread, 64 KiB stacks), up to "
            f"{os.environ.get('GPUCNN_EMU_WORKERS', '2')} worker threads; compiler: {cver}; "
            f"cache: {cdir}")


class EmuModule:
    """The emulator's counterpart of ``cupy.RawModule``."""

    def __init__(self, sources, order="forward", checks=False, seed=0, watchdog_s=None,
                 workers=None):
        if watchdog_s is None:
            watchdog_s = float(os.environ.get("GPUCNN_EMU_WATCHDOG_S", "20"))
        if platform.machine() not in ("x86_64", "AMD64"):
            raise EmuError(f"the CUDA emulator needs an x86-64 CPU (its fiber switch is x86-64 "
                           f"assembly); this is {platform.machine()}")
        if isinstance(sources, (str, Path)):
            sources = [sources]
        if order not in ORDERS:
            raise ValueError(f"order must be one of {sorted(ORDERS)}, got {order!r}")
        self.sources = list(sources)
        self.order = order
        self._order = ORDERS[order]
        self.checks = bool(checks)
        self.poison_outputs = self.checks
        self.seed = int(seed) & (2**64 - 1)
        self.watchdog_s = float(watchdog_s)
        self.workers = int(workers if workers is not None
                           else os.environ.get("GPUCNN_EMU_WORKERS", "2"))
        with _lock:
            built = _build(self.sources)
            self._built = built
        self._functions = {}

    @property
    def kernel_names(self):
        return sorted(self._built.kernels)

    def get_function(self, name):
        f = self._functions.get(name)
        if f is None:
            if name not in self._built.kernels:
                raise AttributeError(f"emu: no kernel named {name!r} in {self.sources} "
                                     f"(kernels: {', '.join(self.kernel_names)})")
            params, src, bounds = self._built.kernels[name]
            f = self._functions[name] = EmuKernel(self, name, params, src, bounds)
        return f
