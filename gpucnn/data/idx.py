"""Reader for the IDX format used by MNIST, Fashion-MNIST and KMNIST.

An IDX file is a big-endian header followed by the raw data:

    bytes 0-1  zero
    byte  2    data type (0x08 = unsigned byte; the only one these datasets use)
    byte  3    number of dimensions (3 for images, 1 for labels)
    then one big-endian uint32 per dimension, then the data, row-major.

So image files start with the magic number 0x00000803 and label files with 0x00000801.
Files may be gzip-compressed (detected by the gzip magic bytes, not by the file name).
Everything is validated, the header before any data is read: magic, data type, dimension
count, the data size (computed in Python ints, at most gpucnn.filerules.DATA_MAX_BYTES) against
the file's size (raw) or as the bound of what is inflated (gzip), and that the data length
matches the header exactly. Errors are `DataError`s that name the file.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .. import filerules
from .errors import DataError

IDX_UBYTE = 0x08
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_GZIP_MAGIC = b"\x1f\x8b"
_KINDS = {"images": (3, IMAGES_MAGIC, "an IDX image file"),
          "labels": (1, LABELS_MAGIC, "an IDX label file")}


def _describe(dims):
    if len(dims) == 3:
        return f"{dims[0]} images of {dims[1]}x{dims[2]}"
    if len(dims) == 1:
        return f"{dims[0]} labels"
    return "dimensions " + "x".join(map(str, dims))


def _parse_header(read, name, kind):
    """(dims, header length) of the IDX header ``read(n)`` yields, every field checked and
    the data size computed in Python ints (a product that wraps in 64 bits is refused by
    size, not reshaped)."""
    head = read(4)
    if len(head) < 4:
        raise DataError(f"{name}: truncated: {len(head)} bytes, too short for an IDX header")
    magic = struct.unpack(">I", head)[0]
    zero, dtype_byte, ndim = head[0] << 8 | head[1], head[2], head[3]
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
    rest = read(4 * ndim)
    if len(rest) < 4 * ndim:
        raise DataError(f"{name}: truncated: the {ndim}-dimensional IDX header needs "
                        f"{header_len} bytes, file has {4 + len(rest)}")
    dims = struct.unpack(f">{ndim}I", rest)
    if dims[0] == 0:
        raise DataError(f"{name}: IDX header says it holds 0 items")
    if any(d == 0 for d in dims[1:]):
        raise DataError(f"{name}: IDX header has a zero dimension: {dims}")
    return dims, header_len


def _size_mismatch(name, dims, header_len, need, have, more=False):
    problem = "truncated" if have < need else "wrong size (trailing data)"
    return DataError(f"{name}: {problem}: header says {_describe(dims)} = {need} bytes, "
                     f"file has {'more than ' if more else ''}{have} (after the "
                     f"{header_len}-byte header)")


def parse_idx(data: bytes, name: str, kind: str | None = None) -> np.ndarray:
    """Parse IDX bytes into a uint8 array. `kind` ("images" or "labels") fixes the
    expected magic number; None accepts any unsigned-byte IDX file."""
    stream = io.BytesIO(data)
    dims, header_len = _parse_header(stream.read, name, kind)
    need = filerules.checked_product(dims, 1, filerules.DATA_MAX_BYTES, name, DataError)
    have = len(data) - header_len
    if have != need:
        raise _size_mismatch(name, dims, header_len, need, have)
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def _read_up_to(stream, n):
    """At most ``n`` bytes of ``stream`` into one buffer, read in bounded chunks (a gzip
    stream inflates no more than is asked). The buffer grows with what arrives rather than
    being allocated at ``n``: a gzip header's size is only a claim, and a few bytes of gzip
    claiming 2 GiB must cost what they inflate to, not the claim."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(1 << 20, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def read_idx(path: str | os.PathLike, kind: str | None = None,
             item_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a read-only uint8 array. The header is checked
    before the data is read: its size (at most gpucnn.filerules.DATA_MAX_BYTES) against the
    file's for raw data, and ``item_shape`` (the dimensions after the first) where given; gzip
    data is inflated in chunks up to the size the header implies, never further."""
    path = Path(path)
    name = str(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    with f:
        gz = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        stream = gzip.GzipFile(fileobj=f, mode="rb") if gz else f
        try:
            dims, header_len = _parse_header(stream.read, name, kind)
            if item_shape is not None and tuple(dims[1:]) != tuple(item_shape):
                raise DataError(f"{name}: items of shape {tuple(dims[1:])}, expected "
                                f"{tuple(item_shape)}; nothing was read")
            need = filerules.checked_product(dims, 1, filerules.DATA_MAX_BYTES, name,
                                             DataError)
            if not gz:
                have = os.fstat(f.fileno()).st_size - header_len
                if have != need:  # known from the size: a sparse giant is never read
                    raise _size_mismatch(name, dims, header_len, need, have)
            data = _read_up_to(stream, need)
            if len(data) < need:
                raise _size_mismatch(name, dims, header_len, need, len(data))
            if gz and stream.read(1):
                raise _size_mismatch(name, dims, header_len, need, need, more=True)
        except (OSError, EOFError, zlib.error) as e:
            if not gz:
                raise DataError(f"{path}: cannot read: {e}") from None
            # BadGzipFile is an OSError; a cut-off stream raises EOFError; a damaged
            # deflate stream zlib.error; a bad CRC or length check OSError.
            raise DataError(f"{path}: corrupt gzip data ({type(e).__name__}: {e}); "
                            f"delete the file and download it again") from None
    array = np.frombuffer(data, dtype=np.uint8).reshape(dims)
    array.flags.writeable = False
    return array


def read_idx_images(path: str | os.PathLike, image_shape: tuple[int, int] | None = None
                    ) -> np.ndarray:
    """uint8 array (N, H, W) from an IDX image file (magic 0x00000803); ``image_shape``:
    the (H, W) required, checked before the data is read."""
    return read_idx(path, "images", image_shape)


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
                  num_classes: int = 10, image_shape: tuple[int, int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) uint8 from a matching pair of IDX files."""
    images = read_idx_images(images_path, image_shape)
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
