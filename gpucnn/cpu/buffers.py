"""Buffers for the tuned CPU ops: per-thread scratch, a recycled pool for results, spare
column matrices, and the forward->backward column cache.

Fresh large allocations cost a page fault per 4 KiB page (~1 us each), which at LeNet sizes is
a sizeable share of a training step; these pools keep the same few blocks in use instead.
All of them are bounded by ``workspace_bytes``.
"""
from __future__ import annotations

import os
import sys
import sysconfig
import threading
import weakref

import numpy as np

__all__ = ["BufferPools", "default_workspace_bytes"]

# Results handed to callers are recycled by reference count (see BufferPools.output) only
# where that count is exact: CPython with the GIL.
_REFCOUNT_POOL = (sys.implementation.name == "cpython"
                  and not sysconfig.get_config_var("Py_GIL_DISABLED"))
_POOL_MIN_BYTES = 256 << 10


# Without GPUCNN_WORKSPACE_MB: 256 MiB on a device; 32 MiB for the NumPy backend, whose pools
# (results, scratch, spare columns) are bounded by it. AlexNet-CIFAR training (batch 128)
# peaked at 763 MiB RSS with 256, 626 with 64, 542 with 32, in the same time (2 Zen 4 vCPUs).
DEVICE_WORKSPACE_MB = 256
CPU_WORKSPACE_MB = 32


def default_workspace_bytes(default_mb=DEVICE_WORKSPACE_MB):
    """GPUCNN_WORKSPACE_MB (else ``default_mb``) in bytes."""
    return int(float(os.environ.get("GPUCNN_WORKSPACE_MB", default_mb)) * 2**20)


class _ColsEntry:
    __slots__ = ("ref", "key", "x", "cols")

    def __init__(self, ref, key, x, cols):
        self.ref, self.key, self.x, self.cols = ref, key, x, cols


class BufferPools:
    def __init__(self, workspace_bytes=None, cache_cols=True):
        self.workspace_bytes = (default_workspace_bytes(CPU_WORKSPACE_MB)
                                if workspace_bytes is None
                                else int(workspace_bytes))
        self.cache_cols = bool(cache_cols)
        self._lock = threading.Lock()
        self._cols_cache = {}  # id(x) -> _ColsEntry, forward -> backward
        self._local = threading.local()  # per-thread scratch buffers
        self._spare = {}  # (shape, dtype) -> column buffers free for reuse
        self._outputs = {}  # (shape, dtype) -> result blocks, see output()

    def scratch(self, tag, shape, dtype, zero=False):
        """A reusable per-thread buffer (never handed to the caller). zero=True buffers are
        zeroed once when created; callers rely on the parts they never write staying zero."""
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = {}
        key = (tag, tuple(shape), np.dtype(dtype).str)
        buf = bufs.get(key)
        if buf is None:
            buf = (np.zeros if zero else np.empty)(shape, dtype=dtype)
            # Shapes come and go (a last, smaller batch; other models): stay bounded.
            if len(bufs) >= 64 or sum(b.nbytes for b in bufs.values()) + buf.nbytes > max(
                    2 * self.workspace_bytes, 64 << 20):
                bufs.clear()
            bufs[key] = buf
        return buf

    def output(self, shape, dtype):
        """A C-contiguous array for a result handed to the caller. Large ones come from a
        few blocks per shape that are reused once nothing but this pool refers to them
        (CPython reference count): views, memoryviews and arrays built on a block all keep
        a reference to it, so a block still in use anywhere is never handed out again."""
        dtype = np.dtype(dtype)
        nbytes = dtype.itemsize * int(np.prod(shape))
        if not _REFCOUNT_POOL or nbytes < _POOL_MIN_BYTES:
            return np.empty(shape, dtype=dtype)
        key = (tuple(shape), dtype.str)
        with self._lock:
            blocks = self._outputs.get(key)
            if blocks is None:
                if sum(b.nbytes for lst in self._outputs.values() for b in lst) + nbytes > (
                        self.workspace_bytes):
                    self._outputs.clear()  # shapes come and go: stay bounded
                blocks = self._outputs[key] = []
            for blk in blocks:
                # References: the list, this loop variable and getrefcount's argument.
                if sys.getrefcount(blk) <= 3:
                    return blk
            blk = np.empty(shape, dtype=dtype)
            if len(blocks) < 4:
                blocks.append(blk)
            return blk

    def take_cols(self, shape, dtype):
        """A column buffer (contents undefined): a spare one of this shape if there is one."""
        with self._lock:
            spares = self._spare.get((tuple(shape), np.dtype(dtype).str))
            if spares:
                return spares.pop()
        return np.empty(shape, dtype=dtype)

    def give_cols(self, cols):
        """Return a column buffer that nothing references any more, for the next forward."""
        key = (cols.shape, cols.dtype.str)
        with self._lock:
            total = sum(b.nbytes for lst in self._spare.values() for b in lst)
            if total + cols.nbytes > self.workspace_bytes:
                self._spare = {}  # shapes come and go (a last, smaller batch): stay bounded
            spares = self._spare.setdefault(key, [])
            if len(spares) < 2 and cols.nbytes <= self.workspace_bytes:
                spares.append(cols)

    def cache_put(self, x, key, cols):
        """Keep the column matrix ``cols`` of input ``x`` for the matching backward (keyed
        by the identity of x, validated against a copy of its contents, dropped when x
        dies). False when it is not kept."""
        if not self.cache_cols or cols.nbytes > self.workspace_bytes:
            return False
        ident = id(x)
        cache = self._cols_cache
        try:
            ref = weakref.ref(x, lambda _r, ident=ident, cache=cache: cache.pop(ident, None))
        except TypeError:
            return False
        entry = _ColsEntry(ref, (key, x.dtype.str, x.strides), x.copy(), cols)
        with self._lock:
            cache.pop(ident, None)
            cache[ident] = entry
            total = sum(e.cols.nbytes for e in cache.values())
            while cache and (len(cache) > 16 or total > self.workspace_bytes):
                old = cache.pop(next(iter(cache)))
                total -= old.cols.nbytes
        return True

    def cache_take(self, x, key):
        """The cached column matrix of x, if x is the very array seen by forward, unchanged."""
        with self._lock:
            entry = self._cols_cache.pop(id(x), None)
        if (entry is None or entry.ref() is not x
                or entry.key != (key, x.dtype.str, x.strides)
                or not np.array_equal(entry.x, x)):
            return None
        return entry.cols
