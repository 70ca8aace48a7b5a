"""Model files: a sequential net described as data (``--model net.json``).

Format (README: "The model-file format")::

    {"input": [1, 28, 28],
     "layers": [["conv", {"out": 6, "kernel_size": 5, "padding": 2}], ["relu"],
                ["maxpool", {"kernel_size": 2}], ["flatten"], ["linear", {"out": 10}]]}

Layer types: conv, maxpool, avgpool, lppool, relu, lrn, dropout, flatten, linear; options under
PyTorch's names and defaults (Conv2d, MaxPool2d, AvgPool2d, LPPool2d, LocalResponseNorm,
Dropout, Linear), except that a layer's output size is ``"out"`` (Conv2d's out_channels,
Linear's out_features); in-sizes are inferred from the input shape. Weights are initialised as
the built-in models' are (He normal; the last Linear Glorot uniform).

The file is read under the rules for files others made (gpucnn.filerules: bounded size, the
bounded JSON parser, the schema of gpucnn.filerules.netfile); every problem is a
:class:`ModelFileError` naming the file, the layer (0-based index and type), the field and what
is allowed. A checkpoint records the checked layer list as its model config ({"name":
"sequential", "kwargs": {"layers": ...}, "input_shape": ...}), so ``--resume`` and ``verify``
rebuild the same net from the checkpoint alone. :func:`layer_entries` describes built layers
this way (an ONNX net trained with ``--model net.onnx`` is stored as its entries).
"""
from __future__ import annotations

import math
import os

from . import filerules
from .filerules.netfile import (LAYER_OPTIONS, NET_MAX_BYTES, NET_MAX_PARAMETERS, check_net,
                                layer_name)
from .nn import (AvgPool2d, Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, LPPool2d,
                 MaxPool2d, ReLU)

__all__ = ["ModelFileError", "is_model_file", "read_model_file", "build_layers", "layer_entries"]


class ModelFileError(ValueError):
    """A model file that cannot be read or describes no net this version builds."""


def is_model_file(ref):
    """Whether ``--model ref`` names a model file rather than a built-in model."""
    return isinstance(ref, (str, os.PathLike)) and os.fspath(ref).lower().endswith(".json")


def read_model_file(path):
    """(input_shape [C, H, W], layers [[type, {options}], ...]) of model file ``path``,
    checked (not yet built: build_layers checks that the shapes chain)."""
    where = os.fspath(path)
    data = filerules.read_bounded(path, NET_MAX_BYTES, ModelFileError, "model file")
    desc = filerules.parse_json(data, where, ModelFileError, max_bytes=NET_MAX_BYTES)
    return check_net(desc, where, ModelFileError)


def _opt(options, key, default):
    value = options.get(key, default)
    return tuple(value) if isinstance(value, list) else value


def _make(kind, o, shape, last_linear):
    """The layer of one checked entry, taking a ``shape`` input."""
    if kind == "conv":
        return Conv2d(shape[0], o["out"], _opt(o, "kernel_size", None),
                      stride=_opt(o, "stride", 1), padding=_opt(o, "padding", 0),
                      dilation=_opt(o, "dilation", 1), groups=o.get("groups", 1),
                      bias=o.get("bias", True))
    if kind in ("maxpool", "avgpool", "lppool") and len(shape) != 3:
        raise ValueError(f"takes a (C, H, W) input, got {shape} (after a flatten?)")
    if kind == "maxpool":
        return MaxPool2d(_opt(o, "kernel_size", None), _opt(o, "stride", None),
                         _opt(o, "padding", 0), _opt(o, "dilation", 1), o.get("ceil_mode", False))
    if kind == "avgpool":
        return AvgPool2d(_opt(o, "kernel_size", None), _opt(o, "stride", None),
                         _opt(o, "padding", 0), o.get("ceil_mode", False),
                         o.get("count_include_pad", True), o.get("divisor_override"))
    if kind == "lppool":
        return LPPool2d(o["norm_type"], _opt(o, "kernel_size", None), _opt(o, "stride", None),
                        o.get("ceil_mode", False))
    if kind == "relu":
        return ReLU()
    if kind == "lrn":  # PyTorch's LocalResponseNorm defaults (k=1.0)
        if len(shape) != 3:
            raise ValueError(f"takes a (C, H, W) input, got {shape}")
        return LocalResponseNorm(o["size"], o.get("alpha", 1e-4), o.get("beta", 0.75),
                                 o.get("k", 1.0))
    if kind == "dropout":
        return Dropout(o.get("p", 0.5))
    if kind == "flatten":
        return Flatten()
    if kind == "linear":
        if len(shape) != 1:
            raise ValueError(f"takes features, got a {'x'.join(map(str, shape))} input: put "
                             f"[\"flatten\"] before it")
        return Linear(shape[0], o["out"], bias=o.get("bias", True),
                      init="glorot" if last_linear else "he")
    raise ValueError(f"unknown layer type {kind!r} (one of {', '.join(LAYER_OPTIONS)})")


def build_layers(layers, input_shape, num_classes=None):
    """The nn layers of a checked layer list for ``input_shape``; a ValueError naming the
    layer (index and type) whose options its input cannot take, when the weights would pass
    NET_MAX_PARAMETERS, or when the last output is not ``num_classes`` wide (when given)."""
    shape = tuple(input_shape)
    last = max((i for i, (kind, _) in enumerate(layers) if kind == "linear"), default=-1)
    out, params = [], 0
    for i, (kind, options) in enumerate(layers):
        name = layer_name(i, kind)
        try:
            layer = _make(kind, options, shape, i == last)
            shape = layer.output_shape(shape)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{name} at its input {'x'.join(map(str, shape))}: {exc}") \
                from None
        weight = getattr(layer, "weight_shape", None)
        if weight is not None:
            params += math.prod(weight) + (weight[0] if layer.use_bias else 0)
            if params > NET_MAX_PARAMETERS:
                raise ValueError(f"{name}: the net holds more than {NET_MAX_PARAMETERS:,} "
                                 f"parameters by here; refused")
        out.append(layer)
    if num_classes is not None and shape != (num_classes,):
        raise ValueError(f"the last layer ({layer_name(len(layers) - 1, layers[-1][0])}) gives "
                         f"{'x'.join(map(str, shape))} outputs, the data has {num_classes} "
                         f"classes: end with [\"linear\", {{\"out\": {num_classes}}}]")
    return out


def load_net(path):
    """(builder kwargs, input_shape) of model file ``path`` for gpucnn.models.sequential,
    checked to build (ModelFileError naming the file and the layer otherwise)."""
    shape, layers = read_model_file(path)
    try:
        build_layers(layers, shape)
    except ValueError as exc:
        raise ModelFileError(f"{os.fspath(path)}: {exc}") from None
    return {"layers": layers}, tuple(shape)


# -- built layers back to entries (an imported ONNX net stored as a model description) ------
def _side(value):
    """A (h, w) pair as a model file writes it: one int when both agree."""
    if isinstance(value, str):  # Conv2d's "same" / "valid"
        return value
    h, w = (int(v) for v in value)
    return h if h == w else [h, w]


def _non_default(options, defaults):
    """``options`` less those equal to the model file's default (PyTorch's)."""
    return {k: v for k, v in options.items() if k not in defaults or v != defaults[k]}


def _entry(layer):
    """[type, {options}] of one built layer; None for a type model files cannot describe."""
    kind = type(layer)  # exact types: a subclass may compute something else
    if kind is Conv2d:
        return ["conv", {"out": int(layer.out_channels), "kernel_size": _side(layer.kernel_size),
                         **_non_default({"stride": _side(layer.stride),
                                         "padding": _side(layer.padding),
                                         "dilation": _side(layer.dilation),
                                         "groups": int(layer.groups), "bias": layer.use_bias},
                                        {"stride": 1, "padding": 0, "dilation": 1, "groups": 1,
                                         "bias": True})}]
    if kind is Linear:
        return ["linear", {"out": int(layer.out_features),
                           **_non_default({"bias": layer.use_bias}, {"bias": True})}]
    if kind in (MaxPool2d, AvgPool2d, LPPool2d):
        o = layer.options
        given = {"stride": _side(layer.stride), "padding": _side(layer.padding)}
        if kind is LPPool2d:  # its padding is always 0; the model file has no such option
            given = {"norm_type": layer.norm_type, "stride": given["stride"]}
        defaults = {"stride": _side(layer.kernel_size), "padding": 0, "dilation": 1,
                    "ceil_mode": False, "count_include_pad": True, "divisor_override": None}
        given.update({k: _side(v) if k == "dilation" else v for k, v in o.items()})
        name = {MaxPool2d: "maxpool", AvgPool2d: "avgpool", LPPool2d: "lppool"}[kind]
        return [name, {"kernel_size": _side(layer.kernel_size), **_non_default(given, defaults)}]
    if kind is LocalResponseNorm:
        size, alpha, beta, k = layer.args
        return ["lrn", {"size": size, **_non_default({"alpha": alpha, "beta": beta, "k": k},
                                                     {"alpha": 1e-4, "beta": 0.75, "k": 1.0})}]
    if kind is Dropout:
        return ["dropout", _non_default({"p": layer.p}, {"p": 0.5})]
    if kind in (ReLU, Flatten):
        return ["relu" if kind is ReLU else "flatten", {}]
    return None


def layer_entries(layers):
    """The model-file entries [[type, {options}], ...] (only non-default options) that
    :func:`build_layers` rebuilds ``layers`` from, at the input shape they were built for:
    the same layers with the same weight shapes (weights are not described; the last Linear
    rebuilds with the Glorot init, as a model file's does). A ValueError names the first
    layer (0-based index and what it is) model files cannot describe."""
    out = []
    for i, layer in enumerate(layers):
        entry = _entry(layer)
        if entry is None:
            raise ValueError(f"layer {i} ({layer!r}): a model file cannot describe a "
                             f"{type(layer).__name__} (it describes {', '.join(LAYER_OPTIONS)})")
        out.append(entry)
    return out
