"""Input worker processes (``gpucnn train --workers N``): decode-and-augment processes that
write finished batches into shared-memory slots, delivered in order, a few batches ahead.

Each worker is a forked process on Linux (as PyTorch's DataLoader's are; "spawn" elsewhere), which
inherits the slots' shared mapping and touches nothing of the trainer's threads or device
state: it only decodes (Pillow) and normalises (NumPy, no BLAS). It ignores SIGINT (Ctrl-C is the trainer's: it stops between two
steps, saves, and closes the pipeline) and exits when its parent is gone. The trainer hands out
batch b to whichever worker is free, with a free slot of ``slots`` (2 per worker); the worker
writes the batch's float32 images, normalised, into the slot and says so; batches are yielded
in order. What a batch holds depends only on (seed, epoch, sample indices): each sample is
augmented by its own generator (gpucnn.data.folder.augment_rng), so the result does not depend
on the number of workers or their timing, and ``--resume`` is exact. A batch may be any set of
samples (:meth:`BatchPipeline.parts`): under ``--distributed`` a rank's workers prepare only
that rank's part of each global batch.

A worker that dies (killed, out of memory) is found within :data:`POLL_S` of the trainer
waiting for a batch and is a :class:`WorkerDied` error naming it and its exit status — never a
hang. A batch a worker cannot build (an image that became unreadable since start-up) is a
DataError naming the file.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import weakref
from multiprocessing import shared_memory

import numpy as np

from .errors import DataError

__all__ = ["WorkerDied", "BatchPipeline", "default_workers", "POLL_S"]

POLL_S = 0.5  # how often a waiting trainer checks that the workers live
SLOTS_PER_WORKER = 2


class WorkerDied(DataError):
    """An input worker process ended while the trainer needed its batch."""


def default_workers():
    """The cores, divided among the ranks of this node under mpiexec (Open MPI's
    OMPI_COMM_WORLD_LOCAL_SIZE, MPICH/Hydra's MPI_LOCALNRANKS)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    ranks = 1
    for key in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        try:
            ranks = max(1, int(os.environ.get(key, "1")))
            break
        except ValueError:
            continue
    return max(1, cores // ranks)


def _start_method():
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _worker(spec, shm, tasks, results, parent):
    """A worker's loop: (b, slot, epoch, seed, indices) -> the batch into the slot. ``shm``:
    the slots' SharedMemory (inherited when forked, attached again when spawned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the trainer's handler, if forked
    from .datasets import normalize
    from .transforms import augmented_pixels
    slots = np.ndarray((spec["slots"], spec["batch"], *spec["shape"]), np.float32, shm.buf)
    source = spec["paths"].__getitem__
    if spec["cache"] is not None:  # --cache-decoded: the decoded pixels, not the files
        from .decoded_cache import DecodedCache
        data, index, rows = spec["cache"]
        cache = DecodedCache(data, index, {})
        source = lambda i: cache.image(rows[i])  # noqa: E731
    try:
        while True:
            try:
                task = tasks.get(timeout=POLL_S)
            except queue.Empty:
                if os.getppid() != parent:
                    return  # the trainer is gone
                continue
            if task is None:
                return
            b, slot, epoch, seed, idx = task
            try:
                px = np.stack([augmented_pixels(source(i), spec["channels"],
                                                spec["shape"][1:], seed, epoch, i) for i in idx])
                normalize(px, spec["mean"], spec["std"], out=slots[slot, :len(idx)])
                results.put((b, slot, None))
            except Exception as exc:  # reported to the trainer, which raises it
                results.put((b, slot, f"{type(exc).__name__}: {exc}"))
    finally:
        del slots
        shm.close()


class BatchPipeline:
    """``workers`` processes preparing the augmented batches of ``paths`` (see the module
    docstring); :meth:`batches` yields (float32 images, positions) in order; :meth:`close`
    stops them (also on garbage collection and at exit)."""

    def __init__(self, paths, channels, shape, mean, std, batch_size, workers, cache=None):
        self.batch, self.shape, self.workers_n = int(batch_size), tuple(shape), int(workers)
        self.slots = SLOTS_PER_WORKER * self.workers_n
        nbytes = self.slots * self.batch * int(np.prod(self.shape)) * 4
        self.shm = shared_memory.SharedMemory(create=True, size=max(nbytes, 1))
        self.view = np.ndarray((self.slots, self.batch, *self.shape), np.float32, self.shm.buf)
        ctx = mp.get_context(_start_method())
        self.tasks, self.results = ctx.Queue(), ctx.Queue()
        spec = {"paths": list(paths), "channels": channels, "shape": self.shape,
                "mean": tuple(mean), "std": tuple(std), "slots": self.slots,
                "batch": self.batch, "cache": cache}
        self.procs = [ctx.Process(target=_worker, args=(spec, self.shm, self.tasks,
                                                        self.results, os.getpid()),
                                  name=f"gpucnn-input-{i}", daemon=True)
                      for i in range(self.workers_n)]
        for p in self.procs:
            p.start()
        self._finalizer = weakref.finalize(self, _shutdown, self.procs, self.tasks, self.shm)

    def _check_alive(self, waiting_for):
        for i, p in enumerate(self.procs):
            if not p.is_alive():
                code = p.exitcode
                how = (f"killed by {signal.Signals(-code).name}" if code is not None
                       and code < 0 else f"exit status {code}")
                raise WorkerDied(f"input worker {i} (pid {p.pid}) died ({how}) while batch "
                                 f"{waiting_for} was being prepared; the run stops (a "
                                 f"checkpoint, if any, holds the last finished epoch or "
                                 f"interrupt)")

    def batches(self, order, batch_size, seed, epoch, start=0, copy=True):
        """(images, indices) of the batches of ``order`` from batch ``start`` on, in order.
        The images are a copy out of the slot, or with ``copy=False`` the slot itself, valid
        until the next batch is asked for (as DataLoader's batches, no copy is made: the
        trainer uses a batch before it asks for the next)."""
        if batch_size != self.batch:
            raise ValueError(f"this pipeline serves batches of {self.batch}, not {batch_size}")
        parts = [order[b * batch_size:(b + 1) * batch_size]
                 for b in range(int(start), -(-len(order) // batch_size))]
        return self.parts(parts, seed, epoch, start, copy)

    def parts(self, parts, seed, epoch, first=0, copy=True):
        """(images, indices) of each index array of ``parts`` in turn — batch ``first``, then
        ``first + 1``, ... (their numbers in messages) — as :meth:`batches` yields them. A part
        may be any set of samples of at most the slots' size: a data-parallel rank's part of
        each global batch, so that no worker decodes another rank's images."""
        too_big = [len(p) for p in parts if len(p) > self.batch]
        if too_big:
            raise ValueError(f"this pipeline's slots hold {self.batch} images, a part has "
                             f"{too_big[0]}")
        return self._deliver(parts, int(seed), int(epoch), int(first), copy)

    def _deliver(self, parts, seed, epoch, first, copy):
        free = list(range(self.slots))
        done, sent, nxt = {}, 0, 0
        self._outstanding = 0
        try:
            while nxt < len(parts):
                while free and sent < len(parts):
                    self.tasks.put((first + sent, free.pop(), epoch, seed,
                                    [int(i) for i in parts[sent]]))
                    self._outstanding += 1
                    sent += 1
                while first + nxt not in done:
                    b, slot, err = self._result(first + nxt)
                    if err is not None:
                        raise DataError(f"input worker, batch {b}: {err}")
                    done[b] = slot
                slot = done.pop(first + nxt)
                idx = parts[nxt]
                images = self.view[slot, :len(idx)]
                if copy:
                    images = images.copy()
                    free.append(slot)
                yield images, idx
                if not copy:
                    free.append(slot)
                nxt += 1
        finally:
            # Batches still being prepared (the run stopped mid-epoch) are waited for: their
            # slots must not be written while the next epoch (or a resume) uses them.
            try:
                while self._outstanding:
                    self._result(first + nxt)
            except WorkerDied:
                pass

    def _result(self, waiting_for):
        while True:
            self._check_alive(waiting_for)  # each time: the others may do a dead one's share
            try:
                out = self.results.get(timeout=POLL_S)
            except queue.Empty:
                self._check_alive(waiting_for)
                continue
            self._outstanding -= 1
            return out

    def close(self):
        self._finalizer()


def _shutdown(procs, tasks, shm):
    for _ in procs:
        try:
            tasks.put(None)
        except (OSError, ValueError):
            pass
    for p in procs:
        p.join(timeout=0.5)
        if p.is_alive():  # e.g. waiting on a queue lock a killed worker held
            p.kill()
            p.join(timeout=2.0)
    try:
        shm.close()
        shm.unlink()
    except (OSError, FileNotFoundError):
        pass
