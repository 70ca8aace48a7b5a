"""What the ``cuda`` backend's graph capture relies on for memory (CudaModule.begin_capture).
None of this has run on a GPU yet: it is what CuPy's and CUDA's documentation say, and the
calls are checked against a stub CuPy (tests/test_graph_rules.py).

A captured step allocates only through the device context (gpucnn/backends/capture_rules.py:
the array module's constructors are refused), i.e. ``cupy.empty`` from CuPy's current
allocator, on the capture stream. With CuPy's default allocator, ``MemoryPool``:

* the pool keeps one arena per stream, and the capture stream is a fresh one, so what the
  step allocates during capture comes from a ``cudaMalloc`` (the pool grows). cudaMalloc is
  not a stream operation — the graph holds no node for it, only the address its kernels
  were given — but it is one of the calls CUDA forbids during capture in the global and
  thread-local capture modes. CuPy's ``Stream.begin_capture`` defaults to the relaxed mode
  for exactly this reason (its docstring and source say so); :func:`capture_mode` passes
  ``streamCaptureModeRelaxed`` explicitly, so a change of that default cannot break us;
* the graph bakes those addresses in, so the memory must not be handed out again while the
  graph may replay: the recording (gpucnn/backends/graph.py) holds every array a captured
  launch was given, and the graph (``_CudaGraph``) holds the recording and the capture
  stream whose arena the blocks return to when the graph is dropped — PyTorch's "private
  graph pool", without a second pool;
* not known (not run): whether the pool's retry after a failed cudaMalloc, which frees the
  cached blocks (cudaFree) first, is allowed mid-capture; a capture that breaks a CUDA rule
  fails, and the trainer then runs eagerly with a warning naming the error.

CuPy's stream-ordered allocators (``MemoryAsyncPool``, ``malloc_async``) are refused
(:func:`allocator_blocker`): during capture ``cudaMallocAsync`` becomes an allocation node
of the graph, and CuPy instantiates graphs without ``cudaGraphInstantiateFlagAutoFreeOnLaunch``,
so a graph whose allocations outlive a launch — ours do: its outputs, workspaces and
gradients are read after each replay — cannot be launched again until they are freed (the
launch fails with ``cudaErrorInvalidValue``: CUDA's ``cuGraphLaunch`` documentation). Keeping
its allocations inside the graph would need that flag, which CuPy's ``Graph`` does not expose.
"""
from __future__ import annotations

__all__ = ["capture_mode", "allocator_blocker"]


def capture_mode(cp):
    """The stream-capture mode to capture in: relaxed (the pool may cudaMalloc)."""
    return cp.cuda.runtime.streamCaptureModeRelaxed


def allocator_blocker(cp):
    """Why CuPy's current allocator cannot serve a capture (None: it can)."""
    cuda = cp.cuda
    alloc = cuda.get_allocator()
    async_pool = getattr(cuda, "MemoryAsyncPool", None)
    if (alloc is getattr(cuda, "malloc_async", None) and alloc is not None) or (
            async_pool is not None and isinstance(getattr(alloc, "__self__", None),
                                                  async_pool)):
        return ("CuPy's allocator is the stream-ordered one (MemoryAsyncPool/malloc_async): "
                "its allocations during capture would become graph allocations that must be "
                "freed before the graph can be launched again, and ours outlive each replay; "
                "use CuPy's default MemoryPool (cupy.cuda.set_allocator(cupy.get_default_"
                "memory_pool().malloc)) for --cuda-graphs")
    return None
