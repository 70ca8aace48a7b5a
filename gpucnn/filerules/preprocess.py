"""The rule of a preprocessing record (format ``gpucnn-preprocess/1``, defined and documented
in :mod:`gpucnn.data.preprocess`): what a checkpoint or a metrics file of an image-folder run
says about its classes and how images become the model's input."""
from __future__ import annotations

from .limits import MAX_CLASSES
from .schema import Int, ListOf, Num, Obj, Str, Tuple, _Bad, check_metadata

__all__ = ["PREPROCESS_FORMAT", "PREPROCESS_RECORD", "check_preprocess"]

PREPROCESS_FORMAT = "gpucnn-preprocess/1"


class _Channels(Num):
    def __init__(self, lo, hi, positive=False):
        super().__init__(lo, hi, positive=positive)
        self.want = f"a list of 1 or 3 finite numbers in {'(' if positive else '['}{lo:g}, {hi:g}]"

    def check(self, value, field):
        if not (isinstance(value, list) and len(value) in (1, 3)
                and all(self.ok(v) for v in value)):
            raise _Bad(field, value, self.want)


PREPROCESS_RECORD = Obj({
    "format": Str(32, (PREPROCESS_FORMAT,)),
    "classes": ListOf(Str(255), "a list of class names (strings of at most 255 characters)"),
    "channels": Int(1, 3),
    "input_size": Tuple([Int(1, 65536)] * 2, "a list [H, W] of 2 ints in [1, 65536]"),
    "resize": Str(64, ("short-side-center-crop",)),
    "interpolation": Str(16, ("bilinear",)),
    "mean": _Channels(-1e6, 1e6), "std": _Channels(0.0, 1e6, positive=True),
    "stats": Str(256),
    "augment": Str(32, ("none", "random-resized-crop", "random-crop-flip")),
}, required=("format", "classes", "channels", "input_size", "resize", "interpolation", "mean",
             "std"), want="a preprocessing record (gpucnn-preprocess/1)")


def check_preprocess(record, where, error):
    """Raise ``error`` naming the field of ``record`` that breaks PREPROCESS_RECORD, or the
    relation between its fields (channels, mean and std of one length; 1 to MAX_CLASSES
    classes, none twice)."""
    check_metadata(record, where, error, schema=PREPROCESS_RECORD)
    c = record["channels"]
    if c not in (1, 3) or len(record["mean"]) != c or len(record["std"]) != c:
        raise error(f"{where}: 'channels' is {c} with {len(record['mean'])} mean and "
                    f"{len(record['std'])} std values: it must be 1 or 3, with as many of each")
    classes = record["classes"]
    if not 1 <= len(classes) <= MAX_CLASSES or len(set(classes)) != len(classes):
        raise error(f"{where}: 'classes' must list 1 to {MAX_CLASSES} distinct names, got "
                    f"{len(classes)} ({len(set(classes))} distinct)")
    return record
