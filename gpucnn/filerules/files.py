"""Reading a whole file someone else made, bounded: the one way model files, ONNX files and
later whole-file formats are read (the zip and IDX readers stream instead)."""
from __future__ import annotations

import os
import stat

from .limits import size_text

__all__ = ["read_bounded"]


def read_bounded(path, max_bytes, error, kind):
    """The bytes of ``path``, a regular file of at most ``max_bytes``; anything else is
    ``error`` naming the file, the rule and ``kind`` (a noun: "model file", "ONNX file"). The type is
    checked before the open (a FIFO would block it), the size on the open file (a file that
    grows after the check still yields at most max_bytes + 1 bytes, refused)."""
    where = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError
        if not stat.S_ISREG(mode):
            raise error(f"{where}: not a regular file")
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(max_bytes + 1) if size <= max_bytes else None
    except FileNotFoundError:
        raise error(f"{where}: no such {kind}") from None
    except IsADirectoryError:
        raise error(f"{where}: a directory, not a {kind}") from None
    except OSError as e:
        raise error(f"{where}: cannot read: {e.strerror or e}") from None
    if data is None or len(data) > max_bytes:
        raise error(f"{where}: {max(size, len(data or b'')):,} bytes, more than the "
                    f"{size_text(max_bytes)} a {kind} may have here; nothing was read")
    return data
