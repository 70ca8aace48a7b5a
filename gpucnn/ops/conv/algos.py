"""Convolution algorithms: ONE registry of names per backend kind, the choice of one per layer
shape (``auto``), and the workspace each needs.

Kinds: ``"device"`` (the ``cuda`` and ``emu`` backends) and ``"cpu"`` (``numpy``, and
``reference``, which runs the plain definition whatever the name). Adding an algorithm is one
:class:`ConvAlgo` entry in :data:`REGISTRY`.

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

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from . import cpu, device, direct, implicit, winograd
from .device import DW_TARGET_BLOCKS

__all__ = ["ConvAlgo", "REGISTRY", "AUTO", "ENV", "CACHE_FILE", "names", "get", "shape_key",
           "heuristic", "workspace_bytes", "cache_path", "device_identity", "wall_timer",
           "forget_timings", "Selector"]

AUTO = "auto"
ENV = "GPUCNN_CONV_ALGO"
CACHE_FILE = "conv_algos.json"


def _always(g):
    return True


@dataclass(frozen=True)
class ConvAlgo:
    """One algorithm. ``forward(ctx, x, w, b, g, relu) -> y`` and ``backward(ctx, dy, x, w, g,
    need_dx, need_dw) -> (dx, dw, db)`` take the backend's context first (the backend itself
    on a device, its CpuRuntime on the CPU); ``workspace(g, limit) -> bytes``; ``supports(g)``
    says whether it runs that geometry (``requires`` says what it needs, for errors)."""
    name: str
    forward: object
    backward: object
    workspace: object
    summary: str
    supports: object = _always
    requires: str = ""


def _device_im2col_workspace(g, limit, target_blocks=DW_TARGET_BLOCKS):
    """The column workspace of a chunk (device.conv_plan) plus the dW split's partial sums."""
    dev = SimpleNamespace(workspace_bytes=int(limit), dw_target_blocks=target_blocks)
    direct, nb = device.conv_plan(dev, g)
    cols = 0 if direct else nb * g.C * g.kh * g.kw * g.Ho * g.Wo * 4
    parts, _ = device.dw_split(dev, g, nb)
    return cols + (parts * g.F * g.K * 4 if parts > 1 else 0)


def _cpu_columns(rows):
    """Bytes of float32 column matrices of ``rows(g)`` rows per output position for as many
    images as the workspace bound holds (at least one)."""
    def workspace(g, limit):
        per_image = rows(g) * g.Ho * g.Wo * 4
        return min(g.N, max(1, int(limit) // per_image)) * per_image
    return workspace


def _cpu_im2col_forward(rt, x, w, b, g, relu):
    """cpu.py's general path, with the dtype rules its wide entry point applies first."""
    if w.dtype != x.dtype:
        raise TypeError(f"conv2d: w dtype {w.dtype} differs from x dtype {x.dtype}")
    return cpu._conv2d_im2col(rt, x, w, None if b is None else b.astype(x.dtype, copy=False),
                              g, relu)


REGISTRY = {
    "device": {a.name: a for a in (
        ConvAlgo("im2col", device.conv2d, device.conv2d_backward, _device_im2col_workspace,
                 "explicit im2col columns in a workspace, then the SGEMM (col2im for dx)"),
        ConvAlgo("implicit", implicit.conv2d, implicit.conv2d_backward,
                 implicit.workspace_bytes,
                 "implicit GEMM: tiles gathered from NCHW while loading shared memory"),
    )},
    "cpu": {a.name: a for a in (
        ConvAlgo("wide", cpu.conv2d, cpu.conv2d_backward, _cpu_columns(lambda g: g.K + 1),
                 "wide columns (one contiguous slice per tap), GEMMs on OpenBLAS",
                 cpu.fast_conv, "stride 1, dilation 1, one group"),
        ConvAlgo("direct", direct.conv2d, direct.conv2d_backward, direct.workspace_bytes,
                 "compiled direct loops (direct.cpp, built for this CPU): no column matrix",
                 direct.supports, direct.REQUIRES),
        # the general path of cpu.py (the one its wide path falls back to)
        ConvAlgo("im2col", _cpu_im2col_forward, cpu._conv2d_backward_im2col,
                 _cpu_columns(lambda g: g.K), "im2col columns per group, GEMMs on OpenBLAS"),
        *(ConvAlgo(name, winograd.conv2d(name), winograd.conv2d_backward(name),
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


def _valid(kind):
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


def heuristic(kind, g):
    """``auto`` without timing (the table in the module docstring)."""
    if kind == "device":
        plain = (g.kh == g.kw == g.sh == g.sw == 1
                 and not (g.ph or g.pw or g.ph_end or g.pw_end))
        return "im2col" if plain else "implicit"
    if not cpu.fast_conv(g):
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


# ---- the timed choice (cuda) --------------------------------------------------------------
def cache_path():
    """Where timed choices persist: $GPUCNN_CACHE_DIR/conv_algos.json (default
    ~/.cache/gpucnn)."""
    root = os.environ.get("GPUCNN_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "gpucnn") / CACHE_FILE


def _gpucnn_version():
    # The root package is imported before any submodule; reading its attribute here adds no
    # import edge against the layering (ops must not import the package above them).
    return getattr(sys.modules.get("gpucnn"), "__version__", "unknown")


def device_identity(dev):
    """``"<GPU> | driver <version> | gpucnn <version>"``: what a timed choice is valid for."""
    driver = "unknown"
    try:
        if getattr(dev.xp, "__name__", "") == "cupy":
            driver = str(dev.xp.cuda.runtime.driverGetVersion())
    except Exception:  # noqa: BLE001 - an unknown driver only weakens the key
        pass
    gpu = getattr(dev, "device_name", "") or dev.name
    return f"{gpu} | driver {driver} | gpucnn {_gpucnn_version()}"


def wall_timer(synchronize, reps=3):
    """timer(name, run) -> seconds per run: one warm-up run (compiles, allocates), then the
    mean of ``reps`` runs between device synchronisations."""
    def timer(name, run):
        run()
        synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            run()
        synchronize()
        return (time.perf_counter() - t0) / reps
    return timer


_warned = set()


def _warn_once(path, what):
    if str(path) not in _warned:
        _warned.add(str(path))
        warnings.warn(f"gpucnn: {what}", RuntimeWarning, stacklevel=4)


class _FileCache:
    """{key: algorithm} in a JSON file; a corrupt or unreadable file is ignored with one
    warning (and rewritten by the next choice), an unwritable one too."""

    def __init__(self, path):
        self.path = path
        self.entries = None

    def _load(self):
        if self.entries is None:
            self.entries = {}
            try:
                doc = json.loads(self.path.read_text())
                choices = doc["choices"]
                if not isinstance(choices, dict):
                    raise ValueError("'choices' is not an object")
                self.entries = {k: v for k, v in choices.items() if isinstance(v, str)}
            except FileNotFoundError:
                pass
            except (OSError, ValueError, KeyError, TypeError) as exc:
                _warn_once(self.path, f"ignoring the corrupt convolution-algorithm cache "
                                      f"{self.path} ({type(exc).__name__}: {exc})")
        return self.entries

    def get(self, key):
        return self._load().get(key)

    def put(self, key, name):
        entries = self._load()
        entries[key] = name
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"schema": 1, "choices": entries}, indent=1,
                                      sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            _warn_once(self.path, f"cannot write the convolution-algorithm cache {self.path}: "
                                  f"{exc}")


_memory = {}  # timed choices of this process: {identity | shape key: algorithm}


def forget_timings():
    """Forget this process's timed choices (the file cache stays): the next ``auto`` on a GPU
    reads the file, or times again."""
    _memory.clear()


class Selector:
    """A backend's algorithm choices. ``owner`` is the backend: its ``conv_kind`` ("device" or
    "cpu"), its ``conv_policy`` ("timed": time the candidates, "heuristic", "fixed": validate
    only, the reference) and, for "timed", its ``synchronize``. ``timer(name, run) ->
    seconds`` may be replaced (tests)."""

    def __init__(self, owner):
        self.owner = owner
        self.kind = owner.conv_kind
        self.policy = owner.conv_policy
        self.chosen = {}  # {shape key: algorithm that ran}
        self.auto = {}    # {shape key: what auto picked / was preset to}
        self.timer = wall_timer(owner.synchronize)
        self._identity = None
        self._file = None

    def request(self, algo, g):
        """The name a call asks for: ``algo``, else $GPUCNN_CONV_ALGO, else "auto", checked."""
        if algo is None:
            env = os.environ.get(ENV, "").strip()
            if not env or env == AUTO:
                return AUTO
            if not any(env in REGISTRY[k] for k in REGISTRY):
                valid = "; ".join(f"{k}: {', '.join(names(k))}" for k in REGISTRY)
                raise ValueError(f"{ENV}={env!r} is not a convolution algorithm (valid: auto; "
                                 f"{valid})")
            ok = env in REGISTRY[self.kind] and REGISTRY[self.kind][env].supports(g)
            return env if ok else AUTO
        if algo == AUTO:
            return AUTO
        if not isinstance(algo, str) or algo not in REGISTRY[self.kind]:
            raise ValueError(f"conv2d: algo={algo!r} is not a convolution algorithm of the "
                             f"{self.owner.name} backend ({self.kind}); valid: "
                             f"{_valid(self.kind)}")
        a = REGISTRY[self.kind][algo]
        if not a.supports(g):
            fits = [n for n, b in REGISTRY[self.kind].items() if b.supports(g)]
            raise ValueError(f"conv2d: algo={algo!r} needs {a.requires}; for this layer use "
                             f"one of: {', '.join([AUTO] + fits)}")
        return algo

    def select(self, direction, g, algo, run, need_dx=True, need_dw=True):
        """The algorithm this call runs (recorded under its shape key). ``run(name)`` runs
        the call with algorithm ``name``: the timed policy times the candidates with it."""
        name = self.request(algo, g)
        if self.policy == "fixed":
            return name
        key = shape_key(direction, g, need_dx, need_dw)
        if name == AUTO:
            name = self.auto.get(key)
            if name is None:
                name = self.auto[key] = self._decide(key, g, run)
        self.chosen[key] = name
        return name

    def preset(self, mapping):
        """Make auto pick ``mapping[shape key]`` (e.g. a checkpoint's ``conv_algorithms()``)."""
        for key, name in dict(mapping).items():
            get(self.kind, name)
            self.auto[str(key)] = name

    def _decide(self, key, g, run):
        candidates = [n for n, a in REGISTRY[self.kind].items() if a.supports(g)]
        if self.policy != "timed" or len(candidates) == 1:
            return heuristic(self.kind, g)
        if self._identity is None:
            self._identity = device_identity(self.owner)
            self._file = _FileCache(cache_path())
        tkey = f"{self._identity} | {key}"
        name = _memory.get(tkey) or self._file.get(tkey)
        if name not in candidates:
            name = self._time(candidates, run)
            self._file.put(tkey, name)
        _memory[tkey] = name
        return name

    def _time(self, candidates, run):
        times, error = {}, None
        for n in candidates:
            try:
                times[n] = float(self.timer(n, lambda n=n: run(n)))
            except Exception as exc:  # noqa: BLE001 - a candidate that fails is not chosen
                error = exc
        if not times:
            raise error
        return min(times, key=times.get)  # ties: registry order


def record(dev):
    """What a training run records of a backend's convolution algorithms: the setting
    ($GPUCNN_CONV_ALGO or auto; ``--resume`` compares it) and what ran per layer shape
    (restored by :func:`restore`, so that ``auto`` runs the same algorithms again after a
    resume: their rounding differs)."""
    setting = os.environ.get(ENV, "").strip() or AUTO
    return {"setting": setting, "kind": dev.conv_selector.kind, "chosen": dev.conv_algorithms()}


def restore(dev, saved):
    """Preset ``auto`` from a :func:`record` of the same kind of backend (a record of another
    kind, or none, is ignored); a malformed one is a ValueError."""
    if not isinstance(saved, dict) or saved.get("kind") != dev.conv_selector.kind:
        return
    chosen = saved.get("chosen", {})
    if not isinstance(chosen, dict):
        raise ValueError(f"chosen must be an object of shape key -> algorithm, got {chosen!r}")
    dev.set_conv_algorithms(chosen)
