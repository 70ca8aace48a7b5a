"""The CPU runtime the tuned NumPy ops run on: threads (``threads.py``) and buffers
(``buffers.py``). Op math lives in ``gpucnn/ops``; it receives a :class:`CpuRuntime` and
calls ``rt.run``, ``rt.ranges``, ``rt.scratch``, ``rt.output``, ... — nothing here knows
about any op."""
from __future__ import annotations

from .buffers import BufferPools, default_workspace_bytes
from .threads import (MIN_SPLIT, ThreadPool, blas_threads, default_threads, one_blas_thread,
                      openblas_info, split)

__all__ = ["CpuRuntime", "MIN_SPLIT", "blas_threads", "openblas_info", "default_threads",
           "default_workspace_bytes", "one_blas_thread", "split"]


class CpuRuntime(ThreadPool, BufferPools):
    """Threads + buffers of one NumPy backend."""

    def __init__(self, workspace_bytes=None, threads=None, cache_cols=True):
        ThreadPool.__init__(self, threads)
        BufferPools.__init__(self, workspace_bytes, cache_cols)
