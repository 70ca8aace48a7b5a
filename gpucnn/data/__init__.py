"""Datasets for gpucnn: MNIST, Fashion-MNIST, KMNIST (IDX) and CIFAR-10 (binary).

No pickle is ever used. See datasets.py for the search order and normalisation,
mirrors.py for download(), mirrors and digests, loader.py for reproducible batching.
"""

from .cifar import parse_cifar_batch, read_cifar_batch, read_cifar_batches
from .datasets import (DATASETS, Dataset, DatasetInfo, channel_stats, dataset_info,
                       find_dataset, load_dataset, normalization_stats, normalize,
                       search_locations, user_cache_root)
from .mirrors import KNOWN_DIGESTS, MIRRORS, download, extract_cifar_bins, fetch, file_digest
from .errors import DataError
from .folder import FolderData, load_folder
from .preprocess import Preprocess
from .idx import (encode_idx, parse_idx, read_idx, read_idx_images, read_idx_labels,
                  read_idx_pair)
from .loader import batch_rng, epoch_permutation, iterate_batches, num_batches, random_crop_flip

__all__ = [
    "DataError", "DATASETS", "FolderData", "Preprocess", "load_folder", "Dataset", "DatasetInfo", "KNOWN_DIGESTS", "MIRRORS",
    "batch_rng", "channel_stats", "dataset_info", "download", "encode_idx",
    "epoch_permutation", "extract_cifar_bins", "fetch", "file_digest", "find_dataset",
    "iterate_batches", "load_dataset", "normalization_stats", "normalize", "num_batches",
    "parse_cifar_batch", "parse_idx", "random_crop_flip", "read_cifar_batch",
    "read_cifar_batches", "read_idx", "read_idx_images", "read_idx_labels", "read_idx_pair",
    "search_locations", "user_cache_root",
]
