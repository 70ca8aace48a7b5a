"""Pictures of a net (``gpucnn show``): its convolution filters as an image grid, and the
feature maps each convolution computes for one image (cuda-convnet's shownet.py, Caffe's
filter visualisation example). Drawn with matplotlib (the ``plot`` extra)."""
from __future__ import annotations

import math

import numpy as np

from .nn import Conv2d

__all__ = ["filter_grid", "conv_activations", "save_filters", "save_activations"]


def _tile(images, cols, pad=1):
    """(n, h, w[, 3]) images in a grid of ``cols`` columns, ``pad`` pixels of NaN between
    (drawn as the background)."""
    n, h, w = images.shape[:3]
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, *images.shape[3:]), np.nan)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = im
    return grid


def _unit(a, axes):
    """Each image scaled to [0, 1] over ``axes`` (a flat one to 0.5)."""
    lo, hi = a.min(axis=axes, keepdims=True), a.max(axis=axes, keepdims=True)
    return np.where(hi > lo, (a - lo) / np.where(hi > lo, hi - lo, 1), 0.5)


def filter_grid(weight):
    """The filters (F, C, kh, kw) as one image: in colour where C is 3 (a first layer on RGB
    images), else each filter averaged over its input channels, in grey."""
    w = np.asarray(weight, np.float64)
    if w.shape[1] == 3:
        images = _unit(w.transpose(0, 2, 3, 1), (1, 2, 3))
    else:
        images = _unit(w.mean(axis=1), (1, 2))
    return _tile(images, math.ceil(math.sqrt(len(images))))


def conv_activations(net, x):
    """[(layer index, description, maps (C, H, W)), ...]: the output of every Conv2d of
    ``net`` for one image ``x`` (C, H, W), in evaluation mode. A conv that Sequential fused
    with the following ReLU (and max-pool) outputs their result: the description says so."""
    B = net.backend
    was_training = net.training
    net.eval()
    try:
        out, h = [], B.asarray(np.ascontiguousarray(x[None], np.float32))
        for i, layer in enumerate(net.layers):
            if layer.fused_into is not None:
                continue
            h = layer.forward(h)
            if isinstance(layer, Conv2d):
                fused = " + ReLU" if layer.fused_relu else ""
                fused += " + max-pool" if layer.fused_pool is not None else ""
                out.append((i, f"layer {i}: {layer!r}{fused}", B.to_numpy(h)[0]))
    finally:
        net.train(was_training)
    return out


def _figure(panels, title, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # each panel as tall as its grid's aspect needs at 8 inches wide (at most 3 inches)
    heights = [min(8 * image.shape[0] / image.shape[1], 3) + 0.35 for _, image in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, sum(heights) + 0.5), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    for ax, (label, image) in zip(axes[:, 0], panels):
        ax.imshow(np.ma.masked_invalid(image) if image.ndim == 2 else np.nan_to_num(image, nan=1),
                  cmap=cmap, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    from .outputs import write_atomic
    suffix = str(path).rsplit(".", 1)[-1].lower()
    write_atomic(path, lambda f: fig.savefig(f, format=suffix, dpi=120))
    plt.close(fig)


def save_filters(net, index, path, title=""):
    """The filters of layer ``index`` (a Conv2d) as a picture at ``path``."""
    if not 0 <= index < len(net.layers) or not isinstance(net.layers[index], Conv2d):
        convs = [i for i, l in enumerate(net.layers) if isinstance(l, Conv2d)]
        raise ValueError(f"--filters {index}: not a Conv2d layer of this net; its Conv2d "
                         f"layers are {convs}")
    layer = net.layers[index]
    grid = filter_grid(net.backend.to_numpy(layer.weight.data))
    c = layer.weight.shape[1]
    how = {3: "in colour", 1: "in grey"}.get(c, f"each averaged over its {c} input channels")
    _figure([(f"layer {index}: {layer!r}: {layer.out_channels} filters, {how}", grid)],
            title, path)


def save_activations(net, x, path, title="", max_maps=32):
    """Each Conv2d's feature maps for image ``x`` (at most ``max_maps`` a layer) at ``path``,
    in grey on one scale per layer."""
    image = x.transpose(1, 2, 0) if x.shape[0] == 3 else x.mean(axis=0)
    panels = [("the input, as the net sees it", _unit(image, None))]
    for _, label, maps in conv_activations(net, x):
        shown = maps[:max_maps]
        more = f" (first {len(shown)} of {len(maps)})" if len(maps) > len(shown) else ""
        # one scale for the layer: a weak map shows dark, a dead one (all 0 after ReLU) black
        panels.append((label + more, _tile(_unit(shown, (0, 1, 2)), min(len(shown), 16))))
    if len(panels) == 1:
        raise ValueError("the net has no Conv2d layer to show")
    _figure(panels, title, path)
