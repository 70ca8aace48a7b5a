"""Image folders (``gpucnn train --dataset folder --data-dir DIR``): torchvision's ImageFolder
layout, ``DIR/train/<class>/...`` and ``DIR/val/<class>/...``.

Classes are the sorted names of the sub-folders of ``train/`` (ImageFolder's find_classes);
each class's files are found recursively (sorted os.walk, links followed, sorted names, the
extensions of gpucnn.data.transforms.IMAGE_EXTENSIONS case-insensitively), as ImageFolder's
make_dataset finds them. A class folder without images is a DataError naming it unless
``allow_empty_classes``. Without ``val/``, a seeded, stratified ``val_split`` share of each
class of ``train/`` is held out (at least one image of a class of two or more). ``limit`` and
``test_limit`` keep a seeded, stratified subset (each class in proportion), never the first N
sorted files (which would all be one class).

Every image is decoded once at start-up, in threads (Pillow releases the GIL while it
decodes), or read from the decoded cache (``cache_decoded``: gpucnn.data.decoded_cache): a
file that is not a readable image is skipped with one warning naming it (counted:
:attr:`FolderData.skipped`) or, with ``strict``, is a DataError. Without augmentation the
training and validation images are kept as uint8 at the input size (the evaluation transform of
gpucnn.data.preprocess) and served like the built-in datasets (device data included). With
``augment="random-resized-crop"`` each training batch is decoded again and augmented on the
host — by ``workers`` processes (gpucnn.data.workers) or, with 0, by threads here — each sample
by a generator seeded by (seed, epoch, sample index), so a sample does not depend on the batch
it is in, on the workers, or on where a run was resumed — nor on the data-parallel rank that
prepares it (:meth:`_AugmentedTrainSet.part_batches`: a rank decodes only its part of each
global batch).
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .datasets import Dataset, DatasetInfo, channel_stats, check_variance, normalize
from .errors import DataError
from .loader import epoch_permutation, num_batches
from .preprocess import AUGMENTS, Preprocess
from .transforms import (IMAGE_EXTENSIONS, as_image, augment_rng, augmented_pixels, decode,
                         resize_center, to_array)

__all__ = ["FolderData", "find_classes", "class_files", "stratified_subset", "stratified_split",
           "load_folder", "augment_rng", "augmented_pixels", "STATS_MAX_BYTES"]

# With augmentation the training images are not kept in memory: mean/std come from the pixels
# of a seeded sample of at most this many bytes at the input size (all of them when they fit).
STATS_MAX_BYTES = 256 << 20
_SPLIT_TAG, _LIMIT_TAG, _STATS_TAG = 0x5350, 0x4C49, 0x5354


def find_classes(directory):
    """Sorted names of the sub-folders of ``directory`` (ImageFolder's find_classes)."""
    try:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    except OSError as exc:
        raise DataError(f"{directory}: cannot list the class folders: "
                        f"{exc.strerror or exc}") from None
    if not classes:
        raise DataError(f"{directory}: no class folders: an image folder holds "
                        f"train/<class>/<images> (and optionally val/<class>/<images>)")
    return classes


def class_files(directory):
    """The image files under ``directory``, in ImageFolder's order (sorted os.walk, links
    followed) — except that a folder reached a second time through a link (a link cycle, on
    which ImageFolder would walk forever) is not entered again."""
    seen, walked = set(), []
    for root, dirs, names in os.walk(directory, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        walked.append((root, names))
    out = []
    for root, names in sorted(walked):
        for name in sorted(names):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                out.append(os.path.join(root, name))
    return out


def _ranks(labels, rng):
    """Each sample's place within its class, as a share: (position + 0.5) / class size,
    positions in a seeded random order per class."""
    labels = np.asarray(labels)
    share = np.empty(len(labels))
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        share[where[rng.permutation(len(where))]] = (np.arange(len(where)) + 0.5) / len(where)
    return share


def stratified_subset(labels, n, seed, tag=_LIMIT_TAG):
    """Sorted indices of ``n`` samples, each class in proportion to its size, chosen by
    ``seed`` (all of them when n >= len(labels))."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    share = _ranks(labels, np.random.default_rng([seed, tag]))
    return np.sort(np.lexsort((labels, share))[:n])


def stratified_split(labels, share, seed):
    """(train indices, held-out indices): round(share * size) of each class held out, chosen
    by ``seed``, at least one of a class of two or more and never a whole class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, _SPLIT_TAG])
    held = []
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        k = min(max(int(round(share * len(where))), 1 if len(where) > 1 else 0),
                len(where) - 1)
        held.extend(where[rng.permutation(len(where))[:k]])
    held = np.sort(np.asarray(held, dtype=np.int64))
    return np.setdiff1d(np.arange(len(labels)), held), held


def _list_split(directory, classes, allow_empty, known=None):
    paths, labels, empty = [], [], []
    for i, name in enumerate(classes):
        d = os.path.join(directory, name)
        files = class_files(d) if os.path.isdir(d) else []
        if not files and known is None:
            empty.append(d)
        paths += files
        labels += [i] * len(files)
    if empty and not allow_empty:
        raise DataError(f"{empty[0]}: class folder without images (none of "
                        f"{', '.join(IMAGE_EXTENSIONS)})"
                        + (f", and {len(empty) - 1} more" if len(empty) > 1 else "")
                        + "; remove it or pass --allow-empty-classes")
    return paths, np.asarray(labels, dtype=np.int32)


def cache_dir_text(caches):
    return os.path.dirname(caches[0].data_path) if caches[0] is not None else "(none)"


@dataclass
class FolderData:
    train: Dataset
    val: Dataset
    preprocess: Preprocess
    skipped: list = field(default_factory=list)   # (path, why) of unreadable files
    line: str = ""


class _AugmentedTrainSet(Dataset):
    """The training split of a folder under augmentation: batches decoded and augmented on the
    host (``host_batches``), the evaluation pixels kept only for the statistics."""
    host_batches = True
    workers = 0        # input worker processes (gpucnn.data.workers); 0: threads here
    pipeline = None
    cache, cache_rows = None, None  # --cache-decoded: the images' rows in it
    zero_copy = False  # batches from the workers' slots without a copy (TrainBatches sets it)

    def batches(self, batch_size, shuffle=True, seed=0, epoch=0, drop_last=False,
                augment=False, start_batch=0):
        order = epoch_permutation(len(self), seed, epoch) if shuffle else np.arange(len(self))
        if drop_last:
            order = order[:len(order) - len(order) % batch_size]
        parts = [order[b * batch_size:(b + 1) * batch_size]
                 for b in range(int(start_batch), num_batches(len(order), batch_size))]
        return self.part_batches(parts, seed, epoch, start_batch, batch_size)

    def part_batches(self, parts, seed, epoch, first=0, capacity=None):
        """(x, y) of the samples of each index array of ``parts`` in turn (batch ``first``,
        ``first + 1``, ...), decoded and augmented by the workers (slots of ``capacity``
        images: at least the largest part) or by threads here. Only those samples are decoded:
        a data-parallel rank passes its part of each global batch (gpucnn.train_data); as
        each sample's augmentation depends on (seed, epoch, index) alone, the ranks' parts
        together are the one-process batch exactly."""
        if self.workers:
            capacity = int(capacity or max(map(len, parts), default=1))
            if self.pipeline is None or self.pipeline.batch != capacity:
                from .workers import BatchPipeline
                if self.pipeline is not None:
                    self.pipeline.close()
                cache = (None if self.cache is None else
                         (self.cache.data_path, self.cache.index_path, self.cache_rows))
                self.pipeline = BatchPipeline(self.paths, self.preprocess.channels,
                                              self.input_shape, self.mean, self.std,
                                              capacity, self.workers, cache)
            return self._pipeline_batches(parts, seed, epoch, first)
        return self._thread_batches(parts, seed, epoch)

    def _pipeline_batches(self, parts, seed, epoch, first):
        # the batch in its slot, valid until the next is asked for (the trainer's use)
        it = self.pipeline.parts(parts, seed, epoch, first, copy=not self.zero_copy)
        try:
            for x, idx in it:
                yield x, self.labels[idx]
        finally:
            it.close()  # the pipeline waits for the batches it still prepares

    def _thread_batches(self, parts, seed, epoch):
        pre = self.preprocess

        def sample(i):
            src = self.paths[i] if self.cache is None else self.cache.image(self.cache_rows[i])
            return augmented_pixels(src, pre.channels, pre.input_size, seed, epoch, i)

        for idx in parts:
            pixels = np.stack(list(self.pool.map(sample, idx.tolist())))
            yield normalize(pixels, self.mean, self.std), self.labels[idx]


def _decode_all(paths, channels, size, strict, pool, cache=None, wanted=None):
    """uint8 (n, C, H, W) of the readable files at the evaluation transform, the indices of
    the readable ones, and (path, why) of those skipped. ``cache``: their
    gpucnn.data.decoded_cache, read instead of the files. ``wanted``: the indices whose pixels
    are returned (None: all; the others are only checked to be readable)."""
    def one(i):
        want = wanted is None or i in wanted
        if cache is not None:
            a = cache.image(i)
            if a is None:
                return None, cache.unreadable[i]
            img = as_image(a, channels) if want else None
        else:
            try:
                img = decode(paths[i], channels)
            except DataError as exc:
                return None, str(exc)
        return (to_array(resize_center(img, *size)) if want else False), None

    arrays, kept, skipped = [], [], []
    for i, (a, why) in enumerate(pool.map(one, range(len(paths)))):
        if a is None:
            if strict:
                raise DataError(f"{why} (--strict: every file must be a readable image)")
            warnings.warn(f"skipped {why}", stacklevel=2)
            skipped.append((paths[i], why))
            continue
        if a is not False:
            arrays.append(a)
        kept.append(i)
    pixels = (np.stack(arrays) if arrays
              else np.zeros((0, channels, *size), dtype=np.uint8))
    return pixels, np.asarray(kept, dtype=np.int64), skipped


def load_folder(root, channels=3, input_size=(224, 224), val_split=0.1, seed=0, limit=None,
                test_limit=None, allow_empty_classes=False, strict=False, augment="none",
                mean=None, std=None, threads=None, workers=0, cache_decoded=False):
    """The :class:`FolderData` of image folder ``root`` (the module docstring)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    root = Path(root).expanduser()
    train_dir, val_dir = root / "train", root / "val"
    if not train_dir.is_dir():
        raise DataError(f"{root}: no train/ folder: an image folder holds "
                        f"train/<class>/<images> (and optionally val/<class>/<images>)")
    classes = find_classes(train_dir)
    paths, labels = _list_split(train_dir, classes, allow_empty_classes)
    if val_dir.is_dir():
        foreign = sorted(set(find_classes(val_dir)) - set(classes))
        if foreign:
            raise DataError(f"{val_dir / foreign[0]}: a class of val/ that train/ does not "
                            f"have (classes: {', '.join(classes[:10])}"
                            f"{', ...' if len(classes) > 10 else ''})")
        val_paths, val_labels = _list_split(val_dir, classes, True, known=classes)
        where = f"{train_dir} and {val_dir}"
    else:
        if not 0.0 < val_split < 1.0:
            raise DataError(f"{root}: no val/ folder, and --val-split {val_split} holds out "
                            f"nothing: give a share in (0, 1) or add val/<class>/<images>")
        keep, held = stratified_split(labels, val_split, seed)
        val_paths, val_labels = [paths[i] for i in held], labels[held]
        paths, labels = [paths[i] for i in keep], labels[keep]
        where = f"{train_dir} ({val_split:g} of each class held out for validation)"
    for n, what in ((limit, "train"), (test_limit, "val")):
        if n is not None:
            src = (paths, labels) if what == "train" else (val_paths, val_labels)
            pick = stratified_subset(src[1], n, seed)
            chosen = ([src[0][i] for i in pick], src[1][pick])
            if what == "train":
                paths, labels = chosen
            else:
                val_paths, val_labels = chosen
    size = tuple(input_size)
    caches = [None, None]
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        if cache_decoded:
            from .decoded_cache import DecodedCache
            caches = [DecodedCache.build(p, channels, pool)[0] for p in (paths, val_paths)]
        wanted = None
        if augment != "none":  # the pixels of a seeded sample, for the statistics
            n = min(len(paths), max(1, STATS_MAX_BYTES // (channels * size[0] * size[1])))
            wanted = set(np.random.default_rng([seed, _STATS_TAG]).choice(
                len(paths), n, replace=False).tolist()) if n < len(paths) else None
        train_px, kept, skipped = _decode_all(paths, channels, size, strict, pool, caches[0],
                                              wanted)
        paths, labels = [paths[i] for i in kept], labels[kept]
        val_px, vkept, vskipped = _decode_all(val_paths, channels, size, strict, pool,
                                              caches[1])
    val_labels = val_labels[vkept]
    skipped += vskipped
    if not len(labels) or not len(val_labels):
        raise DataError(f"{where}: no readable {'training' if not len(labels) else 'validation'}"
                        f" images ({len(skipped)} file(s) skipped)")
    if mean is None or std is None:
        stats = f"computed from the {len(labels)} training images"
        if len(train_px) < len(labels):
            stats = (f"computed from {len(train_px)} of the {len(labels)} training images (a "
                     f"seeded sample)")
        if not len(train_px):
            raise DataError(f"{train_dir}: no readable image in the seeded sample the mean and "
                            f"std are computed from; give --mean and --std")
        check_variance(train_px, [train_dir])
        mean, std = channel_stats(train_px)
    else:
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"--mean and --std need {channels} value(s) each (one per "
                             f"channel), got {len(mean)} and {len(std)}")
        stats = "given (--mean/--std)"
    pre = Preprocess(tuple(classes), channels, size, tuple(float(v) for v in mean),
                     tuple(float(v) for v in std), stats, augment)
    info = DatasetInfo("folder", tuple(classes), pre.input_shape, pre.mean, pre.std, fmt="folder")

    def dataset(cls, px, lab, split, files):
        return cls(images=normalize(px, pre.mean, pre.std), labels=lab, info=info, split=split,
                   mean=pre.mean, std=pre.std, files=files, pixels=px)

    val = dataset(Dataset, val_px, val_labels,  "test", (val_dir if val_dir.is_dir() else train_dir,))
    if augment == "none":
        train = dataset(Dataset, train_px, labels, "train", (train_dir,))
    else:
        train = _AugmentedTrainSet(images=None, labels=labels, info=info, split="train",
                                   mean=pre.mean, std=pre.std, files=(train_dir,), pixels=None)
        train.paths, train.preprocess = paths, pre
        train.cache, train.cache_rows = caches[0], [int(i) for i in kept]
        train.pool = ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1)
        train.workers = int(workers or 0)
    line = (f"{len(classes)} classes, {len(labels)} training and {len(val_labels)} validation "
            f"images from {where}, {channels} channel(s) at {size[0]}x{size[1]}, mean/std "
            f"{stats}, augmentation {augment}"
            + (f" ({'%d input worker process(es)' % workers if workers else 'threads'})"
               if augment != "none" else "")
            + (f"; decoded images cached in {cache_dir_text(caches)}" if cache_decoded else "")
            + (f"; {len(skipped)} unreadable file(s) skipped" if skipped else ""))
    return FolderData(train, val, pre, skipped, line)
