"""Reader for the CIFAR-10 *binary* version (cifar-10-binary.tar.gz).

Each batch file (data_batch_1.bin .. data_batch_5.bin, test_batch.bin) is a sequence of
3073-byte records: one label byte (0-9) then 3072 pixel bytes, the 1024 red values, then
1024 green, then 1024 blue, each plane row-major 32x32. So a record is already CHW.

The pickled "python version" of CIFAR-10 is deliberately not supported: unpickling runs
arbitrary code.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import filerules
from .errors import DataError
from .idx import check_labels

RECORD_BYTES = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
ALL_FILES = TRAIN_FILES + TEST_FILES


def parse_cifar_batch(data: bytes, name: str, num_classes: int = 10
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels uint8 (N,)) from the bytes of one batch file."""
    size = len(data)
    if size and data[:1] == b"\x80" and size % RECORD_BYTES != 0:
        raise DataError(f"{name}: this looks like the pickled Python version of CIFAR-10, "
                        f"which gpucnn never loads; use the binary version "
                        f"(cifar-10-binary.tar.gz, files data_batch_N.bin)")
    if size == 0:
        raise DataError(f"{name}: empty file")
    if size % RECORD_BYTES != 0:
        raise DataError(f"{name}: size {size} bytes is not a multiple of the {RECORD_BYTES}-byte "
                        f"CIFAR-10 record (1 label byte + 3072 pixels): truncated or not a "
                        f"CIFAR-10 binary batch ({size // RECORD_BYTES} whole records + "
                        f"{size % RECORD_BYTES} bytes)")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    check_labels(labels, name, num_classes)
    images = records[:, 1:].reshape(-1, 3, 32, 32)
    return images, labels


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch file; a file larger than
    gpucnn.filerules.DATA_MAX_BYTES (a sparse giant) is refused by its size, unread."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > filerules.DATA_MAX_BYTES:
                raise DataError(f"{path}: {filerules.size_text(size)}, more than the "
                                f"{filerules.size_text(filerules.DATA_MAX_BYTES)} a dataset "
                                f"file may hold (a CIFAR-10 batch is 29.3 MiB); not read")
            data = f.read(size + 1)  # one more: a file that grew is not cut silently
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > size:
        raise DataError(f"{path}: changed while it was read (grew past {size} bytes)")
    return parse_cifar_batch(data, str(path))


def read_cifar_batches(paths) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate several batch files (in the given order) into contiguous copies."""
    parts = [read_cifar_batch(p) for p in paths]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0].copy()
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1].copy()
    return images, labels
