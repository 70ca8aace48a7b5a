"""``--cache-decoded``: an image folder's decoded images kept in a memory-mapped file under the
user cache (``<user cache>/gpucnn/decoded/<key>.u8``, with ``<key>.npy``, the index), so that
later epochs and later runs skip decoding.

The key is a SHA-256 of the file list (paths, sizes, modification times in ns) and the channel
count, so a changed, added or removed file makes a new cache. What is cached is each image as
decoded and converted (uint8, C x H x W at its own size: no resize), so a run with the cache
computes exactly what a run without it computes — every transform still runs on the same
pixels. A file that is not a readable image is recorded as such (its reason in the index's
companion list), so later runs skip it with the same warning without reading it again.

The cache is gpucnn's own file but is checked before use like any other: the index must be an
int64 (N, 4) array (offset, C, H, W) whose records lie inside the data file; anything else is
rebuilt. Files are written to a temporary name and renamed, so a crash leaves no half cache.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..filerules.jsonfile import parse_json
from .errors import DataError
from .transforms import decode, to_array

__all__ = ["DecodedCache", "cache_key", "cache_dir"]

_VERSION = 1


def cache_dir():
    from .datasets import user_cache_root
    return user_cache_root().parent / "decoded"


def cache_key(paths, channels):
    h = hashlib.sha256(f"gpucnn-decoded/{_VERSION}/{channels}\n".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(
            "utf-8", "surrogateescape"))
    return h.hexdigest()[:40]


class DecodedCache:
    """The decoded images of ``paths``: :meth:`image` (uint8 C x H x W, or None for an
    unreadable file) and :attr:`unreadable` ({index: why}). ``data``/``index`` are the files."""

    def __init__(self, data, index, unreadable):
        self.data_path, self.index_path = str(data), str(index)
        self.index = np.load(index, allow_pickle=False)
        n = int(os.path.getsize(data))
        self.data = np.memmap(data, np.uint8, "r", shape=(n,)) if n else np.zeros(0, np.uint8)
        self.unreadable = unreadable

    @classmethod
    def open(cls, data, index, reasons, count):
        """The cache at these files, or None when they are missing or do not hold ``count``
        consistent records."""
        # Files in our cache, but a stale or damaged one must read as "no cache", never
        # a traceback or a large allocation: sizes bounded first, JSON by filerules' parser.
        try:
            if os.path.getsize(index) > 32 * count + 4096:  # count x 4 int64 and a header
                return None
            idx = np.load(index, allow_pickle=False)
            n = os.path.getsize(data)
            with open(reasons, "rb") as f:
                why = parse_json(f.read(1 << 24), str(reasons), DataError, max_bytes=1 << 24)
            why = {int(k): str(v) for k, v in why.items()}
        except (OSError, ValueError, TypeError, AttributeError, DataError):
            return None
        if idx.dtype != np.int64 or idx.shape != (count, 4):
            return None
        ok = idx[:, 0] >= 0
        ends = idx[ok, 0] + idx[ok, 1] * idx[ok, 2] * idx[ok, 3]
        if (ends > n).any() or (idx[ok, 1:] < 1).any() or (~ok).sum() != len(why):
            return None
        return cls(data, index, why)

    @classmethod
    def build(cls, paths, channels, pool, root=None):
        """Open the cache of ``paths`` or decode them (with ``pool``, in order) into a new
        one."""
        root = Path(root or cache_dir())
        key = cache_key(paths, channels)
        data, index, reasons = (root / f"{key}.u8", root / f"{key}.npy", root / f"{key}.json")
        found = cls.open(data, index, reasons, len(paths))
        if found is not None:
            return found, True
        root.mkdir(parents=True, exist_ok=True)

        def one(path):
            try:
                return to_array(decode(path, channels)), None
            except DataError as exc:
                return None, str(exc)

        tmp = f".{key}.{os.getpid()}.tmp"
        idx = np.full((len(paths), 4), -1, np.int64)
        why, offset = {}, 0
        try:
            with open(root / (tmp + ".u8"), "wb") as f:
                for i, (a, err) in enumerate(pool.map(one, paths)):
                    if a is None:
                        why[str(i)] = err
                        continue
                    f.write(a.tobytes())
                    idx[i] = (offset, *a.shape)
                    offset += a.size
            with open(root / (tmp + ".npy"), "wb") as f:
                np.save(f, idx, allow_pickle=False)
            with open(root / (tmp + ".json"), "w") as f:
                json.dump(why, f)
            os.replace(root / (tmp + ".json"), reasons)
            os.replace(root / (tmp + ".npy"), index)
            os.replace(root / (tmp + ".u8"), data)  # last: the data makes the cache whole
        finally:
            for ext in (".u8", ".npy", ".json"):
                try:
                    os.unlink(root / (tmp + ext))
                except FileNotFoundError:
                    pass
        return cls(data, index, {int(k): v for k, v in why.items()}), False

    def image(self, i):
        off, c, h, w = (int(v) for v in self.index[i])
        if off < 0:
            return None
        return self.data[off:off + c * h * w].reshape(c, h, w)
