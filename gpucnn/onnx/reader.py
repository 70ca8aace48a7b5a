"""Reading an ONNX file someone else made, under the rules of :mod:`gpucnn.filerules`: its size
bounded before anything is read, the protobuf parsed by the ``onnx`` package (never executed),
no weights in side files, and every tensor's declared size checked against the data it holds
before it becomes an array; only the dtypes a CNN's graph uses, floats finite."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import filerules

__all__ = ["OnnxError", "require_onnx", "read_model", "tensor_array", "OPSET_RANGE"]

# The default-domain opsets whose operators this importer knows: 13 moved Squeeze/Unsqueeze
# axes and Dropout's ratio to inputs (what it reads); 23 is the newest onnx 1.23 knows.
OPSET_RANGE = (13, 23)


class OnnxError(ValueError):
    """An ONNX file cannot be read, or its graph is not one gpucnn can build."""


def require_onnx():
    """The ``onnx`` module, or an error saying how to get it."""
    try:
        import onnx
    except ImportError:
        raise OnnxError("ONNX support needs the onnx package: pip install 'gpucnn[onnx]' "
                        "(onnx, onnxruntime, onnxscript)") from None
    return onnx


# ONNX TensorProto data types a CNN graph uses: weights, shape arithmetic, a Cast's target.
_DTYPES = {1: np.float32, 11: np.float64, 7: np.int64, 6: np.int32, 9: np.bool_}
# where each is stored when not in raw_data (TensorProto's typed fields)
_FIELDS = {1: "float_data", 11: "double_data", 7: "int64_data", 6: "int32_data",
           9: "int32_data"}


def tensor_array(t, where):
    """The numpy array of TensorProto ``t``, after checking: an allowed dtype, dims that are
    non-negative and within the file's bound, data in the file (not external) whose size is
    exactly what the dims declare, finite floats (float64 after conversion to float32)."""
    onnx = require_onnx()
    name = f"{where}: tensor {t.name!r}" if t.name else f"{where}: tensor"
    if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
        raise OnnxError(f"{name}: its data is in a side file (external data); gpucnn reads "
                        f"self-contained .onnx files only")
    if t.data_type not in _DTYPES:
        raise OnnxError(f"{name}: data type {onnx.helper.tensor_dtype_to_string(t.data_type)}"
                        f" is not one gpucnn reads (float32, float64, int64, int32, bool)")
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims) or len(dims) > filerules.NPY_MAX_NDIM:
        raise OnnxError(f"{name}: invalid dims {dims}")
    dtype = np.dtype(_DTYPES[t.data_type])
    count = math.prod(dims)
    filerules.checked_product(dims, dtype.itemsize, filerules.ONNX_MAX_BYTES, name, OnnxError,
                              "tensor data")
    if t.HasField("raw_data"):
        if len(t.raw_data) != count * dtype.itemsize:
            raise OnnxError(f"{name}: dims {dims} declare {count * dtype.itemsize} bytes of "
                            f"{dtype}, raw_data holds {len(t.raw_data)}")
        arr = np.frombuffer(t.raw_data, dtype.newbyteorder("<")).astype(dtype).reshape(dims)
    else:
        held = len(getattr(t, _FIELDS[t.data_type]))
        if held != count:
            raise OnnxError(f"{name}: dims {dims} declare {count} values, the tensor holds "
                            f"{held}")
        arr = np.asarray(getattr(t, _FIELDS[t.data_type]), dtype).reshape(dims)
    if arr.dtype.kind == "f":
        filerules.checked_values(arr, name, OnnxError, np.float32)
    return arr


def read_model(path):
    """The checked ``onnx.ModelProto`` of the file ``path``."""
    onnx = require_onnx()
    from google.protobuf.message import DecodeError
    path = Path(path)
    data = filerules.read_bounded(path, filerules.ONNX_MAX_BYTES, OnnxError, "ONNX file")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise OnnxError(f"{path}: not an ONNX model (the protobuf does not parse: {e})") from None
    if not model.HasField("graph") or not len(model.graph.node):
        raise OnnxError(f"{path}: not an ONNX model (no graph, or a graph without nodes)")
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    version = opsets.get("ai.onnx")
    lo, hi = OPSET_RANGE
    if version is None or not lo <= version <= hi:
        raise OnnxError(f"{path}: ONNX opset {version}; gpucnn imports opsets {lo} to {hi} "
                        f"(re-export with opset_version={lo} or later)")
    if len(model.graph.node) > filerules.ONNX_MAX_NODES:
        raise OnnxError(f"{path}: {len(model.graph.node)} nodes, more than the "
                        f"{filerules.ONNX_MAX_NODES} a CNN here may have")
    return model
