"""Dense (sliding-window) scoring: a classifier whose fully connected layers become
convolutions, so one pass over a larger image scores every window at the net's stride (the
conversion of the Stanford CS231n notes and OverFeat: a 224-input net on a 384 image gives
6x6 class scores)."""
from __future__ import annotations

import numpy as np

from .layers import Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, ReLU
from .pooling import AvgPool2d, LPPool2d, MaxPool2d
from .module import Sequential

__all__ = ["fully_convolutional"]


def _rebuild(layer):
    """A new, unbound layer with ``layer``'s hyper-parameters (no state shared)."""
    if isinstance(layer, Conv2d):
        return Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                      layer.padding, layer.dilation, layer.groups, layer.use_bias)
    if isinstance(layer, LPPool2d):
        return LPPool2d(layer.norm_type, layer.kernel_size, layer.stride, **layer.options)
    if isinstance(layer, (MaxPool2d, AvgPool2d)):
        return type(layer)(layer.kernel_size, layer.stride, layer.padding, **layer.options)
    if isinstance(layer, LocalResponseNorm):
        return LocalResponseNorm(*layer.args)
    if isinstance(layer, Dropout):
        return Dropout(layer.p)
    if isinstance(layer, ReLU):
        return ReLU()
    raise ValueError(f"fully_convolutional: no convolutional form of {layer!r}")


def fully_convolutional(net, input_shape=None):
    """A new net on ``net``'s backend (``net`` is unchanged) in which every Linear after the
    last spatial layer is an equivalent Conv2d with the same weights: the first one's kernel
    is the (H, W) map it flattened at ``input_shape`` (default ``net.input_shape``), the
    others 1x1; the Flatten goes. Its output is (N, classes, H', W'): on ``input_shape``,
    ``y[:, :, 0, 0]`` is ``net``'s output; on a larger image, the scores of every window of
    that size at the net's stride. For a net without padding each score equals ``net`` on
    that crop; a padded net (LeNet-5's first conv) sees the image's pixels where ``net`` on a
    crop sees zeros, so windows at the crop's border differ by construction."""
    shape = tuple(input_shape or net.input_shape)
    layers, params, extra, spatial = [], {}, {}, None
    old_params = net.state_dict()
    for i, layer in enumerate(net.layers):
        j = len(layers)
        if isinstance(layer, Flatten):
            if len(shape) != 3:
                raise ValueError(f"fully_convolutional: layer {i} flattens a {shape} input; "
                                 f"expected a (C, H, W) map")
            spatial = shape
        elif isinstance(layer, Linear):
            if spatial is None:
                raise ValueError(f"fully_convolutional: layer {i} ({layer!r}) follows no "
                                 f"Flatten of a spatial map")
            c, h, w = spatial
            conv = Conv2d(c, layer.out_features, (h, w), bias=layer.use_bias)
            layers.append(conv)
            params[f"{j}.weight"] = old_params[f"{i}.weight"].reshape(conv.weight_shape)
            if layer.use_bias:
                params[f"{j}.bias"] = old_params[f"{i}.bias"]
            spatial = (layer.out_features, 1, 1)
        elif spatial is not None and not isinstance(layer, (ReLU, Dropout)):
            raise ValueError(f"fully_convolutional: layer {i} ({layer!r}) after the "
                             f"classifier's Flatten has no convolutional form")
        else:
            layers.append(_rebuild(layer))
            for name in ("weight", "bias"):
                if f"{i}.{name}" in old_params:
                    params[f"{j}.{name}"] = old_params[f"{i}.{name}"]
            state = layer.extra_state()
            if state:
                extra[str(j)] = state
        shape = layer.output_shape(shape)
    if spatial is None:
        raise ValueError("fully_convolutional: the net has no Flatten before a Linear; it is "
                         "already fully convolutional")
    out = Sequential(*layers)
    out.input_shape = tuple(input_shape or net.input_shape)
    out.bind(net.backend, np.random.default_rng(0))
    out.load_state_dict(params)
    out.load_extra_state(extra)
    return out.train(net.training)
