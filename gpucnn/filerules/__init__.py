"""The rules for reading a file gpucnn did not just write: its limits, the bounded JSON parser,
the strict ``.npy`` header parser and the schema of a checkpoint's metadata, in one place.

Every loader (gpucnn.checkpoint, gpucnn.data, and the loaders later work adds) takes its
limits and rules from here, so a new file kind or a new checkpoint key is one edit here, not a
search through the readers. The readers apply the rules in this order: sizes first (declared
sizes against the real ones and against what the configuration implies, before anything is
allocated or built), then integrity (CRCs before any byte is parsed), then the parse (bounded),
then the schema and the values (after conversion to the dtype they are used in).

Nothing here imports the rest of gpucnn: each check takes ``where`` (the file, and the member
or field) and ``error`` (the project exception to raise: CheckpointError, DataError), and says
the rule broken in one line.
"""
from .files import read_bounded
from .jsonfile import parse_json
from .limits import (ARRAY_DTYPES, DATA_MAX_BYTES, FLOAT_DTYPES, GENERIC_INFLATE_FACTOR,
                     GENERIC_INFLATE_MARGIN, JSON_MAX_BYTES, JSON_MAX_DEPTH,
                     JSON_MAX_NUMBER_CHARS, MAX_CLASSES, MAX_COUNTER, METADATA_DTYPES, NPY_MAGIC,
                     NPY_MAX_HEADER_BYTES, NPY_MAX_NDIM, ONNX_MAX_BYTES, ONNX_MAX_NODES,
                     ZIP_MAX_MEMBERS, ZIP_MAX_NAME_BYTES,
                     checked_product, checked_values, generic_uncompressed_limit, size_text)
from .npy import NpyHeader, npy_array, parse_npy_header
from .schema import CHECKPOINT_METADATA, MODEL_OPTIONS, check_metadata, field_error
from .netfile import SEQUENTIAL_OPTIONS, check_layers, check_net
from .preprocess import PREPROCESS_FORMAT, PREPROCESS_RECORD, check_preprocess
from .schema import Opt as _Opt

# The rules that build on schema's (a model file's layers, a preprocessing record) join the
# checkpoint schema here, which imports both sides (schema.py cannot import them: a cycle).
MODEL_OPTIONS["sequential"] = SEQUENTIAL_OPTIONS
CHECKPOINT_METADATA.fields["data"] = _Opt(PREPROCESS_RECORD)

__all__ = ["ARRAY_DTYPES", "DATA_MAX_BYTES", "FLOAT_DTYPES", "GENERIC_INFLATE_FACTOR",
           "GENERIC_INFLATE_MARGIN", "JSON_MAX_BYTES", "JSON_MAX_DEPTH", "JSON_MAX_NUMBER_CHARS",
           "MAX_CLASSES", "MAX_COUNTER", "METADATA_DTYPES", "NPY_MAGIC", "NPY_MAX_HEADER_BYTES",
           "NPY_MAX_NDIM", "ONNX_MAX_BYTES", "ONNX_MAX_NODES", "ZIP_MAX_MEMBERS", "ZIP_MAX_NAME_BYTES", "checked_product",
           "checked_values", "generic_uncompressed_limit", "size_text", "parse_json",
           "NpyHeader", "parse_npy_header", "npy_array", "CHECKPOINT_METADATA", "MODEL_OPTIONS",
           "check_metadata", "field_error", "SEQUENTIAL_OPTIONS", "check_layers", "check_net",
           "PREPROCESS_FORMAT", "PREPROCESS_RECORD", "check_preprocess", "read_bounded"]
