"""Model zoo: LeNet-5, AlexNet variants and VGG, built by name from a JSON-able config, and
nets described by a model file (:mod:`gpucnn.modelfile`).

Every builder takes ``input_shape`` (C, H, W; default: the model's own): the first conv takes
C channels and the classifier's first Linear is sized from what the features make of H x W,
so ``vgg16`` at 3x32x32 has a 512-feature classifier input. The shape is the config's
``input_shape``, not one of its ``kwargs``. A shape the layers cannot take (a pool window
larger than its input) is a ValueError naming the layer.
"""
from __future__ import annotations

import math

import numpy as np

from .nn import (Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2d, ReLU,
                 Sequential)

__all__ = ["lenet5", "alexnet", "alexnet_cifar", "vgg11", "vgg16", "sequential",
           "build_model", "describe_model", "parameter_shapes", "parameter_count", "MODELS"]


_UNBOUND = object()  # parameter_shapes' backend: the layers, no parameters allocated


def _shape(input_shape, default):
    if input_shape is None:
        return tuple(default)
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                  and v >= 1 for v in shape):
        raise ValueError(f"input shape must be 3 positive ints (C, H, W), got {input_shape!r}")
    return tuple(int(v) for v in shape)


def chain_shapes(name, layers, input_shape):
    """The output shape of ``layers`` applied to one ``input_shape`` sample, or a ValueError
    naming the layer (0-based index, what it is) that cannot take what reaches it."""
    shape = tuple(input_shape)
    for i, layer in enumerate(layers):
        try:
            shape = layer.output_shape(shape)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{name} at input {'x'.join(map(str, input_shape))}: layer {i} "
                             f"({layer!r}) cannot take its {'x'.join(map(str, shape))} "
                             f"input: {exc}") from None
    return shape


def _flat(name, features, input_shape):
    """Features + Flatten, and the number of features the classifier takes."""
    c, h, w = chain_shapes(name, features, input_shape)
    return [*features, Flatten()], c * h * w


def _finish(net, name, input_shape, backend, seed, **kwargs):
    net.config = {"name": name, "kwargs": kwargs, "input_shape": list(input_shape)}
    net.input_shape = tuple(input_shape)
    chain_shapes(name, net.layers, net.input_shape)  # fail now, not inside a kernel
    if backend is _UNBOUND:
        return net
    return net.bind(backend, np.random.default_rng(seed))


def lenet5(num_classes=10, input_shape=None, backend=None, seed=0):
    """LeNet-5 for 1x28x28 inputs (conv 5x5 pad 2 -> 6, pool, conv 5x5 -> 16, pool,
    120-84-classes), with ReLU and max-pooling as modern re-implementations use."""
    shape = _shape(input_shape, (1, 28, 28))
    features, n = _flat("lenet5", [
        Conv2d(shape[0], 6, 5, padding=2), ReLU(), MaxPool2d(2),
        Conv2d(6, 16, 5), ReLU(), MaxPool2d(2)], shape)
    net = Sequential(
        *features,
        Linear(n, 120), ReLU(),
        Linear(120, 84), ReLU(),
        Linear(84, num_classes, init="glorot"))
    return _finish(net, "lenet5", shape, backend, seed, num_classes=num_classes)


def alexnet(num_classes=1000, towers=False, lrn=True, dropout=0.5, input_shape=None,
            backend=None, seed=0):
    """AlexNet (Krizhevsky et al. 2012) on 3x227x227 inputs, single tower by default;
    ``towers=True`` uses groups=2 in conv2/4/5 as the paper's two-GPU split did."""
    g = 2 if towers else 1
    norm = (lambda: [LocalResponseNorm(5, 1e-4, 0.75, 2.0)]) if lrn else (lambda: [])
    shape = _shape(input_shape, (3, 227, 227))
    features, n = _flat("alexnet", [
        Conv2d(shape[0], 96, 11, stride=4), ReLU(), *norm(), MaxPool2d(3, 2),
        Conv2d(96, 256, 5, padding=2, groups=g), ReLU(), *norm(), MaxPool2d(3, 2),
        Conv2d(256, 384, 3, padding=1), ReLU(),
        Conv2d(384, 384, 3, padding=1, groups=g), ReLU(),
        Conv2d(384, 256, 3, padding=1, groups=g), ReLU(), MaxPool2d(3, 2)], shape)
    net = Sequential(
        *features,
        Dropout(dropout), Linear(n, 4096), ReLU(),
        Dropout(dropout), Linear(4096, 4096), ReLU(),
        Linear(4096, num_classes, init="glorot"))
    return _finish(net, "alexnet", shape, backend, seed, num_classes=num_classes,
                   towers=towers, lrn=lrn, dropout=dropout)


def alexnet_cifar(num_classes=10, dropout=0.5, input_shape=None, backend=None, seed=0):
    """AlexNet's five-conv/three-FC shape scaled to 3x32x32 (CIFAR-10)."""
    shape = _shape(input_shape, (3, 32, 32))
    features, n = _flat("alexnet_cifar", [
        Conv2d(shape[0], 64, 5, padding=2), ReLU(), MaxPool2d(3, 2),
        Conv2d(64, 192, 5, padding=2), ReLU(), MaxPool2d(3, 2),
        Conv2d(192, 384, 3, padding=1), ReLU(),
        Conv2d(384, 256, 3, padding=1), ReLU(),
        Conv2d(256, 256, 3, padding=1), ReLU(), MaxPool2d(3, 2)], shape)
    net = Sequential(
        *features,
        Dropout(dropout), Linear(n, 1024), ReLU(),
        Dropout(dropout), Linear(1024, 1024), ReLU(),
        Linear(1024, num_classes, init="glorot"))
    return _finish(net, "alexnet_cifar", shape, backend, seed, num_classes=num_classes,
                   dropout=dropout)


# Simonyan & Zisserman 2014, table 1: conv widths of configurations A (11 weight layers) and
# D (16), "M" a 2x2 max-pool of stride 2; every conv 3x3, padding 1, with a ReLU.
_VGG_CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
}


def _vgg(name, num_classes, dropout, input_shape, backend, seed):
    shape = _shape(input_shape, (3, 224, 224))
    layers, c = [], shape[0]
    for v in _VGG_CONFIGS[name]:
        if v == "M":
            layers.append(MaxPool2d(2, 2))
        else:
            layers += [Conv2d(c, v, 3, padding=1), ReLU()]
            c = v
    features, n = _flat(name, layers, shape)
    # torchvision's classifier order (Linear, ReLU, Dropout); its AdaptiveAvgPool2d(7) is not
    # used: the first Linear takes what the features give at this input (7x7x512 at 224).
    net = Sequential(
        *features,
        Linear(n, 4096), ReLU(), Dropout(dropout),
        Linear(4096, 4096), ReLU(), Dropout(dropout),
        Linear(4096, num_classes, init="glorot"))
    return _finish(net, name, shape, backend, seed, num_classes=num_classes, dropout=dropout)


def vgg11(num_classes=1000, dropout=0.5, input_shape=None, backend=None, seed=0):
    """VGG configuration A (11 weight layers; 132,863,336 parameters at 3x224x224 with 1000
    classes), 3x224x224 by default; needs H, W >= 32 (five 2x2 pools)."""
    return _vgg("vgg11", num_classes, dropout, input_shape, backend, seed)


def vgg16(num_classes=1000, dropout=0.5, input_shape=None, backend=None, seed=0):
    """VGG configuration D (16 weight layers; 138,357,544 parameters at 3x224x224 with 1000
    classes), 3x224x224 by default; needs H, W >= 32 (five 2x2 pools)."""
    return _vgg("vgg16", num_classes, dropout, input_shape, backend, seed)


def sequential(layers=None, num_classes=None, input_shape=None, backend=None, seed=0):
    """The net a model file describes (:mod:`gpucnn.modelfile`): ``layers`` as
    :func:`gpucnn.filerules.netfile.check_layers` gives them, ``input_shape`` the file's
    "input". ``num_classes``, when given, must be what the last layer outputs."""
    from .modelfile import build_layers
    if layers is None or input_shape is None:
        raise ValueError("the sequential model is built from a model file: give --model "
                         "net.json (see README: the model-file format)")
    shape = _shape(input_shape, None)
    net = Sequential(*build_layers(layers, shape, num_classes))
    kwargs = {"layers": layers} if num_classes is None else {"layers": layers,
                                                             "num_classes": num_classes}
    return _finish(net, "sequential", shape, backend, seed, **kwargs)


MODELS = {"lenet5": lenet5, "alexnet": alexnet, "alexnet_cifar": alexnet_cifar,
          "vgg11": vgg11, "vgg16": vgg16, "sequential": sequential}
NAMED = ("lenet5", "alexnet_cifar", "alexnet", "vgg11", "vgg16")  # what --model names


def _builder(name):
    key = name.replace("-", "_").lower()
    if key not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {name!r}")
    return MODELS[key]


def build_model(name, backend=None, seed=0, **kwargs):
    return _builder(name)(backend=backend, seed=seed, **kwargs)


def build_from_config(config, backend=None, seed=0):
    """The model a config ({name, kwargs, input_shape}, as a checkpoint records it) describes."""
    return build_model(config["name"], backend=backend, seed=seed,
                       input_shape=config.get("input_shape"), **config.get("kwargs", {}))


def describe_model(name, **kwargs):
    """Model ``name``'s layers with their shapes, no parameter allocated (for summaries and
    checks)."""
    return _builder(name)(backend=_UNBOUND, **kwargs)


def parameter_count(model):
    """Parameters of a model, bound or not (from the layers' weight shapes)."""
    return sum(math.prod(shape) for shape in _shapes_of(model).values())


def parameter_shapes(name, **kwargs):
    """{state_dict name: shape} of model ``name`` with options ``kwargs``, worked out without
    allocating anything: a checkpoint's arrays are checked against it before the model is
    built."""
    return _shapes_of(_builder(name)(backend=_UNBOUND, **kwargs))


def _shapes_of(net):
    shapes = {}
    for i, layer in enumerate(net.layers):  # named as Sequential.named_parameters names them
        shape = getattr(layer, "weight_shape", None)
        if shape is not None:
            shapes[f"{i}.weight"] = shape
            if layer.use_bias:
                shapes[f"{i}.bias"] = shape[:1]
    return shapes
