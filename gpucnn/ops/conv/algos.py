"""Convolution algorithms: ONE registry of names per backend kind, the choice of one per layer
shape (``auto``), and the workspace each needs.

Kinds: ``"device"`` (the ``cuda`` and ``emu`` backends) and ``"cpu"`` (``numpy``, and
``reference``, which runs the plain definition whatever the name). Adding an algorithm is one
:class:`ConvAlgo` entry in :data:`REGISTRY`, in a file named after it. How a backend's
``auto`` picks one per call and what it records is :mod:`.selector`.

Selection, per call ``algo=`` on ``B.conv2d`` / ``B.conv2d_backward`` /
``B.conv2d_relu_maxpool(_backward)``, else ``$GPUCNN_CONV_ALGO``, else ``"auto"``:

* a name given per call must be one of the backend kind's (or ``"auto"``) and must support the
  layer, else ValueError listing the valid names;
* ``$GPUCNN_CONV_ALGO`` must name an algorithm of some kind (else ValueError); it applies where
  the backend's kind has it and it supports the layer, and means ``auto`` elsewhere (so
  ``GPUCNN_CONV_ALGO=implicit`` does not break a run that fell back to the numpy backend);
* ``auto`` chooses once per layer shape (:func:`shape_key`, forward and backward separately):
  on ``cuda`` by timing every candidate on the call's own arrays (like
  ``cudnnFindConvolution*``), the choice cached in memory and in a JSON file
  (``$GPUCNN_CACHE_DIR/conv_algos.json``, default ``~/.cache/gpucnn``) keyed by GPU, driver,
  gpucnn version and shape; on ``emu`` and ``numpy`` by :func:`heuristic`:

  ====== =================================================== ===========
  kind   geometry                                            auto picks
  ====== =================================================== ===========
  device 1x1 kernel, stride 1, no padding                    im2col (x is its own column
                                                             matrix: the plain SGEMM, no copy)
  device anything else                                       implicit (no column matrix)
  cpu    3x3, stride 1, dilation 1, one group, C, F >= 64,   winograd_f4
         >= 256 output tiles of 4x4 in the batch
  cpu    other stride 1, dilation 1, one group, padding      direct (compiled loops; dW by
         < kernel, a C++ compiler found                      the GEMM past F*K = 32768)
  cpu    other stride 1, dilation 1, one group               wide
  cpu    anything else                                       im2col
  ====== =================================================== ===========

  The cpu rows come from measurements on AMD EPYC Zen 4 (2 vCPUs, OpenBLAS; README, "CPU
  algorithms"): F(4x4, 3x3) ran AlexNet's 3x3 layers 1.5-2.2x faster than ``wide`` and lost
  with few channels or tiles; ``direct`` ran the forward and dx of every other LeNet-5 and
  AlexNet layer 1.4-4x faster than ``wide``, and its dW where F*K is small;
  ``winograd_f2`` (F(2x2, 3x3 or 5x5)) runs only when named.

``B.conv_algorithms()`` returns ``{shape key: algorithm}`` of what a backend ran so far, and
``B.set_conv_algorithms(d)`` makes ``auto`` reuse such a mapping (an exact resume).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import SimpleNamespace

from . import direct, im2col, implicit, wide, winograd
from .im2col import DW_TARGET_BLOCKS

__all__ = ["ConvAlgo", "REGISTRY", "AUTO", "ENV", "names", "valid_names", "get", "shape_key",
           "heuristic", "workspace_bytes", "parse_shape_key"]

AUTO = "auto"
ENV = "GPUCNN_CONV_ALGO"


def _always(g):
    return True


@dataclass(frozen=True)
class ConvAlgo:
    """One algorithm. ``forward(ctx, g, relu, has_bias) -> run(x, w, b) -> y`` and
    ``backward(ctx, g, need_dx, need_dw) -> run(dy, x, w) -> (dx, dw, db)`` are plan
    factories: they take the backend's context (a DeviceContext on a device, the CpuRuntime
    on the CPU) and the checked geometry, work out what they can once, and return the run of
    one call. ``workspace(g, limit) -> bytes``; ``supports(g)`` says whether it runs that
    geometry (``requires`` says what it needs, for errors)."""
    name: str
    forward: object
    backward: object
    workspace: object
    summary: str
    supports: object = _always
    requires: str = ""


def _device_im2col_workspace(g, limit, target_blocks=DW_TARGET_BLOCKS):
    """The column workspace of a chunk (im2col.conv_plan) plus the dW split's partial sums."""
    dev = SimpleNamespace(workspace_bytes=int(limit), dw_target_blocks=target_blocks)
    direct, nb = im2col.conv_plan(dev, g)
    cols = 0 if direct else nb * g.C * g.kh * g.kw * g.Ho * g.Wo * 4
    parts, _ = im2col.dw_split(dev, g, nb)
    return cols + (parts * g.F * g.K * 4 if parts > 1 else 0)


def _cpu_columns(rows):
    """Bytes of float32 column matrices of ``rows(g)`` rows per output position for as many
    images as the workspace bound holds (at least one)."""
    def workspace(g, limit):
        per_image = rows(g) * g.Ho * g.Wo * 4
        return min(g.N, max(1, int(limit) // per_image)) * per_image
    return workspace


def _cpu_im2col_forward(rt, x, w, b, g, relu):
    """wide.py's general path, with the dtype rules its wide entry point applies first."""
    if w.dtype != x.dtype:
        raise TypeError(f"conv2d: w dtype {w.dtype} differs from x dtype {x.dtype}")
    return wide._conv2d_im2col(rt, x, w, None if b is None else b.astype(x.dtype, copy=False),
                              g, relu)


def _cpu_forward(fn):
    """The plan factory of a CPU forward ``fn(rt, x, w, b, g, relu)`` (nothing to plan)."""
    return lambda rt, g, relu, has_bias: lambda x, w, b: fn(rt, x, w, b, g, relu)


def _cpu_backward(fn):
    """The plan factory of a CPU backward ``fn(rt, dy, x, w, g, need_dx, need_dw)``."""
    return lambda rt, g, need_dx, need_dw: lambda dy, x, w: fn(rt, dy, x, w, g, need_dx,
                                                                  need_dw)


REGISTRY = {
    "device": {a.name: a for a in (
        ConvAlgo("im2col", im2col.conv2d, im2col.conv2d_backward, _device_im2col_workspace,
                 "explicit im2col columns in a workspace, then the SGEMM (col2im for dx)"),
        ConvAlgo("implicit", implicit.conv2d, implicit.conv2d_backward,
                 implicit.workspace_bytes,
                 "implicit GEMM: tiles gathered from NCHW while loading shared memory"),
    )},
    "cpu": {a.name: a for a in (
        ConvAlgo("wide", _cpu_forward(wide.conv2d), _cpu_backward(wide.conv2d_backward),
                 _cpu_columns(lambda g: g.K + 1),
                 "wide columns (one contiguous slice per tap), GEMMs on OpenBLAS",
                 wide.fast_conv, "stride 1, dilation 1, one group"),
        ConvAlgo("direct", _cpu_forward(direct.conv2d), _cpu_backward(direct.conv2d_backward),
                 direct.workspace_bytes,
                 "compiled direct loops (direct.cpp, built for this CPU): no column matrix",
                 direct.supports, direct.REQUIRES),
        # the general path of wide.py (the one its wide path falls back to)
        ConvAlgo("im2col", _cpu_forward(_cpu_im2col_forward),
                 _cpu_backward(wide._conv2d_backward_im2col),
                 _cpu_columns(lambda g: g.K), "im2col columns per group, GEMMs on OpenBLAS"),
        *(ConvAlgo(name, _cpu_forward(winograd.conv2d(name)),
                   _cpu_backward(winograd.conv2d_backward(name)),
                   winograd.workspace_bytes(name),
                   f"Winograd F({m}x{m}, r x r) for r in {sizes}: forward and dx as "
                   f"transformed-tile GEMMs, dW by the wide GEMM",
                   winograd.supports(name),
                   f"stride 1, dilation 1, one group, a square "
                   f"{' or '.join(f'{r}x{r}' for r in sizes)} kernel")
          for name, (m, sizes) in winograd.VARIANTS.items()),
    )},
}


def names(kind):
    """The algorithm names of a backend kind, in registry order."""
    return tuple(REGISTRY[kind])


def valid_names(kind):
    """The names a call may ask for on a backend kind, for error messages."""
    return ", ".join((AUTO,) + names(kind))


def get(kind, name):
    """The :class:`ConvAlgo` ``name`` of ``kind``, or ValueError listing the valid names."""
    algo = REGISTRY[kind].get(name) if isinstance(name, str) else None
    if algo is None:
        raise ValueError(f"conv2d: algo={name!r} is not a {kind} convolution algorithm; "
                         f"valid: {', '.join(names(kind))}")
    return algo


def shape_key(direction, g, need_dx=True, need_dw=True):
    """The layer-shape key of a choice: ``"forward N128 C64 27x27 F192 k5x5 s1x1 p2,2,2,2
    d1x1 g1"``; backward adds what it computes (``"backward[dx,dw] ..."``)."""
    if direction == "backward":
        direction += "[" + ",".join(n for n, on in (("dx", need_dx), ("dw", need_dw)) if on) + "]"
    return (f"{direction} N{g.N} C{g.C} {g.H}x{g.W} F{g.F} k{g.kh}x{g.kw} s{g.sh}x{g.sw} "
            f"p{g.ph},{g.pw},{g.ph_end},{g.pw_end} d{g.dh}x{g.dw} g{g.groups}")


_SHAPE_KEY = re.compile(r"(forward|backward\[(?:dx|dw|dx,dw)?\]) N(\d{1,9}) C(\d{1,9}) "
                        r"(\d{1,9})x(\d{1,9}) F(\d{1,9}) k(\d{1,9})x(\d{1,9}) "
                        r"s(\d{1,9})x(\d{1,9}) p(\d{1,9}),(\d{1,9}),(\d{1,9}),(\d{1,9}) "
                        r"d(\d{1,9})x(\d{1,9}) g(\d{1,9})")


def parse_shape_key(key):
    """The geometry fields a :func:`shape_key` records (a SimpleNamespace: N, C, H, W, F, kh,
    kw, sh, sw, ph, pw, ph_end, pw_end, dh, dw, groups), for checking a saved choice against
    what its algorithm supports; ValueError for a key shape_key would not write."""
    m = _SHAPE_KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None:
        raise ValueError(f"{str(key)[:80]!r} is not a layer-shape key")
    fields = ("N", "C", "H", "W", "F", "kh", "kw", "sh", "sw", "ph", "pw", "ph_end", "pw_end",
              "dh", "dw", "groups")
    return SimpleNamespace(**dict(zip(fields, map(int, m.groups()[1:]))))


def heuristic(kind, g):
    """``auto`` without timing (the table in the module docstring)."""
    if kind == "device":
        plain = (g.kh == g.kw == g.sh == g.sw == 1
                 and not (g.ph or g.pw or g.ph_end or g.pw_end))
        return "im2col" if plain else "implicit"
    if not wide.fast_conv(g):
        return "im2col"
    return winograd.preferred(g) or ("direct" if direct.preferred(g) else "wide")


def workspace_bytes(algo, g, workspace_limit=None, kind="device"):
    """Peak workspace bytes algorithm ``algo`` of ``kind`` allocates for geometry g (over
    forward, dx and dW) with the workspace bound ``workspace_limit`` (default
    $GPUCNN_WORKSPACE_MB, else 256 MiB on a device, 32 MiB on the CPU). CPU figures count the
    column matrices only."""
    if workspace_limit is None:
        from ...cpu.buffers import CPU_WORKSPACE_MB, DEVICE_WORKSPACE_MB, default_workspace_bytes
        workspace_limit = default_workspace_bytes(
            CPU_WORKSPACE_MB if kind == "cpu" else DEVICE_WORKSPACE_MB)
    return int(get(kind, algo).workspace(g, workspace_limit))
