"""How ``auto`` picks a convolution algorithm per layer shape, and what it picked: the
:class:`Selector` of a backend (heuristic, timed on a GPU, or fixed), the timed choices' caches
(in memory and ``$GPUCNN_CACHE_DIR/conv_algos.json``), and a run's record of its choices
(:func:`record`/:func:`restore`, so a resumed run picks the same). The registry, the heuristic
and the workspace sizes are in :mod:`.algos`.
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

from ...filerules import parse_json
from .algos import (AUTO, ENV, REGISTRY, get, heuristic, names, parse_shape_key, shape_key,
                    valid_names)

__all__ = ["CACHE_FILE", "cache_path", "device_identity", "wall_timer", "forget_timings",
           "Selector", "record", "restore"]

CACHE_FILE = "conv_algos.json"
_MAX_CACHE_BYTES = 1 << 20  # thousands of layer shapes; past this the file is not ours


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
                # Our own cache, but a file on disk: bounded before it is read, every field
                # checked (a chosen name is checked again against the registry when used).
                if self.path.stat().st_size > _MAX_CACHE_BYTES:
                    raise ValueError(f"larger than {_MAX_CACHE_BYTES} bytes")
                doc = parse_json(self.path.read_bytes(), self.path.name, ValueError,
                                 _MAX_CACHE_BYTES)
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
                             f"{valid_names(self.kind)}")
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
        mapping = dict(mapping)
        for key, name in mapping.items():  # all checked before any is taken
            algo = get(self.kind, name)
            if not algo.supports(parse_shape_key(key)):
                raise ValueError(f"{name!r} cannot run the layer {key!r}: it needs "
                                 f"{algo.requires}")
        for key, name in mapping.items():
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
