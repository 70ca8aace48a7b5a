"""The rules every file a gpucnn command writes obeys (README: "What gpucnn guarantees about
your files"), in one place for every command (train, summary, bench, verify, kernels):

- :func:`check_outputs`, at start-up, before any work: each output names a file that can be
  written (not empty, not too long for the file system, not a directory, not a device or a
  FIFO, no file in its parent path, a directory that takes new files, an extension the
  writer supports), no two outputs name one file, and an existing file is only replaced when
  it is a previous gpucnn output of the same kind -- anything else needs ``--overwrite``, and
  a checkpoint is never replaced by another kind of output.
- :func:`write_atomic` / :func:`write_json`: a temporary file in the target's directory,
  fsync'ed, moved over the target with ``os.replace``: a crash leaves the old file or the new
  one. Writing through a symbolic link replaces the file it points to, never the link.

A leaf module (the standard library only), so every command can use it; the toolchain, a leaf
itself, gets it passed in by the ``gpucnn kernels`` command.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OutputRefused", "Kind", "KINDS", "check_outputs", "recognise", "write_target",
           "write_atomic", "write_json", "describe_os_error", "show_path", "NAME_RESERVE"]


class OutputRefused(ValueError):
    """An output path refused at start-up; the message is one line naming the option, the
    path and the rule."""


@dataclass(frozen=True)
class Kind:
    """What one kind of output is, for recognising a previous one on disk."""
    what: str                       # "metrics JSON of gpucnn train", for messages
    schemas: tuple = ()             # its JSON "schema" values start with one of these
    legacy_keys: frozenset = frozenset()  # or these top-level keys (one without "schema")
    suffixes: tuple = ()            # allowed extensions (lower case); () = any
    items: object = None            # or: a JSON list this function accepts ...
    head: bytes = b""               # ... starting with these bytes (enough past _READ_LIMIT)


_PLOT_SUFFIXES = (".png", ".pdf", ".svg")
_PREDICTION_KEYS = frozenset({"file", "topk", "error", "dense"})


def _is_predictions(doc):
    """gpucnn predict's list: one object per input, each with "file" and "topk" or "error"
    (and "dense"), nothing else: a user's own list of {"file": ...} is not one."""
    return len(doc) > 0 and all(
        isinstance(r, dict) and isinstance(r.get("file"), str) and r.keys() <= _PREDICTION_KEYS
        and ("topk" in r) != ("error" in r) for r in doc)


KINDS = {
    "checkpoint": Kind("a gpucnn checkpoint"),
    "metrics": Kind("metrics JSON of gpucnn train", ("gpucnn-train-metrics/",),
                    frozenset({"model", "dataset", "epochs", "test_accuracy", "config"})),
    "plot": Kind("a plot written by gpucnn (matplotlib)", suffixes=_PLOT_SUFFIXES),
    "summary": Kind("JSON of gpucnn summary", ("gpucnn-summary/",),
                    frozenset({"model", "input", "layers"})),
    "bench": Kind("JSON of gpucnn bench", ("gpucnn-bench/", "gpucnn-host-overhead/")),
    "verify": Kind("JSON of gpucnn verify", (), frozenset({"layers", "summary", "environment"})),
    "kernels": Kind("JSON of gpucnn kernels --report", ("gpucnn-kernels/",),
                    frozenset({"ok", "toolchain", "sources", "records", "failures"})),
    "onnx": Kind("an ONNX model written by gpucnn export", suffixes=(".onnx",)),
    "predictions": Kind("JSON of gpucnn predict", items=_is_predictions,
                        head=b'[\n{"file": '),
}


# Room left in a file name for the temporary file written beside it
# (".<name>.<pid>.<8 random>.tmp", the checkpoint's lock ".<name>.lock").
NAME_RESERVE = 32
_READ_LIMIT = 64 * 2**20   # a previous JSON output is recognised only below this size
_SNIFF = 64 * 1024         # plots: their signature and "matplotlib" in the head or the tail
# An ONNX ModelProto serialises its fields in order: ir_version (field 1), then producer_name
# (field 2, length 6): gpucnn's exports start with these bytes after the version's varint.
_ONNX_SIGNATURE = b"\x12\x06gpucnn"
_SIGNATURES = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF-", ".svg": b"<?xml"}


def describe_os_error(e: OSError) -> str:
    """'No space left on device (ENOSPC)': the reason in words and the errno's name."""
    name = errno.errorcode.get(e.errno, "") if e.errno else ""
    text = e.strerror or str(e) or type(e).__name__
    return f"{text} ({name})" if name else text


def show_path(path) -> str:
    """A path for a one-line message: as it is, or quoted with escapes when it holds a
    newline, a control character or an undecodable byte."""
    text = os.fspath(path)
    return text if text.isprintable() and text else repr(text)


def _file_type(mode) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


# ---- what a file on disk is ----------------------------------------------------------------
def _read_bounded(path: Path, n: int, tail=False) -> bytes:
    with open(path, "rb") as f:
        if tail:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(size - n, 0))
        return f.read(n)


def _is_checkpoint(path: Path, head: bytes) -> bool:
    if not head.startswith(b"PK"):
        return False
    try:  # the central directory only: no member is read
        with zipfile.ZipFile(path) as zf:
            return "__metadata__.npy" in zf.namelist()
    except (OSError, ValueError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError):
        return False


def _json_kind(path: Path, size: int):
    if size > _READ_LIMIT:
        return None
    try:
        doc = json.loads(_read_bounded(path, _READ_LIMIT).decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if isinstance(doc, list):
        return next((key for key, kind in KINDS.items() if kind.items and kind.items(doc)),
                    None)
    if not isinstance(doc, dict):
        return None
    schema = doc.get("schema")
    for key, kind in KINDS.items():
        if isinstance(schema, str) and schema.startswith(kind.schemas or ("\0",)):
            return key
    for key, kind in KINDS.items():  # written before the "schema" key existed, or never has it
        if kind.legacy_keys and "schema" not in doc and kind.legacy_keys <= doc.keys():
            return key
    return None


def recognise(path) -> tuple[str | None, str]:
    """(the KINDS key of the gpucnn output ``path`` holds or None, a few words saying what it
    is) for an existing regular file; reads a bounded amount."""
    path = Path(path)
    try:
        size = path.stat().st_size
        head = _read_bounded(path, _SNIFF)
    except OSError as e:
        return None, f"unreadable: {describe_os_error(e)}"
    if size == 0:
        return None, "an empty file"
    if _is_checkpoint(path, head):
        return "checkpoint", KINDS["checkpoint"].what
    if _ONNX_SIGNATURE in head[:16]:
        return "onnx", KINDS["onnx"].what
    if head.lstrip()[:1] in (b"{", b"["):
        key = _json_kind(path, size) if size <= _READ_LIMIT else next(
            (k for k, kind in KINDS.items() if kind.head and head.startswith(kind.head)), None)
        return (key, KINDS[key].what) if key else (None, "JSON not written by gpucnn, or "
                                                         "of another kind")
    for suffix, signature in _SIGNATURES.items():
        if head.startswith(signature):
            try:
                tail = _read_bounded(path, _SNIFF, tail=True)
            except OSError:
                tail = b""
            if b"matplotlib" in head.lower() or b"matplotlib" in tail.lower():
                return "plot", KINDS["plot"].what
            return None, f"a {suffix[1:].upper()} file not written by gpucnn"
    return None, f"{size} bytes of other content"


# ---- start-up checks -------------------------------------------------------------------------
def _name_max(directory: Path) -> int:
    for d in (directory, *directory.parents):
        try:
            return os.pathconf(d, "PC_NAME_MAX")
        except (OSError, ValueError):
            continue
    return 255


def write_target(path) -> Path:
    """The file a write to ``path`` creates or replaces: the file a symbolic link points to
    (followed through every link), else ``path`` itself (``~`` expanded)."""
    p = Path(os.path.expanduser(os.fspath(path)))
    return Path(os.path.realpath(p)) if p.is_symlink() else p


class _Refuse(Exception):
    pass


def _syntax(p: str, kind: Kind):
    """The rules that need no file system."""
    if p == "":
        raise _Refuse("an empty file name")
    if "\0" in p:
        raise _Refuse("the name contains a NUL byte")
    if p.endswith(os.sep) or os.path.basename(p) in (".", ".."):
        raise _Refuse("names a directory (ends with '/'); give a file name")


def _check_name(p: Path):
    name_max = _name_max(p.parent)
    n = len(os.fsencode(p.name))
    if n > name_max - NAME_RESERVE:
        raise _Refuse(f"the file name is {n} bytes long; at most {name_max - NAME_RESERVE} "
                      f"here (the file system's {name_max} less room for the temporary file "
                      f"written beside it)")


def _check_one(given: str, kind_key: str, overwrite: bool, overwrite_hint: str) -> Path:
    kind = KINDS[kind_key]
    _syntax(given, kind)
    _check_name(Path(os.path.expanduser(given)))
    try:
        p = write_target(given)
    except OSError as e:
        raise _Refuse(f"cannot be looked up: {describe_os_error(e)}") from None
    _check_name(p)
    try:
        st = os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _Refuse("a loop of symbolic links") from None
        if e.errno == errno.ENAMETOOLONG:
            raise _Refuse(f"the path is too long for the file system "
                          f"({describe_os_error(e)})") from None
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise _Refuse(f"cannot be looked up: {describe_os_error(e)}") from None
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise _Refuse(f"is a directory; give a file name (e.g. "
                          f"{p / ('run' + (kind.suffixes[:1] or ('.json',))[0])})")
        if not stat.S_ISREG(st.st_mode):
            raise _Refuse(f"is {_file_type(st.st_mode)}, not a regular file: outputs are "
                          f"written beside it and moved into place, so only a regular file "
                          f"can be replaced")
        if kind_key != "checkpoint":
            found, what = recognise(p)
            if found == "checkpoint":
                raise _Refuse("exists and is a gpucnn checkpoint: never replaced by another "
                              "kind of output, even with --overwrite; choose another file")
            if found != kind_key and what != "an empty file" and not overwrite:
                raise _Refuse(f"exists and is not {kind.what} ({what}); {overwrite_hint}")
    for ancestor in p.parents:
        if os.path.lexists(ancestor):
            if not os.path.isdir(ancestor):
                raise _Refuse(f"{ancestor} is a file, not a directory")
            break
    suffix = Path(given).suffix
    if kind.suffixes and suffix.lower() not in kind.suffixes:
        raise _Refuse(f"{repr(suffix) if suffix else 'no extension'}: not a format it can be "
                      f"written in; the extension must be one of {', '.join(kind.suffixes)}")
    parent = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{p.name[:64]}.", suffix=".probe")
        try:
            os.write(fd, b"\0")  # a full disk refuses a byte even where it allows a file
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise _Refuse(f"cannot write in {parent}: {describe_os_error(e)}") from None
    return p


def check_outputs(outputs, overwrite=False, consequence="nothing was done",
                  overwrite_hint="add --overwrite to replace it, or choose another file"):
    """Check every output before any work. ``outputs``: (option, path or None, KINDS key)
    triples; None means the option was not given ('' was: an empty name is refused).
    ``overwrite``: existing files that are not of the output's own kind may be replaced
    (never a checkpoint by another kind). Raises OutputRefused ('<option> <path>: <rule>;
    <consequence>') for the first output refused; returns {option: the file to write}
    (:func:`write_target`) for the outputs given."""
    seen, targets = {}, {}
    for flag, path, kind in outputs:
        if path is None:
            continue
        given = os.fspath(path)
        try:
            p = _check_one(given, kind, overwrite, overwrite_hint)
        except _Refuse as r:
            raise OutputRefused(f"{flag} {show_path(given)}: {r}; {consequence}") from None
        key = _identity(p)
        if key in seen:
            raise OutputRefused(f"{seen[key]} and {flag} both name {show_path(given)}: each "
                                f"output needs its own file; {consequence}")
        seen[key] = flag
        targets[flag] = p
    return targets


def _identity(p: Path):
    """One key per file: the device and inode of an existing file (hard links, bind mounts),
    else its resolved path."""
    with contextlib.suppress(OSError):
        st = os.stat(p)
        return st.st_dev, st.st_ino
    return os.path.realpath(p)


# ---- writing -------------------------------------------------------------------------------
def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temp_files(path: str | os.PathLike, legacy: bool = True) -> list[Path]:
    """Delete the temporary files interrupted writes of `path` left beside it
    (``.<name>.<pid>.*.tmp`` whose pid no longer runs and, with ``legacy``, the pid-less
    names earlier versions wrote for checkpoints: call it so holding the checkpoint's lock,
    gpucnn.runsafety, as no other trainer then writes it). Returns the paths removed."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(r"\." + re.escape(path.name) + r"\.(?:(\d+)\.)?[^/]*\.tmp\Z")
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or not entry.is_file(follow_symlinks=False):
            continue
        if m.group(1) is None and not legacy:
            continue  # pid-less: whose it is, only a lock can tell
        if m.group(1) is not None and process_alive(int(m.group(1))):
            continue  # a live writer's
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except FileNotFoundError:
            pass
    return removed


def temp_prefix(target: Path) -> str:
    """The name prefix of this process's temporary files for ``target``
    (``.<name>.<pid>.``: :func:`remove_stale_temp_files` finds a dead writer's)."""
    return f".{target.name}.{os.getpid()}."


def write_atomic(path, write) -> Path:
    """Call ``write(f)`` with a binary file open on a temporary file beside ``path``'s
    :func:`write_target`, then fsync it and move it over the target. On any failure the
    temporary file is removed and the target is unchanged. Returns the target."""
    target = write_target(path)
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(target, legacy=False)  # what a killed writer of it left
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would give, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return target


def write_json(path, doc, indent=2, **dump_kwargs) -> Path:
    """``doc`` as JSON (a newline at the end), written atomically; serialised before the file
    is touched, so a value json cannot write leaves the old file as it was."""
    data = (json.dumps(doc, indent=indent, **dump_kwargs) + "\n").encode("utf-8")
    return write_atomic(path, lambda f: f.write(data))
