"""Model zoo: LeNet-5 and AlexNet variants, built by name from a JSON-able config."""
from __future__ import annotations

import numpy as np

from .nn import (Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2d, ReLU,
                 Sequential)

__all__ = ["lenet5", "alexnet", "alexnet_cifar", "build_model", "parameter_shapes", "MODELS"]


_UNBOUND = object()  # parameter_shapes' backend: the layers, no parameters allocated


def _finish(net, name, input_shape, backend, seed, **kwargs):
    net.config = {"name": name, "kwargs": kwargs, "input_shape": list(input_shape)}
    net.input_shape = tuple(input_shape)
    net.output_shape(net.input_shape)  # fail now, not inside a kernel, if shapes do not chain
    if backend is _UNBOUND:
        return net
    return net.bind(backend, np.random.default_rng(seed))


def lenet5(num_classes=10, backend=None, seed=0):
    """LeNet-5 for 1x28x28 inputs (conv 5x5 pad 2 -> 6, pool, conv 5x5 -> 16, pool,
    120-84-classes), with ReLU and max-pooling as modern re-implementations use."""
    net = Sequential(
        Conv2d(1, 6, 5, padding=2), ReLU(), MaxPool2d(2),
        Conv2d(6, 16, 5), ReLU(), MaxPool2d(2),
        Flatten(),
        Linear(16 * 5 * 5, 120), ReLU(),
        Linear(120, 84), ReLU(),
        Linear(84, num_classes, init="glorot"))
    return _finish(net, "lenet5", (1, 28, 28), backend, seed, num_classes=num_classes)


def alexnet(num_classes=1000, towers=False, lrn=True, dropout=0.5, backend=None, seed=0):
    """AlexNet (Krizhevsky et al. 2012) on 3x227x227 inputs, single tower by default;
    ``towers=True`` uses groups=2 in conv2/4/5 as the paper's two-GPU split did."""
    g = 2 if towers else 1
    norm = (lambda: [LocalResponseNorm(5, 1e-4, 0.75, 2.0)]) if lrn else (lambda: [])
    net = Sequential(
        Conv2d(3, 96, 11, stride=4), ReLU(), *norm(), MaxPool2d(3, 2),
        Conv2d(96, 256, 5, padding=2, groups=g), ReLU(), *norm(), MaxPool2d(3, 2),
        Conv2d(256, 384, 3, padding=1), ReLU(),
        Conv2d(384, 384, 3, padding=1, groups=g), ReLU(),
        Conv2d(384, 256, 3, padding=1, groups=g), ReLU(), MaxPool2d(3, 2),
        Flatten(),
        Dropout(dropout), Linear(256 * 6 * 6, 4096), ReLU(),
        Dropout(dropout), Linear(4096, 4096), ReLU(),
        Linear(4096, num_classes, init="glorot"))
    return _finish(net, "alexnet", (3, 227, 227), backend, seed, num_classes=num_classes,
                   towers=towers, lrn=lrn, dropout=dropout)


def alexnet_cifar(num_classes=10, dropout=0.5, backend=None, seed=0):
    """AlexNet's five-conv/three-FC shape scaled to 3x32x32 (CIFAR-10)."""
    net = Sequential(
        Conv2d(3, 64, 5, padding=2), ReLU(), MaxPool2d(3, 2),
        Conv2d(64, 192, 5, padding=2), ReLU(), MaxPool2d(3, 2),
        Conv2d(192, 384, 3, padding=1), ReLU(),
        Conv2d(384, 256, 3, padding=1), ReLU(),
        Conv2d(256, 256, 3, padding=1), ReLU(), MaxPool2d(3, 2),
        Flatten(),
        Dropout(dropout), Linear(256 * 3 * 3, 1024), ReLU(),
        Dropout(dropout), Linear(1024, 1024), ReLU(),
        Linear(1024, num_classes, init="glorot"))
    return _finish(net, "alexnet_cifar", (3, 32, 32), backend, seed, num_classes=num_classes,
                   dropout=dropout)


MODELS = {"lenet5": lenet5, "alexnet": alexnet, "alexnet_cifar": alexnet_cifar}


def _builder(name):
    key = name.replace("-", "_").lower()
    if key not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {name!r}")
    return MODELS[key]


def build_model(name, backend=None, seed=0, **kwargs):
    return _builder(name)(backend=backend, seed=seed, **kwargs)


def parameter_shapes(name, **kwargs):
    """{state_dict name: shape} of model ``name`` with options ``kwargs``, worked out without
    allocating anything: a checkpoint's arrays are checked against it before the model is
    built."""
    net = _builder(name)(backend=_UNBOUND, **kwargs)
    shapes = {}
    for i, layer in enumerate(net.layers):  # named as Sequential.named_parameters names them
        shape = getattr(layer, "weight_shape", None)
        if shape is not None:
            shapes[f"{i}.weight"] = shape
            if layer.use_bias:
                shapes[f"{i}.bias"] = shape[:1]
    return shapes
