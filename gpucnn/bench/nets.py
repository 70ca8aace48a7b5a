"""Network benchmarks: LeNet-5, AlexNet, AlexNet-CIFAR.

Three modes, all with the network in training mode (dropout active), as convnet-benchmarks
times them:

* ``forward`` — the forward pass of a training iteration;
* ``forward_backward`` — forward, softmax cross-entropy, backward (all gradients);
* ``train_step`` — the same plus an SGD momentum update (lr 0.01, momentum 0.9).

The PyTorch twin of a gpucnn model is built layer by layer from the gpucnn ``Sequential``
(same shapes, hyper-parameters and initial weights), so the two run exactly the same net.
"""
from __future__ import annotations

import numpy as np

__all__ = ["NET_MODES", "DEFAULT_NET_BATCH", "net_input_shape", "GpucnnNet", "TorchNet",
           "host_batches", "net_flops"]

NET_MODES = ("forward", "forward_backward", "train_step")
DEFAULT_NET_BATCH = {"lenet5": 128, "alexnet_cifar": 128, "alexnet": 16}
NUM_CLASSES = {"lenet5": 10, "alexnet_cifar": 10, "alexnet": 1000}


def _key(name):
    return name.replace("-", "_").lower()


def net_input_shape(name):
    from ..models import build_model
    return tuple(build_model(_key(name), backend="numpy").input_shape)


def net_flops(model):
    """Forward FLOPs of one sample (the model's own per-layer count)."""
    shape = model.input_shape
    total = 0
    for layer in model.layers:
        total += layer.flops(shape)
        shape = layer.output_shape(shape)
    return int(total)


def host_batches(name, batch, rng, rotate):
    from ..models import build_model
    shape = tuple(build_model(_key(name), backend="numpy").input_shape)
    nbytes = 4 * batch * int(np.prod(shape))
    k = max(1, min(int(rotate), (512 * 2**20) // max(nbytes, 1)))
    xs = [rng.standard_normal((batch, *shape), dtype=np.float32) for _ in range(k)]
    ys = [rng.integers(0, NUM_CLASSES[_key(name)], batch).astype(np.int64) for _ in range(k)]
    return xs, ys


class GpucnnNet:
    """A gpucnn net with its loss and optimiser; methods ``forward``, ``forward_backward``,
    ``train_step`` take the iteration index (input rotation)."""

    def __init__(self, name, B, batches, seed=0):
        from ..models import build_model
        from ..nn import SoftmaxCrossEntropy
        from ..optim import SGD
        self.backend = B
        self.model = build_model(_key(name), backend=B, seed=seed)
        self.model.train()
        self.loss = SoftmaxCrossEntropy().bind(B)
        self.opt = SGD(self.model.parameters(), 0.01, momentum=0.9, backend=B)
        xs, ys = batches
        self.xs = [B.asarray(x) for x in xs]
        self.ys = [B.asarray(y, dtype=np.int32) for y in ys]

    def forward(self, i):
        return self.model.forward(self.xs[i % len(self.xs)])

    def forward_backward(self, i):
        j = i % len(self.xs)
        return self._forward_backward(self.xs[j], self.ys[j])

    def _forward_backward(self, x, y):
        logits = self.model.forward(x)
        loss = self.loss.forward(logits, y)
        self.model.backward(self.loss.backward())
        return loss

    def train_step(self, i):
        j = i % len(self.xs)
        return self.train_arrays(self.xs[j], self.ys[j])

    def train_arrays(self, x, y):
        """One training step on the batch (x, y) (what a graph captures)."""
        loss = self._forward_backward(x, y)
        self.opt.step()
        return loss


def _torch_module(layer, torch):
    """The PyTorch equivalent of one gpucnn layer (weights copied)."""
    nn = torch.nn
    kind = type(layer).__name__
    if kind == "Conv2d":
        m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                      stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                      groups=layer.groups, bias=layer.bias is not None)
    elif kind == "Linear":
        m = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    elif kind == "ReLU":
        return nn.ReLU()
    elif kind == "MaxPool2d":
        return nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding, **layer.options)
    elif kind == "AvgPool2d":
        return nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, **layer.options)
    elif kind == "LPPool2d":
        return nn.LPPool2d(layer.norm_type, layer.kernel_size, layer.stride, **layer.options)
    elif kind == "Flatten":
        return nn.Flatten()
    elif kind == "Dropout":
        return nn.Dropout(layer.p)
    elif kind == "LocalResponseNorm":
        size, alpha, beta, k = layer.args
        return nn.LocalResponseNorm(size, alpha, beta, k)
    else:
        raise ValueError(f"no PyTorch equivalent for gpucnn layer {kind}")
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(layer.backend.to_numpy(layer.weight.data)))
        if layer.bias is not None:
            m.bias.copy_(torch.from_numpy(layer.backend.to_numpy(layer.bias.data)))
    return m


def torch_sequential(gpucnn_model, torch):
    """The PyTorch twin of a gpucnn Sequential (same layers, weights copied), on the CPU."""
    return torch.nn.Sequential(*[_torch_module(layer, torch) for layer in gpucnn_model.layers])


class TorchNet:
    """The PyTorch twin of a gpucnn model, same methods as :class:`GpucnnNet`."""

    def __init__(self, gpucnn_model, torch, device, batches):
        self.torch = torch
        self.model = torch_sequential(gpucnn_model, torch).to(device)
        self.model.train()
        self.crit = torch.nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        xs, ys = batches
        self.xs = [torch.from_numpy(x.copy()).to(device) for x in xs]
        self.ys = [torch.from_numpy(y.copy()).to(device) for y in ys]

    def forward(self, i):
        return self.model(self.xs[i % len(self.xs)])

    def forward_backward(self, i):
        j = i % len(self.xs)
        self.opt.zero_grad(set_to_none=True)
        loss = self.crit(self.model(self.xs[j]), self.ys[j])
        loss.backward()
        return loss

    def train_step(self, i):
        loss = self.forward_backward(i)
        self.opt.step()
        return loss
