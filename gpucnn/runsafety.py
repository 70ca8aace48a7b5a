"""What keeps a user's saved files intact during ``gpucnn train``: the checks that need no
model and no backend, in one place, so one process of a multi-process run can execute them and
share the verdict.

- :func:`check_output_paths`: every output file (checkpoint, metrics JSON, plot) can be written,
  checked at start-up, before any work: a directory where the file should be, a parent that is
  a file, a directory that refuses new files (read-only mount, ...).
- :func:`check_room`: the checkpoint's expected size fits the file-size limit (``ulimit -f``)
  and the free space of its file system.
- :class:`RunLock`: one training run per checkpoint at a time (a lock beside it), and
  :func:`prepare_checkpoint` under it: no other run's checkpoint is replaced unasked, and the
  temporary files of killed writes are removed.
- :func:`check_finite_state`: nothing non-finite is ever saved.
- :func:`write_with_retry`: a write that fails later (disk full, file too large) is retried
  once after a pause, then reported in one line (:class:`SaveFailed`);
  :func:`file_size_limit_as_error` makes ``ulimit -f`` such a failure instead of a kill.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import resource
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .checkpoint import process_alive, remove_stale_temp_files

__all__ = ["RunSafetyError", "SaveFailed", "TrainingDiverged", "RunLock", "lock_path",
           "prepare_checkpoint", "check_output_paths", "check_room", "check_finite_state",
           "write_with_retry", "file_size_limit_as_error", "describe_os_error"]


class RunSafetyError(ValueError):
    """A run refused at start because it could lose or overwrite saved work."""


class SaveFailed(OSError):
    """A write failed twice; the message is one line: what, why, what was kept."""


class TrainingDiverged(RuntimeError):
    """The loss (or the state) became NaN or infinite; training stopped before saving it."""


def describe_os_error(e: OSError) -> str:
    """'No space left on device (ENOSPC)': the reason in words and the errno's name."""
    name = errno.errorcode.get(e.errno, "") if e.errno else ""
    text = e.strerror or str(e) or type(e).__name__
    return f"{text} ({name})" if name else text


def _size(n):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


# ---- output paths ------------------------------------------------------------------------
def _check_one(flag, p: Path):
    if p.is_dir():
        raise RunSafetyError(f"{flag} {p}: is a directory; give a file name (e.g. "
                             f"{p / ('run' + (p.suffix or '.npz'))})")
    if p.exists() and not p.is_file():
        raise RunSafetyError(f"{flag} {p}: exists and is not a regular file")
    parent = p.parent
    for ancestor in [parent, *parent.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise RunSafetyError(f"{flag} {p}: {ancestor} is a file, not a directory")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{p.name}.", suffix=".probe")
        try:
            os.write(fd, b"\0")  # a full disk refuses a byte even where it allows a file
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise RunSafetyError(f"{flag} {p}: cannot write in {parent}: {describe_os_error(e)}; "
                             f"nothing was trained") from None


def check_output_paths(outputs: dict) -> None:
    """``outputs``: {"--checkpoint": path or None, ...}. Raises RunSafetyError naming the
    option and the problem for the first output that could not be written, or when two
    options name the same file."""
    seen = {}
    for flag, path in outputs.items():
        if not path:
            continue
        p = Path(path).expanduser()
        key = os.path.realpath(p)
        if key in seen:
            raise RunSafetyError(f"{seen[key]} and {flag} both name {path}: each output needs "
                                 f"its own file")
        seen[key] = flag
        _check_one(flag, p)


def check_room(path, nbytes: int) -> None:
    """Refuse at start a checkpoint of about ``nbytes`` that the file-size limit or the free
    space of its file system cannot take (the old checkpoint stays until the new one is
    complete, so the new one needs room of its own)."""
    p = Path(path).expanduser()
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and nbytes > soft:
        raise RunSafetyError(f"--checkpoint {p}: needs about {_size(nbytes)} but the file-size "
                             f"limit (ulimit -f) is {_size(soft)}; raise it or train without "
                             f"--checkpoint; nothing was trained")
    try:
        st = os.statvfs(p.parent)
    except OSError:
        return  # the start-up probe already wrote there; nothing more to learn
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        raise RunSafetyError(f"--checkpoint {p}: needs about {_size(nbytes)} but its file "
                             f"system has {_size(free)} free; nothing was trained")


# ---- one run per checkpoint ----------------------------------------------------------------
def lock_path(checkpoint) -> Path:
    p = Path(checkpoint).expanduser()
    return p.with_name(f".{p.name}.lock")


def _owner(fd):
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _describe_owner(owner):
    if not isinstance(owner, dict):
        return "owner unknown"
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) \
        if isinstance(started, (int, float)) else "?"
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {when}"


class RunLock:
    """The lock of one checkpoint: ``.<name>.lock`` beside it, held with flock(2) for the
    run's lifetime. The kernel drops an flock when its process dies, however it dies, so a
    lock left by a killed run is stale by construction and the next run takes it over; the
    file holds the owner's pid, host and start time for the message a second run gets. (Where
    the file system has no flock, a lock whose pid no longer runs on this host is stale.)"""

    def __init__(self, checkpoint):
        self.checkpoint = Path(checkpoint).expanduser()
        self.path = lock_path(checkpoint)
        self.fd = None
        self.took_over = None  # the owner of a stale lock taken over, if any

    def acquire(self):
        for _ in range(5):  # a finishing run may unlink the file between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                self._lock(fd)
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    raise FileNotFoundError  # locked a file that is no longer the lock
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            previous = _owner(fd)
            if isinstance(previous, dict) and previous.get("pid") != os.getpid():
                self.took_over = previous
            me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "argv": sys.argv[:8]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            self.fd = fd
            return self
        raise RunSafetyError(f"--checkpoint {self.checkpoint}: could not take its lock "
                             f"{self.path} (it keeps changing)")

    def _locked_error(self, owner):
        return RunSafetyError(
            f"--checkpoint {self.checkpoint} is in use by another training run "
            f"({_describe_owner(owner)}); wait for it to finish, or stop it and use --resume "
            f"(lock file {self.path})")

    def _lock(self, fd):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._locked_error(_owner(fd)) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            owner = _owner(fd)  # no flock here: judge by the recorded pid
            if (isinstance(owner, dict) and owner.get("host") == socket.gethostname()
                    and isinstance(owner.get("pid"), int) and owner["pid"] != os.getpid()
                    and process_alive(owner["pid"])):
                raise self._locked_error(owner) from None

    def release(self):
        if self.fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def prepare_checkpoint(path, resume, overwrite, lock):
    """Under the checkpoint's ``lock``: clean up after killed runs; refuse to replace another
    run's checkpoint unless ``overwrite``, or to resume one that does not exist."""
    if lock.took_over:
        print(f"took over the lock of an earlier run that is no longer running "
              f"({_describe_owner(lock.took_over)})", flush=True)
    removed = remove_stale_temp_files(path)
    if removed:
        print(f"removed {len(removed)} temporary file(s) left by interrupted checkpoint "
              f"writes: {', '.join(p.name for p in removed)}", flush=True)
    exists = os.path.exists(path)
    if resume and not exists:
        raise FileNotFoundError(f"--resume: checkpoint {path} does not exist")
    if exists and not (resume or overwrite):
        st = os.stat(path)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime))
        raise RunSafetyError(f"--checkpoint {path} already exists (written {when}, "
                             f"{st.st_size} bytes): add --resume to continue that run, "
                             f"--overwrite to replace it (it is kept until this run writes its "
                             f"first checkpoint), or choose another file")


# ---- what may be saved, and how ------------------------------------------------------------
def check_finite_state(arrays: dict, sums, what="the checkpoint") -> None:
    """Raise TrainingDiverged unless every float array and the running loss are finite."""
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise TrainingDiverged(f"{name} holds NaN or inf: {what} was not written (the "
                                   f"previous one, if any, is kept); lower the learning rate "
                                   f"or check the input data")
    if not all(np.isfinite(v) for v in sums):
        raise TrainingDiverged(f"the running loss is {sums[0]}: {what} was not written (the "
                               f"previous one, if any, is kept)")


def write_with_retry(what, path, write, pause_s, kept):
    """write(); if it raises OSError, say so, wait ``pause_s`` (the trained state stays in
    memory: free some space meanwhile) and try once more; a second failure raises SaveFailed
    with one line: what failed, why, and ``kept`` (what is still on disk)."""
    try:
        return write()
    except OSError as e:
        print(f"gpucnn train: writing {what} {path} failed: {describe_os_error(e)}; retrying "
              f"once in {pause_s:g} s (the trained state is kept in memory)", file=sys.stderr,
              flush=True)
    time.sleep(pause_s)
    try:
        return write()
    except OSError as e:
        raise SaveFailed(f"could not write {what} {path}: {describe_os_error(e)}; {kept}") \
            from None


@contextlib.contextmanager
def file_size_limit_as_error():
    """Exceeding ``ulimit -f`` sends SIGXFSZ, which kills the process; ignored, the write
    fails with EFBIG instead, which is reported and retried like a full disk."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGXFSZ, previous)
