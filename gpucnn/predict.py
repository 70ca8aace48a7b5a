"""Class probabilities of image files for a trained net (``gpucnn predict``).

Each image is prepared by the model's recorded preprocessing (gpucnn.data.preprocess: decoded
by Pillow, converted to the model's channels, resized and centre-cropped to its input size
where it differs, normalised), the images are run through the net in batches in evaluation
mode, and the logits become probabilities by a softmax in float64. A file that cannot be read
is reported with why; the others are still predicted.

Dense scoring (``dense=True``): the net made fully convolutional (gpucnn.nn.dense) scores
every window of the net's input size at its stride over the whole image — not resized,
unless it is smaller than the input, when it is resized (aspect kept) to just cover it —
giving a (classes, H', W') map of probabilities, one softmax per window.
"""
from __future__ import annotations

import os

import numpy as np

from .data.errors import DataError
from .data.transforms import IMAGE_EXTENSIONS, cover_size, to_array
from .membudget import activation_elements, check_fits, host_available_bytes

__all__ = ["image_files", "predict", "softmax", "IMAGE_EXTENSIONS"]


def image_files(arguments):
    """[(path, None) or (argument, error)]: the files named, and each folder's image files
    (by extension, case-insensitively) in sorted order — not recursively. A missing path or
    a folder without images is an error entry, in its argument's place."""
    out = []
    for arg in arguments:
        path = os.fspath(arg)
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path)
                           if n.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(path, n)))
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


def predict(net, pre, files, topk=5, dense=False, batch_size=64):
    """One result per entry of ``files`` ((path, error or None) pairs, as
    :func:`image_files` gives them), in order: ``{"file", "topk": [{"index", "class",
    "prob"}, ...]}`` (with ``"dense": {"shape": [K, H', W'], "scores": ...}`` when
    ``dense``) or ``{"file", "error"}``. ``net``: a Sequential in evaluation mode; ``pre``:
    its gpucnn.data.preprocess.Preprocess."""
    B, k = net.backend, min(int(topk), len(pre.classes))
    results, pending = [], []  # pending: (result, pixels) of the batch being gathered
    scorer = None
    if dense:
        from .nn.dense import fully_convolutional
        scorer = fully_convolutional(net, pre.input_shape).eval()

    def run_batch():
        x = pre.normalize(np.stack([pixels for _, pixels in pending]))
        probs = softmax(B.to_numpy(net.forward(B.asarray(x))))
        for (result, _), p in zip(pending, probs):
            result["topk"] = _top(p, pre.classes, k)
        pending.clear()

    for path, error in files:
        result = {"file": path}
        results.append(result)
        if error is not None:
            result["error"] = error
            continue
        try:
            image = pre.decode(path)
            pixels = pre.pixels(image)
            if scorer is not None:
                result["dense"] = _dense(scorer, pre, image, path)
        except (DataError, ValueError) as exc:
            why = str(exc)
            result.clear()  # (the path is the entry's "file")
            result.update({"file": path, "error": why.removeprefix(f"{path}: ")})
            continue
        pending.append((result, pixels))
        if len(pending) == batch_size:
            run_batch()
    if pending:
        run_batch()
    for r in results:  # "dense" after "topk", as documented
        if "dense" in r:
            r["dense"] = r.pop("dense")
    return results


def _dense(scorer, pre, image, path):
    """The probability map of every window of ``image`` (a decoded PIL image)."""
    from PIL import Image
    h, w = pre.input_size
    size = cover_size(*image.size, h, w) if image.width < w or image.height < h else image.size
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    shape = (pre.channels, image.height, image.width)
    check_fits(f"{path}: dense scoring at {image.width}x{image.height}",
               4 * activation_elements(scorer, shape), host_available_bytes())
    B = scorer.backend
    x = pre.normalize(to_array(image)[None])
    scores = softmax(B.to_numpy(scorer.forward(B.asarray(x)))[0], axis=0)
    return {"shape": list(scores.shape), "scores": scores.tolist()}
