"""Reader for the IDX format used by MNIST, Fashion-MNIST and KMNIST.

An IDX file is a big-endian header followed by the raw data:

    bytes 0-1  zero
    byte  2    data type (0x08 = unsigned byte; the only one these datasets use)
    byte  3    number of dimensions (3 for images, 1 for labels)
    then one big-endian uint32 per dimension, then the data, row-major.

So image files start with the magic number 0x00000803 and label files with 0x00000801.
Files may be gzip-compressed (detected by the gzip magic bytes, not by the file name).
Everything is validated: magic, data type, dimension count, sizes, and that the data
length matches the header exactly. Errors are `DataError`s that name the file.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

IDX_UBYTE = 0x08
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_GZIP_MAGIC = b"\x1f\x8b"
_KINDS = {"images": (3, IMAGES_MAGIC, "an IDX image file"),
          "labels": (1, LABELS_MAGIC, "an IDX label file")}


def read_file_bytes(path: str | os.PathLike) -> bytes:
    """The content of `path`, gunzipped when it is gzip data. Errors name the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        # BadGzipFile is an OSError; a cut-off stream raises EOFError; a damaged
        # deflate stream zlib.error; a bad CRC or length check OSError.
        raise DataError(f"{path}: corrupt gzip data ({type(e).__name__}: {e}); "
                        f"delete the file and download it again") from None


def parse_idx(data: bytes, name: str, kind: str | None = None) -> np.ndarray:
    """Parse IDX bytes into a uint8 array. `kind` ("images" or "labels") fixes the
    expected magic number; None accepts any unsigned-byte IDX file."""
    if len(data) < 4:
        raise DataError(f"{name}: truncated: {len(data)} bytes, too short for an IDX header")
    magic = struct.unpack(">I", data[:4])[0]
    zero, dtype_byte, ndim = data[0] << 8 | data[1], data[2], data[3]
    if kind is not None:
        want_ndim, want_magic, what = _KINDS[kind]
    if zero != 0:
        expect = f", expected 0x{want_magic:08x} ({what})" if kind else ""
        raise DataError(f"{name}: bad magic 0x{magic:08x}{expect}; not an IDX file")
    if dtype_byte != IDX_UBYTE:
        raise DataError(f"{name}: IDX data type byte 0x{dtype_byte:02x}, expected 0x08 "
                        f"(unsigned byte); magic 0x{magic:08x}")
    if kind is not None and magic != want_magic:
        raise DataError(f"{name}: bad magic 0x{magic:08x}, expected 0x{want_magic:08x} "
                        f"({what})")
    if ndim == 0:
        raise DataError(f"{name}: IDX header has 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{name}: truncated: the {ndim}-dimensional IDX header needs "
                        f"{header_len} bytes, file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    if dims[0] == 0:
        raise DataError(f"{name}: IDX header says it holds 0 items")
    if any(d == 0 for d in dims[1:]):
        raise DataError(f"{name}: IDX header has a zero dimension: {dims}")
    need = int(np.prod(dims, dtype=np.int64))
    have = len(data) - header_len
    if have != need:
        if ndim == 3:
            what_items = f"{dims[0]} images of {dims[1]}x{dims[2]}"
        elif ndim == 1:
            what_items = f"{dims[0]} labels"
        else:
            what_items = "dimensions " + "x".join(map(str, dims))
        problem = "truncated" if have < need else "wrong size (trailing data)"
        raise DataError(f"{name}: {problem}: header says {what_items} = {need} bytes, "
                        f"file has {have} (after the {header_len}-byte header)")
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def read_idx(path: str | os.PathLike, kind: str | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a read-only uint8 array."""
    return parse_idx(read_file_bytes(path), str(path), kind)


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """uint8 array (N, H, W) from an IDX image file (magic 0x00000803)."""
    return read_idx(path, "images")


def read_idx_labels(path: str | os.PathLike, num_classes: int = 10) -> np.ndarray:
    """uint8 array (N,) from an IDX label file (magic 0x00000801); every label < num_classes."""
    labels = read_idx(path, "labels")
    check_labels(labels, str(path), num_classes)
    return labels


def check_labels(labels: np.ndarray, name: str, num_classes: int = 10) -> None:
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{name}: label {int(labels[i])} at index {i} is out of range "
                        f"(must be 0-{num_classes - 1}); {bad.size} bad label(s) in all")


def read_idx_pair(images_path: str | os.PathLike, labels_path: str | os.PathLike,
                  num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) uint8 from a matching pair of IDX files."""
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path, num_classes)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} holds {images.shape[0]} images but {labels_path} "
                        f"holds {labels.shape[0]} labels; the counts must match")
    return images, labels


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes for a uint8 array (used to write test files and converted data)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"IDX writer supports uint8 only, got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError("IDX arrays need 1 to 255 dimensions")
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()
