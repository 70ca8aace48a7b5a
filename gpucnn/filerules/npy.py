"""Our own strict .npy header parser: no ast, no tokenize, no NumPy loader; what NumPy writes for
the arrays gpucnn saves, and nothing else."""
from __future__ import annotations

import math
import re

import numpy as np

from .limits import ARRAY_DTYPES, NPY_MAGIC, NPY_MAX_HEADER_BYTES, NPY_MAX_NDIM, size_text

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
