"""Seeded, reproducible mini-batch iteration and data augmentation.

Reproducibility contract: the order of an epoch depends only on (seed, epoch), and the
augmentation of batch b only on (seed, epoch, b). So a run resumed from a checkpoint at
(epoch, batch) sees exactly the batches the uninterrupted run would have seen
(pass start_batch to skip the batches already done).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

# Tags mixed into the seed so the shuffle and augmentation streams are independent.
_SHUFFLE_TAG = 0x5348
_AUGMENT_TAG = 0x4147

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _check_seed(seed, what):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) \
            or seed < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {seed!r}")
    return int(seed)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of `epoch`: a permutation of range(n) fixed by (seed, epoch)."""
    seed, epoch = _check_seed(seed, "seed"), _check_seed(epoch, "epoch")
    rng = np.random.default_rng([seed, epoch, _SHUFFLE_TAG])
    return rng.permutation(n)


def batch_rng(seed: int, epoch: int, batch_index: int) -> np.random.Generator:
    """The generator used to augment batch `batch_index` of `epoch`."""
    return np.random.default_rng([_check_seed(seed, "seed"), _check_seed(epoch, "epoch"),
                                  int(batch_index), _AUGMENT_TAG])


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def iterate_batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
                    shuffle: bool = True, seed: int = 0, epoch: int = 0,
                    drop_last: bool = False, augment: Augment | None = None,
                    start_batch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (images[idx], labels[idx]) mini-batches (contiguous copies).

    shuffle: order from epoch_permutation(N, seed, epoch), else 0..N-1.
    drop_last: drop a final batch smaller than batch_size.
    augment: optional f(batch_images, rng) -> batch_images, called with batch_rng(seed,
        epoch, b) so augmentation is reproducible per batch.
    start_batch: skip the first batches (resuming mid-epoch); the batches yielded are
        identical to those of a full iteration.
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    seed, epoch = _check_seed(seed, "seed"), _check_seed(epoch, "epoch")
    order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)
    for b in range(int(start_batch), num_batches(n, batch_size, drop_last)):
        idx = order[b * batch_size:(b + 1) * batch_size]
        x = images[idx]
        y = labels[idx]
        if augment is not None:
            x = augment(x, batch_rng(seed, epoch, b))
        yield np.ascontiguousarray(x), np.ascontiguousarray(y)


def crop_flip_draw(rng: np.random.Generator, n: int, pad: int = 4, flip: bool = True
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The random part of random_crop_flip for n images: (dy, dx, flips), window offsets in
    [0, 2 * pad] into the padded image and mirror flags, in the order they are drawn (the
    device-data path draws them here too, so its crops are the host path's)."""
    dy = rng.integers(0, 2 * pad + 1, size=n)
    dx = rng.integers(0, 2 * pad + 1, size=n)
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    return dy, dx, flips


def crop_flip_window(dy: np.ndarray, dx: np.ndarray, flips: np.ndarray, h: int, w: int,
                     pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows (n, h), cols (n, w)): the source pixel of each output row and column of the
    windows (dy, dx, flips), in *unpadded* image coordinates: outside [0, h) x [0, w) is the
    padding."""
    rows = np.asarray(dy)[:, None] + np.arange(h) - pad
    dx = np.asarray(dx)[:, None]
    cols = np.where(np.asarray(flips)[:, None], dx + (w - 1 - np.arange(w)),
                    dx + np.arange(w)) - pad
    return rows, cols


def random_crop_flip(images: np.ndarray, rng: np.random.Generator, pad: int = 4,
                     fill=0.0, flip: bool = True) -> np.ndarray:
    """Random crop after padding each side by `pad` pixels, plus a random horizontal
    flip (probability 1/2), independently per image. images: (N, C, H, W).

    fill: the padding value, a scalar or one value per channel. On normalised images
    pass -mean/std (what Dataset.batches does) so the padding is black, i.e. the
    "4-pixel zero padding" of the raw pixels.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {images.shape}")
    n, c, h, w = images.shape
    padded = np.empty((n, c, h + 2 * pad, w + 2 * pad), dtype=images.dtype)
    padded[...] = np.asarray(fill, dtype=images.dtype).reshape(-1, 1, 1) \
        if np.ndim(fill) else fill
    padded[:, :, pad:pad + h, pad:pad + w] = images
    rows, cols = crop_flip_window(*crop_flip_draw(rng, n, pad, flip), h, w, pad)
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
                  rows[:, None, :, None] + pad, cols[:, None, None, :] + pad]
