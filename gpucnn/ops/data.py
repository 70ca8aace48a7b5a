"""Training batches gathered from uint8 pixels (``kernels/data.cu``; tests:
``tests/ops/test_gather.py``).

The trainer's device-data path (gpucnn/data/feed.py) uploads a dataset's uint8 pixels once and
builds each step's float32 input batch on the device from them and the batch's indices:

* ``B.gather_normalize(pixels, index, table)``: out[b] = the normalised image index[b];
* ``B.gather_crop_flip(pixels, index, crops, table, pad)``: the same, randomly cropped from
  the image padded by ``pad`` pixels and mirrored, with the crops (dy, dx, flip) drawn on the
  host (gpucnn.data.loader.crop_flip_draw): CIFAR-10's augmentation.

Normalisation is a lookup in ``table`` (:func:`pixel_table`), float32 (C, 257): [c, v] is the
host's normalize() of pixel value v in channel c, [c, 256] the padding value of a crop. A
lookup does no arithmetic, so a batch equals the host path's bit for bit (the kernel file
says why arithmetic would not). An index outside [0, N) gives an image of NaN, on every
backend (never a read outside the pixels).
"""
from __future__ import annotations

import math

import numpy as np

from .common import is_int
from .dispatch import Op, api
from .launch import i32, plan_1d

__all__ = ["TABLE_COLUMNS", "PADDING", "pixel_table", "pack_crops", "gather_reference",
           "crop_flip_reference", "gather_device", "crop_flip_device", "GATHER_NORMALIZE",
           "GATHER_CROP_FLIP", "gather_normalize_plan", "gather_crop_flip_plan"]

TABLE_COLUMNS = 257  # kernels/data.cu PIXEL_TABLE_COLUMNS: 256 pixel values, then the padding
PADDING = 256        # the padding's column


def pixel_table(values, padding):
    """The kernels' table: ``values`` float32 (C, 256), normalised pixel values per channel
    (Dataset.pixel_values), then column 256 = ``padding`` (one value per channel, rounded to
    float32 as random_crop_flip stores its fill)."""
    values = np.asarray(values, dtype=np.float32)
    table = np.empty((values.shape[0], TABLE_COLUMNS), np.float32)
    table[:, :PADDING] = values
    table[:, PADDING] = np.asarray(padding, dtype=np.float32)
    return table


def pack_crops(dy, dx, flips):
    """(dy, dx, flips) of crop_flip_draw as the kernel's int32 (batch, 3) rows."""
    return np.stack([dy, dx, flips], axis=1).astype(np.int32)


# ---- references ----------------------------------------------------------------------------
def _lookup(pixels, index, table, codes_of):
    """table[c, codes] over the images ``index`` selects, NaN where an index is invalid;
    ``codes_of(images)`` maps their pixels to table columns (B, C, H, W)."""
    index = np.asarray(index)
    valid = (index >= 0) & (index < len(pixels))
    codes = codes_of(pixels[np.where(valid, index, 0)])
    out = table[np.arange(table.shape[0])[:, None, None], codes]
    out[~valid] = np.nan
    return out


def gather_reference(pixels, index, table):
    return _lookup(pixels, index, table, lambda images: images)


def crop_flip_reference(pixels, index, crops, table, pad):
    # Here, not at the top: every backend imports the ops, and gpucnn.data (its downloader:
    # tarfile, urllib) has no business in that import.
    from ..data.loader import crop_flip_window
    crops = np.asarray(crops)
    _, _, h, w = pixels.shape
    rows, cols = crop_flip_window(crops[:, 0], crops[:, 1], crops[:, 2] != 0, h, w, pad)

    def codes(images):
        inside = (((rows >= 0) & (rows < h))[:, :, None]
                  & ((cols >= 0) & (cols < w))[:, None, :])[:, None]  # (B, 1, H, W)
        n = np.arange(len(images))[:, None, None, None]
        c = np.arange(images.shape[1])[None, :, None, None]
        r, q = np.clip(rows, 0, h - 1)[:, None, :, None], np.clip(cols, 0, w - 1)[:, None, None]
        return np.where(inside, images[n, c, r, q], PADDING)
    return _lookup(pixels, index, table, codes)


# ---- device plans --------------------------------------------------------------------------
def _device_plan(kernel, consts_of):
    """The plan factory of ``kernel(pixels, index, [crops,] table, out, n, images, ...)``
    writing a float32 (batch, C, H, W) batch; ``consts_of(pixels_shape, *setup)`` gives the
    kernel's integer arguments after ``images``."""
    def make(ctx, pixels_shape, batch, *setup):
        images, c, h, w = pixels_shape
        shape = (batch, c, h, w)
        n = math.prod(shape)
        # The pixels are addressed with 64-bit offsets: a dataset may pass 2^31 bytes.
        launch = plan_1d(ctx, kernel, n, large_ok=("pixels",))
        consts = (i32(n, f"{kernel}: batch elements"), i32(images, f"{kernel}: images"),
                  *(np.int32(v) for v in consts_of(pixels_shape, *setup)))
        empty = ctx.empty

        def run(*arrays):
            out = empty(shape, np.float32)
            launch.fire((*arrays, out, *consts))
            return out
        return run
    return make


gather_device = _device_plan("gather_normalize", lambda s: (s[1] * s[2] * s[3], s[2] * s[3]))
crop_flip_device = _device_plan("gather_crop_flip", lambda s, pad: (*s[1:], pad))


# ---- the ops and their entry points --------------------------------------------------------
GATHER_NORMALIZE = Op("gather_normalize", lambda ctx, shape, batch: gather_reference,
                      device=gather_device)
GATHER_CROP_FLIP = Op("gather_crop_flip", lambda ctx, shape, batch, pad: lambda *arrays:
                      crop_flip_reference(*arrays, pad), device=crop_flip_device)


def _specs(backend, pixels, index, table):
    """Checks shared by both ops; the specs of (pixels, index) and of table."""
    backend.check(pixels, "pixels", ndim=4, dtype=np.uint8)
    backend.check(index, "index", ndim=1, dtype=np.int32)
    channels = pixels.shape[1]
    backend.check(table, "table", dtype=np.float32, shape=(channels, TABLE_COLUMNS))
    if len(index) < 1:
        raise ValueError("index must select at least one image")
    return ((("pixels", pixels.shape, (pixels.dtype,)), ("index", index.shape, (index.dtype,))),
            ("table", table.shape, (table.dtype,)))


def gather_normalize_plan(backend, pixels, index, table):
    (p, i), t = _specs(backend, pixels, index, table)
    return backend.plan(GATHER_NORMALIZE, (pixels.shape, len(index)), p, i, t)


def gather_crop_flip_plan(backend, pixels, index, crops, table, pad):
    (p, i), t = _specs(backend, pixels, index, table)
    backend.check(crops, "crops", dtype=np.int32, shape=(len(index), 3))
    if not is_int(pad) or pad < 0:
        raise ValueError(f"gather_crop_flip: pad must be an integer >= 0, got {pad!r}")
    return backend.plan(GATHER_CROP_FLIP, (pixels.shape, len(index), int(pad)), p, i,
                        ("crops", crops.shape, (crops.dtype,)), t)


@api
def gather_normalize(backend, pixels, index, table):
    """float32 (len(index), C, H, W): image index[b] of the uint8 ``pixels`` (N, C, H, W),
    each pixel replaced by its table entry (:func:`pixel_table`)."""
    return gather_normalize_plan(backend, pixels, index, table).run(pixels, index, table)


@api
def gather_crop_flip(backend, pixels, index, crops, table, pad):
    """As gather_normalize, but output (r, c) of image b is source row dy + r - pad and
    column (flip ? dx + W - 1 - c : dx + c) - pad, with (dy, dx, flip) = crops[b] (offsets in
    [0, 2 pad], as crop_flip_draw draws them); outside the image, the padding (table column
    256)."""
    return gather_crop_flip_plan(backend, pixels, index, crops, table, pad).run(
        pixels, index, crops, table)
