"""The rules for reading a file gpucnn did not just write: its limits, the bounded JSON parser,
the strict ``.npy`` header parser and the schema of a checkpoint's metadata, in one place.

Every loader (gpucnn.checkpoint, gpucnn.data, and the loaders later work adds) takes its
limits and rules from here, so a new file kind or a new checkpoint key is one edit here, not a
search through the readers. The readers apply the rules in this order: sizes first (declared
sizes against the real ones and against what the configuration implies, before anything is
allocated or built), then integrity (CRCs before any byte is parsed), then the parse (bounded),
then the schema and the values (after conversion to the dtype they are used in).

Nothing here imports the rest of gpucnn: each check takes ``where`` (the file, and the member
or field) and ``error`` (the project exception to raise: CheckpointError, DataError), and says
the rule broken in one line.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np

__all__ = ["JSON_MAX_BYTES", "JSON_MAX_DEPTH", "JSON_MAX_NUMBER_CHARS", "ZIP_MAX_MEMBERS",
           "ZIP_MAX_NAME_BYTES", "NPY_MAX_HEADER_BYTES", "NPY_MAX_NDIM", "ARRAY_DTYPES",
           "METADATA_DTYPES", "FLOAT_DTYPES", "MAX_CLASSES", "MAX_COUNTER",
           "DATA_MAX_BYTES", "generic_uncompressed_limit", "size_text", "parse_json",
           "NpyHeader", "parse_npy_header", "npy_array", "checked_values", "checked_product",
           "field_error", "MODEL_OPTIONS", "CHECKPOINT_METADATA", "check_metadata"]

# ---- limits -----------------------------------------------------------------------------
# JSON documents (a checkpoint's metadata): gpucnn's own nest 6 deep and hold numbers of at
# most 40 characters (a PCG64 state is a 39-digit int); a run's history is ~250 bytes an epoch.
JSON_MAX_BYTES = 16 << 20
JSON_MAX_DEPTH = 64
JSON_MAX_NUMBER_CHARS = 64  # far below Python's 4,300-digit int-string limit (a ValueError)

# Zip archives (.npz): a checkpoint of AlexNet under Adam holds 49 members.
ZIP_MAX_MEMBERS = 4096
ZIP_MAX_NAME_BYTES = 512
# Without an expectation of the state's size (a bare load_checkpoint), what the members may
# inflate to in all: what a stored archive holds (gpucnn writes stored members), or a
# compressed one whose zero-initialised optimizer state shrank to nothing, plus a margin.
GENERIC_INFLATE_FACTOR = 4
GENERIC_INFLATE_MARGIN = 16 << 20

# .npy members: NumPy writes headers of 128 bytes for the arrays gpucnn saves.
NPY_MAX_HEADER_BYTES = 4096
NPY_MAX_NDIM = 32
NPY_MAGIC = b"\x93NUMPY"
# Only the dtypes gpucnn writes: little-endian, no bool/complex/datetime/structured/object.
FLOAT_DTYPES = ("<f4", "<f8")
ARRAY_DTYPES = FLOAT_DTYPES + ("<i4", "<i8")
METADATA_DTYPES = ("|u1",)  # the UTF-8 JSON text of the metadata member

# Model options: AlexNet's classifier of 4096 x 100,000 float32 is 1.6 GB: past that, not ours.
MAX_CLASSES = 100_000
# Counters (epochs, steps, calls): exact in a float64, and no run reaches them.
MAX_COUNTER = 2 ** 53

# Dataset files (IDX, CIFAR-10 batches): the largest gpucnn reads is 150 MB; a header or a
# (sparse) file claiming more is refused before it is read.
DATA_MAX_BYTES = 2 << 30


def generic_uncompressed_limit(archive_bytes):
    """What the members of an archive of ``archive_bytes`` may inflate to, in all, when no
    expected state size bounds them."""
    return GENERIC_INFLATE_FACTOR * archive_bytes + GENERIC_INFLATE_MARGIN


_SIZE_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def size_text(n):
    """``n`` bytes for a message: "600 bytes", "4.0 TiB"."""
    i = min(int(math.log(max(n, 1), 1024)), len(_SIZE_UNITS) - 1)
    return f"{n} bytes" if i == 0 else f"{n / 1024 ** i:.1f} {_SIZE_UNITS[i]}"


# ---- JSON -------------------------------------------------------------------------------
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _json_depth(data):
    """The deepest nesting of brackets outside strings (json's C parser recurses per level:
    thousands of levels are a RecursionError, so the depth is measured before parsing)."""
    brackets = np.frombuffer(_JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS),
                             np.uint8)
    if brackets.size == 0:
        return 0
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


class _JsonRule(ValueError):
    pass


def _number(text, convert):
    if len(text) > JSON_MAX_NUMBER_CHARS:
        raise _JsonRule(f"a number of {len(text)} characters (at most "
                        f"{JSON_MAX_NUMBER_CHARS})")
    value = convert(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise _JsonRule(f"the number {text} is out of the float range")
    return value


def _constant(name):
    raise _JsonRule(f"{name} (only finite numbers)")


def _unique_object(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _JsonRule(f"the key {key[:80]!r} twice in one object")
        seen[key] = value
    return seen


def _no_surrogates(value):
    # A lone surrogate ("\ud800") decodes but cannot be encoded again: a later print or
    # write would raise UnicodeEncodeError far from the file.
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise _JsonRule("a string holding a lone surrogate") from None
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def parse_json(data, where, error, max_bytes=JSON_MAX_BYTES):
    """The JSON document in ``data`` (bytes, UTF-8), within the limits: at most ``max_bytes``
    and JSON_MAX_DEPTH levels, numbers of at most JSON_MAX_NUMBER_CHARS characters and
    finite, no NaN/Infinity, no key twice in an object, no lone surrogate."""
    data = bytes(data)
    if len(data) > max_bytes:
        raise error(f"{where}: {size_text(len(data))} of JSON, more than the "
                    f"{size_text(max_bytes)} allowed")
    depth = _json_depth(data)
    if depth > JSON_MAX_DEPTH:
        raise error(f"{where}: JSON nested {depth} levels deep (at most {JSON_MAX_DEPTH})")
    try:
        text = data.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_constant,
                           parse_int=lambda s: _number(s, int),
                           parse_float=lambda s: _number(s, float))
        _no_surrogates(value)
    except _JsonRule as e:
        raise error(f"{where}: refused JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise error(f"{where}: not valid JSON text: not UTF-8 ({e.reason} at byte "
                    f"{e.start})") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise error(f"{where}: not valid JSON text: {e}") from None
    return value


# ---- .npy headers -----------------------------------------------------------------------
class NpyHeader:
    """A checked .npy header: ``descr`` (one of the allowed), ``shape``, ``offset`` of the
    data and ``nbytes`` it declares."""

    def __init__(self, descr, shape, offset):
        self.descr, self.shape, self.offset = descr, shape, offset
        self.dtype = np.dtype(descr)
        self.nbytes = math.prod(shape) * self.dtype.itemsize  # Python ints: never wraps


# The header dict as NumPy writes it (a Python literal), read without ast or tokenize:
# strings without escapes, True/False, ints, tuples, and the punctuation between them.
_NPY_TOKEN = re.compile(r"\s*(?:('[^'\\]{0,64}')|(True|False)|(\d{1,20})|([{}():,\[\]]))")


def _npy_tokens(text, where, error):
    pos, tokens = 0, []
    while True:
        m = _NPY_TOKEN.match(text, pos)
        if not m:
            rest = text[pos:].strip()
            if rest == "":
                return tokens
            raise error(f"{where}: damaged .npy header: unexpected {rest[:20]!r}")
        s, b, i, p = m.groups()
        tokens.append(("str", s[1:-1]) if s else ("bool", b == "True") if b
                      else ("int", int(i)) if i else ("punct", p))
        pos = m.end()


def _npy_dict(tokens, where, error):
    def bad(what):
        raise error(f"{where}: damaged .npy header: {what}")

    def take(kind, value=None):
        if not tokens or tokens[0][0] != kind or (value is not None and tokens[0][1] != value):
            bad(f"expected {value or kind}, found "
                f"{tokens[0][1] if tokens else 'the end'!r}")
        return tokens.pop(0)[1]

    def shape():
        take("punct", "(")
        dims = []
        while tokens and tokens[0] != ("punct", ")"):
            dims.append(take("int"))
            if tokens and tokens[0] == ("punct", ","):
                tokens.pop(0)
            elif len(dims) == 1:
                bad("a one-element shape needs its comma")
        take("punct", ")")
        return tuple(dims)

    take("punct", "{")
    out = {}
    while tokens and tokens[0] != ("punct", "}"):
        key = take("str")
        take("punct", ":")
        if key in out:
            bad(f"the key {key!r} twice")
        kind = tokens[0] if tokens else ("end", None)
        if kind == ("punct", "["):
            raise error(f"{where}: a structured dtype refused (gpucnn writes plain arrays)")
        out[key] = (shape() if kind == ("punct", "(") else
                    take(kind[0]) if kind[0] in ("str", "bool", "int") else bad("a value"))
        if tokens and tokens[0] == ("punct", ","):
            tokens.pop(0)
    take("punct", "}")
    if tokens:
        bad("text after the header dict")
    return out


def parse_npy_header(buf, where, error, allowed=ARRAY_DTYPES):
    """The :class:`NpyHeader` at the start of the .npy bytes ``buf`` (whose integrity was
    checked first): magic, version 1.0/2.0/3.0, a header of at most NPY_MAX_HEADER_BYTES
    holding exactly descr (one of ``allowed``), fortran_order False and a shape of at most
    NPY_MAX_NDIM non-negative ints."""
    mv = memoryview(buf)
    if len(mv) < 10 or bytes(mv[:6]) != NPY_MAGIC:
        raise error(f"{where}: not a .npy array (no \\x93NUMPY magic)")
    version = (mv[6], mv[7])
    if version == (1, 0):
        length, start = int.from_bytes(mv[8:10], "little"), 10
    elif version in ((2, 0), (3, 0)) and len(mv) >= 12:
        length, start = int.from_bytes(mv[8:12], "little"), 12
    else:
        raise error(f"{where}: unsupported .npy version {version[0]}.{version[1]}")
    if length > NPY_MAX_HEADER_BYTES:
        raise error(f"{where}: .npy header of {length} bytes (at most "
                    f"{NPY_MAX_HEADER_BYTES})")
    if start + length > len(mv):
        raise error(f"{where}: .npy header of {length} bytes runs past the member's "
                    f"{len(mv)} bytes")
    try:
        text = bytes(mv[start:start + length]).decode("ascii")
    except UnicodeDecodeError:
        raise error(f"{where}: damaged .npy header: not ASCII text") from None
    header = _npy_dict(_npy_tokens(text, where, error), where, error)
    if set(header) != {"descr", "fortran_order", "shape"}:
        raise error(f"{where}: .npy header keys {sorted(header)}; expected exactly descr, "
                    f"fortran_order, shape")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if isinstance(descr, str) and descr.lstrip("|<>=").startswith("O"):
        raise error(f"{where}: an object dtype (pickled Python objects): refused, never "
                    f"unpickled")
    if descr not in allowed:
        raise error(f"{where}: dtype {descr!r} refused (allowed here: {', '.join(allowed)}; "
                    f"gpucnn writes no other)")
    if fortran is not False:
        raise error(f"{where}: fortran_order must be False (gpucnn writes C order), got "
                    f"{fortran!r}")
    if not isinstance(shape, tuple) or len(shape) > NPY_MAX_NDIM:
        raise error(f"{where}: .npy shape {shape!r}: expected a tuple of at most "
                    f"{NPY_MAX_NDIM} ints")
    return NpyHeader(descr, shape, start + length)


def npy_array(buf, where, error, allowed=ARRAY_DTYPES):
    """The array in .npy bytes ``buf`` (a view of it, no copy), after its header is parsed and
    its shape and dtype are found to account exactly for the bytes that follow."""
    h = parse_npy_header(buf, where, error, allowed)
    have = len(buf) - h.offset
    if h.nbytes != have:
        raise error(f"{where}: header declares shape {h.shape} {h.dtype} = "
                    f"{size_text(h.nbytes)}, but the member holds {size_text(have)} of data "
                    f"(crafted or damaged); nothing was allocated")
    count = h.nbytes // h.dtype.itemsize
    return np.frombuffer(buf, h.dtype, count, h.offset).reshape(h.shape)


# ---- values -----------------------------------------------------------------------------
def checked_values(array, where, error, dtype=None):
    """``array`` as ``dtype`` (the dtype its values are used in; None: as it is), refused
    unless every float is finite *after* the conversion (1e39 is finite in float64, inf in
    float32)."""
    if dtype is not None:
        dtype = np.dtype(dtype)
        if array.dtype.kind != dtype.kind:
            raise error(f"{where}: dtype {array.dtype} where {dtype} values are used "
                        f"(gpucnn writes {dtype} here)")
        with np.errstate(over="ignore"):
            array = array.astype(dtype, copy=False)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise error(f"{where} holds NaN or inf" + (f" (as {array.dtype})" if dtype else "")
                    + "; nothing was loaded")
    return array


def checked_product(dims, itemsize, limit, where, error, what="data"):
    """The bytes ``dims`` of ``itemsize`` take, computed in Python ints (never wrapping), and
    refused past ``limit`` before anything is allocated."""
    need = math.prod(int(d) for d in dims) * itemsize
    if need > limit:
        raise error(f"{where}: the header declares {'x'.join(map(str, dims))} = "
                    f"{size_text(need)} of {what}, more than the {size_text(limit)} "
                    f"allowed; nothing was read")
    return need


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
    want = f"a model config {{name, kwargs, input_shape}}"

    def check(self, value, field):
        Obj({"name": Str(64, tuple(MODEL_OPTIONS)), "kwargs": Obj(extra=Scalar()),
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
    "model": Str(64), "dataset": Str(64), "epochs": Int(1), "batch_size": Int(1),
    "lr": Num(positive=True), "momentum": Num(), "nesterov": Bool(), "weight_decay": Num(),
    "optimizer": Str(16), "schedule": Str(64), "seed": Int(-2 ** 63, 2 ** 64),
    "backend": Opt(Str(64)), "data_dir": Opt(Str()), "download": Bool(),
    "limit": Opt(Int(1)), "test_limit": Opt(Int(1)), "checkpoint": Opt(Str()),
    "resume": Bool(), "overwrite": Bool(), "allow_config_change": Bool(),
    "save_retry_s": Num(), "metrics_json": Opt(Str()), "plot": Opt(Str()),
    "check_every": Opt(Int(1)), "model_kwargs": Obj(extra=Scalar())}, extra=Scalar())

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
