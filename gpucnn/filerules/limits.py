"""The limits of what gpucnn reads, and the size and value checks that apply them."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["JSON_MAX_BYTES", "JSON_MAX_DEPTH", "JSON_MAX_NUMBER_CHARS", "ZIP_MAX_MEMBERS",
           "ZIP_MAX_NAME_BYTES", "GENERIC_INFLATE_FACTOR", "GENERIC_INFLATE_MARGIN",
           "NPY_MAX_HEADER_BYTES", "NPY_MAX_NDIM", "NPY_MAGIC", "FLOAT_DTYPES", "ARRAY_DTYPES",
           "METADATA_DTYPES", "MAX_CLASSES", "MAX_COUNTER", "DATA_MAX_BYTES", "ONNX_MAX_BYTES",
           "ONNX_MAX_NODES",
           "generic_uncompressed_limit", "size_text", "checked_values", "checked_product"]

# ---- limits -----------------------------------------------------------------------------
# JSON documents (a checkpoint's metadata): gpucnn's own nest 6 deep and hold numbers of at
# most 40 characters (a PCG64 state is a 39-digit int); a run's history is ~250 bytes an epoch.
JSON_MAX_BYTES = 16 << 20
JSON_MAX_DEPTH = 64
JSON_MAX_NUMBER_CHARS = 64  # far below Python's 4,300-digit int-string limit (a ValueError)

# Zip archives (.npz): a checkpoint of AlexNet under Adam holds 49 members.
ZIP_MAX_MEMBERS = 4096
ZIP_MAX_NAME_BYTES = 512
# Without an expectation of the state's size (a bare load_checkpoint), what the members may
# inflate to in all: what a stored archive holds (gpucnn writes stored members), or a
# compressed one whose zero-initialised optimizer state shrank to nothing, plus a margin.
GENERIC_INFLATE_FACTOR = 4
GENERIC_INFLATE_MARGIN = 16 << 20

# .npy members: NumPy writes headers of 128 bytes for the arrays gpucnn saves.
NPY_MAX_HEADER_BYTES = 4096
NPY_MAX_NDIM = 32
NPY_MAGIC = b"\x93NUMPY"
# Only the dtypes gpucnn writes: little-endian, no bool/complex/datetime/structured/object.
FLOAT_DTYPES = ("<f4", "<f8")
ARRAY_DTYPES = FLOAT_DTYPES + ("<i4", "<i8")
METADATA_DTYPES = ("|u1",)  # the UTF-8 JSON text of the metadata member

# Model options: AlexNet's classifier of 4096 x 100,000 float32 is 1.6 GB: past that, not ours.
MAX_CLASSES = 100_000
# Counters (epochs, steps, calls): exact in a float64, and no run reaches them.
MAX_COUNTER = 2 ** 53

# Dataset files (IDX, CIFAR-10 batches): the largest gpucnn reads is 150 MB; a header or a
# (sparse) file claiming more is refused before it is read.
DATA_MAX_BYTES = 2 << 30

# ONNX models (gpucnn.onnx.load): protobuf cannot hold more than 2 GiB in one message, and
# AlexNet's weights are 244 MB; external data (weights in side files) is refused. Torch's
# exporters emit ~60 nodes for a LocalResponseNorm: 100,000 nodes is no CNN gpucnn builds.
ONNX_MAX_BYTES = 1 << 30
ONNX_MAX_NODES = 100_000


def generic_uncompressed_limit(archive_bytes):
    """What the members of an archive of ``archive_bytes`` may inflate to, in all, when no
    expected state size bounds them."""
    return GENERIC_INFLATE_FACTOR * archive_bytes + GENERIC_INFLATE_MARGIN


_SIZE_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def size_text(n):
    """``n`` bytes for a message: "600 bytes", "4.0 TiB", "at least 2^3551 bytes"."""
    i = min(int(math.log(max(n, 1), 1024)), len(_SIZE_UNITS) - 1)
    if i == 0:
        return f"{n} bytes"
    try:
        return f"{n / 1024 ** i:.1f} {_SIZE_UNITS[i]}"
    except OverflowError:
        # a header's product of dimensions can be any size (an IDX header of 255 dimensions
        # of 2^32-1 claims about 2^8160 bytes), past what a float holds even in EiB
        return f"at least 2^{n.bit_length() - 1} bytes"


# ---- values -----------------------------------------------------------------------------
def checked_values(array, where, error, dtype=None):
    """``array`` as ``dtype`` (the dtype its values are used in; None: as it is), refused
    unless every float is finite *after* the conversion (1e39 is finite in float64, inf in
    float32)."""
    if dtype is not None:
        dtype = np.dtype(dtype)
        if array.dtype.kind != dtype.kind:
            raise error(f"{where}: dtype {array.dtype} where {dtype} values are used "
                        f"(gpucnn writes {dtype} here)")
        with np.errstate(over="ignore"):
            array = array.astype(dtype, copy=False)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise error(f"{where} holds NaN or inf" + (f" (as {array.dtype})" if dtype else "")
                    + "; nothing was loaded")
    return array


def checked_product(dims, itemsize, limit, where, error, what="data"):
    """The bytes ``dims`` of ``itemsize`` take, computed in Python ints (never wrapping), and
    refused past ``limit`` before anything is allocated."""
    need = math.prod(int(d) for d in dims) * itemsize
    if need > limit:
        raise error(f"{where}: the header declares {'x'.join(map(str, dims))} = "
                    f"{size_text(need)} of {what}, more than the {size_text(limit)} "
                    f"allowed; nothing was read")
    return need
