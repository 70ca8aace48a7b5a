"""Native CPU kernels: a C++ source built once per machine by the host compiler, loaded with
ctypes.

Built with ``-O3 -march=native`` (the kernels are written with GCC vector extensions, so the
compiler picks AVX-512, AVX2 or SSE for the CPU it runs on; ``-ffast-math`` is not used, so
NaN and infinity behave as in NumPy). The library is cached under ``$GPUCNN_CACHE_DIR/native``
(default ``~/.cache/gpucnn/native``), keyed by the SHA-256 of the source, the flags, the
compiler's version and this CPU's model and feature flags (a home directory shared between
machines never loads a library built for another CPU). Each library is written to a temporary
name and renamed into place, with its size and digest recorded beside it; it is checked before
it is loaded, and a damaged or foreign one is rebuilt with a warning.

``$GPUCNN_NATIVE_FLAGS`` adds flags (the tests build the AVX2 and SSE paths that way), and a
caller's ``defines`` hand it constants that Python owns (both are part of the cache key). No
compiler (``$GPUCNN_CXX``, default ``g++``), a failed build or an unloadable library raises
:class:`NativeUnavailable` with the reason; the ops that use this fall back to NumPy code.
An unwritable cache directory builds into a temporary one for this process.

A struct or constant that both the C++ source and its Python caller spell out is checked when
the library loads (so an edit on one side only fails the load with a clear reason instead of
corrupting memory): the source exports a *facts table*, ``const Fact* <symbol>(void)`` with
``struct Fact { const char* name; long long value; }`` entries ended by a null name, holding
its constants and the ``sizeof S`` and ``S.field`` offsets of each struct Python mirrors with
ctypes; :func:`facts` reads it, :func:`layout` states what the mirrors expect and
:func:`compare_facts` lists what differs.
"""
from __future__ import annotations

import atexit
import ctypes
import hashlib
import itertools
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

__all__ = ["NativeUnavailable", "load", "cache_dir", "compiler", "flags", "define_flags", "FLAGS",
           "facts", "layout", "compare_facts"]

FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-fno-math-errno",
         "-fno-exceptions", "-fno-rtti", "-Wl,-z,noexecstack")
_BUILD_TIMEOUT_S = 120


class NativeUnavailable(RuntimeError):
    """A native kernel library cannot be built or loaded here (the message says why)."""


def compiler():
    return os.environ.get("GPUCNN_CXX", "g++")


def flags():
    """FLAGS plus ``$GPUCNN_NATIVE_FLAGS`` (extra compiler flags, e.g. ``-mno-avx512f`` to
    build the AVX2 code path on an AVX-512 machine; part of the cache key)."""
    return (*FLAGS, *shlex.split(os.environ.get("GPUCNN_NATIVE_FLAGS", "")))


def cache_dir() -> Path:
    d = os.environ.get("GPUCNN_CACHE_DIR")
    return (Path(d) if d else Path.home() / ".cache" / "gpucnn") / "native"


def _cpu_identity():
    """This CPU's model name and feature flags (what -march=native compiles for)."""
    model = flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key == "model name" and not model:
                    model = line.split(":", 1)[1].strip()
                elif key == "flags" and not flags:
                    flags = line.split(":", 1)[1].strip()
                if model and flags:
                    break
    except OSError:
        pass
    return f"{model}|{flags}"


def _compiler_version(cxx):
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeUnavailable(f"no C++ compiler {cxx!r} ({e}); set GPUCNN_CXX") from None
    if out.returncode != 0:
        raise NativeUnavailable(f"{cxx} --version failed: {out.stderr.strip()[:300]}")
    return out.stdout.strip()


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=d, prefix=".probe.")
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


_lock = threading.Lock()
_loaded: dict[Path, ctypes.CDLL] = {}
_tmpdir: list[Path] = []


def _build_dir():
    d = cache_dir()
    if _writable(d):
        return d
    if not _tmpdir:
        t = Path(tempfile.mkdtemp(prefix="gpucnn-native-"))
        atexit.register(shutil.rmtree, t, True)
        _tmpdir.append(t)
        warnings.warn(f"gpucnn: the native kernel cache {d} is not writable; building into {t} "
                      f"for this process only (set GPUCNN_CACHE_DIR)", RuntimeWarning,
                      stacklevel=4)
    return _tmpdir[0]


def _problem(lib: Path):
    """Why the cached library cannot be used, or None."""
    try:
        data = lib.read_bytes()  # plain read, not mmap: a truncated file cannot SIGBUS us
        size, sha = lib.with_name(lib.name + ".sum").read_text().split()
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as e:
        return f"unreadable ({e})"
    if data[:4] != b"\x7fELF":
        return "not an ELF file"
    if len(data) != int(size) or hashlib.sha256(data).hexdigest() != sha:
        return "its size or SHA-256 differs from what was built"
    return None


def define_flags(defines) -> tuple:
    """``-Dmacro=value`` for each of ``defines`` ({macro: value}), in a stable order."""
    return tuple(f"-D{k}={v}" for k, v in sorted((defines or {}).items()))


def _compile(cxx, source: Path, lib: Path, build_flags):
    fd, tmp = tempfile.mkstemp(dir=lib.parent, prefix=lib.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        out = subprocess.run([cxx, *build_flags, "-o", tmp, str(source)], capture_output=True,
                             text=True, timeout=_BUILD_TIMEOUT_S)
        if out.returncode != 0:
            raise NativeUnavailable(f"{cxx} failed on {source.name}:\n{out.stderr[-2000:]}")
        data = Path(tmp).read_bytes()
        sums = lib.with_name(lib.name + ".sum")
        fd, tsum = tempfile.mkstemp(dir=lib.parent, prefix=sums.name + ".", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(f"{len(data)} {hashlib.sha256(data).hexdigest()}\n")
        os.replace(tsum, sums)  # the record first: a reader seeing it with an old file rebuilds
        os.replace(tmp, lib)
    except subprocess.TimeoutExpired:
        raise NativeUnavailable(f"{cxx} took over {_BUILD_TIMEOUT_S} s on {source.name}") from None
    except OSError as e:
        raise NativeUnavailable(f"building {source.name} failed: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(source, defines=None) -> ctypes.CDLL:
    """The library built from ``source`` (a .cpp path) for this machine; built on first use.
    ``defines``: {macro: value} passed as ``-Dmacro=value``. Every failure is a
    NativeUnavailable saying why."""
    try:
        with _lock:
            return _load(Path(source), (*flags(), *define_flags(defines)))
    except OSError as e:
        raise NativeUnavailable(f"native build of {source}: {e}") from None


def _load(source, build_flags):
    cxx = compiler()
    key = hashlib.sha256(b"\0".join([source.read_bytes(), " ".join(build_flags).encode(),
                                     _compiler_version(cxx).encode(),
                                     _cpu_identity().encode()])).hexdigest()[:20]
    name = f"{source.stem}-{key}.so"
    lib = cache_dir() / name
    if lib in _loaded:
        return _loaded[lib]
    reason = _problem(lib)  # a valid library is used even where the cache is read-only
    if reason is not None:
        lib = _build_dir() / name
        reason = _problem(lib)
        if reason not in (None, "missing"):
            warnings.warn(f"gpucnn: native library {lib} is damaged ({reason}); rebuilding "
                          f"it", RuntimeWarning, stacklevel=3)
        if reason is not None:
            _compile(cxx, source, lib, build_flags)
    if lib in _loaded:
        return _loaded[lib]
    try:
        handle = ctypes.CDLL(str(lib))
    except OSError as e:
        raise NativeUnavailable(f"cannot load {lib}: {e}") from None
    _loaded[lib] = handle
    return handle


class _Fact(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_longlong)]


def facts(lib, symbol) -> dict:
    """{name: value} of the facts table ``lib`` exports as ``symbol`` (see the module's
    docstring); NativeUnavailable when it exports none."""
    try:
        table = lib[symbol]
    except AttributeError:
        raise NativeUnavailable(f"{lib._name} exports no facts table {symbol}() (built from "
                                f"an older source?)") from None
    table.restype = ctypes.POINTER(_Fact)
    table.argtypes = []
    entries = table()
    out = {}
    for i in itertools.count():
        if not entries[i].name:
            return out
        out[entries[i].name.decode()] = entries[i].value


def layout(structs) -> dict:
    """The facts a library must report for ctypes mirrors of its structs (``structs``: {C
    name: mirror}): ``sizeof S`` and ``S.f``, f's offset, under the C names (a mirror's field
    named with a trailing _, such as ``in_`` for a Python keyword, is the C field without it)."""
    out = {}
    for name, mirror in structs.items():
        out[f"sizeof {name}"] = ctypes.sizeof(mirror)
        for field, *_ in mirror._fields_:
            out[f"{name}.{field.rstrip('_')}"] = getattr(mirror, field).offset
    return out


def compare_facts(reported, expected) -> list:
    """What differs between the facts a library reports and those Python expects, one line
    each (empty when they agree)."""
    out = []
    for name in sorted(reported.keys() | expected.keys()):
        if name not in reported:
            out.append(f"{name}: Python expects {expected[name]}, the library does not say")
        elif name not in expected:
            out.append(f"{name}: the library has {reported[name]}, Python does not know it")
        elif reported[name] != expected[name]:
            out.append(f"{name}: the library has {reported[name]}, Python {expected[name]}")
    return out
