"""A Sequential to an ONNX file. Each layer becomes the ONNX node that computes what it computes,
at the net's input size; where ONNX's operator differs from ours the layer is refused by name
rather than exported as something else:

- LocalResponseNorm of even size: ONNX's LRN centres the window otherwise (pytorch#75722);
- LPPool2d: ONNX's LpPool sums |x|^p, ours x^p: the same for an even integer p only; and a
  ceil_mode partial window, which ours (as PyTorch) scales to the kernel's area;
- AvgPool2d with divisor_override (ONNX has none); with ceil_mode it is exported at opset 19,
  the first whose AveragePool divides partial windows as PyTorch does (onnxruntime#16752);
- a ceil_mode pool whose last window starts in the padding (PyTorch drops it, ONNX keeps it).

MaxPool's switches are not exported (ONNX's Indices count over N*C*H*W, ours per plane).
"""
from __future__ import annotations

import json

import numpy as np

from .. import __version__
from ..nn import (AvgPool2d, Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, LPPool2d,
                  MaxPool2d, ReLU)
from .reader import OnnxError, require_onnx

__all__ = ["export", "DEFAULT_OPSET", "CEIL_AVGPOOL_OPSET"]

DEFAULT_OPSET = 13
CEIL_AVGPOOL_OPSET = 19


def _refuse(i, layer, why):
    raise OnnxError(f"layer {i} ({layer!r}) cannot be exported to ONNX: {why}")


def _pool_attrs(i, layer, shape, ceil):
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    d = layer.options.get("dilation", (1, 1))
    if ceil:  # ONNX keeps a last window that starts in the right padding, PyTorch drops it
        for ax in range(2):
            n = shape[1 + ax] + 2 * p[ax] - d[ax] * (k[ax] - 1) - 1
            out = -(-n // s[ax]) + 1
            if (out - 1) * s[ax] >= shape[1 + ax] + p[ax]:
                _refuse(i, layer, "with ceil_mode its last window starts in the padding at this "
                                  "input size, a window ONNX keeps and PyTorch (and gpucnn) drop")
    attrs = dict(kernel_shape=list(k), strides=list(s), pads=[p[0], p[1], p[0], p[1]])
    if ceil:
        attrs["ceil_mode"] = 1
    return attrs


def _node(i, layer, shape, opset_need):
    """(op type, extra inputs {suffix: array}, attributes) of layer ``i`` on input ``shape``."""
    if isinstance(layer, Conv2d):
        g = layer.geometry((1, *shape))
        params = {"weight": layer.weight}
        if layer.bias is not None:
            params["bias"] = layer.bias
        return "Conv", params, dict(kernel_shape=list(layer.kernel_size),
                                    strides=[g.sh, g.sw], pads=[g.ph, g.pw, g.ph_end, g.pw_end],
                                    dilations=[g.dh, g.dw], group=layer.groups)
    if isinstance(layer, Linear):
        params = {"weight": layer.weight}
        if layer.bias is not None:
            params["bias"] = layer.bias
        return "Gemm", params, dict(transB=1)
    if isinstance(layer, ReLU):
        return "Relu", {}, {}
    if isinstance(layer, Flatten):
        return "Flatten", {}, dict(axis=1)
    if isinstance(layer, Dropout):  # inference: the ratio is kept, training_mode absent
        return "Dropout", {"ratio": np.array(layer.p, np.float32)}, {}
    if isinstance(layer, LocalResponseNorm):
        size, alpha, beta, k = layer.args
        if size % 2 == 0:
            _refuse(i, layer, "an even size: ONNX's LRN puts the window otherwise")
        return "LRN", {}, dict(size=size, alpha=alpha, beta=beta, bias=k)
    if isinstance(layer, MaxPool2d):
        attrs = _pool_attrs(i, layer, shape, layer.options["ceil_mode"])
        attrs["dilations"] = list(layer.options["dilation"])
        return "MaxPool", {}, attrs
    if isinstance(layer, AvgPool2d):
        o = layer.options
        if o["divisor_override"] is not None:
            _refuse(i, layer, "divisor_override has no ONNX equivalent")
        attrs = _pool_attrs(i, layer, shape, o["ceil_mode"])
        attrs["count_include_pad"] = int(o["count_include_pad"])
        if o["ceil_mode"]:
            opset_need.add(CEIL_AVGPOOL_OPSET)
        return "AveragePool", {}, attrs
    if isinstance(layer, LPPool2d):
        p = layer.norm_type
        if p != int(p) or int(p) % 2:
            _refuse(i, layer, f"p={p:g}: ONNX's LpPool sums |x|^p, gpucnn's x^p; the same only "
                              f"for an even integer p")
        if layer.options["ceil_mode"] and tuple(layer.output_shape(shape)) != tuple(
                LPPool2d(p, layer.kernel_size, layer.stride).output_shape(shape)):
            _refuse(i, layer, "ceil_mode with partial windows at this input size: gpucnn (as "
                              "PyTorch) scales them to the kernel's area, ONNX does not")
        return "LpPool", {}, dict(_pool_attrs(i, layer, shape, False), p=int(p))
    _refuse(i, layer, f"no ONNX export for {type(layer).__name__}")


def build_model_proto(net, input_shape=None, softmax=False, class_names=None, metadata=None,
                      opset=None):
    """The checked ``onnx.ModelProto`` of ``net`` (see :func:`export`)."""
    onnx = require_onnx()
    h = onnx.helper
    shape = in_shape = tuple(input_shape or net.input_shape)
    if len(shape) != 3:
        raise OnnxError(f"input_shape must be (C, H, W), got {shape}")
    nodes, inits, need, x = [], [], {DEFAULT_OPSET}, "input"
    for i, layer in enumerate(net.layers):
        op, params, attrs = _node(i, layer, shape, need)
        names = []
        for key, value in params.items():
            arr = net.backend.to_numpy(value.data) if hasattr(value, "data") else value
            names.append(f"{i}.{key}")
            inits.append(onnx.numpy_helper.from_array(np.asarray(arr, np.float32), f"{i}.{key}"))
        y = f"{i}.{op}"
        nodes.append(h.make_node(op, [x, *names], [y], name=y, **attrs))
        x, shape = y, tuple(layer.output_shape(shape))
    if len(shape) != 1:
        raise OnnxError(f"the net ends in a {shape} map per sample; export takes nets ending in "
                        f"class scores (use a Flatten)")
    out = "probabilities" if softmax else "logits"
    if softmax:
        nodes.append(h.make_node("Softmax", [x], [out], name="softmax", axis=1))
    else:
        nodes[-1].output[0] = out
    version = max(need) if opset is None else int(opset)
    if version < max(need) or version > 23:
        raise OnnxError(f"opset {version}: this net needs {max(need)} to 23")
    graph = h.make_graph(
        nodes, "gpucnn", [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                   ["N", *in_shape])],
        [h.make_tensor_value_info(out, onnx.TensorProto.FLOAT, ["N", shape[0]])], inits)
    opsets = [h.make_opsetid("", version)]
    model = h.make_model(graph, opset_imports=opsets, producer_name="gpucnn",
                         producer_version=__version__,
                         ir_version=h.find_min_ir_version_for(opsets))
    props = {"gpucnn.input_shape": json.dumps(list(in_shape))}
    if getattr(net, "config", None) is not None:
        props["gpucnn.model"] = json.dumps(net.config, sort_keys=True)
    if class_names is not None:
        props["class_names"] = json.dumps(list(map(str, class_names)))
    for k, v in (metadata or {}).items():
        props[str(k)] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    h.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


def export(net, path, input_shape=None, softmax=False, class_names=None, metadata=None,
           opset=None):
    """Write ``net`` (a Sequential) to the ONNX file ``path``, atomically. ``input_shape``:
    (C, H, W), default ``net.input_shape`` (the batch axis is dynamic, the others fixed);
    ``softmax``: end in a Softmax (output "probabilities"; else "logits"); ``class_names``
    and ``metadata`` ({key: str or JSON-able}) go into the model's metadata_props; ``opset``:
    default 13, or 19 where a ceil_mode average pool needs it. The model passes
    ``onnx.checker.check_model(full_check=True)`` before the file is touched. Returns the path."""
    from ..outputs import write_atomic
    data = build_model_proto(net, input_shape, softmax, class_names, metadata,
                             opset).SerializeToString()
    return write_atomic(path, lambda f: f.write(data))
