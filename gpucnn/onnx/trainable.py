"""An ONNX file as what ``gpucnn train --model net.onnx`` trains: the imported net described
as model-file layers (gpucnn.modelfile.layer_entries), so that the run builds, checkpoints and
rebuilds it as the "sequential" model a model file gives ({"name": "sequential", "kwargs":
{"layers": [...]}, "input_shape": [...]}: ``--resume``, ``gpucnn verify`` and ``gpucnn
export`` need the checkpoint only), and the file's weights, which the run starts from unless
``--reinit`` (then the seeded initialisation model files get).
"""
from __future__ import annotations

import os

from ..filerules.netfile import check_layers
from ..modelfile import build_layers, layer_entries
from .reader import OnnxError

__all__ = ["is_onnx_file", "ImportedNet"]


def is_onnx_file(ref):
    """Whether ``--model ref`` names an ONNX file (by its .onnx suffix)."""
    return isinstance(ref, (str, os.PathLike)) and os.fspath(ref).lower().endswith(".onnx")


class ImportedNet:
    """The net of ONNX file ``path`` for training: ``layers`` (model-file entries, checked by
    the model-file schema), ``input_shape`` (C, H, W, the graph's input), ``output_shape``
    (per image), ``state`` ({parameter name: float32 array}, the file's weights, named as the
    net rebuilt from ``layers`` names them) and ``softmax_output`` (the graph ended in a
    Softmax, left out: training takes the logits). Any problem is an OnnxError naming the
    file."""

    def __init__(self, path):
        from . import load  # the package's reader: the hostile-file rules apply
        self.path = os.fspath(path)
        net = load(path, backend="numpy")
        try:
            layers = layer_entries(net.layers)
        except ValueError as exc:
            raise OnnxError(f"{self.path}: {exc}") from None
        self.layers = check_layers(layers, self.path, OnnxError)
        self.input_shape = tuple(int(v) for v in net.input_shape)
        self.output_shape = tuple(net.output_shape(self.input_shape))
        self.softmax_output = bool(net.softmax_output)
        self.state = net.state_dict()
        # What the trainer builds from the description must take the file's weights as they
        # are: the same parameters, of the same shapes (an importer/describer disagreement
        # is a bug here, not a silently different net).
        rebuilt = {}
        for i, layer in enumerate(build_layers(self.layers, self.input_shape)):
            shape = getattr(layer, "weight_shape", None)
            if shape is not None:
                rebuilt[f"{i}.weight"] = tuple(shape)
                if layer.use_bias:
                    rebuilt[f"{i}.bias"] = tuple(shape[:1])
        held = {k: tuple(v.shape) for k, v in self.state.items()}
        if rebuilt != held:
            raise OnnxError(f"{self.path}: the net rebuilt from its description has the "
                            f"parameters {rebuilt}, the file {held}; refused")

    def check_classes(self, num_classes, data):
        """An OnnxError unless the net gives ``num_classes`` scores per image (``data``: what
        the classes are of, for the message)."""
        out = self.output_shape
        if len(out) != 1:
            raise OnnxError(f"{self.path}: the net gives a {'x'.join(map(str, out))} output per "
                            f"image; training needs one score per class (a 1-D output)")
        if out[0] != num_classes:
            raise OnnxError(f"{self.path}: the net gives {out[0]} class scores per image, "
                            f"{data} has {num_classes} classes: train a net with "
                            f"{num_classes} outputs")

    def line(self, reinit, seed):
        """What was imported, for the start-up output."""
        start = (f"re-initialised (--reinit, seed {seed})" if reinit
                 else "starting from the file's weights")
        dropped = "; its final Softmax left out (training takes the logits)" \
            if self.softmax_output else ""
        return (f"model: {self.path}: {len(self.layers)} layers at input "
                f"{'x'.join(map(str, self.input_shape))}, {start}{dropped}")
