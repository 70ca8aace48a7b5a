"""The schema of a checkpoint's metadata: the types, ranges, finiteness and allowed keys of every
field, and the model options this version builds. Later keys and file kinds are added here."""
from __future__ import annotations

import math

from .limits import MAX_CLASSES, MAX_COUNTER, ZIP_MAX_MEMBERS

# ---- the checkpoint metadata schema -----------------------------------------------------
def field_error(where, field, value, want):
    """The one-line error of a metadata field that breaks its rule."""
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return (f"{where}: metadata field {field!r} is {shown}: it must be {want} (an edited or "
            f"damaged checkpoint?); nothing was loaded")


class _Bad(Exception):
    def __init__(self, field, value, want):
        super().__init__(field)
        self.field, self.value, self.want = field, value, want


def _join(parent, key):
    return f"{parent}.{key}" if parent else str(key)


class Spec:
    """A rule of the schema; ``want`` says it in words. ``check(value, field)`` raises _Bad."""
    want = "a value"

    def check(self, value, field):
        if not self.ok(value):
            raise _Bad(field, value, self.want)

    def ok(self, value):
        return True


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Int(Spec):
    def __init__(self, lo=0, hi=MAX_COUNTER):
        self.lo, self.hi = lo, hi
        self.want = f"an int in [{lo}, {hi}]"

    def ok(self, v):
        return _is_int(v) and self.lo <= v <= self.hi


class Num(Spec):
    """A finite number >= lo (> lo when positive), <= hi (< hi when below)."""

    def __init__(self, lo=0.0, hi=None, positive=False, below=False):
        self.lo, self.hi, self.positive, self.below = lo, hi, positive, below
        self.want = f"a finite number {'>' if positive else '>='} {lo:g}" + (
            f" and {'<' if below else '<='} {hi:g}" if hi is not None else "")

    def ok(self, v):
        return (_is_num(v) and (v > self.lo if self.positive else v >= self.lo)
                and (self.hi is None or (v < self.hi if self.below else v <= self.hi)))


class Str(Spec):
    def __init__(self, max_chars=4096, choices=None):
        self.max_chars, self.choices = max_chars, choices
        self.want = (f"one of {', '.join(map(repr, choices))}" if choices
                     else f"a string of at most {max_chars} characters")

    def ok(self, v):
        return isinstance(v, str) and len(v) <= self.max_chars and (
            self.choices is None or v in self.choices)


class Bool(Spec):
    want = "true or false"

    def ok(self, v):
        return isinstance(v, bool)


class Opt(Spec):
    """None, or ``spec``."""

    def __init__(self, spec):
        self.spec = spec
        self.want = f"null or {spec.want}"

    def check(self, value, field):
        if value is not None:
            self.spec.check(value, field)


class Scalar(Spec):
    want = "a string, a finite number, true, false or null"

    def ok(self, v):
        return v is None or isinstance(v, (str, bool)) or _is_num(v)


class AnyJSON(Spec):
    """Anything the bounded parser let through (a record, compared or shown only)."""


class ListOf(Spec):
    def __init__(self, item, want=None):
        self.item = item
        self.want = want or f"a list of {item.want}"

    def check(self, value, field):
        if not isinstance(value, list):
            raise _Bad(field, value, self.want)
        for i, v in enumerate(value):
            self.item.check(v, f"{field}[{i}]")


class Tuple(Spec):
    """A list of exactly len(items) values; a wrong one is reported as the whole list."""

    def __init__(self, items, want):
        self.items, self.want = items, want

    def check(self, value, field):
        if not (isinstance(value, list) and len(value) == len(self.items)):
            raise _Bad(field, value, self.want)
        try:
            for i, (spec, v) in enumerate(zip(self.items, value)):
                spec.check(v, f"{field}[{i}]")
        except _Bad as bad:
            raise _Bad(bad.field, bad.value, bad.want) from None


class Obj(Spec):
    """An object with the ``fields`` (those in ``required`` must be there), and other keys
    only when ``extra`` says what their values are. ``whole``: a failure inside is reported
    as this object failing ``want``."""

    def __init__(self, fields=None, required=(), extra=None, want="an object", whole=False,
                 max_keys=65536):
        self.fields, self.required, self.extra = fields or {}, tuple(required), extra
        self.want, self.whole, self.max_keys = want, whole, max_keys

    def check(self, value, field):
        if not isinstance(value, dict) or len(value) > self.max_keys:
            raise _Bad(field, value, self.want)
        try:
            for key in self.required:
                if key not in value:
                    raise _Bad(_join(field, key), "missing",
                               f"present ({self.fields[key].want})")
            for key, v in value.items():
                spec = self.fields.get(key, self.extra)
                if spec is None:
                    allowed = ", ".join(sorted(self.fields))
                    raise _Bad(_join(field, key), v, f"absent: not a key of this object "
                                                     f"(known: {allowed})")
                spec.check(v, _join(field, key))
        except _Bad:
            if self.whole:
                raise _Bad(field, value, self.want) from None
            raise


class Model(Spec):
    """A model config: a name this version builds, its options (MODEL_OPTIONS) and the
    input shape."""
    want = "a model config {name, kwargs, input_shape}"

    def check(self, value, field):
        Obj({"name": Str(64, tuple(MODEL_OPTIONS)), "kwargs": Obj(extra=AnyJSON()),
             "input_shape": Tuple([Int(1, 65536)] * 3, "a list of 3 ints in [1, 65536]")},
            required=("name",)).check(value, field)
        Obj(MODEL_OPTIONS[value["name"]]).check(value.get("kwargs", {}), _join(field, "kwargs"))


# The options each model of gpucnn.models takes (a test keeps this in step with the builders'
# signatures): what a checkpoint may ask this version to build.
MODEL_OPTIONS = {
    "lenet5": {"num_classes": Int(1, MAX_CLASSES)},
    "alexnet": {"num_classes": Int(1, MAX_CLASSES), "towers": Bool(), "lrn": Bool(),
                "dropout": Num(0.0, 1.0, below=True)},
    "alexnet_cifar": {"num_classes": Int(1, MAX_CLASSES), "dropout": Num(0.0, 1.0, below=True)},
    "vgg11": {"num_classes": Int(1, MAX_CLASSES), "dropout": Num(0.0, 1.0, below=True)},
    "vgg16": {"num_classes": Int(1, MAX_CLASSES), "dropout": Num(0.0, 1.0, below=True)},
    # "sequential" (a model file's net) is added by gpucnn.filerules.netfile, whose layer
    # rules build on the ones here
}

_HISTORY_RECORD = Obj(
    {"epoch": Int(1), "lr": Num(positive=True), "train_loss": Num(), "seconds": Num(),
     "train_accuracy": Num(hi=1.0), "test_accuracy": Num(hi=1.0),
     "images_per_s": Opt(Num())},
    required=("epoch", "lr", "train_loss", "train_accuracy", "seconds", "images_per_s",
              "test_accuracy"),
    extra=Scalar(), want="an object of one epoch's record")

# The run configuration (gpucnn.train.TrainConfig as saved): compared by --resume, never
# acted on from the file; keys a later version records are scalars.
_CONFIG = Obj({
    "model": Str(4096), "dataset": Str(64), "epochs": Int(1), "batch_size": Int(1),
    "lr": Num(positive=True), "momentum": Num(), "nesterov": Bool(), "weight_decay": Num(),
    "optimizer": Str(16), "schedule": Str(64), "seed": Int(-2 ** 63, 2 ** 64),
    "backend": Opt(Str(64)), "data_dir": Opt(Str()), "download": Bool(),
    "precision": Opt(Str(16)),
    "limit": Opt(Int(1)), "test_limit": Opt(Int(1)), "checkpoint": Opt(Str()),
    "resume": Bool(), "overwrite": Bool(), "allow_config_change": Bool(),
    "save_retry_s": Num(), "metrics_json": Opt(Str()), "plot": Opt(Str()),
    "check_every": Opt(Int(1)), "model_kwargs": Obj(extra=Scalar()),
    # schema 4: image folders and --input
    "input": Opt(Tuple([Int(1, 65536)] * 3, "a list of 3 ints in [1, 65536]")),
    "mean": Opt(ListOf(Num(-1e6, 1e6))), "std": Opt(ListOf(Num(0.0, 1e6, positive=True))),
    "reinit": Bool()},  # an .onnx --model re-initialised (gpucnn.train_inputs)
    extra=Scalar())

# A trainer checkpoint's metadata, as gpucnn.runmeta.upgrade_metadata leaves it (the keys it
# must hold are runmeta's; the relations between them, e.g. a position within the epoch,
# are checked there against the run).
CHECKPOINT_METADATA = Obj({
    "schema_version": Int(1, 2 ** 31), "written_by": Str(256),
    "model": Model(),
    "model_extra": Obj(extra=Obj(extra=Int()), whole=True,
                       want="an object of layers' counters (ints >= 0)"),
    "optimizer": Obj({"type": Str(16, ("SGD", "Adam")), "lr": Num(positive=True),
                      "steps": Int()}, required=("type", "lr", "steps"),
                     want="an object with 'type', 'lr' and 'steps'"),
    "epoch": Int(), "batch_in_epoch": Int(),
    "epoch_sums": Tuple([Num(), Int(), Int(), Num()],
                        "a list of 4 numbers [loss * images, correct, images, seconds]"),
    "history": ListOf(_HISTORY_RECORD),
    "config": _CONFIG,
    "config_changes": ListOf(Obj(extra=AnyJSON()), "a list of objects"),
    "conv_algos": Obj({"setting": Str(64), "kind": Str(16),
                       "chosen": Obj(extra=Str(64), max_keys=ZIP_MAX_MEMBERS)}),
    # schema 4: the classes and preprocessing of an image-folder run (None otherwise), 5: of
    # every run; its rule is gpucnn.filerules.preprocess's
    "data": Opt(AnyJSON()),
    "data_parallel": Obj({"world_size": Int(1, 2 ** 31), "global_batch": Int(1)},
                         required=("world_size", "global_batch")),
})


def check_metadata(meta, where, error, fields=None, schema=CHECKPOINT_METADATA):
    """Raise ``error`` naming the first field of ``meta`` that breaks ``schema`` (its type,
    range, finiteness, allowed keys); ``fields``: check only these top-level ones (those a
    reader uses) where present."""
    try:
        if fields is None:
            schema.check(meta, "")
        else:
            for key in fields:
                if key in meta:
                    schema.fields[key].check(meta[key], key)
    except _Bad as bad:
        raise error(field_error(where, bad.field, bad.value, bad.want)) from None
