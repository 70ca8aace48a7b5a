"""A seeded fuzzer of the files gpucnn reads (issue 22, part 7): mutants of a checkpoint the
trainer wrote, of IDX and CIFAR-10 dataset files and of checkpoint lock files, each loaded
through every path that reads that kind of file, each outcome classified.

Outcomes (OUTCOMES): the loader raised the project's error for that file kind with a one-line
message ("clean error"); it returned something that passed every check -- equal to the
original where the mutation changed nothing ("loaded"); the CLI exited 2 with one line on
stderr and no traceback ("refused"). Failures (FAILURES): any other exception, a multi-line
message, a traceback, a result that breaks the rules ("accepted invalid": a non-finite weight,
a dtype gpucnn never writes, a duplicate zip member, a lock taken while another holds it), a
call over TIMEOUT_S ("hang"), or memory over MEMORY_LIMIT: tracemalloc's peak or the process's
peak RSS above what it was before the call, or a MemoryError ("memory").

Every case is reproducible from (seed, kind, case index): its mutation is drawn from
``numpy.random.default_rng([seed, KIND_IDS[kind], index])`` on a base built the same way every
run (the training is seeded; the metadata's timings and paths are fixed before it is written).

A campaign runs in its own process (``python tests/fuzzing.py``; tests/test_fuzz.py starts one),
so that a signal, a hang in C code or an address-space limit ends that process, not the test
run: it writes the case it is on to ``--progress`` before each case, and its verdicts as JSON.
The driver uses only what gpucnn offers (a missing function is a path not run), so the same
campaign measures older commits too (``PYTHONPATH=<old tree> python tests/fuzzing.py``).

    python tests/fuzzing.py --seed S                     # the default campaign, a table
    python tests/fuzzing.py --seed S --case checkpoint:17  # one case, with its traceback
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import inspect
import io
import json
import os
import resource
import shutil
import signal
import stat
import struct
import sys
import tempfile
import time
import tracemalloc
import traceback
import warnings
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLEAN, LOADED, REFUSED = "clean error", "loaded", "refused"
OTHER, INVALID, HANG, MEMORY = "other exception", "accepted invalid", "hang", "memory"
OUTCOMES = (CLEAN, LOADED, REFUSED, OTHER, INVALID, HANG, MEMORY)
FAILURES = (OTHER, INVALID, HANG, MEMORY)

TIMEOUT_S = 20.0            # per loader call; the slowest legitimate one takes ~0.1 s
MEMORY_LIMIT = 64 << 20     # per loader call, over what the process held before it
ADDRESS_SPACE = 8 << 30     # the campaign process's ceiling: a real bomb stops here
KIND_IDS = {"checkpoint": 1, "idx": 2, "cifar": 3, "lock": 4}
# The CI campaign; the slow test runs SLOW_FACTOR times as many cases of each kind.
DEFAULT_COUNTS = {"checkpoint": 220, "idx": 320, "cifar": 160, "lock": 120}
SLOW_FACTOR = 10

# The synthetic Fashion-MNIST split the base checkpoint is trained on (and resumed with).
TRAIN_ARGS = ["--backend", "numpy", "--limit", "64", "--test-limit", "32", "--batch-size",
              "32", "--no-progress"]


# ---- mutants ------------------------------------------------------------------------------
@dataclass
class Mutant:
    """One hostile file: ``data`` (its bytes) or ``make(path)`` (builds it: a sparse file, a
    directory, a FIFO, a link). ``noop``: the content is the original's in another encoding,
    so every path must load it and get the original. ``must_refuse``: the loading paths that
    must refuse it ("*": all), by a rule of issue 22 rather than by the checks of one path."""
    what: str
    data: bytes | None = None
    make: object = None
    noop: bool = False
    must_refuse: frozenset = frozenset()
    role: str = ""          # idx: "images" or "labels"; lock: "held" or "free"
    protect: str | None = None  # lock: a file (a link's target) that must stay as it was

    def write(self, path):
        if self.make is not None:
            self.make(path)
        else:
            Path(path).write_bytes(self.data)


ALL = frozenset("*")
# The paths that read a checkpoint's optimizer state (verify reads the weights only).
OPTIM_READERS = frozenset({"load_checkpoint", "resume", "cli train --resume"})


def _refuses(mutant, path_name):
    return "*" in mutant.must_refuse or path_name in mutant.must_refuse


def _choice(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def flip_bytes(rng, data, lo=0, hi=None, count=None):
    """``data`` with 1-8 bytes in [lo, hi) XORed with a non-zero byte."""
    buf = bytearray(data)
    hi = len(buf) if hi is None else min(hi, len(buf))
    if hi <= lo:
        return bytes(buf), "no byte to flip"
    at = sorted(int(i) for i in rng.integers(lo, hi, count or int(rng.integers(1, 9))))
    for i in at:
        buf[i] ^= int(rng.integers(1, 256))
    return bytes(buf), f"bytes flipped at {at[:8]}"


def truncate(rng, data):
    n = len(data)
    cut = _choice(rng, [0, 1, int(rng.integers(n)), n - int(rng.integers(1, 65)),
                        n - int(rng.integers(1, min(n, 4096) + 1))])
    cut = max(0, min(cut, n - 1))
    return data[:cut], f"truncated to {cut} of {n} bytes"


def extend(rng, data):
    junk = _choice(rng, [rng.bytes(int(rng.integers(1, 4097))), b"\x00" * int(rng.integers(1, 64)),
                         data[-int(rng.integers(1, 200)):]])
    return data + junk, f"{len(junk)} bytes appended"


def byte_level(rng, data):
    """A generic corruption of ``data`` (bytes flipped, cut, appended, zeroed, spliced)."""
    how = int(rng.integers(6))
    if how == 0:
        out, what = flip_bytes(rng, data)
    elif how == 1:
        out, what = truncate(rng, data)
    elif how == 2:
        out, what = extend(rng, data)
    elif how == 3:
        a = int(rng.integers(len(data)))
        b = min(len(data), a + int(rng.integers(1, 512)))
        out, what = data[:a] + b"\x00" * (b - a) + data[b:], f"bytes {a}:{b} zeroed"
    elif how == 4:
        a = int(rng.integers(len(data)))
        piece = data[a:a + int(rng.integers(1, 256))]
        b = int(rng.integers(len(data)))
        out, what = data[:b] + piece + data[b:], f"{len(piece)} bytes of {a} inserted at {b}"
    else:
        out, what = rng.bytes(len(data)), "random bytes of the same length"
    return out, what


# ---- checkpoints: the zip, its .npy members, the metadata JSON ---------------------------
FIXED_TIME = (2024, 1, 1, 0, 0, 0)


def write_zip(members, method=zipfile.ZIP_STORED, zip64=True, level=None):
    """A zip of ``members`` [(name, bytes)] as the trainer writes it (force_zip64 local
    headers), with a fixed timestamp so that the same members give the same bytes; names
    may repeat."""
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name" is the point
        with zipfile.ZipFile(out, "w", allowZip64=True) as zf:
            for name, data in members:
                info = zipfile.ZipInfo(name, FIXED_TIME)
                info.compress_type = method
                if level is not None:
                    info.compress_level = level
                with zf.open(info, "w", force_zip64=zip64) as f:
                    f.write(data)
    return out.getvalue()


def read_members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def npy_bytes(array, version=None):
    # Writing only: the mutants include object arrays (pickled members) on purpose, to check
    # that every reader refuses them (np.load(..., allow_pickle=False) in gpucnn); nothing
    # here or in gpucnn ever loads with pickling allowed.
    out = io.BytesIO()
    np.lib.format.write_array(out, array, version=version, allow_pickle=True)
    return out.getvalue()


def split_npy(data):
    """(header dict text, the data bytes) of a .npy member NumPy wrote (version 1.0)."""
    n = struct.unpack("<H", data[8:10])[0]
    return data[10:10 + n].decode("latin-1"), data[10 + n:]


def join_npy(header_text, body, version=(1, 0), length=None):
    """.npy bytes of ``header_text`` (padded as NumPy pads it) and ``body``; ``length``: a
    header-length field that lies."""
    text = header_text.rstrip("\n ")
    pad = 64 - (10 + len(text) + 1) % 64
    head = (text + " " * (pad % 64) + "\n").encode("latin-1")
    if version == (1, 0):
        field_ = struct.pack("<H", min(length if length is not None else len(head), 0xFFFF))
    else:
        field_ = struct.pack("<I", length if length is not None else len(head))
    return b"\x93NUMPY" + bytes(version) + field_ + head + body


def zip_fields(data):
    """[(name, offset, struct format)] of the header fields of a zip NumPy/zipfile wrote:
    the end record, each central directory entry and each local header (with a zip64 extra
    field's sizes)."""
    eocd = data.rfind(b"PK\x05\x06")
    fields = [(f"end record {n}", eocd + off, fmt) for n, off, fmt in
              (("entries on disk", 8, "<H"), ("entries", 10, "<H"), ("directory size", 12, "<I"),
               ("directory offset", 16, "<I"), ("comment length", 20, "<H"))]
    pos = struct.unpack_from("<I", data, eocd + 16)[0]
    while data[pos:pos + 4] == b"PK\x01\x02":
        nlen, xlen, clen = struct.unpack_from("<HHH", data, pos + 28)
        name = data[pos + 46:pos + 46 + nlen].decode("utf-8", "replace")
        fields += [(f"directory {name} {n}", pos + off, fmt) for n, off, fmt in
                   (("flags", 8, "<H"), ("method", 10, "<H"), ("crc", 16, "<I"),
                    ("compressed size", 20, "<I"), ("size", 24, "<I"),
                    ("name length", 28, "<H"), ("extra length", 30, "<H"),
                    ("local offset", 42, "<I"))]
        local = struct.unpack_from("<I", data, pos + 42)[0]
        fields += [(f"local {name} {n}", local + off, fmt) for n, off, fmt in
                   (("flags", 6, "<H"), ("method", 8, "<H"), ("crc", 14, "<I"),
                    ("compressed size", 18, "<I"), ("size", 22, "<I"),
                    ("name length", 26, "<H"), ("extra length", 28, "<H"))]
        lnlen, lxlen = struct.unpack_from("<HH", data, local + 26)
        extra = local + 30 + lnlen
        if lxlen >= 20 and data[extra:extra + 2] == b"\x01\x00":
            fields += [(f"local {name} zip64 size", extra + 4, "<Q"),
                       (f"local {name} zip64 compressed size", extra + 12, "<Q")]
        pos += 46 + nlen + xlen + clen
    return fields


def _field_value(rng, name, old, fmt):
    top = {"<H": 0xFFFF, "<I": 0xFFFFFFFF, "<Q": 2 ** 64 - 1}[fmt]
    if name.endswith("flags"):
        return _choice(rng, [old | 0x1, old | 0x8, old | 0x40, old | 0x800, old | 0x2000,
                             top, 0])
    if name.endswith("method"):
        return _choice(rng, [8, 12, 14, 1, 9, 93, 99, 0, top])
    return _choice(rng, [0, 1, top, top >> 1, (old + 1) & top, (old - 1) & top,
                         (old * 2) & top, old ^ (1 << int(rng.integers(8 * struct.calcsize(fmt)))),
                         int(rng.integers(top, dtype=np.uint64)) & top])


def zip_field(rng, data):
    name, off, fmt = _choice(rng, zip_fields(data))
    old = struct.unpack_from(fmt, data, off)[0]
    new = _field_value(rng, name, old, fmt)
    buf = bytearray(data)
    struct.pack_into(fmt, buf, off, new)
    # Encrypted in the central directory, which the readers act on, must be refused; the
    # same bits in a local header alone change nothing that is read (the CRC still holds).
    refuse = ALL if name.startswith("directory") and name.endswith("flags") and new & 0x41 \
        else frozenset()
    return bytes(buf), f"zip field {name}: {old:#x} -> {new:#x}", refuse


# Header values a crafted .npy may hold: dtypes gpucnn never writes, shapes whose product
# wraps, is negative or does not fit, and text the header parser must survive.
DESCRS = ["'<f8'", "'>f4'", "'<f2'", "'<c8'", "'<c16'", "'|b1'", "'<M8[s]'", "'<m8[D]'",
          "'|O'", "'<U4'", "'|S8'", "'|V4'", "'<i4'", "'<u4'", "'|u1'", "'f4'", "'float32'",
          "'<f4 '", "''", "'<f999999'", "'<f4' '<f4'", "[('a', '<f4')]", "None", "1",
          "'\\x00'", "'\\u2603'", "b'<f4'"]
SHAPES = ["()", "(0,)", "(-1,)", "(1,)", "(2**31,)", "(4294967296, 4294967296)",
          "(65537, 65536, 4294901761)", "(18446744073709551616,)", "(1.5,)", "('a',)",
          "((1,),)", "(1,) * 40", "[150]", "(150)", "(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, "
          "1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 150)", "(99999999999999999999,)",
          "(" + "1, " * 2000 + ")", "(True,)", "(0x10,)", "(1_0,)"]
FORTRANS = ["True", "1", "0", "'False'", "None", "Flase"]
HEADER_TEXTS = ["{}", "{'descr': '<f4'}", "{", "}", "", "{'descr': '<f4', 'fortran_order': "
                "False, 'shape': (1,), 'shape': (1,)}", "{'descr': '<f4', 'fortran_order': False, "
                "'shape': (1,), 'extra': 1}", "(" * 5000, "{'descr': '" + "\\" * 100 + "'}",
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} junk",
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }" + "\x00" * 10,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (__import__('os').getpid(),)}",
                "[" * 100 + "]" * 100,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1e400,)}"]


def _dtype_variant(rng, arr):
    """``arr`` converted to a dtype gpucnn writes or one it never writes, written properly;
    (bytes, what, must be refused)."""
    target = _choice(rng, ["<f8", "<f8 1e39", ">f4", "<f2", "<c8", "|b1", "<i4", "<i8", "|u1",
                           "<M8[s]", "<U3", "object", "structured", "fortran", "<f4 nan",
                           "<f4 inf", "<c8 nan"])
    if target == "object":
        new = np.empty(arr.shape, object)
        new[...] = 1.0
    elif target == "structured":
        new = np.zeros(arr.shape, [("a", "<f4")])
    elif target == "fortran":
        two_d = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else \
            arr.reshape(2, -1) if arr.size % 2 == 0 else arr.reshape(1, -1)
        new = np.asfortranarray(two_d)
        # NumPy writes fortran_order True only for an array that is not also C-contiguous:
        # a (1, n) array is written as plain C order, a reshape that only the paths that
        # know the model's shapes refuse (and their checks catch)
        if new.flags.c_contiguous:
            return npy_bytes(new), "array reshaped to (1, n)", False
    elif " " in target:
        dt, value = target.split()
        new = arr.astype(dt)
        new.reshape(-1)[int(rng.integers(new.size))] = float(value) if dt != "<c8" \
            else complex(float(value), 0)
    else:
        new = arr.astype(target)
    finite_ok = target in ("<f8", "<i4", "<i8")
    return npy_bytes(new), f"array as {target}", not finite_ok


def npy_level(rng, name, data, is_metadata):
    """A mutation of one .npy member (header dict, header length, version, magic, data, or
    the array rewritten in another dtype); (bytes, what, must be refused)."""
    header, body = split_npy(data)
    how = int(rng.integers(9 if not is_metadata else 8))
    if how == 0:
        new = _choice(rng, DESCRS)
        text = header.replace(header[header.index("'descr'"):].split(",")[0],
                              f"'descr': {new}", 1)
        return join_npy(text, body), f"descr -> {new}", frozenset()
    if how == 1:
        new = _choice(rng, SHAPES)
        start = header.index("'shape': ") + len("'shape': ")
        end = header.index(")", start) + 1
        return join_npy(header[:start] + new + header[end:], body), f"shape -> {new[:40]}", \
            frozenset()
    if how == 2:
        new = _choice(rng, FORTRANS)
        return join_npy(header.replace("False", new, 1), body), f"fortran_order -> {new}", \
            frozenset()
    if how == 3:
        text = _choice(rng, HEADER_TEXTS)
        return join_npy(text, body), f"header text -> {text[:40]!r}", frozenset()
    if how == 4:
        raw = bytearray(data)
        end = 10 + struct.unpack("<H", data[8:10])[0]
        out, what = flip_bytes(rng, raw, 6, end)
        return out, f"header {what}", frozenset()
    if how == 5:
        length = _choice(rng, [0, 1, 9, len(header) - 1, len(header) + 1, 4097, 0xFFFF,
                               len(data)])
        version = _choice(rng, [(1, 0), (2, 0)])
        return join_npy(header, body, version, length), f"header length field {length} " \
            f"(v{version[0]})", frozenset()
    if how == 6:
        version = _choice(rng, [(2, 0), (3, 0), (0, 0), (1, 1), (4, 0), (255, 255)])
        return join_npy(header, body, version), f"version {version}", frozenset()
    if how == 7:
        n = int(rng.integers(1, 64))
        if rng.integers(2):
            return data[:-n], f"data cut by {n} bytes", frozenset()
        return data + rng.bytes(n), f"data extended by {n} bytes", frozenset()
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    out, what, refuse = _dtype_variant(rng, arr)
    return out, what, ALL if refuse else frozenset()


# Raw JSON a crafted metadata may hold where a value is: non-finite and over-long numbers,
# nesting past any parser's recursion, lone surrogates, wrong types.
HOSTILE_JSON = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 70,
                "1" + "0" * 5000, "-1", "-9223372036854775809", "0.5", "0", "true", "null",
                '""', '"x"', "[]", "{}", '"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"', "1e-400",
                "9007199254740993", str(2 ** 64), '"' + "A" * 100000 + '"', "[" * 65 + "]" * 65,
                "[" * 1000 + "]" * 1000, "[" * 100000 + "]" * 100000,
                '{"a":' * 5000 + "1" + "}" * 5000, "[1" + ",1" * 50000 + "]"]
# Hostile values for the fields the readers act on.
SEMANTIC = {
    ("model", "kwargs", "num_classes"): [0, -1, 10 ** 9, 100000, 100001, 11, 9, 10.0, "10", True,
                                         2 ** 63],
    ("model", "name"): ["alexnet", "alexnet_cifar", "resnet", "", "LENET5", "__import__"],
    ("model", "input_shape"): [[1, 28], [3, 32, 32], [1, 28, 28, 1], [0, 28, 28],
                               [1, 2 ** 31, 28], [1, -28, 28], "1x28x28"],
    ("model", "kwargs"): [{"num_classes": 10, "dropout": 0.5}, {"bogus": 1}, [],
                          {"num_classes": 10, "towers": True}],
    ("conv_algos", "kind"): ["cuda", "emu", "numpy", "", 1],
    ("conv_algos", "setting"): ["direct", "winograd", "bogus", ""],
    ("conv_algos", "chosen"): [{}, [], {"forward N32 C1 28x28 F6 k5x5 s1x1 p2,2,2,2 d1x1 g1": 1}],
    ("epoch",): [-1, 0, 2, 2 ** 53 + 1, 10 ** 30, 1.5, "1"],
    ("batch_in_epoch",): [-1, 1, 2, 3, 10 ** 12],
    ("optimizer", "steps"): [-1, 0, 10 ** 20, 1.5],
    ("optimizer", "type"): ["Adam", "RMSprop", ""],
    ("optimizer", "lr"): [0, -0.05, 1e308, "0.05"],
    ("schema_version",): [0, 1, 2, 4, -1, "3", 3.0, True, 2 ** 40],
    ("epoch_sums",): [[0.0, 0, 0], [1.0, 0, 32, 0.0], [0.0, -1, 0, 0.0], [0.0, 64, 32, 0.0],
                      [1e308, 0, 0, 0.0]],
    ("history",): [[], [{}], "x", [{"epoch": 1}]],
    ("model_extra",): [{"0": {"calls": -1}}, {"0": {"calls": 10 ** 30}}, {"0": 1}, []],
    ("config", "batch_size"): [0, -32, 16, 2 ** 40],
    ("config", "seed"): [-1, 2 ** 70, 1],
}


def _conv_choice(rng, meta):
    """Saved convolution algorithms this version cannot run for that layer (or cannot
    parse), as a SEMANTIC-like (path, value)."""
    chosen = meta.get("conv_algos", {}).get("chosen", {})
    if not chosen:
        return ("conv_algos", "chosen"), {}
    key = _choice(rng, sorted(chosen))
    algo = _choice(rng, ["winograd", "wide", "wide_fused", "implicit", "im2col", "fft",
                         "bogus", "", "direct"])
    new = dict(chosen)
    if rng.integers(4) == 0:
        new[key.replace("k5x5", "k3x3")] = algo
    else:
        new[key] = algo
    return ("conv_algos", "chosen"), new


def _json_paths(value, prefix=()):
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _json_paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _json_paths(v, prefix + (i,))
    return out


def _set(doc, path, value):
    node = doc
    for p in path[:-1]:
        node = node[p]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DELETE = object()
_MARK = "\x00fuzz-mark\x00"


def metadata_level(rng, envelope_text):
    """A mutation of the metadata JSON text; (text bytes, what, must be refused)."""
    envelope = json.loads(envelope_text)
    meta = envelope["metadata"]
    how = int(rng.integers(6))
    if how == 0:  # a raw hostile token anywhere in the document
        path = _choice(rng, _json_paths(envelope)[1:])
        token = _choice(rng, HOSTILE_JSON)
        _set(envelope, path, _MARK)
        text = json.dumps(envelope).replace(json.dumps(_MARK), token)
        refuse = ALL if token in HOSTILE_JSON[:7] or "ud8" in token or "udf" in token \
            or token.startswith(("[" * 100, '{"a":')) else frozenset()
        return text.encode(), f"{'.'.join(map(str, path))} = {token[:24]}", refuse
    if how == 1:  # a value the resume path acts on
        if rng.integers(3) == 0:
            path, value = _conv_choice(rng, meta)
        else:
            path = _choice(rng, sorted(SEMANTIC, key=str))
            value = _choice(rng, SEMANTIC[path])
        try:
            _set(meta, path, value)
        except (KeyError, IndexError, TypeError):
            return envelope_text.encode(), "no such field: unchanged", frozenset()
        return json.dumps(envelope).encode(), f"{'.'.join(map(str, path))} = " \
            f"{json.dumps(value)[:60]}", frozenset()
    if how == 2:  # a key removed, or one added
        paths = [p for p in _json_paths(meta)[1:] if isinstance(p[-1], str)]
        if rng.integers(2) and paths:
            path = _choice(rng, paths)
            _set(meta, path, _DELETE)
            return json.dumps(envelope).encode(), f"{'.'.join(map(str, path))} removed", \
                frozenset()
        dicts = [p for p in _json_paths(meta) if isinstance(_get(meta, p), dict)]
        path = _choice(rng, dicts) + (_choice(rng, ["extra", "", "__class__", "é" * 300]),)
        _set(meta, path, _choice(rng, [1, "x", None, [], {"a": {"b": 1}}]))
        return json.dumps(envelope).encode(), f"{'.'.join(map(str, path))} added", frozenset()
    text = json.dumps(envelope)
    if how == 3:  # a key twice in one object
        at = text.index('"epoch":')
        return (text[:at] + '"epoch": 99, ' + text[at:]).encode(), "'epoch' twice", ALL
    if how == 4:  # the envelope
        env = _choice(rng, ['{"format": "gpucnn-checkpoint", "version": 2, "metadata": {}}',
                            '{"format": "gpucnn-checkpoint", "version": 1, "metadata": []}',
                            '{"format": "x", "version": 1}', "[]", '"text"', "null", "",
                            '{"format": "gpucnn-checkpoint", "version": 1, "metadata": '
                            + "[" * 60 + "]" * 60 + "}",
                            "\ufeff" + text, text + " junk", " " * 1000 + text])
        return env.encode(), f"envelope {env[:40]!r}", frozenset()
    data = text.encode()
    out, what = byte_level(rng, data) if rng.integers(2) else \
        (data[:20] + b"\xff\xfe\xc0\x80" + data[20:], "invalid UTF-8")
    return out, f"JSON text {what}", frozenset()


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def metadata_member(text_bytes, dtype=np.uint8):
    return npy_bytes(np.frombuffer(text_bytes, np.uint8).astype(dtype))


def zip_structure(rng, members):
    """Members duplicated, added, dropped, renamed, reordered, deflated, bombed; the
    archive is rewritten, every CRC right. (members, what, noop, must be refused, method)."""
    how = int(rng.integers(9))
    i = int(rng.integers(len(members)))
    name, data = members[i]
    if how == 0:
        arr = np.load(io.BytesIO(data)) if name != "__metadata__.npy" else None
        copy = data if arr is None or rng.integers(2) else npy_bytes(np.full_like(arr, 0.5))
        at = int(rng.integers(len(members) + 1))
        return members[:at] + [(name, copy)] + members[at:], f"{name} twice", False, ALL
    if how == 1:
        extra = _choice(rng, ["evil.txt", "../../evil.npy", "/abs.npy", "model/extra.npy",
                              ".npy", "x" * 600 + ".npy", "nul\x00.npy", "__metadata__",
                              "model/0.weight", "dir/", "é.npy"])
        body = _choice(rng, [npy_bytes(np.zeros(3, np.float32)), rng.bytes(100), b""])
        return members + [(extra, body)], f"extra member {extra[:40]!r}", False, frozenset()
    if how == 2:
        return members[:i] + members[i + 1:], f"{name} dropped", False, frozenset()
    if how == 3:
        new = _choice(rng, ["model/0.weight.NPY", "model/0.bias.npy", name.upper(),
                            "model//0.weight.npy", name + ".npy"])
        return members[:i] + [(new, data)] + members[i + 1:], f"{name} renamed {new}", \
            False, frozenset()
    if how == 4:
        order = rng.permutation(len(members))
        return [members[j] for j in order], "members reordered", True, frozenset()
    if how == 5:
        return members, "every member deflated", True, frozenset()
    if how == 6:  # many members (zip directory bounds)
        n = _choice(rng, [100, 4097, 5000])
        tiny = npy_bytes(np.zeros(1, np.float32))
        return members + [(f"m/{k}.npy", tiny) for k in range(n)], f"{n} extra members", \
            False, frozenset()
    if how == 7:  # a deflate bomb in a member: zeros whose header says what they are
        mib = _choice(rng, [1, 8, 17, 40])
        target = _choice(rng, [name, "__metadata__.npy"])
        bomb = _zeros_npy(mib, metadata=target == "__metadata__.npy")
        return [(n, bomb if n == target else d) for n, d in members], \
            f"{target} = {mib} MiB of zeros (deflated)", False, frozenset()
    # the metadata padded with whitespace (valid JSON, the same content): a noop
    meta = dict(members)["__metadata__.npy"]
    text = np.load(io.BytesIO(meta)).tobytes()
    pad = int(rng.integers(1, 4)) * 1000
    return [(n, metadata_member(text + b" " * pad) if n == "__metadata__.npy" else d)
            for n, d in members], f"metadata padded by {pad} spaces", True, frozenset()


_ZEROS = {}


def _zeros_npy(mib, metadata=False):
    key = (mib, metadata)
    if key not in _ZEROS:
        n = mib << 20
        arr = (np.full(n, ord(" "), np.uint8) if metadata else np.zeros(n // 4, np.float32))
        _ZEROS[key] = npy_bytes(arr)
    return _ZEROS[key]


def checkpoint_mutant(rng, base):
    """One mutant of the base checkpoint (its bytes ``base``)."""
    members = read_members(base)
    level = _choice(rng, ["bytes", "bytes", "field", "field", "structure", "npy", "npy",
                          "metadata", "metadata", "metadata"])
    deflated = bool(rng.integers(4) == 0)  # a quarter of the mutants start deflated
    method = zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED
    source = write_zip(members, method) if deflated else base
    tag = " (deflated archive)" if deflated else ""
    if level == "bytes":
        out, what = byte_level(rng, source)
        return Mutant(f"zip bytes: {what}{tag}", out)
    if level == "field":
        out, what, refuse = zip_field(rng, source)
        return Mutant(what + tag, out, must_refuse=refuse)
    if level == "structure":
        new, what, noop, refuse = zip_structure(rng, members)
        if what == "every member deflated":
            method, tag = zipfile.ZIP_DEFLATED, ""
        if "MiB of zeros" in what:
            method, tag = zipfile.ZIP_DEFLATED, ""
        return Mutant(what + tag, write_zip(new, method), noop=noop, must_refuse=refuse)
    if level == "npy":
        names = [n for n, _ in members]
        name = _choice(rng, names[:-1] + ["__metadata__.npy"] * 4)
        i = names.index(name)
        data, what, refuse = npy_level(rng, name, members[i][1], name == "__metadata__.npy")
        if refuse and name.startswith("optim/"):
            refuse = OPTIM_READERS  # verify reads the model's arrays only
        noop = what in ("version (2, 0)", "version (3, 0)")
        new = members[:i] + [(name, data)] + members[i + 1:]
        return Mutant(f"{name}: {what}{tag}", write_zip(new, method), noop=noop,
                      must_refuse=refuse)
    meta = dict(members)["__metadata__.npy"]
    text = np.load(io.BytesIO(meta)).tobytes().decode()
    data, what, refuse = metadata_level(rng, text)
    dtype = np.uint8 if rng.integers(12) else _choice(rng, [np.int32, np.float32, np.int8])
    if dtype is not np.uint8:
        what += f", stored as {np.dtype(dtype).name}"
        refuse = ALL
    new = [(n, metadata_member(data, dtype) if n == "__metadata__.npy" else d)
           for n, d in members]
    return Mutant(f"metadata: {what}{tag}", write_zip(new, method), must_refuse=refuse)


# ---- IDX and CIFAR-10 --------------------------------------------------------------------
def idx_header(magic_type, dims):
    return bytes([0, 0, 0x08 if magic_type is None else magic_type, len(dims)]) + \
        struct.pack(f">{len(dims)}I", *dims)


_BOMBS = {}


def gzip_bomb(head, mib):
    """A gzip file of ``head`` then ``mib`` MiB of zeros (about 1 KiB a MiB), made once."""
    key = (head, mib)
    if key not in _BOMBS:
        zeros = bytes(mib << 20)
        raw = zlib.compressobj(9, zlib.DEFLATED, -15)
        body = raw.compress(head) + raw.compress(zeros) + raw.flush()
        _BOMBS[key] = (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body + struct.pack(
            "<II", zlib.crc32(zeros, zlib.crc32(head)), (len(head) + len(zeros)) & 0xFFFFFFFF))
    return _BOMBS[key]


def gzip_bytes(data, level=6):
    return gzip.compress(data, compresslevel=level, mtime=0)


def idx_mutant(rng, bases):
    """A mutant of the base IDX image or label file (raw or gzip)."""
    role = _choice(rng, ["images", "labels"])
    base = bases[role]
    ndim = 3 if role == "images" else 1
    how = int(rng.integers(8))
    refuse = frozenset()
    if how == 0:  # header bytes
        out, what = flip_bytes(rng, base, 0, 4 + 4 * ndim)
    elif how == 1:  # dimensions: zero, huge, a product that wraps, another rank
        dims = _choice(rng, [(0,) * ndim, (2 ** 32 - 1,) * ndim, (65537, 65536, 4294901761),
                             (2 ** 16, 2 ** 16, 2 ** 16), (8, 28 * 28), (8, 14, 56),
                             (9, 28, 28), (7, 28, 28), (8,), (8, 28, 28, 1),
                             (2 ** 31, 1, 1), (1,) * 255, (1,) * 60 + (8,)])
        out = idx_header(None, dims) + base[4 + 4 * ndim:]
        what = f"dimensions {dims[:8]}"
    elif how == 2:
        out, what = truncate(rng, base)
    elif how == 3:
        out, what = extend(rng, base)
    elif how == 4:  # the data: labels out of range, pixels anything
        out, what = flip_bytes(rng, base, 4 + 4 * ndim)
        if role == "labels" and any(b >= 10 for b in out[4 + 4 * ndim:]):
            refuse = frozenset({"read_idx_labels", "read_idx_pair"})
    elif how == 5:  # magic of the other kind, or another data type
        t = _choice(rng, [0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF])
        out, what = bytes([0, 0, t]) + base[3:], f"data type byte {t:#x}"
    elif how == 6:  # a gzip bomb, kept small: zeros under a header claiming a size
        mib = _choice(rng, [1, 8, 24])
        claim = _choice(rng, ["exact", "small", "huge", "over the limit"])
        n = (mib << 20) if claim == "exact" else 8 if claim == "small" else \
            2 ** 31 - 2 ** 20 if claim == "huge" else 2 ** 32 - 1
        dims = (n,) if role == "labels" else (max(1, n // 784), 28, 28)
        if role == "images" and claim == "exact":
            dims = ((mib << 20) // 784, 28, 28)
        out = gzip_bomb(idx_header(None, dims), mib)
        return Mutant(f"{role}: gzip bomb of {mib} MiB, header claims {dims}", out, role=role)
    else:  # gzip: the file compressed, then damaged (or not)
        gz = gzip_bytes(base, int(rng.integers(1, 10)))
        sub = int(rng.integers(6))
        if sub == 0:
            return Mutant(f"{role}: gzip of the original", gz, noop=True, role=role)
        if sub == 1:
            half = int(rng.integers(1, len(base)))
            return Mutant(f"{role}: two gzip members", gzip_bytes(base[:half]) +
                          gzip_bytes(base[half:]), noop=True, role=role)
        if sub == 2:
            out, what = flip_bytes(rng, gz)
        elif sub == 3:
            out, what = truncate(rng, gz)
        elif sub == 4:
            out, what = gz + _choice(rng, [b"\x00" * 8, rng.bytes(20), gz]), "gzip + trailing"
        else:
            buf = bytearray(gz)
            buf[3] = _choice(rng, [0x04, 0x08, 0x10, 0x1C, 0xE0, 0x02])
            out, what = bytes(buf), f"gzip flags {buf[3]:#x}"
        return Mutant(f"{role}: gzip, {what}", out, role=role)
    if rng.integers(4) == 0:
        return Mutant(f"{role}: {what}, gzipped", gzip_bytes(out), role=role, must_refuse=refuse)
    return Mutant(f"{role}: {what}", out, role=role, must_refuse=refuse)


def _sparse(size):
    def make(path):
        with open(path, "wb") as f:
            f.truncate(size)
    return make


CIFAR_RECORD = 3073


def cifar_mutant(rng, base):
    how = int(rng.integers(7))
    if how == 0:
        out, what = truncate(rng, base)
    elif how == 1:
        k = _choice(rng, [1, CIFAR_RECORD, 2 * CIFAR_RECORD, int(rng.integers(1, 5000))])
        out, what = base + rng.bytes(k), f"{k} random bytes appended"
        if k % CIFAR_RECORD == 0 and any(b >= 10 for b in out[len(base)::CIFAR_RECORD]):
            return Mutant(what, out, must_refuse=ALL)
    elif how == 2:  # a label byte
        rec = int(rng.integers(len(base) // CIFAR_RECORD))
        value = int(rng.integers(10, 256))
        buf = bytearray(base)
        buf[rec * CIFAR_RECORD] = value
        return Mutant(f"label of record {rec} = {value}", bytes(buf), must_refuse=ALL)
    elif how == 3:  # pixels: any value is a valid pixel
        lo = 1 + int(rng.integers(CIFAR_RECORD - 1))
        buf = bytearray(base)
        buf[lo] ^= 0xFF
        return Mutant(f"pixel byte {lo} inverted", bytes(buf))
    elif how == 4:
        out = _choice(rng, [b"\x80\x04\x95" + rng.bytes(100), b"\x80" + base[1:], b"",
                            b"\x80" * CIFAR_RECORD])
        what = f"pickle-like/empty ({len(out)} bytes)"
    elif how == 5:  # sparse giants: past the limit (never read), or of record multiples
        size = _choice(rng, [(2 << 30) + CIFAR_RECORD, 2 ** 40, 2 ** 34 + 1])
        return Mutant(f"sparse file of {size} bytes", make=_sparse(size), must_refuse=ALL)
    else:
        out, what = byte_level(rng, base)
    return Mutant(what, out)


# ---- lock files ---------------------------------------------------------------------------
def _lock_contents(rng):
    record = {"pid": 1, "host": "h", "started": 1.0}
    bad = _choice(rng, [("pid", "NaN"), ("pid", "1e300"), ("pid", "-1"), ("pid", "2**22"),
                        ("pid", '"1"'), ("pid", "true"), ("pid", "1" + "0" * 5000),
                        ("host", '"\\ud800"'), ("host", '"\\u0000"'), ("host", '""'),
                        ("host", '"' + "h" * 300 + '"'), ("host", "[]"),
                        ("started", "NaN"), ("started", "Infinity"), ("started", "1e300"),
                        ("started", "-1"), ("started", "1e19"), ("started", '"now"')])
    text = json.dumps({k: (_MARK if k == bad[0] else v) for k, v in record.items()})
    doc = text.replace(json.dumps(_MARK), bad[1])
    return _choice(rng, [
        (doc.encode(), f"record with {bad[0]} = {bad[1][:20]}"),
        (b"NaN", "NaN"), (b"1e300", "1e300"), (b"[" * 100000, "deep JSON (100000 ["),
        (b"[" * 5000 + b"]" * 5000, "deep JSON (5000 levels)"),
        ('"\\ud800"'.encode(), "a lone surrogate"), (rng.bytes(200), "binary junk"),
        (b"", "empty"), (b" \n\t", "whitespace"), (b"\xff\xfe{}", "not UTF-8"),
        (b"{" + b'"a": 1, ' * 3000 + b'"a": 2}', "16 KiB of keys"),
        (b"1" * 5000, "a 5000-digit number"), (b"{}" + b" " * 20000, "over 16 KiB"),
        (json.dumps(record).encode() + b"\x00" * 10, "a record and NULs"),
        (b'{"pid": 1, "pid": 2, "host": "h", "started": 1}', "a key twice"),
        (json.dumps({"pid": os.getpid(), "host": "h", "started": 1.0}).encode(),
         "a record naming this process")])


def lock_mutant(rng, base):
    """Something at the lock path of a checkpoint: hostile content (held by another open
    file or not), a huge sparse file, a directory, a FIFO, links."""
    held = "held" if rng.integers(3) == 0 else "free"
    how = int(rng.integers(10))
    if how < 6:
        content, what = _lock_contents(rng)
        return Mutant(what, content, role=held)
    if how == 6:
        return Mutant("a sparse 8 GiB lock file", make=_sparse(8 << 30), role=held)
    if how == 7:
        return Mutant("a directory", make=lambda p: os.mkdir(p), role="free")
    if how == 8:
        return Mutant("a FIFO", make=lambda p: os.mkfifo(p), role="free")
    kind = _choice(rng, ["to a user's file", "dangling", "loop", "to a directory"])

    def make(path, kind=kind):
        user = Path(path).parent / "user-file.txt"
        user.write_bytes(b"precious")
        target = {"to a user's file": user, "dangling": Path(path).parent / "nowhere",
                  "loop": Path(path), "to a directory": Path(path).parent}[kind]
        os.symlink(target, path)
    return Mutant(f"a symbolic link {kind}", make=make, role="free",
                  protect="user-file.txt")


# ---- the loaders under test ---------------------------------------------------------------
class Hang(BaseException):
    """A loader call ran past TIMEOUT_S (raised from SIGALRM)."""


def _alarm(signum, frame):
    raise Hang(f"no answer after {TIMEOUT_S:g} s")


def _maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _one_line(text):
    return bool(text) and "\n" not in text.strip()


@dataclass
class Verdict:
    outcome: str
    detail: str = ""
    peak: int = 0         # bytes traced at the call's peak, over what was held before it
    seconds: float = 0.0  # the call's wall time


@dataclass
class LoadPath:
    """One way gpucnn reads a file kind: ``call(file)`` -> result; ``errors``: the project
    exceptions that are a clean refusal; ``check(result, mutant)`` -> what is wrong with an
    accepted result (None: nothing); ``cli``: the result is (exit code, stdout, stderr)."""
    name: str
    call: object
    errors: tuple
    check: object
    cli: bool = False


def attempt(path, file, mutant):
    """The Verdict of loading ``file`` (the mutant ``mutant``) through ``path``."""
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    rss = _maxrss()
    result = exc = None
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT_S)
    try:
        result = path.call(file)
    except Hang as e:
        exc = e
    except (KeyboardInterrupt, _NotApplicable):
        raise
    except BaseException as e:  # noqa: BLE001 - classifying every exception is the point
        exc = e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - before
    grown = _maxrss() - rss
    verdict = _classify(path, mutant, result, exc, peak, grown)
    # kept for the report: the bounds a campaign measured, not only whether they held
    verdict.peak, verdict.seconds = max(peak, 0), seconds
    return verdict


def _classify(path, mutant, result, exc, peak, grown):
    if isinstance(exc, Hang):
        return Verdict(HANG, str(exc))
    if isinstance(exc, MemoryError) or max(peak, grown) > MEMORY_LIMIT:
        return Verdict(MEMORY, f"peak {peak >> 20} MiB traced, RSS peak +{grown >> 20} MiB"
                       + (f"; {type(exc).__name__}" if exc else ""))
    if exc is not None:
        if isinstance(exc, path.errors) and _one_line(str(exc)):
            return Verdict(CLEAN, str(exc)[:300])
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
        return Verdict(OTHER, f"{type(exc).__name__}: {str(exc)[:300]}\n{tb[-1500:]}")
    if path.cli:
        rc, out, err = result
        if rc == 2 and _one_line(err) and "Traceback" not in err:
            return Verdict(REFUSED, err.strip()[:300])
        if rc != 0 or "Traceback" in err:
            return Verdict(OTHER, f"exit {rc}: {err[-1500:]}")
    if _refuses(mutant, path.name):
        return Verdict(INVALID, "accepted, but the rules of issue 22 refuse it")
    problem = path.check(result, mutant)
    return Verdict(INVALID, problem) if problem else Verdict(LOADED)


def _kwargs_supported(fn, **kw):
    """The keyword arguments of ``kw`` that ``fn`` takes (an older gpucnn lacks some)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kw.items() if k in params}


def _float_arrays_problem(arrays, reference=None, exact_dtype=None):
    """What is wrong with loaded arrays: a dtype gpucnn never writes, a value not finite as
    float32 (what they are used in), the wrong dtype, or (``reference``) other values."""
    for k, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.str not in ("<f4", "<f8", "<i4", "<i8"):
            return f"{k}: dtype {a.dtype} accepted"
        if exact_dtype is not None and a.dtype != exact_dtype:
            return f"{k}: dtype {a.dtype}, asked for {np.dtype(exact_dtype)}"
        if a.dtype.kind == "f":
            with np.errstate(over="ignore", invalid="ignore"):
                if not np.isfinite(a.astype(np.float32)).all():
                    return f"{k}: values not finite as float32 accepted"
    if reference is not None:
        if sorted(arrays) != sorted(reference):
            return f"names {sorted(set(arrays) ^ set(reference))[:4]} differ from the original"
        for k, a in reference.items():
            if np.asarray(arrays[k]).shape != a.shape or not np.array_equal(arrays[k], a):
                return f"{k}: differs from the original, from a mutation that changed nothing"
    return None


class Campaign:
    """The bases, the loading paths and the counts of one fuzzing run."""

    def __init__(self, seed, workdir, base_dir=None):
        self.seed = seed
        self.workdir = Path(workdir)
        import gpucnn
        self.gpucnn = gpucnn
        self.base_dir = Path(base_dir) if base_dir else self.workdir / "base"
        if base_dir is None:
            build_bases(self.base_dir)
        self.bases = {k: (self.base_dir / f).read_bytes() for k, f in BASE_FILES.items()}
        self.counts = {}
        self.failures = []
        self.bounds = {}  # {kind: {path: the largest peak and the slowest call, with cases}}
        self._trainer = None
        self.paths = {"checkpoint": self._checkpoint_paths(), "idx": self._idx_paths(),
                      "cifar": self._cifar_paths(), "lock": self._lock_paths()}

    # -- checkpoints
    def _checkpoint_paths(self):
        from gpucnn import checkpoint
        self.CheckpointError = checkpoint.CheckpointError
        load = checkpoint.load_checkpoint
        kw = _kwargs_supported(load, dtype=np.float32)
        ref_file = self.base_dir / BASE_FILES["checkpoint"]
        self.ref_arrays, self.ref_meta = load(ref_file, **kw)
        paths = [LoadPath("load_checkpoint", lambda f: load(f, **kw), (self.CheckpointError,),
                          lambda r, m: self._check_loaded(r, m, kw))]
        try:
            from gpucnn.backends import get_backend
            from gpucnn.verify.source import build_copy, load_model_source
        except ImportError:
            pass
        else:
            backend = get_backend("numpy")
            self.ref_model = {k: np.array(v) for k, v in build_copy(
                load_model_source(str(ref_file)), backend, 0).state_dict().items()}
            paths.append(LoadPath(
                "verify", lambda f: build_copy(load_model_source(str(f)), backend, 0),
                (self.CheckpointError,), lambda r, m: self._check_model(r.state_dict(), m)))
        paths.append(LoadPath("resume", self._resume, (self.CheckpointError,),
                              self._check_resumed))
        paths.append(LoadPath("cli train --resume", self._cli_resume, (), lambda r, m: None,
                              cli=True))
        return paths

    def _check_loaded(self, result, mutant, kw):
        arrays, meta = result
        if not isinstance(meta, dict):
            return f"metadata of type {type(meta).__name__}"
        return _float_arrays_problem(arrays, self.ref_arrays if mutant.noop else None,
                                     kw.get("dtype"))

    def _check_model(self, state, mutant):
        if sorted(state) != sorted(self.ref_model):
            return "a model with other parameters"
        for k, v in state.items():
            v = np.asarray(v)
            if v.shape != self.ref_model[k].shape or v.dtype != np.float32:
                return f"{k}: {v.dtype} {v.shape}"
            if not np.isfinite(v).all():
                return f"{k}: non-finite weights accepted"
        if mutant.noop:
            return _float_arrays_problem(state, self.ref_model)
        return None

    def trainer(self):
        """One Trainer of the base's run configuration (no checkpoint of its own), whose
        load() is the --resume path."""
        if self._trainer is None:
            from gpucnn.train import TrainConfig, Trainer
            import dataclasses
            names = {f.name for f in dataclasses.fields(TrainConfig)}
            cfg = {k: v for k, v in self.ref_meta["config"].items() if k in names}
            cfg.update(checkpoint=None, resume=False, overwrite=False, progress=False,
                       metrics_json=None, plot=None, data_dir=str(self.base_dir / "data"))
            with contextlib.redirect_stdout(io.StringIO()):
                self._trainer = Trainer(TrainConfig(**cfg))
        return self._trainer

    def _resume(self, file):
        tr = self.trainer()
        # auto's presets live on the backend: a case must not inherit the last one's
        tr.backend.__dict__.pop("_conv_selector", None)
        with contextlib.redirect_stdout(io.StringIO()):
            tr.load(str(file))
        return tr

    def _check_resumed(self, tr, mutant):
        state = {k: np.asarray(v) for k, v in tr.model.state_dict().items()}
        problem = self._check_model(state, mutant)
        if problem:
            return problem
        # a loaded run must be able to take its first step (a preset convolution algorithm
        # that cannot run a layer was once accepted here and failed at that step)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x, y = next(iter(tr._batches(0, 0)))
                loss, _ = tr.step(x, y)
        except Exception as e:  # noqa: BLE001
            return f"loaded, then the first step failed: {type(e).__name__}: {e}"
        if not np.isfinite(float(loss)):
            return f"loaded, then the first step's loss is {float(loss)}"
        return None

    def _cli_resume(self, file):
        from gpucnn.cli import main
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rc = main(["train", *TRAIN_ARGS, "--data-dir", str(self.base_dir / "data"),
                       "--checkpoint", str(file), "--resume"])
        return rc, out.getvalue(), err.getvalue()

    # -- datasets
    def _idx_paths(self):
        from gpucnn import data
        self.DataError = data.DataError
        img_kw = _kwargs_supported(data.read_idx_images, image_shape=(28, 28))
        pair_kw = _kwargs_supported(data.read_idx_pair, image_shape=(28, 28))
        base_images = self.base_dir / BASE_FILES["images"]
        base_labels = self.base_dir / BASE_FILES["labels"]

        def pair(f):
            role = self._role
            return data.read_idx_pair(f if role == "images" else base_images,
                                      f if role == "labels" else base_labels, **pair_kw)

        def check_images(a, m):
            want = (28, 28) if img_kw else a.shape[1:]
            return _array_problem(a, 3, want, self.bases["images"] if m.noop else None)

        def check_pair(r, m):
            images, labels = r
            if images.shape[0] != labels.shape[0]:
                return f"{images.shape[0]} images with {labels.shape[0]} labels accepted"
            return _array_problem(labels, 1, (), None, labels=True) or _array_problem(
                images, 3, (28, 28) if pair_kw else images.shape[1:], None)

        errors = (self.DataError,)
        return [LoadPath("read_idx", data.read_idx, errors,
                         lambda a, m: _array_problem(a, None, None, self.bases[m.role]
                                                     if m.noop else None)),
                LoadPath("read_idx_images", lambda f: data.read_idx_images(f, **img_kw), errors,
                         check_images),
                LoadPath("read_idx_labels", data.read_idx_labels, errors,
                         lambda a, m: _array_problem(a, 1, (), self.bases["labels"]
                                                     if m.noop else None, labels=True)),
                LoadPath("read_idx_pair", pair, errors, check_pair)]

    def _cifar_paths(self):
        from gpucnn import data

        def check(r, m):
            images, labels = r
            if images.dtype != np.uint8 or images.shape[1:] != (3, 32, 32) \
                    or labels.shape != images.shape[:1] or (labels >= 10).any():
                return f"images {images.dtype} {images.shape}, labels {labels.shape} accepted"
            return None
        return [LoadPath("read_cifar_batch", data.read_cifar_batch, (data.DataError,), check)]

    # -- locks
    def _lock_paths(self):
        from gpucnn import runsafety
        self.runsafety = runsafety
        paths = []
        if hasattr(runsafety, "read_lock_owner"):
            paths.append(LoadPath("read_lock_owner", self._read_owner, (), _owner_problem))
        paths.append(LoadPath("RunLock.acquire", self._acquire, (runsafety.RunSafetyError,),
                              self._check_acquired))
        return paths

    def _read_owner(self, lock):
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise _NotApplicable(f"cannot open it: {e}") from None
        try:
            return self.runsafety.read_lock_owner(fd)
        finally:
            os.close(fd)

    def _acquire(self, lock):
        rs = self.runsafety
        ck = Path(lock).parent / "ck.npz"
        holder = None
        if self._mutant.role == "held":
            holder = os.open(lock, os.O_RDONLY | os.O_NONBLOCK)
            import fcntl
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            run_lock = rs.RunLock(ck)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                run_lock.acquire()
                try:
                    rs.prepare_checkpoint(str(ck), True, False, run_lock)
                    recorded = Path(run_lock.path).read_bytes() \
                        if Path(run_lock.path).is_file() else b""
                finally:
                    run_lock.release()
            return run_lock, recorded, out.getvalue()
        finally:
            if holder is not None:
                os.close(holder)

    def _check_acquired(self, result, mutant):
        run_lock, recorded, out = result
        if mutant.role == "held":
            return "taken while another open file held the lock"
        try:
            owner = json.loads(recorded)
        except ValueError:
            return f"the lock file holds {recorded[:60]!r} after acquire, not our record"
        if not isinstance(owner, dict) or owner.get("pid") != os.getpid():
            return f"the lock file holds {recorded[:60]!r}, not this process's record"
        if mutant.protect:
            user = Path(run_lock.path).parent / mutant.protect
            if not user.is_file() or user.read_bytes() != b"precious":
                return "the lock was written through a symbolic link into a user's file"
        return None

    # -- running
    def run_case(self, kind, index):
        """[(path name, Verdict)] of case ``index`` of ``kind``."""
        rng = np.random.default_rng([self.seed, KIND_IDS[kind], index])
        mutant = MUTATORS[kind](rng, self.bases if kind == "idx" else self.bases[kind])
        self._mutant, self._role = mutant, mutant.role
        case_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-{index}-", dir=self.workdir))
        try:
            if kind == "lock":
                (case_dir / "ck.npz").write_bytes(b"not read")
                file = case_dir / ".ck.npz.lock"
            else:
                file = case_dir / BASE_FILES.get(kind, "file")
            verdicts = []
            for path in self.paths[kind]:
                if kind == "lock" and path.name == "RunLock.acquire":
                    _clear(file)  # each path sees the mutant as made
                if not os.path.lexists(file):
                    mutant.write(file)
                try:
                    verdicts.append((path.name, attempt(path, file, mutant)))
                except _NotApplicable:
                    pass
                if kind == "checkpoint":  # resume paths may rewrite the file: fresh copy
                    _clear(file)
            return mutant, verdicts
        finally:
            _chmod_rmtree(case_dir)

    def run(self, counts, progress=None, only=None):
        for kind, n in counts.items():
            for index in range(n):
                if only is not None and (kind, index) != only:
                    continue
                if progress:
                    Path(progress).write_text(f"{kind}:{index}")
                mutant, verdicts = self.run_case(kind, index)
                for name, v in verdicts:
                    self.counts.setdefault(kind, {}).setdefault(name, Counter())[v.outcome] += 1
                    b = self.bounds.setdefault(kind, {}).setdefault(
                        name, {"peak_mib": 0.0, "peak_case": None, "slowest_s": 0.0,
                               "slowest_case": None})
                    if v.peak / 2 ** 20 >= b["peak_mib"]:
                        b.update(peak_mib=round(v.peak / 2 ** 20, 2), peak_case=index)
                    if v.seconds >= b["slowest_s"]:
                        b.update(slowest_s=round(v.seconds, 3), slowest_case=index)
                    if v.outcome in FAILURES:
                        self.failures.append({"kind": kind, "case": index, "path": name,
                                              "mutation": mutant.what, "outcome": v.outcome,
                                              "detail": v.detail, "seed": self.seed})
                    if only is not None:
                        print(f"{kind}:{index} [{mutant.what}] {name}: {v.outcome}: {v.detail}")


class _NotApplicable(Exception):
    """The path cannot be tried on this mutant (a lock path that cannot even be opened)."""


def _clear(file):
    if os.path.islink(file) or os.path.isfile(file) or stat.S_ISFIFO(
            os.lstat(file).st_mode if os.path.lexists(file) else 0):
        os.unlink(file)
    elif os.path.isdir(file):
        shutil.rmtree(file)


def _chmod_rmtree(path):
    shutil.rmtree(path, ignore_errors=True)


def _array_problem(a, ndim, item_shape, original, labels=False):
    a = np.asarray(a)
    if a.dtype != np.uint8:
        return f"dtype {a.dtype} accepted"
    if ndim is not None and a.ndim != ndim:
        return f"shape {a.shape} accepted, {ndim} dimensions expected"
    if item_shape is not None and tuple(a.shape[1:]) != tuple(item_shape):
        return f"items of shape {a.shape[1:]} accepted, {item_shape} expected"
    if labels and (a >= 10).any():
        return "labels >= 10 accepted"
    if original is not None:
        ndim_o = original[3]
        if a.tobytes() != original[4 + 4 * ndim_o:]:
            return "differs from the original, from a mutation that changed nothing"
    return None


def _owner_problem(result, mutant):
    if not (isinstance(result, tuple) and len(result) == 2):
        return f"returned {result!r:.80}, not (owner, problem)"
    owner, problem = result
    if owner is not None and not (isinstance(owner, dict) and type(owner.get("pid")) is int
                                  and isinstance(owner.get("host"), str)):
        return f"owner {owner!r:.80} accepted"
    if problem is not None and not (isinstance(problem, str) and _one_line(problem)
                                    and problem.isprintable()):
        return f"problem {problem!r:.80} is not one printable line"
    return None


MUTATORS = {"checkpoint": checkpoint_mutant, "idx": idx_mutant, "cifar": cifar_mutant,
            "lock": lock_mutant}
BASE_FILES = {"checkpoint": "ck.npz", "images": "images-idx3-ubyte",
              "labels": "labels-idx1-ubyte", "cifar": "data_batch_1.bin", "lock": "lock"}


# ---- the bases ----------------------------------------------------------------------------
def build_bases(directory):
    """The files every mutant starts from, in ``directory``: a checkpoint written by
    ``gpucnn train`` on a synthetic Fashion-MNIST (its timings and paths then fixed, and
    rewritten with a fixed zip timestamp, so the same seed gives the same bytes), a small IDX
    image/label pair, a CIFAR-10 batch of 4 records and a lock record."""
    from gpucnn.cli import main
    from gpucnn.data import encode_idx
    d = Path(directory)
    fm = d / "data" / "fashion-mnist"
    fm.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(22)
    for split, n in (("train", 64), ("t10k", 32)):
        (fm / f"{split}-images-idx3-ubyte").write_bytes(
            encode_idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)))
        (fm / f"{split}-labels-idx1-ubyte").write_bytes(
            encode_idx(rng.integers(0, 10, n, dtype=np.uint8)))
    trained = d / "trained.npz"
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(["train", *TRAIN_ARGS, "--data-dir", str(d / "data"), "--checkpoint",
                   str(trained), "--overwrite"])
    if rc != 0:
        raise RuntimeError(f"training the base checkpoint failed (exit {rc})")
    members = read_members(trained.read_bytes())
    trained.unlink()
    meta_i = [n for n, _ in members].index("__metadata__.npy")
    envelope = json.loads(np.load(io.BytesIO(members[meta_i][1])).tobytes())
    meta = envelope["metadata"]
    for rec in meta["history"]:
        rec.update(seconds=1.0, images_per_s=1000.0)
    meta["epoch_sums"][3] = 0.0
    meta["config"].update(checkpoint="ck.npz", data_dir="data")
    text = json.dumps(envelope, sort_keys=True).encode()
    members[meta_i] = ("__metadata__.npy", metadata_member(text))
    (d / BASE_FILES["checkpoint"]).write_bytes(write_zip(members))
    (d / BASE_FILES["images"]).write_bytes(
        encode_idx(rng.integers(0, 256, (8, 28, 28), dtype=np.uint8)))
    (d / BASE_FILES["labels"]).write_bytes(encode_idx(rng.integers(0, 10, 8, dtype=np.uint8)))
    records = rng.integers(0, 256, (4, CIFAR_RECORD), dtype=np.uint8)
    records[:, 0] = rng.integers(0, 10, 4)
    (d / BASE_FILES["cifar"]).write_bytes(records.tobytes())
    (d / BASE_FILES["lock"]).write_bytes(b"")
    return d


# ---- the campaign process -----------------------------------------------------------------
def table(counts, bounds=None):
    """The counts per outcome of every (kind, path), as text; with ``bounds`` (a report's),
    the largest memory peak of one call (MiB traced) and the slowest call (s), with cases."""
    extra = ("peak MiB (case)", "slowest s (case)") if bounds else ()
    rows = [("kind", "path") + OUTCOMES + extra]
    total = Counter()
    for kind, paths in counts.items():
        for name, c in paths.items():
            b = (bounds or {}).get(kind, {}).get(name)
            more = (f"{b['peak_mib']:.1f} ({b['peak_case']})",
                    f"{b['slowest_s']:.2f} ({b['slowest_case']})") if b else ("",) * len(extra)
            rows.append((kind, name) + tuple(str(c.get(o, 0)) for o in OUTCOMES) + more)
            total.update(c)
    rows.append(("all", "") + tuple(str(total.get(o, 0)) for o in OUTCOMES)
                + ("",) * len(extra))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--counts", default=",".join(f"{k}={v}" for k, v in DEFAULT_COUNTS.items()),
                   help="cases per kind, e.g. checkpoint=200,idx=300 (kinds left out: none)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every count")
    p.add_argument("--case", help="run only KIND:INDEX and print its verdicts in full")
    p.add_argument("--base", help="a directory of bases built before (default: build them)")
    p.add_argument("--workdir", help="where the mutants are written (default: a temp dir)")
    p.add_argument("--progress", help="a file that names the case under way")
    p.add_argument("--json", help="write the counts and failures here")
    args = p.parse_args(argv)
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, resource.RLIM_INFINITY))
    counts = {k: int(int(v) * args.scale) for k, v in
              (item.split("=") for item in args.counts.split(",") if item)}
    only = None
    if args.case:
        kind, index = args.case.split(":")
        only = (kind, int(index))
        counts = {kind: int(index) + 1}
    signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory(prefix="gpucnn-fuzz-", dir=args.workdir) as work:
        t0 = time.perf_counter()
        campaign = Campaign(args.seed, work, args.base)
        setup_s = time.perf_counter() - t0
        tracemalloc.start()
        campaign.run(counts, args.progress, only)
        tracemalloc.stop()
        seconds = time.perf_counter() - t0
    report = {"seed": args.seed, "counts": {k: {n: dict(c) for n, c in v.items()}
                                            for k, v in campaign.counts.items()},
              "failures": campaign.failures, "seconds": seconds, "setup_seconds": setup_s,
              "cases": counts, "gpucnn": campaign.gpucnn.__file__,
              "peak_rss_mib": _maxrss() >> 20, "bounds": campaign.bounds}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if only is None:
        print(table(campaign.counts, campaign.bounds))
        print(f"{sum(counts.values())} cases in {seconds:.1f} s (setup {setup_s:.1f} s); peak "
              f"RSS {report['peak_rss_mib']} MiB; {len(campaign.failures)} failures; gpucnn "
              f"from {campaign.gpucnn.__file__}")
        for f in campaign.failures[:20]:
            print(f"FAIL {f['kind']}:{f['case']} {f['path']} [{f['mutation']}] {f['outcome']}: "
                  f"{f['detail'].splitlines()[0] if f['detail'] else ''}")
    return 1 if campaign.failures else 0


if __name__ == "__main__":
    sys.exit(main())
