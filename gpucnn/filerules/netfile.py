"""The schema of a model file (``gpucnn train --model net.json``, ``gpucnn summary net.json``)
and of the layer list a checkpoint records for such a net: the layer types, their options
(PyTorch's names and defaults, except ``"out"`` for Conv2d's out_channels and Linear's
out_features), and the limits on size, depth and types.

A model file is a JSON object ``{"input": [C, H, W], "layers": [...]}``; each layer is
``[type]`` or ``[type, {options}]``. In-sizes are inferred. The checks here are those of the
data alone (types, ranges, keys); whether the shapes chain (a pool window larger than its
input) is checked by building the net (gpucnn.models.sequential), and reported under the
same layer name.
"""
from __future__ import annotations

from .limits import MAX_CLASSES
from .schema import Bool, Int, Num, Opt, Spec, _Bad, _is_int

__all__ = ["NET_MAX_BYTES", "NET_MAX_LAYERS", "NET_MAX_WIDTH", "NET_MAX_PARAMETERS",
           "LAYER_TYPES", "LAYER_OPTIONS", "REQUIRED_OPTIONS", "SEQUENTIAL_OPTIONS", "check_net",
           "check_layers", "layer_name"]

NET_MAX_BYTES = 1 << 20           # a model file: 1 MiB is ~20,000 layers of text
NET_MAX_LAYERS = 1000             # deeper than any sequential net we train
NET_MAX_WIDTH = 1 << 16           # channels or features of one layer
NET_MAX_PARAMETERS = 1 << 30      # 4 GiB of float32 weights: past that, not ours
_MAX_SIDE = 65536                 # input sides, kernels, strides, paddings


class IntPair(Spec):
    """An int in [lo, hi], or a list of 1 or 2 such ints (PyTorch's int-or-tuple)."""

    def __init__(self, lo, hi=_MAX_SIDE, strings=()):
        self.lo, self.hi, self.strings = lo, hi, tuple(strings)
        self.want = (f"an int in [{lo}, {hi}] or a list of 2 such ints"
                     + "".join(f" or {s!r}" for s in self.strings))

    def ok(self, v):
        if isinstance(v, str):
            return v in self.strings
        items = v if isinstance(v, list) and len(v) in (1, 2) else [v]
        return all(_is_int(i) and self.lo <= i <= self.hi for i in items)


_OUT = Int(1, NET_MAX_WIDTH)
_KERNEL = IntPair(1)
_STRIDE = Opt(IntPair(1))  # null: the kernel size (pools)
LAYER_OPTIONS = {
    "conv": {"out": _OUT, "kernel_size": _KERNEL, "stride": IntPair(1),
             "padding": IntPair(0, strings=("same", "valid")), "dilation": IntPair(1),
             "groups": Int(1, NET_MAX_WIDTH), "bias": Bool()},
    "maxpool": {"kernel_size": _KERNEL, "stride": _STRIDE, "padding": IntPair(0),
                "dilation": IntPair(1), "ceil_mode": Bool()},
    "avgpool": {"kernel_size": _KERNEL, "stride": _STRIDE, "padding": IntPair(0),
                "ceil_mode": Bool(), "count_include_pad": Bool(),
                "divisor_override": Opt(Int(1, 1 << 31))},
    "lppool": {"norm_type": Num(positive=True, hi=1e6), "kernel_size": _KERNEL,
               "stride": _STRIDE, "ceil_mode": Bool()},
    "relu": {},
    "lrn": {"size": Int(1, NET_MAX_WIDTH), "alpha": Num(hi=1e6), "beta": Num(hi=1e6),
            "k": Num(hi=1e6)},
    "dropout": {"p": Num(0.0, 1.0, below=True)},
    "flatten": {},
    "linear": {"out": Int(1, max(NET_MAX_WIDTH, MAX_CLASSES)), "bias": Bool()},
}
LAYER_TYPES = tuple(LAYER_OPTIONS)
REQUIRED_OPTIONS = {"conv": ("out", "kernel_size"), "maxpool": ("kernel_size",),
                    "avgpool": ("kernel_size",), "lppool": ("norm_type", "kernel_size"),
                    "lrn": ("size",), "linear": ("out",)}
_INPUT = Int(1, _MAX_SIDE)


def layer_name(index, kind):
    return f"layer {index} ({kind})" if isinstance(kind, str) and len(kind) <= 32 \
        else f"layer {index}"


class _LayerBad(Exception):
    def __init__(self, where, field, value, want):
        super().__init__(where)
        self.where, self.field, self.value, self.want = where, field, value, want


def _shown(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _layer(index, item):
    """(type, options) of one layer entry, or _LayerBad naming the rule it breaks."""
    here = f"layer {index}"
    if not (isinstance(item, list) and 1 <= len(item) <= 2):
        raise _LayerBad(here, None, item, "a list [type] or [type, {options}]")
    kind = item[0]
    if kind not in LAYER_OPTIONS:
        raise _LayerBad(here, "type", kind, "one of " + ", ".join(LAYER_TYPES))
    here = layer_name(index, kind)
    options = item[1] if len(item) == 2 else {}
    if not isinstance(options, dict):
        raise _LayerBad(here, "options", options, "an object of options")
    specs = LAYER_OPTIONS[kind]
    for key in REQUIRED_OPTIONS.get(kind, ()):
        if key not in options:
            raise _LayerBad(here, key, "missing", f"given ({specs[key].want})")
    for key, value in options.items():
        if key not in specs:
            allowed = ", ".join(specs) if specs else "none"
            raise _LayerBad(here, key, value, f"absent: {kind} takes the options: {allowed}")
        try:
            specs[key].check(value, key)
        except _Bad as bad:
            raise _LayerBad(here, key, value, bad.want) from None
    return kind, dict(options)


def check_layers(layers, where, error):
    """The layer list as [[type, {options}], ...] (every entry with its options object), or
    ``error`` naming the layer (0-based index and type), the field and what is allowed."""
    if not isinstance(layers, list) or not layers:
        raise error(f"{where}: 'layers' is {_shown(layers)}: it must be a non-empty list of "
                    f"layers [type] or [type, {{options}}]")
    if len(layers) > NET_MAX_LAYERS:
        raise error(f"{where}: {len(layers)} layers, more than the {NET_MAX_LAYERS} allowed")
    out = []
    for i, item in enumerate(layers):
        try:
            out.append(list(_layer(i, item)))
        except _LayerBad as bad:
            field = f" {bad.field!r}" if bad.field else ""
            value = "missing" if bad.value == "missing" else f"is {_shown(bad.value)}"
            raise error(f"{where}: {bad.where}{field} {value}: it must be {bad.want}") from None
    return out


def check_net(desc, where, error):
    """A model file's description checked: (input [C, H, W], layers as check_layers gives
    them), or ``error`` naming what is wrong."""
    if not isinstance(desc, dict):
        raise error(f"{where}: a model file is a JSON object {{\"input\": [C, H, W], "
                    f"\"layers\": [...]}}, got {type(desc).__name__}")
    unknown = sorted(set(desc) - {"input", "layers"})
    if unknown:
        raise error(f"{where}: unknown key {unknown[0]!r}: a model file has only 'input' and "
                    f"'layers'")
    for key in ("input", "layers"):
        if key not in desc:
            raise error(f"{where}: no {key!r}: a model file is {{\"input\": [C, H, W], "
                        f"\"layers\": [...]}}")
    shape = desc["input"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(_INPUT.ok(v) for v in shape)):
        raise error(f"{where}: 'input' is {_shown(shape)}: it must be [C, H, W], 3 ints in "
                    f"[1, {_MAX_SIDE}]")
    return list(shape), check_layers(desc["layers"], where, error)


class Layers(Spec):  # noqa: D101
    """A checkpoint's record of a model file's layers (model.kwargs.layers)."""
    want = "a list of model-file layers [type, {options}] (see gpucnn.filerules.netfile)"

    def check(self, value, field):
        class _Err(Exception):
            pass
        try:
            check_layers(value, field, _Err)
        except _Err as exc:
            raise _Bad(field, value, f"{self.want}; {exc}") from None



# The options of gpucnn.models.sequential, as a checkpoint may ask this version to build it.
SEQUENTIAL_OPTIONS = {"layers": Layers(), "num_classes": Int(1, MAX_CLASSES)}
