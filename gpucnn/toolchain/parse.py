"""The one parser of CUDA C source text (``kernels/*.cu``): everything gpucnn reads from a
``.cu`` file goes through here, so the runtime, the emulator and the compile gates cannot
disagree about what a file says.

* :func:`strip_comments` — comments and string literals blanked, offsets and lines kept;
* :func:`int_defines` — object-like ``#define NAME <integer>`` lines;
* :func:`object_macros` — object-like ``#define NAME <text>`` lines (continuations joined);
* :func:`global_functions` — every ``__global__`` function, with its ``__launch_bounds__``,
  ``extern "C"`` linkage and parameter text (``k(PARAMS)``, one object-like macro, expanded);
* :func:`parse_kernels` — ``{name: [Param, ...]}``: each kernel definition's parameters and
  the NumPy dtype each one takes from Python;
* :func:`parse_launch_bounds` — ``{name: max threads per block}`` from ``__launch_bounds__``;
* :func:`parse_kernel_decls` — each kernel's launch budget from its ``// gpucnn:`` annotation.

Annotations sit in a ``//`` comment directly above the kernel (or on its declaration line)::

    // gpucnn: block=256 max_regs=128
    extern "C" __global__ void relu_forward(...)

Keys: ``block`` (threads per block at launch, ``256`` or ``16x16`` or ``8x8x4``; default: the
``__launch_bounds__`` value, else 256), ``max_regs`` (registers per thread), ``dyn_smem``
(dynamic shared memory bytes per block at launch, ``4096`` or ``4K``), ``min_occupancy``
(``0.5`` or ``50%``), ``gemm`` (``1``: GEMM-like, its SASS main loop gated by :mod:`.sass`;
``report``: reported only; ``0``: neither, the default), ``min_ffma`` (that gate's FFMA share,
``0.8`` or ``80%``; implies ``gemm=1``), ``tc`` (``tf32``/``bf16``: its SASS must hold HMMA of
that kind; implies ``gemm=report``). Integer values may name an integer ``#define``.
``// gpucnn: kernel=NAME block=...`` anywhere in the file targets NAME;
``// gpucnn: defaults block=128`` sets the file's defaults.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

import numpy as np

__all__ = ["strip_comments", "int_defines", "object_macros", "GlobalFunction",
           "global_functions", "Param", "parse_kernels", "parse_launch_bounds", "KernelDecl",
           "parse_kernel_decls", "C_TYPES", "VECTOR_TYPES", "DEFAULT_BLOCK"]

DEFAULT_BLOCK = 256

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
    "unsigned short": np.uint16, "bf16_bits": np.uint16,   # bf16_storage.cuh's bits
    "char": np.int8,
    "signed char": np.int8,
    "unsigned char": np.uint8,
    "bool": np.bool_,
    "int8_t": np.int8, "uint8_t": np.uint8, "int16_t": np.int16, "uint16_t": np.uint16,
    "int32_t": np.int32, "uint32_t": np.uint32, "int64_t": np.int64, "uint64_t": np.uint64,
}
# A pointer to a vector type takes an array of its element type.
VECTOR_TYPES = {
    "float2": np.float32, "float3": np.float32, "float4": np.float32,
    "int2": np.int32, "int4": np.int32, "uint2": np.uint32, "uint4": np.uint32,
    "double2": np.float64,
}
_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict", "struct"}


# ---- text ---------------------------------------------------------------------------------

def strip_comments(text: str) -> str:
    """``text`` with comments and string literals blanked to spaces (newlines kept, so offsets
    and line numbers stay valid). The quotes stay, and so does ``"C"`` (for ``extern "C"``)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(n, j + 1)
            lit = text[i:j]
            out.append(lit if lit == '"C"' else c + " " * max(0, len(lit) - 2) + lit[-1])
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


_DEFINE_RE = re.compile(
    r"(?m)^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)[ \t]+\(?[ \t]*(\d+)[uU]?[ \t]*\)?[ \t]*$")
# A whole preprocessor line, with its backslash continuations.
_PREPROCESSOR_RE = re.compile(r"(?m)^[ \t]*#(?:[^\n]*\\\n)*[^\n]*")


def int_defines(text: str) -> dict:
    """``{NAME: int}`` for every object-like ``#define NAME <integer>`` (``64``, ``64u``,
    ``(64)``) of a source; other macros are skipped."""
    return {m.group(1): int(m.group(2)) for m in _DEFINE_RE.finditer(strip_comments(text))}


_MACRO_RE = re.compile(
    r"(?m)^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)(?![\w(])((?:[^\n]*\\\n)*[^\n]*)")


def object_macros(text: str) -> dict:
    """``{NAME: body}`` for every object-like ``#define NAME body`` (continuations joined,
    comments removed, whitespace collapsed); function-like macros are skipped."""
    return {m.group(1): " ".join(m.group(2).replace("\\\n", " ").split())
            for m in _MACRO_RE.finditer(strip_comments(text))}


def int_value(expr: str, defines: dict) -> Optional[int]:
    """An integer literal (``256``, ``256u``, ``(256)``) or the name of an integer
    ``#define``; None for any other expression."""
    v = expr.strip()
    while v.startswith("(") and v.endswith(")"):
        v = v[1:-1].strip()
    if re.fullmatch(r"\d+[uU]?", v):
        return int(v.rstrip("uU"))
    return defines.get(v)


def _match_paren(s, i):
    """Index just past the parenthesis group opening at ``s[i] == '('``."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "(":
            depth += 1
        elif s[j] == ")":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(s)          # unbalanced: the compiler will say so, the parser stays quiet


def _blank(text, pattern):
    return pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


# ---- __global__ functions -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GlobalFunction:
    name: str
    offset: int                      # of the ``__global__`` keyword
    params: str                      # the text between the parameter list's parentheses
    params_end: int                  # offset just past the parameter list
    launch_bounds: Optional[str]     # the ``__launch_bounds__(...)`` arguments, if any
    extern_c: bool
    is_definition: bool              # a body follows (else a declaration)

    @property
    def max_threads_expr(self):
        return None if self.launch_bounds is None else self.launch_bounds.split(",")[0]


_ATTRS = ("__launch_bounds__", "__attribute__", "__declspec", "__align__")
_IDENT = re.compile(r"[A-Za-z_]\w*")
_BOUNDS_BEFORE = re.compile(r"__launch_bounds__\s*\(([^()]*)\)\s*$")


def global_functions(text: str) -> list:
    """Every ``__global__`` function of ``text`` (raw source), in order."""
    code = _blank(strip_comments(text), _PREPROCESSOR_RE)
    macros = object_macros(text)
    extern_blocks = []
    for m in re.finditer(r'extern\s+"C"\s*\{', code):
        depth, j = 0, m.end() - 1
        for j in range(m.end() - 1, len(code)):
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            if depth == 0:
                break
        extern_blocks.append((m.end(), j))
    found = []
    for m in re.finditer(r"\b__global__\b", code):
        stmt_start = max(code.rfind(";", 0, m.start()), code.rfind("}", 0, m.start()),
                         code.rfind("{", 0, m.start())) + 1
        prefix = code[stmt_start:m.start()]
        lb = _BOUNDS_BEFORE.search(prefix)
        bounds = lb.group(1) if lb else None
        i, name = m.end(), None
        while i < len(code):
            while i < len(code) and (code[i].isspace() or code[i] in "*&"):
                i += 1
            im = _IDENT.match(code, i)
            if not im:
                break
            j = im.end()
            while j < len(code) and code[j].isspace():
                j += 1
            if not code.startswith("(", j):
                i = j
                continue
            end = _match_paren(code, j)
            if im.group(0) in _ATTRS:
                if im.group(0) == "__launch_bounds__":
                    bounds = code[j + 1:end - 1]
                i = end
                continue
            name, params_start, params_end = im.group(0), j + 1, end - 1
            break
        if not name:
            continue
        extern_c = (bool(re.search(r'extern\s+"C"', prefix))
                    or any(a <= m.start() < b for a, b in extern_blocks))
        params = code[params_start:params_end].strip()
        for _ in range(8):    # a parameter list that is one macro name, expanded
            params = macros[params] if params in macros else params
        found.append(GlobalFunction(
            name=name, offset=m.start(), params=params,
            params_end=params_end + 1, launch_bounds=bounds, extern_c=extern_c,
            is_definition=code[params_end + 1:].lstrip().startswith("{")))
    return found


# ---- kernel signatures --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Param:
    index: int
    ctype: str                  # normalised declaration type, e.g. "const float*"
    name: str
    is_pointer: bool
    base: str                   # pointee / scalar type without qualifiers, e.g. "float"
    dtype: Optional[np.dtype]   # element dtype (pointer) or scalar dtype; None = any (void*)
    is_const: bool = False      # pointer to const


_ATTR_RE = re.compile(r"\b(" + "|".join(_ATTRS) + r")\s*\(")


def _remove_attrs(s):
    while (m := _ATTR_RE.search(s)):
        s = s[:m.start()] + " " + s[_match_paren(s, m.end() - 1):]
    return s


def _split_params(plist):
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
    return parts + ["".join(cur)]


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
    if "&" in typ:
        raise ValueError(f"kernel {kernel}: reference parameter {index} {text!r} is not allowed")
    stars = typ.count("*")
    before_star = typ.split("*", 1)[0] if stars else typ
    is_const = stars > 0 and "const" in re.findall(r"\w+", before_star)
    base = " ".join(t for t in _IDENT.findall(typ) if t not in _QUALIFIERS)
    const = "const " if is_const else ""
    if stars > 1:
        dtype, ctype = None, const + base + "*" * stars
    elif stars == 1:
        known = C_TYPES.get(base) or VECTOR_TYPES.get(base)   # void / structs: any dtype
        dtype, ctype = (np.dtype(known) if known else None), const + base + "*"
    else:
        if base not in C_TYPES:
            raise ValueError(f"kernel {kernel}: parameter {index} ({name}) has type {base!r}, "
                             "which cannot be passed from Python")
        dtype, ctype = np.dtype(C_TYPES[base]), base
    return Param(index=index, ctype=ctype, name=name, is_pointer=stars > 0, base=base,
                 dtype=dtype, is_const=is_const)


def parse_kernels(text: str) -> dict:
    """``{kernel_name: [Param, ...]}`` for every ``__global__`` function *definition*
    (``extern "C"`` or not); a name defined twice is a ``ValueError``."""
    kernels = {}
    for f in global_functions(text):
        if not f.is_definition:
            continue
        if f.name in kernels:
            raise ValueError(f"kernel {f.name} is defined twice")
        kernels[f.name] = ([] if f.params in ("", "void") else
                           [_parse_param(f.name, k, p)
                            for k, p in enumerate(_split_params(f.params))])
    return kernels


def parse_launch_bounds(text: str) -> dict:
    """``{kernel_name: max_threads_per_block}`` for kernel definitions declared with
    ``__launch_bounds__(N, ...)`` where N is an integer literal or an integer ``#define``
    (other expressions are skipped). CUDA refuses a launch with more threads per block."""
    defines = int_defines(text)
    out = {}
    for f in global_functions(text):
        if f.is_definition and f.launch_bounds is not None:
            n = int_value(f.max_threads_expr, defines)
            if n is not None:
                out[f.name] = n
    return out


# ---- launch budgets: the ``// gpucnn:`` annotations ---------------------------------------

@dataclasses.dataclass
class KernelDecl:
    name: str
    file: str = ""
    line: int = 0
    block: int = DEFAULT_BLOCK
    block_dims: tuple = (DEFAULT_BLOCK, 1, 1)
    max_regs: int | None = None
    dyn_smem: int = 0
    min_occupancy: float | None = None
    launch_bounds: int | None = None
    extern_c: bool = True
    annotated: bool = False
    block_annotated: bool = False    # ``block`` came from an annotation (not a default)
    gemm: str = ""                   # "": not GEMM-like; "gate": SASS-gated; "report": shown
    min_ffma: float | None = None    # the gate's FFMA share of the main loop (None: default)
    tc: str = ""                     # "tf32" / "bf16": the HMMA kind its SASS must hold
    gemm_like = property(lambda self: bool(self.gemm))         # its SASS loop is analysed
    gemm_gated = property(lambda self: self.gemm == "gate")    # ... and gated


_ANNOT_RE = re.compile(r"//\s*gpucnn\s*:(?P<body>.*)$")
_KNOWN_KEYS = ("block", "max_regs", "dyn_smem", "min_occupancy", "gemm", "min_ffma", "tc",
               "kernel")
_GEMM_VALUES = {"1": "gate", "report": "report", "0": ""}
TC_KINDS = ("tf32", "bf16")


def _fraction(v):
    f = float(v[:-1]) / 100 if v.endswith("%") else float(v)
    if not 0.0 <= f <= 1.0:
        raise ValueError(v)
    return f


def _parse_size(v):
    v = v.strip().lower()
    mult = 1
    if v.endswith("kb") or v.endswith("k"):
        mult, v = 1024, v.rstrip("b")[:-1]
    return int(float(v) * mult)


def _int(v, defines):
    n = int_value(v, defines)
    if n is None:
        raise ValueError(v)
    return n


def _parse_annotation(body, defines):
    """``"block=256 max_regs=128"`` -> (values dict, flags set, problems list)."""
    values, flags, problems = {}, set(), []
    for tok in body.replace(",", " ").split():
        if "=" not in tok:
            flags.add(tok.lower())
            continue
        k, v = tok.split("=", 1)
        k = k.strip().lower()
        try:
            if k == "block":
                dims = [_int(x, defines) for x in ([v] if v in defines else v.split("x"))]
                if not 1 <= len(dims) <= 3 or min(dims) < 1:
                    raise ValueError(v)
                dims = (dims + [1, 1])[:3]
                values["block_dims"] = tuple(dims)
                values["block"] = dims[0] * dims[1] * dims[2]
            elif k == "max_regs":
                values["max_regs"] = _int(v, defines)
            elif k == "dyn_smem":
                values["dyn_smem"] = defines[v] if v in defines else _parse_size(v)
            elif k == "min_occupancy":
                values["min_occupancy"] = _fraction(v)
            elif k in ("gemm", "tc"):
                allowed = _GEMM_VALUES if k == "gemm" else {t: t for t in TC_KINDS}
                if v.strip().lower() not in allowed:
                    raise ValueError(v)
                values[k] = allowed[v.strip().lower()]
            elif k == "min_ffma":
                values["min_ffma"] = _fraction(v)
            elif k == "kernel":
                values["kernel"] = v.strip()
            else:
                problems.append(f"unknown annotation key {k!r} (known: "
                                f"{', '.join(_KNOWN_KEYS)})")
        except ValueError:
            problems.append(f"bad value in annotation: {tok!r}")
    for f in flags - {"defaults"}:
        problems.append(f"unknown annotation word {f!r}")
    return values, flags, problems


def _part_of_comment_block(line):
    """A line that may sit between a kernel and the annotation above it."""
    s = line.strip()
    return (s == "" or s.startswith("//") or s.startswith("/*") or s.startswith("*")
            or re.fullmatch(r'extern\s+"C"\s*\{?', s) is not None or s.startswith("template"))


def parse_kernel_decls(text, file=""):
    """Kernels declared in a ``.cu`` source and their launch budgets: ``(decls, problems)``,
    ``decls`` {kernel name: :class:`KernelDecl`}, ``problems`` the annotation errors (unknown
    keys, a ``kernel=`` naming no kernel, an annotation next to no kernel)."""
    problems = []
    lines = text.splitlines()
    defines = int_defines(text)
    annots, defaults, explicit = {}, {}, {}      # by 1-based line / file-wide / kernel=NAME
    for ln, raw in enumerate(lines, 1):
        m = _ANNOT_RE.search(raw)
        if not m:
            continue
        values, flags, probs = _parse_annotation(m.group("body"), defines)
        problems += [f"{file}:{ln}: {p}" for p in probs]
        if "defaults" in flags:
            defaults.update(values)
        elif "kernel" in values:
            explicit.setdefault(values.pop("kernel"), {}).update(values | {"_line": ln})
        else:
            annots[ln] = values
    decls, used = {}, set()
    for f in global_functions(text):
        line = text.count("\n", 0, f.offset) + 1
        near = {}
        ln = line - 1
        while ln >= 1 and _part_of_comment_block(lines[ln - 1]):
            if ln in annots:
                near = annots[ln] | near          # the nearest annotation wins
                used.add(ln)
            ln -= 1
        # annotations on the declaration's own lines (up to its closing parenthesis)
        for k in range(line, text.count("\n", 0, f.params_end) + 2):
            if k in annots:
                near = near | annots[k]
                used.add(k)
        values = dict(defaults) | near | explicit.get(f.name, {})
        lb = None if f.launch_bounds is None else int_value(f.max_threads_expr, defines)
        d = KernelDecl(name=f.name, file=file, line=line, launch_bounds=lb,
                       extern_c=f.extern_c,
                       annotated=bool(near) or f.name in explicit or bool(defaults))
        if "block" in values:
            d.block, d.block_dims = values["block"], values["block_dims"]
            d.block_annotated = True
        elif lb:
            d.block, d.block_dims = lb, (lb, 1, 1)
        d.max_regs = values.get("max_regs")
        d.dyn_smem = int(values.get("dyn_smem", 0))
        d.min_occupancy = values.get("min_occupancy")
        d.min_ffma = values.get("min_ffma")
        d.tc = values.get("tc", "")
        d.gemm = values.get("gemm", "gate" if d.min_ffma is not None else
                            "report" if d.tc else "")
        decls[f.name] = d
    for ln in sorted(set(annots) - used):
        problems.append(f"{file}:{ln}: annotation is not next to a kernel (put it in the "
                        f"comment block right above one, or name it with kernel=NAME)")
    for name, values in explicit.items():
        if name not in decls:
            problems.append(f"{file}:{values.get('_line', 0)}: annotation names kernel "
                            f"{name!r}, which is not declared in this file")
    return decls, problems
