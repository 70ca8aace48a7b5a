"""What keeps a user's saved files intact during ``gpucnn train``: the checks that need no
model and no backend, in one place, so one process of a multi-process run can execute them and
share the verdict.

- :func:`check_output_paths`: every output file (checkpoint, metrics JSON, plot) can be written,
  checked at start-up, before any work, by the rules every command shares
  (:mod:`gpucnn.outputs`): no directory, device or over-long name, a parent that takes files,
  and no file replaced that is not a previous output of its kind unless ``--overwrite``.
- :func:`check_room`: the checkpoint's expected size fits the file-size limit (``ulimit -f``)
  and the free space of its file system.
- :class:`RunLock`: one training run per checkpoint at a time (a lock beside the file its path
  resolves to, and an flock on the file itself: every name of it meets the lock), and
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
import stat
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .checkpoint import process_alive, remove_stale_temp_files
from .outputs import OutputRefused, check_outputs, describe_os_error, show_path

__all__ = ["RunSafetyError", "SaveFailed", "TrainingDiverged", "RunLock", "lock_path",
           "read_lock_owner", "prepare_checkpoint", "check_output_paths", "check_room", "check_finite_state",
           "write_with_retry", "file_size_limit_as_error", "describe_os_error"]


class RunSafetyError(ValueError):
    """A run refused at start because it could lose or overwrite saved work."""


class SaveFailed(OSError):
    """A write failed twice; the message is one line: what, why, what was kept."""


class TrainingDiverged(RuntimeError):
    """The loss (or the state) became NaN or infinite; training stopped before saving it."""


def _size(n):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


# ---- output paths ------------------------------------------------------------------------
OUTPUT_KINDS = {"--checkpoint": "checkpoint", "--metrics-json": "metrics", "--plot": "plot"}


def check_output_paths(outputs: dict, overwrite=False, resume=False) -> dict:
    """``outputs``: {"--checkpoint": path or None, ...} (the options of OUTPUT_KINDS). Raises
    RunSafetyError naming the option, the path and the rule for the first output that could
    not be written or would replace a file that is not its own kind's (unless ``overwrite``;
    gpucnn.outputs has the rules); returns {option: the file to write} for those given."""
    hint = ("choose another file, or remove it (--overwrite does not combine with --resume)"
            if resume else "add --overwrite to replace it, or choose another file")
    try:
        return check_outputs([(flag, path, OUTPUT_KINDS[flag]) for flag, path in outputs.items()],
                             overwrite=overwrite, consequence="nothing was trained",
                             overwrite_hint=hint)
    except OutputRefused as e:
        raise RunSafetyError(str(e)) from None


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
LOCK_READ_LIMIT = 16 * 1024  # a lock gpucnn writes holds ~200 bytes (argv cut to 8 x 256)
_MAX_PID = 2 ** 22           # Linux's pid_max ceiling
_MAX_TIME = 2.0 ** 34        # the year 2514: a start time beyond it is not one we wrote


def lock_path(checkpoint) -> Path:
    """The lock of ``checkpoint``: ``.<name>.lock`` beside the file it resolves to, so every
    name of it (a symbolic link, a path with ``..``, the same directory mounted elsewhere)
    meets the same lock."""
    real = Path(os.path.realpath(os.path.expanduser(os.fspath(checkpoint))))
    return real.with_name(f".{real.name}.lock")


def _owner_problem(doc):
    """None when ``doc`` is an owner record as RunLock writes it, else what is wrong."""
    if not isinstance(doc, dict):
        return f"a JSON {type(doc).__name__}, not an owner record"
    pid, host, started = doc.get("pid"), doc.get("host"), doc.get("started")
    if not (type(pid) is int and 0 < pid <= _MAX_PID):
        return f"pid {_show(pid)} is not a process id"
    if not (isinstance(host, str) and 0 < len(host) <= 255 and host.isprintable()):
        return f"host {_show(host)} is not a host name"
    if not (type(started) in (int, float) and 0 <= started < _MAX_TIME):
        return f"start time {_show(started)} is not a time"  # NaN fails the comparison too
    return None


def _show(value, limit=40):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def read_lock_owner(fd):
    """(owner, problem) of an open lock file: (the owner record, None) for a lock gpucnn
    wrote, (None, None) for an empty file, (None, what is wrong) for anything else -- read
    with a size limit, never an exception for its content."""
    try:
        size = os.fstat(fd).st_size
        raw = b"" if size > LOCK_READ_LIMIT else os.pread(fd, LOCK_READ_LIMIT + 1, 0)
    except OSError as e:
        return None, f"unreadable: {describe_os_error(e)}"
    if size > LOCK_READ_LIMIT or len(raw) > LOCK_READ_LIMIT:
        return None, f"{max(size, len(raw))} bytes, more than a lock file holds"
    if not raw.strip():
        return None, None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "binary content, not JSON text"
    except (ValueError, RecursionError) as e:  # malformed, too deep, a 5,000-digit number
        return None, f"not a valid JSON record ({type(e).__name__})"
    problem = _owner_problem(doc)
    return (None, problem) if problem else (doc, None)


def _describe_owner(owner):
    if not isinstance(owner, dict) or _owner_problem(owner):
        return "owner unknown"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["started"]))
    return f"pid {owner['pid']} on {show_path(owner['host'])}, started {when}"


def _open_flags():
    return os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class RunLock:
    """The lock of one checkpoint: ``.<name>.lock`` beside the file the checkpoint path
    resolves to (:func:`lock_path`), held with flock(2) for the run's lifetime. The kernel
    drops an flock when its process dies, however it dies, so a lock left by a killed run is
    stale by construction and the next run takes it over; the file holds the owner's pid,
    host and start time for the message a second run gets. The checkpoint file itself is
    flocked too (:meth:`hold_file`), so a run through another name of the same file (a hard
    link) is refused as well. (Where the file system has no flock, a lock whose pid no longer
    runs on this host is stale.) A lock file with any other content is reported and taken
    over like a stale one; one that is a directory, a link or a device is refused."""

    def __init__(self, checkpoint):
        self.checkpoint = Path(checkpoint).expanduser()
        self.target = Path(os.path.realpath(self.checkpoint))  # the file written
        self.path = lock_path(checkpoint)
        self.fd = None
        self.file_fd = None    # an flock on the checkpoint file itself
        self.took_over = None  # the owner of a stale lock taken over, if any
        self.unreadable = None  # what was wrong with a lock file taken over, if anything

    def _refuse(self, why):
        return RunSafetyError(f"--checkpoint {show_path(self.checkpoint)}: its lock file "
                              f"{show_path(self.path)} {why}")

    def _open(self):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _open_flags(), 0o666)
        except IsADirectoryError:
            raise self._refuse("is a directory, not a lock gpucnn wrote; remove it if no "
                               "training run uses this checkpoint") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise self._refuse("is a symbolic link, not a lock gpucnn wrote; remove it "
                                   "if no training run uses this checkpoint") from None
            raise self._refuse(f"cannot be created or opened: {describe_os_error(e)}; "
                               f"nothing was trained") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise self._refuse(f"is not a regular file ({oct(stat.S_IFMT(mode))}); remove "
                               f"it if no training run uses this checkpoint")
        return fd

    def acquire(self):
        for _ in range(5):  # a finishing run may unlink the file between open and lock
            fd = self._open()
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
            previous, self.unreadable = read_lock_owner(fd)
            if previous is not None and previous["pid"] != os.getpid():
                self.took_over = previous
            me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "argv": [a[:256] for a in sys.argv[:8]]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode("utf-8", "backslashreplace"), 0)
            self.fd = fd
            try:
                self.hold_file()
            except BaseException:
                self.release()
                raise
            return self
        raise self._refuse("keeps changing: could not take it")

    def hold_file(self, path=None):
        """flock the checkpoint file (``path``, default the one written) itself, if it exists;
        called again after each save, which puts a new file under the name. The lock beside
        the checkpoint cannot see another name of the same file (a hard link); this can."""
        try:
            fd = os.open(path or self.target, os.O_RDONLY | _open_flags())
        except OSError:
            return  # not there yet, or not openable: nothing to guard
        st = os.fstat(fd)
        if self.file_fd is not None:
            old = os.fstat(self.file_fd)
            if (old.st_dev, old.st_ino) == (st.st_dev, st.st_ino):
                os.close(fd)  # held already (a second flock of ours would conflict)
                return
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunSafetyError(
                f"--checkpoint {show_path(self.checkpoint)} is in use by another training run "
                f"under another name (a hard link to the same file); wait for it to finish, "
                f"or stop it") from None
        except OSError:
            os.close(fd)
            return  # no flock on this file system: the lock beside it is the guard
        if self.file_fd is not None:
            os.close(self.file_fd)
        self.file_fd = fd

    def _locked_error(self, owner, problem=None):
        who = _describe_owner(owner) if problem is None else \
            f"owner unknown: its lock file holds {problem}"
        return RunSafetyError(
            f"--checkpoint {show_path(self.checkpoint)} is in use by another training run "
            f"({who}); wait for it to finish, or stop it and use --resume (lock file "
            f"{show_path(self.path)})")

    def _lock(self, fd):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._locked_error(*read_lock_owner(fd)) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            owner, _ = read_lock_owner(fd)  # no flock here: judge by the recorded pid
            if (owner is not None and owner["host"] == socket.gethostname()
                    and owner["pid"] != os.getpid() and process_alive(owner["pid"])):
                raise self._locked_error(owner) from None

    def release(self):
        if self.file_fd is not None:
            os.close(self.file_fd)
            self.file_fd = None
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
    elif lock.unreadable:
        print(f"took over the lock file {show_path(lock.path)}, which no running process "
              f"held and whose content was not a lock record ({lock.unreadable})", flush=True)
    removed = remove_stale_temp_files(lock.target)
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
