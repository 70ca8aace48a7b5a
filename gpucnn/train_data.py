"""Where the trainer's batches come from (``gpucnn train --device-data auto|on|off``).

* **Device data** (a device backend, and ``on``, or ``auto`` when the training split fits):
  the split's uint8 pixels and int32 labels are uploaded once — a quarter of the float32
  images' bytes — and each step's float32 batch is built on the device by a gather kernel
  from them and the batch's indices (gpucnn/ops/data.py): normalised by a table of the host's
  own normalize() values, and for CIFAR-10 cropped and flipped with offsets drawn on the host
  from the same seeded generator as the host path. So a batch equals the host path's bit for
  bit, and so does training (tests/test_train_data.py).
* **Host data** (the CPU backends, ``off``, or a split that does not fit): as before — the
  normalised float32 images uploaded once and gathered per batch, or for CIFAR-10 each batch
  augmented on the host and uploaded.
* **Host batches** (CIFAR-10 augmented on the host, augmented image folders, and their
  data-parallel shards) reach a device backend through :class:`gpucnn.backends.staging.Staging`:
  on cuda in pinned memory, copied on a second stream one batch ahead; on emu and the null
  device the same ring of buffers with synchronous copies; on the CPU backends as they are.

"Fits" is :func:`device_data_choice`: the bytes uploaded within :data:`DEVICE_DATA_SHARE` of
the free device memory (:func:`gpucnn.membudget.free_device_bytes`; the rest is the model's: parameters,
activations, workspaces).
"""
from __future__ import annotations

import time

import numpy as np

from .backends.staging import Staging
from .data.datasets import AUGMENT_PAD
from .membudget import free_device_bytes
from .data.loader import (batch_rng, crop_flip_draw, crop_flip_window, epoch_permutation,
                          num_batches)
from .ops.data import pack_crops, pixel_table

__all__ = ["DEVICE_DATA_MODES", "DEVICE_DATA_SHARE", "check_device_data_mode",
           "device_data_choice", "free_device_bytes", "shard_bounds",
           "TrainBatches"]

DEVICE_DATA_MODES = ("auto", "on", "off")
DEVICE_DATA_SHARE = 0.25  # of the free device memory, at most, for the training split


def _mb(nbytes):
    return f"{nbytes / 1e6:.1f} MB"


def check_device_data_mode(mode):
    if mode not in DEVICE_DATA_MODES:
        raise ValueError(f"device_data must be one of {', '.join(DEVICE_DATA_MODES)}, "
                         f"got {mode!r}")


def device_data_choice(mode, need_bytes, free_bytes, where):
    """(on_device, why) for a split of ``need_bytes`` when ``free_bytes`` are free ``where``
    (None: unknown). ``on`` that does not fit is a ValueError saying what to do."""
    check_device_data_mode(mode)
    if mode == "off":
        return False, "--device-data off"
    bound = None if free_bytes is None else int(free_bytes * DEVICE_DATA_SHARE)
    share = f"{DEVICE_DATA_SHARE:.0%}"
    if bound is not None and need_bytes <= bound:
        return True, (f"--device-data {mode}: {_mb(need_bytes)} fit in {share} of the "
                      f"{_mb(free_bytes)} {where}")
    room = ("the free memory is unknown" if bound is None else
            f"more than {share} of the {_mb(free_bytes)} {where}")
    if mode == "on":
        raise ValueError(f"--device-data on: the training split needs {_mb(need_bytes)} on the "
                         f"device (uint8 images and labels), {room}; use --device-data auto "
                         f"(prepares batches on the host when it does not fit), or fewer "
                         f"images (--limit)")
    return False, f"--device-data auto: {_mb(need_bytes)} is {room}"


class TrainBatches:
    """``batches(batch_size, seed, epoch, start)`` yields the training split's (x, y) on
    ``backend``, from device data or host data (the module docstring); ``images`` and
    ``labels`` are the arrays they are gathered from (None where batches come from the host
    one by one); ``line`` says which path and why, for the trainer's start-up output."""

    def __init__(self, backend, dataset, mode="auto", augment=False):
        self.backend, self.dataset, self.augment = backend, dataset, augment
        if getattr(dataset, "host_batches", False):
            # each batch is used (CPU backends) or copied into a staging buffer (device
            # backends) before the next is asked for
            dataset.zero_copy = True
        B = backend
        self.staging = Staging(B)  # host batches onto the device, one batch ahead
        check_device_data_mode(mode)
        if B.kind != "device":
            self.on_device, why = False, (f"the {B.name} backend computes on the host "
                                          f"(--device-data does not apply)")
        elif getattr(dataset, "host_batches", False):  # an augmented image folder
            self.on_device, why = False, "--device-data does not apply to an augmented image folder"
        else:
            need = dataset.pixels.nbytes + dataset.labels.size * 4
            self.on_device, why = device_data_choice(mode, need, *free_device_bytes(B))
        if self.on_device:
            self.images = B.asarray(dataset.pixels, dtype=np.uint8)
            self.table = B.asarray(pixel_table(dataset.pixel_values(),
                                               dataset.padding_value()), dtype=np.float32)
            how = (f"uint8 images on the device ({_mb(dataset.pixels.nbytes)}; float32: "
                   f"{_mb(dataset.images.nbytes)}), batches "
                   f"{'cropped, flipped and ' if augment else ''}normalised by a gather kernel")
        elif augment:
            self.images = None
            how = ("batches augmented on the host" if dataset.pixels is not None else
                   "images decoded and augmented on the host batch by batch")
            how += (f", {self.staging.how}" if self.staging.how else ", uploaded one by one")
        else:
            self.images = B.asarray(dataset.images)
            how = (f"float32 images on the {B.name} backend ({_mb(dataset.images.nbytes)}), "
                   f"gathered per batch")
        self.labels = None if self.images is None else B.asarray(dataset.labels,
                                                                 dtype=np.int32)
        self.line = f"{how}: {why}"

    wait_s = 0.0        # seconds the trainer waited for batches, in all
    epoch_wait_s = 0.0  # ... in the current epoch

    def batches(self, batch_size, seed, epoch, start=0, shard=None):
        """The batches of ``epoch`` from batch ``start`` on (``shard``: :meth:`_batches`); the
        time spent waiting for each (decoding, augmenting, uploading) is added to ``wait_s``
        and ``epoch_wait_s``. A staged host batch (:mod:`gpucnn.backends.staging`) stays
        valid until the next but one is asked for: its buffers are reused."""
        self.epoch_wait_s = 0.0
        it = self._batches(batch_size, seed, epoch, start, shard)
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    xy = next(it)
                except StopIteration:
                    return
                waited = time.perf_counter() - t0
                self.wait_s += waited
                self.epoch_wait_s += waited
                yield xy
        finally:
            it.close()  # an input pipeline waits for the batches it still prepares

    def record(self, skipped, train_seconds):
        """The metrics' account of the input: unreadable images skipped, the share of the
        training time spent waiting for batches."""
        return {"skipped_images": len(skipped), "skipped_files": [p for p, _ in skipped[:100]],
                "data_wait_share": self.wait_s / train_seconds if train_seconds > 0 else None}

    def _batches(self, batch_size, seed, epoch, start=0, shard=None):
        """The batches of ``epoch`` from batch ``start``. ``shard`` = (rank, size): of each
        batch of ``batch_size`` (the global batch of a data-parallel run) only this rank's
        contiguous part (gpucnn.distributed.world.shard_bounds), augmented with that part of
        the draws the whole batch makes, so the ranks' parts together are the one-process
        batch exactly."""
        B, n = self.backend, len(self.dataset)
        if self.images is None:  # batches made on the host: staged onto the device
            yield from self.staging.stage(self._host_batches(batch_size, seed, epoch, start,
                                                             shard))
            return
        # The gather kernels index with int32; the host-data gather keeps its int64 order.
        dtype = np.int32 if self.on_device else np.int64
        order = B.asarray(epoch_permutation(n, seed, epoch).astype(dtype), dtype=dtype)
        for b in range(start, num_batches(n, batch_size)):
            lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
            part = (0, hi - lo, hi - lo)  # this rank's [a, b) of the batch's hi - lo images
            if shard is not None:
                a, z = shard_bounds(lo, hi, *shard)
                part, lo, hi = (a - lo, z - lo, hi - lo), a, z
            idx = order[lo:hi]
            yield self._images(idx, seed, epoch, b, part), self.labels[idx]

    def _host_batches(self, batch_size, seed, epoch, start, shard):
        """The host (x, y) NumPy batches of :meth:`_batches` when there are no device or host
        arrays to gather from: the dataset's own augmented batches, or with ``shard`` this
        rank's part of each batch — of an augmented image folder decoded and augmented by its
        pipeline (only this part's images), of CIFAR-10 augmented here."""
        if shard is None:
            yield from self.dataset.batches(batch_size, True, seed, epoch, augment=True,
                                            start_batch=start)
            return
        n = len(self.dataset)
        order = epoch_permutation(n, seed, epoch)
        if getattr(self.dataset, "host_batches", False):
            parts = [order[slice(*shard_bounds(b * batch_size, min(n, (b + 1) * batch_size),
                                               *shard))]
                     for b in range(start, num_batches(n, batch_size))]
            # slots for the largest part: shard_bounds' parts differ by at most one
            yield from self.dataset.part_batches(parts, seed, epoch, start,
                                                 -(-batch_size // shard[1]))
            return
        for b in range(start, num_batches(n, batch_size)):
            lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
            a, z = shard_bounds(lo, hi, *shard)
            idx = order[a:z]
            yield (self._host_part(idx, seed, epoch, b, (a - lo, z - lo, hi - lo)),
                   self.dataset.labels[idx])

    def _draws(self, seed, epoch, b, part):
        """This part's crop offsets and flips, from the draws of the whole batch."""
        first, last, whole = part
        return [d[first:last] for d in crop_flip_draw(batch_rng(seed, epoch, b), whole,
                                                      AUGMENT_PAD)]

    def _host_part(self, idx, seed, epoch, b, part):
        x = self.dataset.images[idx]
        h, w = x.shape[2:]
        pad = AUGMENT_PAD
        padded = np.empty((len(x), x.shape[1], h + 2 * pad, w + 2 * pad), np.float32)
        padded[...] = np.asarray(self.dataset.padding_value(), np.float32).reshape(-1, 1, 1)
        padded[:, :, pad:pad + h, pad:pad + w] = x
        rows, cols = crop_flip_window(*self._draws(seed, epoch, b, part), h, w, pad)
        n, c = len(x), x.shape[1]
        return np.ascontiguousarray(padded[np.arange(n)[:, None, None, None],
                                           np.arange(c)[None, :, None, None],
                                           rows[:, None, :, None] + pad,
                                           cols[:, None, None, :] + pad])

    def _images(self, idx, seed, epoch, b, part):
        B = self.backend
        if not self.on_device:
            return self.images[idx]
        if not self.augment:
            return B.gather_normalize(self.images, idx, self.table)
        crops = pack_crops(*self._draws(seed, epoch, b, part))
        return B.gather_crop_flip(self.images, idx, B.asarray(crops, dtype=np.int32),
                                  self.table, AUGMENT_PAD)


def shard_bounds(lo, hi, rank, size):
    """The part [a, b) of [lo, hi) rank ``rank`` of ``size`` takes in a data-parallel run:
    contiguous, in rank order, sizes differing by at most one (B each of a full global batch
    of size x B)."""
    n = hi - lo
    return lo + n * rank // size, lo + n * (rank + 1) // size
