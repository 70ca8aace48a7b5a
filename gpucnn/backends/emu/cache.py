"""The emulator's build cache: where it lives, and checking what it holds before it is used.

Every object file and shared library the emulator builds is recorded with its size and SHA-256
(a ``<file>.sum`` sidecar for an object, the module's ``mod_*.json`` for a library). Before an
object is linked or a library is dlopen'ed, the file is read with plain reads (never mapped,
so a truncated file cannot SIGBUS the process) and checked: an x86-64 ELF of the right type
whose section table lies inside the file, with the recorded size and digest. A file that fails
is deleted and rebuilt, with one warning naming it and the reason: a damaged cache heals on the
next run instead of failing on every one.

When the cache directory cannot be created or written (a read-only mount, a path under a
regular file), the builds go to a temporary directory of this process instead, removed at
exit, with one warning per configured directory.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import struct
import tempfile
import warnings
from pathlib import Path

from ...filerules import parse_json

__all__ = ["configured_dir", "cache_dir", "digest", "problem", "record", "publish",
           "discard", "rebuild_warning", "module_record"]

_ET_REL, _ET_DYN, _EM_X86_64 = 1, 3, 62
_KINDS = {"object": _ET_REL, "library": _ET_DYN}
_fallback: dict[Path, Path] = {}  # configured directory -> this process's temporary one


def configured_dir() -> Path:
    """$GPUCNN_CACHE_DIR/emu, default ~/.cache/gpucnn/emu (created by cache_dir)."""
    d = os.environ.get("GPUCNN_CACHE_DIR")
    return Path(d) / "emu" if d else Path.home() / ".cache" / "gpucnn" / "emu"


def _usable(base: Path) -> None:
    """Raise OSError unless files can be created in base, base/obj and base/src."""
    for d in (base, base / "obj", base / "src"):
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=d, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)


def cache_dir() -> Path:
    """The directory builds go to: the configured one if usable, else a per-process one."""
    base = configured_dir()
    if base in _fallback:
        return _fallback[base]
    try:
        _usable(base)
        return base
    except OSError as e:
        tmp = Path(tempfile.mkdtemp(prefix="gpucnn-emu-"))
        atexit.register(shutil.rmtree, tmp, True)
        _usable(tmp)
        _fallback[base] = tmp
        warnings.warn(f"emu: the kernel cache {base} is not writable ({e.strerror or e}); "
                      f"building into {tmp} for this process only (every run rebuilds: fix "
                      f"the directory or set GPUCNN_CACHE_DIR)", RuntimeWarning, stacklevel=3)
        return tmp


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _elf_problem(data: bytes, kind: str) -> str | None:
    if len(data) < 64:
        return f"{len(data)} bytes, too short for an ELF file"
    if data[:4] != b"\x7fELF":
        return "not an ELF file"
    if data[4] != 2 or data[5] != 1:
        return "not a 64-bit little-endian ELF file"
    e_type, machine = struct.unpack_from("<HH", data, 16)
    if machine != _EM_X86_64:
        return f"an ELF file for machine {machine}, not x86-64"
    if e_type != _KINDS[kind]:
        return f"ELF type {e_type}, not an {kind} file (type {_KINDS[kind]})"
    shoff, = struct.unpack_from("<Q", data, 40)
    shentsize, shnum = struct.unpack_from("<HH", data, 58)
    if shoff + shentsize * shnum > len(data):
        return "truncated: its section table ends past the end of the file"
    return None


def _sum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sum")


def problem(path: Path, kind: str, expected: dict | None = None) -> str | None:
    """Why ``path`` cannot be used ("missing", damaged how), or None. ``expected``: its
    recorded {"size", "sha256"}; for an object, None reads the sidecar, and an object
    without one (built before sidecars existed) that passes the ELF check is recorded now."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    bad = _elf_problem(data, kind)
    if bad:
        return bad
    if expected is None and kind == "object":
        try:
            size, sha = _sum_path(path).read_text().split()
            expected = {"size": int(size), "sha256": sha}
        except FileNotFoundError:
            record(path, data)
            return None
        except (OSError, ValueError) as e:
            return f"its record {_sum_path(path).name} is unreadable ({e})"
    if expected is None:
        return "no size and digest recorded"
    if len(data) != expected["size"]:
        return f"{len(data)} bytes, but {expected['size']} were written"
    if digest(data) != expected["sha256"]:
        return "its content differs from what was built (SHA-256 mismatch)"
    return None


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def record(path: Path, data: bytes) -> None:
    """Write the size and digest of ``data`` (the content of ``path``) beside it."""
    _write_text(_sum_path(path), f"{len(data)} {digest(data)}\n")


def publish(tmp: Path, final: Path) -> None:
    """Move a freshly built object into place, its record first (a reader that sees the
    record with an older file finds the mismatch and rebuilds)."""
    record(final, tmp.read_bytes())
    os.replace(tmp, final)


def discard(path: Path, *sidecars: str) -> None:
    """Delete a damaged entry, its record and the named sidecar suffixes."""
    for p in (path, _sum_path(path), *(path.with_suffix(s) for s in sidecars)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def rebuild_warning(path: Path, reason: str) -> None:
    warnings.warn(f"emu: cache entry {path} is damaged ({reason}); rebuilding it",
                  RuntimeWarning, stacklevel=4)


_MAX_RECORD_BYTES = 1 << 20  # a record is ~200 bytes; past this the file is not ours


def module_record(meta: Path) -> dict | None:
    """The record of a linked module (poison ranges, has_dyn, size, sha256), or None when it
    is missing, from an older gpucnn (no digest), or corrupt (then with a warning)."""
    try:
        if meta.stat().st_size > _MAX_RECORD_BYTES:
            raise ValueError("oversized")
        m = parse_json(meta.read_bytes(), meta.name, ValueError, _MAX_RECORD_BYTES)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        rebuild_warning(meta, f"not valid JSON: {e}")
        return None
    ok = (isinstance(m, dict) and isinstance(m.get("poison"), list)
          and all(isinstance(r, list) and len(r) == 2 and all(type(v) is int for v in r)
                  for r in m["poison"])
          and isinstance(m.get("has_dyn"), bool) and type(m.get("size")) is int
          and isinstance(m.get("sha256"), str))
    if not ok:
        if isinstance(m, dict) and "sha256" in m:
            rebuild_warning(meta, "fields missing or of the wrong type")
        return None
    return m
