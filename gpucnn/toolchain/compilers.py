"""The CUDA compilers, found and driven without a GPU: NVRTC (the compiler CuPy uses at run
time) through ``ctypes`` (CuPy's own compile path needs a CUDA driver), and nvcc (``-cubin``),
both with ``ptxas -v`` so the log carries each kernel's resources.

:data:`COMPILE_OPTIONS` are the options of every gpucnn kernel, at run time (the ``cuda``
backend) and in the compile gates alike, so the gates check exactly what CuPy will build.

Where the compilers come from: NVRTC is ``$GPUCNN_NVRTC`` (a ``libnvrtc.so*`` file or a folder
holding one), else the pip wheel (``nvidia-cuda-nvrtc-cu12``: ``nvidia/cuda_nvrtc/lib``; the
CUDA 13 wheels: ``nvidia/cu13/lib``), else a CUDA toolkit (``$CUDA_HOME``, ``/usr/local/cuda*``).
nvcc is ``$GPUCNN_NVCC``, else ``nvcc`` on ``PATH``, else a toolkit's ``bin/nvcc``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from .logs import parse_diagnostics, parse_ptxas_log
from .includes import uses_tensor_cores, with_local_headers

__all__ = ["find_cuda_tool", "COMPILE_OPTIONS", "CUPY_ADDED_OPTIONS", "RUNTIME_OPTIONS", "nvrtc_by_major",
           "ToolchainUnavailable", "Nvrtc", "find_nvrtc", "nvrtc_candidates",
           "get_nvrtc", "nvrtc_version_string", "find_nvcc", "nvcc_version", "CompileResult",
           "nvrtc_options", "compile_nvrtc", "compile_nvcc"]

# Fast math stays off: the kernels must match the NumPy reference within float32 rounding.
COMPILE_OPTIONS = ("-std=c++17",)
# What CuPy (14.x: cupy/cuda/compiler.py, _compile_with_cache_cuda) appends to every RawModule
# compile on its own. The gates compile with RUNTIME_OPTIONS so that the binary they check is
# the one that runs; the emulator matches -ftz=true by flushing subnormals during launches.
CUPY_ADDED_OPTIONS = ("-ftz=true",)
RUNTIME_OPTIONS = COMPILE_OPTIONS + CUPY_ADDED_OPTIONS


class ToolchainUnavailable(RuntimeError):
    """NVRTC or nvcc could not be found or loaded; the message says where it looked."""


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


def nvrtc_by_major():
    """{major version: library path}: the first NVRTC found of each CUDA major (12 for
    cupy-cuda12x, 13 for cupy-cuda13x), so the gates can compile with each."""
    out = {}
    for path in nvrtc_candidates():
        try:
            major = get_nvrtc(path).version()[0]
        except (OSError, ToolchainUnavailable):
            continue
        out.setdefault(major, path)
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

    def compile(self, source, name="kernel.cu", options=(), ptx=False):
        """Compile ``source``; returns ``(rc, rc_name, log, cubin_bytes_or_None)``.

        ``rc`` is ``nvrtcCompileProgram``'s result (0 on success). A cubin is produced when
        an ``sm_XX`` (real) architecture is given. ``ptx``: the last item is the PTX text
        instead (any architecture), for checks of what NVVM emits before ptxas.
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
            if rc == 0 and ptx:
                size = ctypes.c_size_t()
                if self.lib.nvrtcGetPTXSize(prog, ctypes.byref(size)) == 0 and size.value:
                    out = ctypes.create_string_buffer(size.value)
                    if self.lib.nvrtcGetPTX(prog, out) == 0:
                        cubin = out.value.decode(errors="replace")
            elif rc == 0:
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


def find_cuda_tool(name, extra=(), hint=""):
    """Path of the CUDA command-line tool ``name``: ``$GPUCNN_<NAME>``, ``PATH``, the paths
    ``extra`` (pip wheels' bin folders), ``$CUDA_HOME/bin``, ``/usr/local/cuda*/bin``."""
    var = f"GPUCNN_{name.upper()}"
    env = os.environ.get(var)
    if env:
        if os.path.exists(env):
            return env
        raise ToolchainUnavailable(f"${var}={env} does not exist")
    w = shutil.which(name)
    if w:
        return w
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    homes += sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for c in [*extra, *(os.path.join(h, "bin", name) for h in homes if h)]:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise ToolchainUnavailable(f"{name} was not found (not on PATH, ${var}, $CUDA_HOME/bin or "
                               f"/usr/local/cuda*/bin){': ' + hint if hint else ''}")


def find_nvcc():
    """Path of nvcc (see :func:`find_cuda_tool`)."""
    return find_cuda_tool("nvcc", hint="install the CUDA toolkit's compiler (e.g. pip install "
                          "nvidia-cuda-nvcc-cu12 and put its bin/ on PATH, or apt's "
                          "nvidia-cuda-toolkit)")


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


def _include_opts(path, major=None, text=None):
    """The source's own folder, and for a source on tensor cores the folders of CUDA's WMMA
    headers (:func:`wmma_include_dirs`; NVRTC ships none)."""
    path = Path(path).resolve()
    opts = [f"--include-path={path.parent}"]
    text = path.read_text() if text is None and path.is_file() else text
    if text is not None and uses_tensor_cores(with_local_headers(text, [path.parent])):
        opts += [f"--include-path={d}" for d in wmma_include_dirs(major)]
    return opts


def nvrtc_options(target, path=None, extra=(), major=None, text=None):
    """The NVRTC options of the gate: the run-time options plus the target and ``ptxas -v``
    (``major``: the NVRTC's CUDA major version, whose WMMA headers to prefer)."""
    opts = [f"--gpu-architecture={target}", "--ptxas-options=-v", *RUNTIME_OPTIONS]
    if path is not None:
        opts += _include_opts(path, major, text)
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
    text = source if source is not None else path.read_text()
    opts = nvrtc_options(target, path, extra_options, nv.version()[0], text)
    res.command = f"nvrtc({path.name}, {' '.join(opts)})"
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
        cmd = [nvcc, f"-arch={target}", "-cubin", "-Xptxas", "-v", *RUNTIME_OPTIONS,
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


def wmma_include_dirs(major=None):
    """Folders that hold CUDA's ``mma.h`` *and* ``crt/mma.h`` (what a WMMA kernel includes),
    for NVRTC's ``-I``: ``$CUDA_PATH/include``, ``/usr/local/cuda/include`` and the pip wheels'
    ``nvidia/*/include`` (``nvidia-cuda-runtime`` brings ``mma.h``, ``nvidia-cuda-crt`` — or
    ``nvidia-cuda-nvcc-cu12`` — ``crt/mma.h``). ``major``: prefer the headers of that CUDA
    major version (they must match the NVRTC that compiles). Empty when none is found."""
    roots = [Path(os.environ["CUDA_PATH"]) / "include"] if os.environ.get("CUDA_PATH") else []
    roots.append(Path("/usr/local/cuda/include"))
    for site in _site_dirs():
        roots += sorted(Path(site).glob("nvidia/*/include"))
    if major is not None:   # the wheels of that major first (nvidia/cu13/..., cuda_*/ for 12)
        own = f"/cu{int(major)}/" if int(major) >= 13 else "/cuda_"
        roots.sort(key=lambda d: own not in f"{d}/")
    top = [r for r in roots if (r / "mma.h").is_file()]
    crt = [r for r in roots if (r / "crt" / "mma.h").is_file()]
    if not top or not crt:
        return []
    return list(dict.fromkeys([top[0], crt[0]]))
