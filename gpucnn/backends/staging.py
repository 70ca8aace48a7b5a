"""Host-prepared batches onto a device backend, one batch ahead: :class:`Staging`.

``Staging(backend).stage(host_batches)`` takes an iterator of host batches ``(x, y)`` (x
float32 or uint8 NumPy, y integer labels) and yields device batches ``(x, y)`` equal to
``backend.asarray(x), backend.asarray(y, dtype=np.int32)`` bit for bit for float32 images
(another float dtype becomes float32, as ``asarray`` makes it; uint8 images stay uint8, one
byte per pixel, where ``asarray`` would widen them to int32).
While the trainer computes on batch k, batch k+1 has already been pulled from the iterator,
copied into one of a small ring of host buffers and its host->device copy started on a second
stream:

* **cuda**: the host buffers are page-locked (``cupy.cuda.alloc_pinned_memory``), so the copy
  (``ndarray.set(..., stream=copy_stream)`` on a non-blocking stream) is asynchronous. The
  compute stream (the current stream when the batch is handed out) waits for the copy's event
  before the batch is used — a stream wait, not a host synchronisation. A pinned buffer is
  written again only after the copy that read it finished (the host waits for that copy's
  event: it is two batches old, so normally done); a device buffer is overwritten only after
  the compute work that read it (the copy stream waits for the event recorded on the compute
  stream when the trainer asked for the next batch, i.e. after it enqueued its step), and a
  newly allocated one only after the compute work queued when it was allocated (CuPy's pool
  may hand it a block that work still reads).
* **emu** and the **null** device: the same ring, events and order, with synchronous copies
  between NumPy arrays (:class:`HostEngine`), so the slot logic runs in every test.
* **numpy** and **reference**: pass-through, no copies (``asarray`` as before).

A batch's buffers are views of its slot's buffers (the last, partial batch uses the first
rows); a slot is reallocated only for a batch larger than it, or of another image shape or
dtype, after everything that used it finished. The ring is the Staging object's, kept across
epochs. Not yet run on a GPU (no GPU was available to this project): the cuda path is tested
against a fake CuPy that models two streams (tests/test_staging.py).
"""
from __future__ import annotations

import numpy as np

__all__ = ["Staging", "CupyEngine", "HostEngine", "SLOTS", "staged_dtype"]

# Batches in the ring: the one the trainer holds (its step may still run), the one prepared
# ahead, and the one whose buffers the copy stream may fill while the step runs.
SLOTS = 3


def staged_dtype(a):
    """The device dtype of host array ``a``: float32 and uint8 kept, another float float32,
    another integer int32 (:meth:`DeviceBackend.asarray`'s rule, uint8 kept to copy 1 byte
    per pixel)."""
    dt = np.dtype(a.dtype)
    if dt in (np.dtype(np.float32), np.dtype(np.uint8)):
        return dt
    if np.issubdtype(dt, np.integer) or dt == np.bool_:
        return np.dtype(np.int32)
    return np.dtype(np.float32)


class CupyEngine:
    """What :class:`Staging` asks of CuPy (``cp``: the module, or a fake in tests)."""

    how = "staged in pinned memory, copied on a second stream one batch ahead"

    def __init__(self, cp):
        self.cp = cp

    def host_buffer(self, shape, dtype):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        mem = self.cp.cuda.alloc_pinned_memory(max(n, 1))
        return np.frombuffer(mem, dtype, int(np.prod(shape))).reshape(shape)

    def device_buffer(self, shape, dtype):
        return self.cp.empty(shape, dtype=dtype)

    def copy_stream(self):
        return self.cp.cuda.Stream(non_blocking=True)

    def compute_stream(self):
        return self.cp.cuda.get_current_stream()

    def event(self):
        return self.cp.cuda.Event(block=False, disable_timing=True)

    @staticmethod
    def record(event, stream):
        event.record(stream)

    @staticmethod
    def wait(stream, event):
        stream.wait_event(event)

    @staticmethod
    def host_wait(event):
        event.synchronize()

    @staticmethod
    def upload(dst, src, stream):
        dst.set(src, stream=stream)


class _Now:
    """The host engine's stream and event: everything has already happened."""

    def record(self, stream):
        pass

    def synchronize(self):
        pass


class HostEngine:
    """emu and the null device: device arrays are NumPy arrays, copies are synchronous."""

    def __init__(self, name):
        self.how = (f"staged one batch ahead (the {name} device copies synchronously: no "
                    f"pinned memory or second stream)")

    @staticmethod
    def host_buffer(shape, dtype):
        return np.empty(shape, dtype)

    device_buffer = host_buffer

    @staticmethod
    def copy_stream():
        return _Now()

    compute_stream = copy_stream
    event = copy_stream

    @staticmethod
    def record(event, stream):
        event.record(stream)

    @staticmethod
    def wait(stream, event):
        pass

    @staticmethod
    def host_wait(event):
        event.synchronize()

    @staticmethod
    def upload(dst, src, stream):
        np.copyto(dst, src)


class _Slot:
    """One batch's buffers: host and device arrays per part (x, y), the event of the copy
    that last read the host buffers and of the compute work that last read the device ones
    (None: nothing pending)."""

    def __init__(self):
        self.host, self.device = {}, {}
        self.copied = self.released = None


class Staging:
    """Device batches from host batches on ``backend`` (the module docstring); ``engine``
    injects a :class:`CupyEngine` over a fake CuPy or another engine (tests); ``staged=False``
    is the pass-through on every backend (one synchronous ``asarray`` per batch: the path
    before staging, which tests compare against)."""

    def __init__(self, backend, engine=None, slots=SLOTS, staged=True):
        self.backend = backend
        if engine is None and staged and backend.kind == "device":
            engine = (CupyEngine(backend.xp) if backend.xp is not np
                      else HostEngine(backend.name))
        self.engine = engine
        self.how = None if engine is None else engine.how  # None: pass-through
        self.slots = [_Slot() for _ in range(int(slots))] if engine is not None else []
        self._stream = None
        self._active = False
        self._allocated = False  # a device buffer was allocated for the batch being prepared

    def stage(self, host_batches):
        """Yield the device batches of ``host_batches``, preparing each next one while the
        caller uses the current; closing this generator closes ``host_batches``."""
        it = iter(host_batches)
        try:
            if self.engine is None:
                B = self.backend
                for x, y in it:
                    yield B.asarray(x), B.asarray(y, dtype=np.int32)
                return
            if self._active:
                raise RuntimeError("Staging.stage: one staged iteration at a time (the ring "
                                   "is shared): close the previous one first")
            self._active = True
            try:
                yield from self._staged(it)
            finally:
                self._active = False
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # an input pipeline stops its workers

    def _staged(self, it):
        eng = self.engine
        with self.backend.on_device():
            if self._stream is None:
                self._stream = eng.copy_stream()
            ahead = self._prepare(next(it, None), 0)
        k = 0
        while ahead is not None:
            slot, x, y = ahead
            with self.backend.on_device():
                ahead = self._prepare(next(it, None), k + 1)  # one batch ahead
                compute = eng.compute_stream()
                eng.wait(compute, slot.copied)  # the stream waits; the host goes on
            try:
                yield x, y
            finally:
                # The caller asks for the next batch, or stops (Ctrl-C, the end of its epoch):
                # its work on this one is enqueued; the buffers are free once that ran.
                with self.backend.on_device():
                    slot.released = slot.released or eng.event()
                    eng.record(slot.released, eng.compute_stream())
            k += 1

    def _prepare(self, xy, k):
        """Batch ``k``'s host batch into its slot's host buffers and its copy started; None
        at the end of the iterator."""
        if xy is None:
            return None
        x, y = xy
        eng, slot = self.engine, self.slots[k % len(self.slots)]
        parts = {"x": np.asarray(x), "y": np.asarray(y)}
        if slot.copied is not None:
            eng.host_wait(slot.copied)  # the host buffers' last copy finished
        hosts = {name: self._view(slot, "host", name, a) for name, a in parts.items()}
        for name, a in parts.items():
            hosts[name][...] = a
        if slot.released is not None:
            eng.wait(self._stream, slot.released)  # the device buffers' last readers finished
        self._allocated = False
        devs = {name: self._view(slot, "device", name, a) for name, a in parts.items()}
        if self._allocated:
            # A new device buffer comes from CuPy's pool for the compute stream (current
            # here), which may hand out a block that work already queued there still reads
            # (a step's freed temporaries): the copy into it must come after that work.
            fresh = eng.event()
            eng.record(fresh, eng.compute_stream())
            eng.wait(self._stream, fresh)
        for name in parts:
            eng.upload(devs[name], hosts[name], self._stream)
        slot.copied = slot.copied or eng.event()
        eng.record(slot.copied, self._stream)
        return slot, devs["x"], devs["y"]

    def _view(self, slot, where, name, a):
        """The first ``len(a)`` rows of the slot's buffer for ``a`` (made, or made larger or
        of another shape or dtype, once nothing pending uses the old one)."""
        dtype = staged_dtype(a) if name == "x" else np.dtype(np.int32)
        shape = tuple(a.shape)
        bufs = slot.host if where == "host" else slot.device
        buf = bufs.get(name)
        if (buf is None or buf.dtype != dtype or tuple(buf.shape[1:]) != shape[1:]
                or buf.shape[0] < shape[0]):
            if buf is not None and where == "device" and slot.released is not None:
                # freed now, the buffer must not still be read by the compute stream
                self.engine.host_wait(slot.released)
            bufs[name] = buf = None  # the old one goes before the new one is allocated
            alloc = self.engine.host_buffer if where == "host" else self.engine.device_buffer
            bufs[name] = buf = alloc(shape, dtype)
            self._allocated = self._allocated or where == "device"
        return buf[:shape[0]]
