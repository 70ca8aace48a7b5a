"""How an image becomes a model's input, recorded so that prediction cannot drift from training:
the one format and the one reader of it (``gpucnn train --dataset folder`` writes it into the
checkpoint's metadata, key ``"data"``, and into the metrics; ``gpucnn predict`` and anything
else that feeds images to a trained net reads it back with :meth:`Preprocess.from_record`).

The record (JSON; format ``gpucnn-preprocess/1``; its rule is
gpucnn.filerules.preprocess.PREPROCESS_RECORD)::

    {"format": "gpucnn-preprocess/1",
     "classes": ["cat", "dog"],          # class index = position (sorted folder names)
     "channels": 3,                      # 1: Pillow's convert("L"); 3: convert("RGB")
     "input_size": [224, 224],           # [H, W] of the model's input
     "resize": "short-side-center-crop", # see below
     "interpolation": "bilinear",        # PIL's BILINEAR (antialiased)
     "mean": [0.485, 0.456, 0.406],      # per channel, pixels scaled to [0, 1]
     "std": [0.229, 0.224, 0.225],       # x = (pixel / 255 - mean) / std
     "stats": "computed from the 1000 training images",   # or "given (--mean/--std)"
     "augment": "none"}                  # training only: or "random-resized-crop",
                                         # "random-crop-flip" (CIFAR-10's, see below)

"short-side-center-crop" (torchvision's Resize(H) + CenterCrop(H) for a square input): an
image already H x W is used as it is; any other is resized with its aspect ratio kept until it
just covers H x W (for H == W: its short side becomes H, the long one int(H * long / short)),
then its centre H x W is cropped (offsets int(round((size - crop) / 2))). This is what the
validation images get, and the training images without augmentation. With
"random-resized-crop" the training images get torchvision's RandomResizedCrop((H, W)) with its
default scale (0.08, 1) and ratio (3/4, 4/3), then a horizontal flip with probability 1/2
(gpucnn.data.transforms).

The built-in datasets record the same format (:meth:`Preprocess.of_dataset`): their class
names, image size, and the mean/std their images were normalised with (the dataset's
constants, or kmnist's computed statistics); CIFAR-10's training augmentation is recorded as
"random-crop-flip" (4 pixels of padding, a random 32x32 crop, a horizontal flip). Checkpoints
written before gpucnn recorded it (no "data") use their dataset's constants (gpucnn.saved).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .. import filerules
from .datasets import normalize
from .errors import DataError
from .transforms import decode, resize_center, to_array

__all__ = ["Preprocess", "AUGMENTS", "RECORDED_AUGMENTS"]

AUGMENTS = ("none", "random-resized-crop")  # what --augment chooses for an image folder
RECORDED_AUGMENTS = AUGMENTS + ("random-crop-flip",)  # ... and CIFAR-10's, as recorded


@dataclass(frozen=True)
class Preprocess:
    classes: tuple[str, ...]
    channels: int
    input_size: tuple[int, int]       # (H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stats: str = ""
    augment: str = "none"

    def __post_init__(self):
        c = self.channels
        if c not in (1, 3) or len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"preprocessing: {c} channels with {len(self.mean)} mean and "
                             f"{len(self.std)} std values: 1 or 3 channels, as many of each")

    def to_record(self):
        """The JSON record of the module docstring."""
        return {"format": filerules.PREPROCESS_FORMAT, "classes": list(self.classes),
                "channels": self.channels, "input_size": list(self.input_size),
                "resize": "short-side-center-crop", "interpolation": "bilinear",
                "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "stats": self.stats, "augment": self.augment}

    @classmethod
    def from_record(cls, record, where="preprocessing record", error=DataError):
        """The Preprocess of a record read from a file, every field checked first (``error``
        names the field and the rule)."""
        filerules.check_preprocess(record, where, error)
        return cls(tuple(record["classes"]), record["channels"], tuple(record["input_size"]),
                   tuple(record["mean"]), tuple(record["std"]), record.get("stats", ""),
                   record.get("augment", "none"))

    @classmethod
    def of_dataset(cls, train_set):
        """The preprocessing of a built-in dataset's training split (gpucnn.data.datasets):
        its images are already the model's input size, so the resize never applies."""
        info = train_set.info
        augment = "random-crop-flip" if info.name == "cifar10" else "none"
        stats = (f"{info.name}'s training-set constants" if info.mean is not None
                 else f"computed from {info.name}'s training images")
        return cls(info.classes, info.input_shape[0], tuple(info.input_shape[1:]),
                   tuple(float(v) for v in train_set.mean),
                   tuple(float(v) for v in train_set.std), stats, augment)

    def describe(self):
        """A few words: channels, size, normalisation."""
        def numbers(values):
            return ", ".join(f"{v:.4g}" for v in values)
        return (f"{'grey' if self.channels == 1 else 'RGB'}, {self.input_size[0]}x"
                f"{self.input_size[1]} (HxW; other sizes resized to cover it, aspect kept, "
                f"and centre-cropped), mean ({numbers(self.mean)}) std ({numbers(self.std)})")

    @property
    def input_shape(self):
        return (self.channels, *self.input_size)

    def decode(self, path):
        """The image file ``path`` as a PIL image of this record's channels (DataError
        saying why a file is not a readable image)."""
        return decode(path, self.channels)

    def pixels(self, image):
        """uint8 (C, H, W) of an image file (a path) or a decoded image as the model sees
        it at evaluation (decoded, converted, resized and centre-cropped; not normalised)."""
        if isinstance(image, (str, bytes, os.PathLike)):
            image = self.decode(image)
        return to_array(resize_center(image, *self.input_size))

    def normalize(self, pixels):
        """float32 model input of uint8 images (N, C, H, W)."""
        return normalize(np.asarray(pixels, dtype=np.uint8), self.mean, self.std)
