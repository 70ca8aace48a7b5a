"""Kernel signatures parsed from CUDA C source text, and launch-argument checking.

Shared by the ``cuda`` backend (CuPy) and the ``emu`` backend; nothing here is emulator specific.

``parse_kernels(source_text) -> {name: [Param, ...]}`` finds every ``__global__`` function
*definition* (``extern "C"`` or not, ``__launch_bounds__`` allowed) and describes its parameters.

``check_launch_args(kernel_name, params, args) -> list`` checks a launch's argument list against
the signature with CuPy's rules made strict:

* a pointer parameter takes a C-contiguous array (NumPy, or anything array-like with ``dtype``,
  ``flags`` and ``data``/``ctypes``: CuPy) whose dtype matches the pointee type
  (``float*`` -> float32, ``int*`` -> int32, ``unsigned int*`` -> uint32, ``long long*`` -> int64,
  ``unsigned char*`` -> uint8, ...; ``void*`` and unknown struct types take any dtype;
  ``float2*``/``float4*`` take float32 arrays);
* a scalar parameter takes a NumPy scalar of exactly the matching dtype (``int`` -> np.int32,
  ``unsigned int`` -> np.uint32, ``float`` -> np.float32, ``long long`` -> np.int64,
  ``double`` -> np.float64, ``size_t`` -> np.uint64). A Python ``int``/``float`` is rejected:
  CuPy would silently pass it as 64 bits.

Errors are ``TypeError`` naming the kernel, the parameter index and name, expected and got.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["Param", "parse_kernels", "parse_launch_bounds", "check_launch_args", "strip_comments",
           "C_TYPES"]

# Base C type (qualifiers removed, whitespace normalised) -> NumPy dtype.
C_TYPES = {
    "float": np.float32,
    "double": np.float64,
    "int": np.int32,
    "signed int": np.int32,
    "signed": np.int32,
    "unsigned int": np.uint32,
    "unsigned": np.uint32,
    "long long": np.int64,
    "long long int": np.int64,
    "signed long long": np.int64,
    "long": np.int64,
    "long int": np.int64,
    "unsigned long long": np.uint64,
    "unsigned long long int": np.uint64,
    "unsigned long": np.uint64,
    "size_t": np.uint64,
    "ptrdiff_t": np.int64,
    "short": np.int16,
    "unsigned short": np.uint16,
    "char": np.int8,
    "signed char": np.int8,
    "unsigned char": np.uint8,
    "bool": np.bool_,
    "int8_t": np.int8, "uint8_t": np.uint8, "int16_t": np.int16, "uint16_t": np.uint16,
    "int32_t": np.int32, "uint32_t": np.uint32, "int64_t": np.int64, "uint64_t": np.uint64,
}
# Vector types: a pointer to one takes an array of the element type.
VECTOR_TYPES = {
    "float2": np.float32, "float3": np.float32, "float4": np.float32,
    "int2": np.int32, "int4": np.int32, "uint2": np.uint32, "uint4": np.uint32,
    "double2": np.float64,
}
_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict", "struct"}


@dataclass(frozen=True)
class Param:
    index: int
    ctype: str            # normalised declaration type, e.g. "const float*"
    name: str
    is_pointer: bool
    base: str             # pointee / scalar type without qualifiers, e.g. "float"
    dtype: Optional[np.dtype]   # element dtype (pointer) or scalar dtype; None = any (void*)
    is_const: bool = False      # pointer to const


def strip_comments(text: str) -> str:
    """Remove // and /* */ comments (keeping string literals and line count)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"' or c == "'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


_GLOBAL_RE = re.compile(r"\b__global__\b")
_ATTR_RE = re.compile(r"\b(__launch_bounds__|__attribute__|__declspec|__align__)\s*\(")


def _skip_parens(text, i):
    """text[i] == '(' -> index after the matching ')'."""
    depth = 0
    while i < len(text):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced parentheses")


def _remove_attrs(s):
    while True:
        m = _ATTR_RE.search(s)
        if not m:
            return s
        end = _skip_parens(s, m.end() - 1)
        s = s[:m.start()] + " " + s[end:]


def _parse_param(kernel, index, text):
    text = _remove_attrs(text).strip()
    if "[" in text:   # float a[] == float* a
        text = re.sub(r"\[[^\]]*\]", "", text).strip()
        text = re.sub(r"(\w+)\s*$", r"* \1", text)
    if "=" in text:
        text = text.split("=", 1)[0].strip()
    m = re.match(r"^(.*?)([A-Za-z_]\w*)\s*$", text, re.S)
    if not m or not m.group(1).strip():
        raise ValueError(f"kernel {kernel}: cannot parse parameter {index} {text!r}")
    typ, name = m.group(1), m.group(2)
    stars = typ.count("*")
    if "&" in typ:
        raise ValueError(f"kernel {kernel}: reference parameter {index} {text!r} is not allowed")
    toks = re.findall(r"[A-Za-z_]\w*", typ)
    before_star = typ.split("*", 1)[0] if stars else typ
    is_const = stars > 0 and "const" in re.findall(r"\w+", before_star)
    base = " ".join(t for t in toks if t not in _QUALIFIERS)
    if stars > 1:
        dtype = None
        ctype = ("const " if is_const else "") + base + "*" * stars
    elif stars == 1:
        if base == "void":
            dtype = None
        elif base in C_TYPES:
            dtype = np.dtype(C_TYPES[base])
        elif base in VECTOR_TYPES:
            dtype = np.dtype(VECTOR_TYPES[base])
        else:
            dtype = None
        ctype = ("const " if is_const else "") + base + "*"
    else:
        if base not in C_TYPES:
            raise ValueError(f"kernel {kernel}: parameter {index} ({name}) has type {base!r}, "
                             "which cannot be passed from Python")
        dtype = np.dtype(C_TYPES[base])
        ctype = base
    return Param(index=index, ctype=ctype, name=name, is_pointer=stars > 0, base=base,
                 dtype=dtype, is_const=is_const)


def parse_kernels(source_text: str) -> dict:
    """``{kernel_name: [Param, ...]}`` for every ``__global__`` function definition."""
    return {name: params for name, params, _ in _scan_kernels(source_text)}


_DEFINE_RE = re.compile(
    r"(?m)^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)[ \t]+\(?\s*(\d+)[uU]?\s*\)?[ \t]*$")


def parse_launch_bounds(source_text: str) -> dict:
    """``{kernel_name: max_threads_per_block}`` for kernels declared with
    ``__launch_bounds__(N, ...)`` where N is an integer literal or an object-like ``#define`` of
    one (other expressions are skipped). CUDA refuses a launch with more threads per block."""
    defines = {m.group(1): int(m.group(2))
               for m in _DEFINE_RE.finditer(strip_comments(source_text))}
    out = {}
    for name, _, bounds in _scan_kernels(source_text):
        if bounds is None:
            continue
        first = bounds.split(",")[0].strip()
        while first.startswith("(") and first.endswith(")"):
            first = first[1:-1].strip()
        if re.fullmatch(r"\d+[uU]?", first):
            out[name] = int(first.rstrip("uU"))
        elif first in defines:
            out[name] = defines[first]
    return out


def _scan_kernels(source_text: str):
    text = strip_comments(source_text)
    # Drop preprocessor lines (#define bodies could contain "__global__").
    text = re.sub(r"(?m)^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", "", text)
    kernels = {}
    result = []
    for m in _GLOBAL_RE.finditer(text):
        i = m.end()
        # Find the function name: identifier directly before the first '(' that is not an
        # attribute's own parenthesis.
        head = text[i:i + 2000]
        j = 0
        name = None
        bounds = None
        # __launch_bounds__ may also come before __global__
        lb = re.search(r"__launch_bounds__\s*\(([^()]*)\)\s*$",
                       text[max(0, m.start() - 300):m.start()])
        if lb:
            bounds = lb.group(1)
        while j < len(head):
            am = _ATTR_RE.match(head, j) if head[j].isalpha() or head[j] == "_" else None
            if am:
                end_attr = _skip_parens(head, am.end() - 1)
                if am.group(1) == "__launch_bounds__":
                    bounds = head[am.end():end_attr - 1]
                j = end_attr
                continue
            if head[j] == "(":
                nm = re.search(r"([A-Za-z_]\w*)\s*$", head[:j])
                name = nm.group(1) if nm else None
                break
            if head[j] in ";{}":
                break
            j += 1
        if not name:
            continue
        start = i + j
        end = _skip_parens(text, start)
        after = text[end:end + 200].lstrip()
        if not after.startswith("{"):
            continue   # a declaration, not a definition
        plist = text[start + 1:end - 1].strip()
        params = []
        if plist and plist != "void":
            depth, cur, parts = 0, [], []
            for ch in plist:
                if ch in "(<[":
                    depth += 1
                elif ch in ")>]":
                    depth -= 1
                if ch == "," and depth == 0:
                    parts.append("".join(cur))
                    cur = []
                else:
                    cur.append(ch)
            parts.append("".join(cur))
            params = [_parse_param(name, k, p) for k, p in enumerate(parts)]
        if name in kernels:
            raise ValueError(f"kernel {name} is defined twice")
        kernels[name] = params
        result.append((name, params, bounds))
    return result


def _describe(a):
    if isinstance(a, np.generic):
        return f"np.{type(a).__name__}"
    dt = getattr(a, "dtype", None)
    if dt is not None and hasattr(a, "shape"):
        return f"{type(a).__module__.split('.')[0]}.ndarray(dtype={dt}, shape={tuple(a.shape)})"
    return f"{type(a).__name__} {a!r}"[:80]


def check_launch_args(kernel_name: str, params, args) -> list:
    """Check ``args`` against ``params``; return the argument list (arrays unchanged, scalars as
    NumPy scalars of the parameter's dtype). Raises ``TypeError`` on any mismatch."""
    args = list(args) if isinstance(args, (list, tuple)) else None
    if args is None:
        raise TypeError(f"kernel {kernel_name}: args must be a tuple or list")
    if len(args) != len(params):
        sig = ", ".join(f"{p.ctype} {p.name}" for p in params)
        raise TypeError(f"kernel {kernel_name}: expected {len(params)} arguments ({sig}), "
                        f"got {len(args)}")
    out = []
    for p, a in zip(params, args):
        where = f"kernel {kernel_name}: argument {p.index} ({p.ctype} {p.name})"
        if p.is_pointer:
            if isinstance(a, np.generic) or not hasattr(a, "dtype") or not hasattr(a, "shape"):
                raise TypeError(f"{where}: expected an array"
                                + (f" of {p.dtype}" if p.dtype is not None else "")
                                + f", got {_describe(a)}")
            if p.dtype is not None and np.dtype(a.dtype) != p.dtype:
                raise TypeError(f"{where}: expected an array of {p.dtype}, got {_describe(a)}")
            flags = getattr(a, "flags", None)
            if flags is not None and not flags.c_contiguous:
                raise TypeError(f"{where}: array must be C-contiguous, got {_describe(a)}")
            out.append(a)
        else:
            if not isinstance(a, np.generic) or np.dtype(type(a)) != p.dtype:
                raise TypeError(f"{where}: expected np.{p.dtype.type.__name__}, "
                                f"got {_describe(a)}")
            out.append(a)
    return out
