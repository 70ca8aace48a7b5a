"""Class probabilities of image files for a trained net (``gpucnn predict``).

Each image is prepared by the model's recorded preprocessing (gpucnn.data.preprocess: decoded
by Pillow, converted to the model's channels, resized and centre-cropped to its input size
where it differs, normalised), the images are run through the net in batches in evaluation
mode, and the logits become probabilities by a softmax in float64. A file that cannot be read,
or whose outputs are not finite, is reported with why; the others are still predicted.
Results come out one by one in input order (:func:`predict` is a generator), so a long list
of files is printed and written as it goes, holding one batch at a time.

Dense scoring (``dense=True``): the net made fully convolutional (gpucnn.nn.dense) scores
every window of the net's input size at its stride over the whole image — not resized,
unless it is smaller than the input, when it is resized (aspect kept) to just cover it —
giving a (classes, H', W') map of probabilities, one softmax per window.

The JSON of ``gpucnn predict --json`` (:func:`write_results`) is a list, one object per
input, one per line: ``[\\n{"file": ...},\\n...\\n]``; gpucnn.outputs recognises a previous
one by that form (KINDS["predictions"]) before replacing it.
"""
from __future__ import annotations

import json
import os
from collections import deque

import numpy as np

from .data.errors import DataError
from .data.transforms import IMAGE_EXTENSIONS, cover_size, resize, to_array
from .membudget import (activation_elements, check_fits, free_device_bytes,
                        host_available_bytes)
from .ops.storage import activation_itemsize

__all__ = ["image_files", "predict", "softmax", "write_results"]


def image_files(arguments):
    """[(path, None) or (argument, error)]: the files named, and each folder's image files
    (by extension, case-insensitively: IMAGE_EXTENSIONS) in sorted order — not recursively.
    A missing path, an unreadable folder or a folder without images is an error entry, in its
    argument's place."""
    out = []
    for arg in arguments:
        path = os.fspath(arg)
        if os.path.isdir(path):
            try:
                names = sorted(n for n in os.listdir(path)
                               if n.lower().endswith(IMAGE_EXTENSIONS)
                               and os.path.isfile(os.path.join(path, n)))
            except OSError as exc:
                out.append((path, f"cannot list the folder: {exc.strerror or exc}"))
                continue
            if not names:
                out.append((path, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this "
                                  f"folder (sub-folders are not searched)"))
            out.extend((os.path.join(path, n), None) for n in names)
        elif os.path.exists(path):
            out.append((path, None))
        else:
            out.append((path, "no such file or folder"))
    return out


def softmax(logits, axis=-1):
    """float64 probabilities of ``logits`` along ``axis``."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def _top(probs, classes, k):
    order = np.argsort(-probs, kind="stable")[:k]  # ties: the lower class index first
    return [{"index": int(i), "class": classes[i], "prob": float(probs[i])} for i in order]


_NOT_FINITE = "the model's outputs for this image are not finite (NaN or infinity)"


def predict(net, pre, files, topk=5, dense=False, batch_size=64):
    """Yield one result per entry of ``files`` ((path, error or None) pairs, as
    :func:`image_files` gives them), in order: ``{"file", "topk": [{"index", "class",
    "prob"}, ...]}`` (with ``"dense": {"shape": [K, H', W'], "scores": float64 array}``
    when ``dense``) or ``{"file", "error"}``. ``net``: a Sequential in evaluation mode;
    ``pre``: its gpucnn.data.preprocess.Preprocess."""
    B, k = net.backend, min(int(topk), len(pre.classes))
    order, pending = deque(), []  # results not yet yielded; (result, pixels) of the batch
    scorer = None
    if dense:
        from .nn.dense import fully_convolutional
        scorer = fully_convolutional(net, pre.input_shape).eval()

    def run_batch():
        x = pre.normalize(np.stack([pixels for _, pixels in pending]))
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite: checked below
            logits = B.to_numpy(net.forward(B.asarray(x)))
        for (result, _), z in zip(pending, logits):
            if np.isfinite(z).all():
                result["topk"] = _top(softmax(z), pre.classes, k)
                if "dense" in result:  # after "topk", as documented
                    result["dense"] = result.pop("dense")
            else:
                _fail(result, _NOT_FINITE)
        pending.clear()

    for path, error in files:
        result = {"file": path}
        order.append(result)
        if error is not None:
            result["error"] = error
        else:
            try:
                image = pre.decode(path)
                pixels = pre.pixels(image)
                if scorer is not None:
                    result["dense"] = _dense(scorer, pre, image, path)
                pending.append((result, pixels))
            except (DataError, ValueError, MemoryError) as exc:
                _fail(result, str(exc) or type(exc).__name__)
            if len(pending) == batch_size:
                run_batch()
        if not pending:  # everything before the batch being gathered is done
            while order:
                yield order.popleft()
    if pending:
        run_batch()
    yield from order


def _fail(result, why):
    path = result["file"]
    result.clear()  # (the path is the entry's "file")
    result.update({"file": path, "error": why.removeprefix(f"{path}: ")})


def _dense(scorer, pre, image, path):
    """The probability map of every window of ``image`` (a decoded PIL image)."""
    h, w = pre.input_size
    if image.width < w or image.height < h:
        image = resize(image, cover_size(*image.size, h, w))
    shape = (pre.channels, image.height, image.width)
    k, oh, ow = scorer.output_shape(shape)
    # the layers' outputs (float32 or bf16), and the map: float64 probabilities, then JSON text
    B = scorer.backend
    need = activation_itemsize(B) * activation_elements(scorer, shape)
    if B.kind == "device":
        available, where = free_device_bytes(B)
        check_fits(f"{path}: dense scoring at {image.width}x{image.height}", need, available,
                   where)
    check_fits(f"{path}: dense scoring at {image.width}x{image.height}",
               (0 if B.kind == "device" else need) + 40 * k * oh * ow, host_available_bytes())
    x = pre.normalize(to_array(image)[None])
    with np.errstate(over="ignore", invalid="ignore"):
        logits = B.to_numpy(scorer.forward(B.asarray(x)))[0]
    if not np.isfinite(logits).all():
        raise ValueError(_NOT_FINITE)
    return {"shape": [k, oh, ow], "scores": softmax(logits, axis=0)}


def _jsonable(result):
    dense = result.get("dense")
    if dense is None:
        return result
    return {**result, "dense": {"shape": dense["shape"], "scores": dense["scores"].tolist()}}


def write_results(f, results):
    """Write ``results`` (an iterable, consumed as it goes) to the binary file ``f`` as
    :mod:`this module <gpucnn.predict>` describes; yields each result after writing it."""
    f.write(b"[\n")  # then '{"file": ': gpucnn.outputs.KINDS["predictions"].head
    for i, result in enumerate(results):
        text = json.dumps(_jsonable(result), allow_nan=False, ensure_ascii=False)
        f.write((",\n" if i else "") .encode() + text.encode("utf-8"))
        yield result
    f.write(b"\n]\n")
