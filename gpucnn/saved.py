"""A model the user saved — a checkpoint written by ``gpucnn train`` or an .onnx file — with
the classes and preprocessing that turn an image file into its input (gpucnn.data.preprocess):
what ``gpucnn predict``, ``show`` and ``export`` start from.

Where the preprocessing comes from, in order (``how`` says which, printed once):

* a checkpoint's ``"data"`` record (schema 5: every run; 4: image-folder runs), or an .onnx
  file's ``gpucnn.preprocess`` property (``gpucnn export`` writes it);
* a checkpoint or a gpucnn export that records none (written before gpucnn recorded it): the
  constants of its built-in dataset (kmnist's statistics were computed, so it needs
  ``--mean``/``--std``);
* an .onnx file made elsewhere: its ``class_names`` property (a JSON list) or "0".."K-1", the
  graph's input size, pixels scaled to [0, 1] and not normalised unless ``--mean``/``--std``
  are given.

A recorded preprocessing is never overridden: that is how prediction would drift from
training. Every record is checked by gpucnn.filerules before use (a file we did not write is
hostile).
"""
from __future__ import annotations

import os
from typing import NamedTuple

from . import filerules
from .checkpoint import CheckpointError, open_checkpoint
from .data.datasets import dataset_info
from .data.errors import DataError
from .data.preprocess import Preprocess
from .filerules.limits import MAX_CLASSES
from .onnx.trainable import is_onnx_file

__all__ = ["SavedModel", "open_saved", "read_saved", "PREPROCESS_PROPERTY"]

PREPROCESS_PROPERTY = "gpucnn.preprocess"   # the record, as JSON, in an .onnx file
# The largest record (or class_names list) the preprocessing rule admits: its classes of at
# most 255 characters, each as JSON escapes them (6 bytes a character at most), and the rest.
_PROPERTY_MAX_BYTES = MAX_CLASSES * (6 * 255 + 4) + (64 << 10)


class SavedModel(NamedTuple):
    net: object              # a Sequential in evaluation mode, with its weights
    preprocess: Preprocess   # how an image file becomes its input
    how: str                 # where ``preprocess`` came from, one line
    dataset: str | None      # the built-in dataset it was trained on, when known


def open_saved(path, backend="numpy", mean=None, std=None):
    """The :class:`SavedModel` of checkpoint or .onnx file ``path`` on ``backend``;
    ``mean``/``std`` (per channel) normalise images for a model that records no
    preprocessing (a ValueError for one that does)."""
    if (mean is None) != (std is None):
        raise ValueError("give --mean and --std together")
    net, pre, dataset = read_saved(path, backend)
    c, h, w = net.input_shape
    if c not in (1, 3):
        raise ValueError(f"{path}: the model takes {c} input channels; images give 1 (grey) "
                         f"or 3 (RGB)")
    name = os.path.basename(path)
    if pre is not None:
        if mean is not None:
            raise ValueError(f"--mean/--std: {path} records how its images were normalised "
                             f"({pre.describe()}); they apply only to a model that records "
                             f"none")
        how = f"recorded in {name}"
    else:
        pre, how = _unrecorded(path, net, dataset, mean, std)
    outputs = net.output_shape(net.input_shape)
    if pre.input_shape != (c, h, w) or outputs != (len(pre.classes),):
        raise ValueError(f"{path}: its preprocessing makes {'x'.join(map(str, pre.input_shape))}"
                         f" inputs for {len(pre.classes)} classes; its model takes {c}x{h}x{w} "
                         f"and gives {'x'.join(map(str, outputs))} outputs")
    return SavedModel(net, pre, f"{how}: {pre.describe()}", dataset)


def read_saved(path, backend="numpy"):
    """(net in evaluation mode, the Preprocess it records or None, the built-in dataset it
    was trained on or None) of checkpoint or .onnx file ``path``."""
    return (_onnx if is_onnx_file(path) else _checkpoint)(path, backend)


def _checkpoint(path, backend):
    """(net, the recorded Preprocess or None, its built-in dataset or None)."""
    from .verify.source import build_copy, load_model_source
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    net = build_copy(load_model_source(path), backend, seed=0).eval()
    with open_checkpoint(path) as ck:
        meta = ck.metadata
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    dataset = config.get("dataset") if isinstance(config.get("dataset"), str) else None
    record = meta.get("data")
    pre = (None if record is None
           else Preprocess.from_record(record, f"{path}: data", CheckpointError))
    return net, pre, (None if dataset == "folder" else dataset)


def _onnx(path, backend):
    from .onnx import OnnxError, load
    net = load(path, backend=backend).eval()
    text = net.onnx_metadata.get(PREPROCESS_PROPERTY)
    pre = None
    if text is not None:
        where = f"{path}: {PREPROCESS_PROPERTY}"
        record = filerules.parse_json(text.encode("utf-8"), where, OnnxError,
                                      max_bytes=_PROPERTY_MAX_BYTES)
        pre = Preprocess.from_record(record, where, OnnxError)
    return net, pre, net.onnx_metadata.get("gpucnn.dataset")


def _unrecorded(path, net, dataset, mean, std):
    """(Preprocess, how) of a model that records no preprocessing: its built-in dataset's
    constants (a model written before gpucnn recorded them), else the graph's size and class
    names, pixels scaled to [0, 1]; normalised with ``mean``/``std`` where given."""
    c, h, w = net.input_shape
    name = os.path.basename(path)
    if dataset is not None:
        try:
            info = dataset_info(dataset)
        except DataError:
            info = None
        k = net.output_shape(net.input_shape)
        if info is not None and (info.input_shape[0] != c or k != (info.num_classes,)):
            raise ValueError(f"{path}: says it was trained on {dataset} ("
                             f"{info.input_shape[0]} channels, {info.num_classes} classes), but "
                             f"its model takes {c} channels and gives "
                             f"{'x'.join(map(str, k))} outputs")
        if info is not None and mean is None:
            if info.mean is None:
                raise ValueError(f"{path}: trained on {dataset}, whose mean and std were "
                                 f"computed from its training images and are not recorded "
                                 f"in {name}: give --mean and --std")
            return (Preprocess(info.classes, c, (h, w), info.mean, info.std,
                               f"{dataset}'s training-set constants"),
                    f"{name} records no preprocessing (written before gpucnn recorded it): "
                    f"{dataset}'s constants")
        if info is not None:
            return (Preprocess(info.classes, c, (h, w), *_stats(mean, std, c)),
                    f"{name} records no preprocessing; trained on {dataset}, normalised with "
                    f"the given --mean/--std")
    classes = _class_names(path, net)
    if mean is None:
        return (Preprocess(classes, c, (h, w), (0.0,) * c, (1.0,) * c, "none recorded"),
                f"{name} records no preprocessing: pixels scaled to [0, 1], not normalised "
                f"(--mean/--std to normalise)")
    return (Preprocess(classes, c, (h, w), *_stats(mean, std, c)),
            f"{name} records no preprocessing: normalised with the given --mean/--std")


def _stats(mean, std, c):
    if len(mean) != c or len(std) != c:
        raise ValueError(f"--mean/--std: give {c} value(s) each, one per channel of the "
                         f"model's input; got {len(mean)} and {len(std)}")
    if not all(v > 0 for v in std):
        raise ValueError(f"--std: every value must be > 0, got {list(std)}")
    return tuple(mean), tuple(std), "given (--mean/--std)"


def _class_names(path, net):
    """An ONNX file's ``class_names`` property (a JSON list, one per output) or "0".."K-1"."""
    from .onnx import OnnxError
    k = net.output_shape(net.input_shape)
    if len(k) != 1:
        raise ValueError(f"{path}: the model outputs {'x'.join(map(str, k))} per image; "
                         f"predict takes a model ending in class scores")
    text = getattr(net, "onnx_metadata", {}).get("class_names")
    if text is None:
        return tuple(str(i) for i in range(k[0]))
    names = filerules.parse_json(text.encode("utf-8"), f"{path}: class_names", OnnxError,
                                 max_bytes=_PROPERTY_MAX_BYTES)
    if not (isinstance(names, list) and len(names) == k[0]
            and all(isinstance(n, str) and len(n) <= 255 for n in names)):
        raise OnnxError(f"{path}: class_names must be a JSON list of {k[0]} strings of at most "
                        f"255 characters (one per output)")
    return tuple(names)
