"""The checkpoint lock by identity (issue 22 part 4): every name of a checkpoint (a symbolic
link, a path with '..', a hard link) meets the same lock, and a lock file holding anything
(NaN, 1e300, deep JSON, a lone surrogate, binary junk, a directory, ...) is reported clearly
-- taken over when no run holds it, refused when one does -- never a traceback."""
import fcntl
import os
import random

import pytest

from gpucnn.runsafety import (LOCK_READ_LIMIT, RunLock, RunSafetyError, lock_path,
                              prepare_checkpoint, read_lock_owner)


@pytest.fixture
def ck(tmp_path):
    path = tmp_path / "runs" / "ck.npz"
    path.parent.mkdir()
    path.write_bytes(b"a checkpoint")
    return path


def names_of(ck):
    """Other names of the same checkpoint file."""
    link = ck.parent.parent / "link.npz"
    link.symlink_to(ck)
    hard = ck.parent.parent / "hard.npz"
    os.link(ck, hard)
    return {"symlink": link, "dotdot": ck.parent / ".." / "runs" / "ck.npz", "hard link": hard}


def test_lock_path_is_beside_the_real_file(ck):
    names = names_of(ck)
    assert lock_path(names["symlink"]) == lock_path(ck) == ck.parent / ".ck.npz.lock"
    assert lock_path(names["dotdot"]) == lock_path(ck)


@pytest.mark.parametrize("name", ["symlink", "dotdot", "hard link"])
def test_a_second_run_through_another_name_is_refused(ck, name):
    other = names_of(ck)[name]
    with RunLock(ck):
        with pytest.raises(RunSafetyError, match="is in use by another training run"):
            RunLock(other).acquire()
    with RunLock(other):  # released: free again, and the other way round
        with pytest.raises(RunSafetyError, match="is in use by another training run"):
            RunLock(ck).acquire()
    assert not lock_path(ck).exists()


def test_the_file_lock_follows_each_new_checkpoint(ck, tmp_path):
    """A save puts a new file under the name: hold_file moves the flock to it, so a hard link
    made to the new file meets it too."""
    with RunLock(ck) as lock:
        new = ck.with_name("new.tmp")
        new.write_bytes(b"epoch 2")
        os.replace(new, ck)
        lock.hold_file(ck)
        lock.hold_file(ck)  # twice on one file: no conflict with itself
        hard = tmp_path / "later.npz"
        os.link(ck, hard)
        with pytest.raises(RunSafetyError, match="under another name"):
            RunLock(hard).acquire()


BAD_CONTENT = {
    "NaN": b"NaN",
    "nan pid": b'{"pid": NaN, "host": "h", "started": 1}',
    "1e300 start": b'{"pid": 5, "host": "h", "started": 1e300}',
    "huge pid": b'{"pid": 100000000000000000000000000000, "host": "h", "started": 1}',
    "5000 digits": b'{"pid": ' + b"7" * 5000 + b', "host": "h", "started": 1}',
    "deep": b"[" * 10000 + b"]" * 10000,
    "lone surrogate": b'{"pid": 5, "host": "\\ud800", "started": 1}',
    "surrogate key": b'{"\\udcff": 1}',
    "binary": bytes(range(256)) * 4,
    "bool pid": b'{"pid": true, "host": "h", "started": 1}',
    "a list": b"[1, 2, 3]",
    "too big": b" " * (LOCK_READ_LIMIT + 1) + b"{}",
    "truncated": b'{"pid": 5, "ho',
}


@pytest.mark.parametrize("content", BAD_CONTENT.values(), ids=BAD_CONTENT.keys())
def test_corrupt_lock_file_is_taken_over_or_refused_clearly(ck, content, capsys):
    lock_path(ck).write_bytes(content)
    holder = os.open(lock_path(ck), os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live run holds it: refused
        with pytest.raises(RunSafetyError) as e:
            RunLock(ck).acquire()
        message = str(e.value)
        assert "in use by another training run" in message and "\n" not in message
        message.encode("utf-8")  # printable: no lone surrogate reaches stderr
    finally:
        os.close(holder)
    with RunLock(ck) as lock:  # nobody holds it: stale, taken over with a note
        assert lock.took_over is None and lock.unreadable
        prepare_checkpoint(ck, resume=True, overwrite=False, lock=lock)
        assert "whose content was not a lock record" in capsys.readouterr().out
    assert not lock_path(ck).exists()


@pytest.mark.parametrize("kind", ["directory", "symlink", "fifo"])
def test_lock_path_that_is_not_a_file_is_refused(ck, kind):
    path = lock_path(ck)
    {"directory": path.mkdir, "symlink": lambda: path.symlink_to(ck),
     "fifo": lambda: os.mkfifo(path)}[kind]()
    with pytest.raises(RunSafetyError, match="its lock file .* (is a directory|is a symbolic "
                                             "link|is not a regular file)"):
        RunLock(ck).acquire()
    assert os.path.lexists(path) and ck.read_bytes() == b"a checkpoint"


def test_read_lock_owner_never_raises_on_random_content(tmp_path):
    rng = random.Random(22)
    good = b'{"pid": 12, "host": "h", "started": 1700000000.5, "argv": []}'
    path = tmp_path / "lock"
    for i in range(300):
        blob = bytearray(good)
        for _ in range(rng.randint(1, 6)):  # flips, cuts, insertions of JSON's own bytes
            at = rng.randrange(len(blob) + 1)
            op = rng.random()
            if op < 0.4 and at < len(blob):
                blob[at] = rng.randrange(256)
            elif op < 0.7:
                blob[at:at] = rng.choice([b"[", b"{", b"NaN", b"1e999", b"\\ud800", b'"', b"9" * 50])
            else:
                del blob[at:at + rng.randint(1, 8)]
        path.write_bytes(bytes(blob))
        fd = os.open(path, os.O_RDONLY)
        try:
            owner, problem = read_lock_owner(fd)
        finally:
            os.close(fd)
        assert (owner is None) or problem is None
        if owner is not None:
            assert type(owner["pid"]) is int and isinstance(owner["host"], str)
