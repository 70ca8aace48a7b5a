"""Dataset registry, file search, loading and normalisation.

Search order for a dataset `name` (the first place holding the split's files wins):

 1. the `data_dir` argument (the CLI's --data-dir). When given it is authoritative: only it
    is searched, so a run never trains on files from somewhere else, nor mixes one split
    from here with another from there; a missing or incomplete data_dir is an error listing
    what was looked for,
 2. $GPUCNN_DATA,
 3. the user cache: platformdirs.user_cache_dir("gpucnn")/datasets/<name>
    (~/.cache/gpucnn/datasets/<name> on Linux), where --download puts files,
 4. system copies: for fashion-mnist /usr/share/datasets/fashion-mnist (the Debian package
    dataset-fashion-mnist).

In 1 and 2 the files may be in a sub-folder named like the dataset (<dir>/<name>/) or in
the directory itself; for cifar10 also in a cifar-10-batches-bin/ sub-folder (the layout of
the official tarball).

Normalisation: images become float32 (N, C, H, W) with x = (pixel / 255 - mean) / std per
channel. mean/std are of the *training* set pixels scaled to [0, 1]:
  mnist          0.1307 / 0.3081 (the customary constants; the MNIST train-set statistics)
  fashion-mnist  0.2860 / 0.3530 (computed here from the 60000 training images:
                 0.28604, 0.35302)
  cifar10        per channel R, G, B mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435,
                 0.2616) (train-set statistics; std over all pixels of a channel)
  kmnist         no constant is trusted: computed exactly from the training images the
                 first time (a 256-bin histogram per channel) and remembered per process.
The test split always uses the training statistics. A training split with a constant channel
(std 0) is a DataError naming its files, never NaN inputs later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import cifar
from .mirrors import MIRRORS
from .mirrors import download as _download
from .errors import DataError
from .idx import read_idx_pair
from .loader import iterate_batches, num_batches, random_crop_flip

SPLITS = ("train", "test")
AUGMENT_PAD = 4  # pixels of padding around a CIFAR-10 training image before its random crop


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]          # (C, H, W)
    mean: tuple[float, ...] | None            # per channel, pixels in [0, 1]; None: computed
    std: tuple[float, ...] | None
    sizes: dict = field(default_factory=dict)  # official split sizes
    fmt: str = "idx"                          # "idx" or "cifar"
    system_dirs: tuple[str, ...] = ()
    install_hint: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)


_MNIST_SIZES = {"train": 60000, "test": 10000}
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", tuple(str(i) for i in range(10)), (1, 28, 28),
                         (0.1307,), (0.3081,), _MNIST_SIZES),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
         "Sneaker", "Bag", "Ankle boot"),
        (1, 28, 28), (0.2860,), (0.3530,), _MNIST_SIZES,
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        install_hint="apt-get install dataset-fashion-mnist (Debian/Ubuntu)"),
    "kmnist": DatasetInfo("kmnist", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re",
                                     "wo"),
                          (1, 28, 28), None, None, _MNIST_SIZES),
    "cifar10": DatasetInfo(
        "cifar10",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
         "truck"),
        (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        {"train": 50000, "test": 10000}, fmt="cifar"),
}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "fmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar_10": "cifar10"}

_IDX_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_CIFAR_SPLIT_FILES = {"train": cifar.TRAIN_FILES, "test": cifar.TEST_FILES}


def dataset_info(name: str) -> DatasetInfo:
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[key]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def user_cache_root() -> Path:
    """Directory holding downloaded datasets (one sub-folder per dataset)."""
    try:
        from platformdirs import user_cache_dir
        base = Path(user_cache_dir("gpucnn"))
    except ImportError:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "gpucnn"
    return base / "datasets"


def search_locations(name: str, data_dir: str | os.PathLike | None = None
                     ) -> list[tuple[str, Path]]:
    """The (origin, directory) pairs searched for `name`, in order (only data_dir's when it
    is given)."""
    info = dataset_info(name)
    subdirs = [info.name] + (["cifar-10-batches-bin"] if info.fmt == "cifar" else [])
    places: list[tuple[str, Path]] = []

    def root(origin, base):
        base = Path(base).expanduser()
        for sub in subdirs:
            places.append((origin, base / sub))
        places.append((origin, base))
        if info.fmt == "cifar":
            places.append((origin, base / info.name / "cifar-10-batches-bin"))

    if data_dir is not None:
        root("--data-dir", data_dir)
        return places
    env = os.environ.get("GPUCNN_DATA")
    if env:
        root("$GPUCNN_DATA", env)
    cache = user_cache_root() / info.name
    places.append(("user cache", cache))
    if info.fmt == "cifar":
        places.append(("user cache", cache / "cifar-10-batches-bin"))
    for d in info.system_dirs:
        places.append(("system", Path(d)))
    return places


def _idx_candidates(stem: str) -> list[str]:
    dotted = stem.replace("-idx", ".idx", 1)  # train-images.idx3-ubyte (another common name)
    return [stem + ".gz", stem, dotted + ".gz", dotted]


def split_files(directory: Path, name: str, split: str) -> list[Path] | None:
    """The files of `split` in `directory`, or None when any is missing."""
    info = dataset_info(name)
    found = []
    if info.fmt == "cifar":
        for f in _CIFAR_SPLIT_FILES[split]:
            if not (directory / f).is_file():
                return None
            found.append(directory / f)
        return found
    for stem in _IDX_STEMS[split]:
        hit = next((directory / c for c in _idx_candidates(stem)
                    if (directory / c).is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found


def _wanted_description(info: DatasetInfo, split: str) -> str:
    if info.fmt == "cifar":
        return ", ".join(_CIFAR_SPLIT_FILES[split])
    return " + ".join(f"{s}[.gz]" for s in _IDX_STEMS[split])


def find_dataset(name: str, split: str = "train",
                 data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Paths of the files of `split`, from the first search location that has them all.
    Raises DataError listing every place searched and how to get the data."""
    info = dataset_info(name)
    _check_split(split)
    places = search_locations(info.name, data_dir)
    for _, d in places:
        files = split_files(d, info.name, split)
        if files is not None:
            return files
    where = f"in --data-dir {data_dir}" if data_dir is not None else "anywhere"
    lines = [f"dataset {info.name!r} ({split} split) not found {where}: looked for "
             f"{_wanted_description(info, split)} in:"]
    seen = set()
    for origin, d in places:
        if d not in seen:
            seen.add(d)
            lines.append(f"  {d}  ({origin})")
    if data_dir is not None:
        other = next(o for o in SPLITS if o != split)
        has_other = any(split_files(d, info.name, other) is not None for _, d in places)
        lines.append((f"It holds the {other} split but not the {split} split. " if has_other
                      else "") + "--data-dir is authoritative: nothing else was searched. "
                     f"Put the files there, add --download (fetches them into "
                     f"{Path(data_dir).expanduser() / info.name}), or drop --data-dir to "
                     f"search $GPUCNN_DATA, the user cache and the system copies.")
    else:
        hint = (f"To get it: rerun with --download (load_dataset(..., download=True)), which "
                f"fetches it from {MIRRORS[info.name]} into {user_cache_root() / info.name}")
        if info.install_hint:
            hint += f"; or {info.install_hint}"
        hint += "; or put the files in --data-dir or $GPUCNN_DATA."
        lines.append(hint)
    raise DataError("\n".join(lines))


def read_split(name: str, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 images (N, C, H, W) and labels (N,) from a split's files, validated
    against the dataset's shape."""
    info = dataset_info(name)
    if info.fmt == "cifar":
        images, labels = cifar.read_cifar_batches(files)
    else:
        images, labels = read_idx_pair(files[0], files[1], info.num_classes,
                                       info.input_shape[1:])
        images = images[:, None, :, :]
    if images.shape[1:] != info.input_shape:
        raise DataError(f"{files[0]}: images have shape {images.shape[1:]} (C, H, W), "
                        f"expected {info.input_shape} for {info.name}")
    return images, labels


def check_variance(images: np.ndarray, files) -> None:
    """DataError naming the files unless every channel of the training images ``images``
    (uint8 (N, C, H, W)) holds two pixel values at least: constant images have std 0, which
    normalising by the data's own statistics divides by, and nothing can be learnt from."""
    for c in range(images.shape[1]):
        plane = images[:, c]
        low = int(plane.min())
        if low == int(plane.max()):
            where = ", ".join(str(f) for f in files) or "the training images"
            raise DataError(f"{where}: every pixel of channel {c} of the {len(images)} "
                            f"training images is {low}: no variance (std 0), nothing to "
                            f"normalise by or learn from; a damaged or placeholder file?")


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images (N, C, H, W), pixels scaled to
    [0, 1] (population std), from a 256-bin histogram per channel."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(np.ascontiguousarray(images[:, c]).ravel(), minlength=256)
        total = counts.sum()
        mean = float((counts * values).sum() / total)
        var = float((counts * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(var ** 0.5)
    return tuple(means), tuple(stds)


def normalize(images: np.ndarray, mean, std, out=None) -> np.ndarray:
    """float32 (x / 255 - mean) / std, per channel, for uint8 images (N, C, H, W); into
    ``out`` (float32, the images' shape) when given, with the same arithmetic."""
    c = images.shape[1]
    mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), (c,))
    std = np.broadcast_to(np.asarray(std, dtype=np.float64), (c,))
    if out is None:
        out = images.astype(np.float32)
    else:
        out[...] = images
    scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(1, c, 1, 1)
    shift = (mean / std).astype(np.float32).reshape(1, c, 1, 1)
    out *= scale
    out -= shift
    return out


_computed_stats: dict[tuple, tuple] = {}


def normalization_stats(name: str, data_dir: str | os.PathLike | None = None,
                        download: bool = False, base_url: str | None = None
                        ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) used for `name`: the constants, or for datasets without constants the
    statistics of its training images (which must then be available)."""
    info = dataset_info(name)
    if info.mean is not None:
        return info.mean, info.std
    files = _locate(info, "train", data_dir, download, base_url)
    key = (info.name,) + tuple(str(p.resolve()) for p in files)
    if key not in _computed_stats:
        images, _ = read_split(info.name, files)
        check_variance(images, files)
        _computed_stats[key] = channel_stats(images)
    return _computed_stats[key]


def _locate(info: DatasetInfo, split: str, data_dir, download: bool,
            base_url: str | None = None) -> list[Path]:
    try:
        return find_dataset(info.name, split, data_dir)
    except DataError:
        if not download:
            raise
    target = (Path(data_dir).expanduser() / info.name) if data_dir is not None \
        else user_cache_root() / info.name
    _download(info.name, target, base_url=base_url)
    files = split_files(target, info.name, split)
    if files is None:  # should not happen: the download checks every file
        raise DataError(f"{target}: download finished but the {split} files are missing")
    return files


@dataclass
class Dataset:
    """One split of a dataset, in memory.

    images: float32 (N, C, H, W), normalised; labels: int32 (N,).
    pixels: the uint8 (N, C, H, W) images were normalised from (load_dataset keeps them: the
    trainer's device-data path uploads these, a quarter of the float32 bytes), or None.
    `images, labels = dataset` unpacks (so load_dataset can be used as returning a pair).
    """
    images: np.ndarray
    labels: np.ndarray
    info: DatasetInfo
    split: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: tuple[Path, ...] = ()
    pixels: np.ndarray | None = None

    name = property(lambda self: self.info.name)
    classes = property(lambda self: self.info.classes)
    num_classes = property(lambda self: self.info.num_classes)
    input_shape = property(lambda self: self.info.input_shape)

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        return iter((self.images, self.labels))

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return num_batches(len(self), batch_size, drop_last)

    def padding_value(self) -> tuple[float, ...]:
        """Per channel, the augmentation's padding on normalised images: raw pixel 0."""
        return tuple(-m / s for m, s in zip(self.mean, self.std))

    def pixel_values(self) -> np.ndarray:
        """float32 (C, 256): [c, v] is what normalize() makes of pixel value v in channel c,
        computed by normalize() itself, so a lookup in it is the host arithmetic exactly."""
        c = self.input_shape[0]
        every = np.broadcast_to(np.arange(256, dtype=np.uint8), (1, c, 1, 256))
        return normalize(every, self.mean, self.std).reshape(c, 256)

    def augmentation(self, pad: int = AUGMENT_PAD):
        """Random crop (pad px of black padding) + horizontal flip, for iterate_batches."""
        fill = self.padding_value()
        return lambda x, rng: random_crop_flip(x, rng, pad=pad, fill=fill)

    def batches(self, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                drop_last: bool = False, augment: bool = False, start_batch: int = 0):
        """iterate_batches over this split; augment=True applies augmentation()
        (meant for the cifar10 training split)."""
        return iterate_batches(self.images, self.labels, batch_size, shuffle=shuffle,
                               seed=seed, epoch=epoch, drop_last=drop_last,
                               augment=self.augmentation() if augment else None,
                               start_batch=start_batch)


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                 download: bool = False, limit: int | None = None,
                 base_url: str | None = None) -> Dataset:
    """Load one split: normalised float32 images (N, C, H, W) and int32 labels.

    data_dir: searched first (see the module doc for the search order).
    download: when the files are found nowhere, fetch them (into data_dir/<name> when
        data_dir is given, else the user cache) and verify their digests.
    limit: keep only the first `limit` samples (quick runs); normalisation statistics are
        still those of the full training set.
    """
    info = dataset_info(name)
    _check_split(split)
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    files = _locate(info, split, data_dir, download, base_url)
    images, labels = read_split(info.name, files)
    if split == "train":  # the whole split, as the statistics are
        check_variance(images, files)
    if limit is not None:
        images, labels = images[:int(limit)], labels[:int(limit)]
    mean, std = normalization_stats(info.name, data_dir, download, base_url)
    return Dataset(images=normalize(images, mean, std), labels=labels.astype(np.int32),
                   info=info, split=split, mean=tuple(mean), std=tuple(std),
                   files=tuple(files), pixels=images)
