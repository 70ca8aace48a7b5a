"""ONNX export and import (needs the ``onnx`` extra: pip install 'gpucnn[onnx]').

- :func:`export`: a :class:`~gpucnn.nn.Sequential` to an .onnx file (opset 13, or 19 where an
  average pool's ceil_mode needs it), a dynamic batch axis, initialisers named after the
  parameters ("3.weight"), refusing by name the layers ONNX computes otherwise.
- :func:`load`: an .onnx file (opsets 13 to 23) to a Sequential on any backend, for chain
  graphs of the operators in :data:`SUPPORTED`, including the subgraphs ``torch.onnx.export``
  emits for LocalResponseNorm and LPPool2d; anything else is an :class:`OnnxError` naming
  the node.
"""
from __future__ import annotations

import numpy as np

from ..nn import Sequential
from .export import export
from .graph import SUPPORTED_TEXT as SUPPORTED
from .graph import evaluate
from .importer import chain_layers
from .reader import OPSET_RANGE, OnnxError, read_model

__all__ = ["export", "load", "OnnxError", "SUPPORTED", "OPSET_RANGE"]


def load(path, backend=None, seed=0):
    """The net of the ONNX file ``path`` as a Sequential bound to ``backend`` (a name or a
    backend object; None: the default), in training mode, with the file's weights.

    The net has ``input_shape`` (C, H, W) from the graph's input, ``onnx_names`` ({our
    parameter name: the initialiser it came from}) and ``softmax_output`` (the graph ended
    in a Softmax, which the Sequential leaves out: it yields the logits, which is what
    training needs), ``onnx_metadata`` (the file's metadata_props, {str: str}). ``seed`` seeds what the file does not hold (dropout masks)."""
    model = read_model(path)
    graph = evaluate(model)
    steps, softmax = chain_layers(graph)
    if not steps:
        raise OnnxError(f"{path}: the graph has no layer gpucnn builds")
    net = Sequential(*[s.layer for s in steps])
    net.input_shape = tuple(graph.shapes[graph.input][1:])
    net.softmax_output = softmax
    net.onnx_names = {f"{i}.{k}": src for i, s in enumerate(steps)
                      for k, src in s.sources.items()}
    net.onnx_source = str(path)
    net.onnx_metadata = {p.key: p.value for p in model.metadata_props}
    net.output_shape(net.input_shape)
    net.bind(backend, np.random.default_rng(seed))
    net.load_state_dict({f"{i}.{k}": np.ascontiguousarray(v, np.float32)
                         for i, s in enumerate(steps) for k, v in s.params.items()})
    return net
