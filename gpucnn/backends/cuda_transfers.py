"""Host <-> device transfer counting for the ``cuda`` backend: :func:`count_host_transfers`
counts copies made through CuPy's Python API inside a ``with`` block (the GPU test that a
training step stays on the device uses it)."""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading

import numpy as np

__all__ = ["TransferCounter", "count_host_transfers"]


class TransferCounter:
    """What :func:`count_host_transfers` saw: ``to_host`` / ``to_device`` copies and their
    bytes; ``events`` lists ``(direction, api, nbytes, shape, where)``."""

    def __init__(self):
        self.to_host = 0
        self.to_device = 0
        self.bytes_to_host = 0
        self.bytes_to_device = 0
        self.events = []
        self.unpatched = []          # API names that could not be hooked

    @property
    def count(self):
        return self.to_host + self.to_device

    def _add(self, direction, api, nbytes, shape, where):
        if direction == "to_host":
            self.to_host += 1
            self.bytes_to_host += nbytes
        else:
            self.to_device += 1
            self.bytes_to_device += nbytes
        self.events.append((direction, api, nbytes, shape, where))

    def summary(self):
        lines = [f"{self.to_host} device->host ({self.bytes_to_host} B), "
                 f"{self.to_device} host->device ({self.bytes_to_device} B)"]
        lines += [f"  {d} {api} {nb} B shape={sh} at {w}" for d, api, nb, sh, w in self.events]
        return "\n".join(lines)

    def __repr__(self):
        return (f"TransferCounter(to_host={self.to_host}, to_device={self.to_device}, "
                f"bytes_to_host={self.bytes_to_host}, bytes_to_device={self.bytes_to_device})")


_D2H_METHODS = ("get", "item", "tolist", "__float__", "__int__", "__bool__", "__complex__",
                "__index__")
_H2D_METHODS = ("set",)
_D2H_FUNCS = ("asnumpy",)
_H2D_FUNCS = ("asarray", "array", "ascontiguousarray", "asanyarray")

_tr_lock = threading.RLock()
_tr_active: list = []
_tr_saved: list = []               # (owner, name, had_own_attr, original)
_tr_tls = threading.local()
_THIS_FILE = os.path.abspath(__file__)


def _caller():
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        if os.path.abspath(fn) != _THIS_FILE and f"{os.sep}cupy" not in fn:
            return f"{os.path.basename(fn)}:{f.f_lineno} ({f.f_code.co_name})"
        f = f.f_back
    return "?"


def _nbytes(a):
    try:
        return int(a.nbytes)
    except Exception:  # noqa: BLE001
        try:
            return int(np.asarray(a).nbytes)
        except Exception:  # noqa: BLE001
            return 0


def _hook(direction, api, orig, ndarray, is_method):
    @functools.wraps(orig)
    def wrapper(*args, **kwargs):
        depth = getattr(_tr_tls, "depth", 0)
        if depth == 0 and _tr_active and args:
            a = args[0]
            counts = True
            if direction == "to_device" and not is_method:
                # asarray(x) copies only when x is host data
                counts = not isinstance(a, ndarray)
            if counts:
                src = args[1] if (is_method and direction == "to_device" and len(args) > 1) \
                    else a
                nb = _nbytes(src) if src is not None else 0
                shape = tuple(getattr(src, "shape", ()) or ())
                where = _caller()
                for c in list(_tr_active):
                    c._add(direction, api, nb, shape, where)
        _tr_tls.depth = depth + 1
        try:
            return orig(*args, **kwargs)
        finally:
            _tr_tls.depth = depth
    wrapper._gpucnn_hook = True
    return wrapper


def _install(cp, counter):
    nd = cp.ndarray
    for names, direction, owner, is_method in (
            (_D2H_METHODS, "to_host", nd, True), (_H2D_METHODS, "to_device", nd, True),
            (_D2H_FUNCS, "to_host", cp, False), (_H2D_FUNCS, "to_device", cp, False)):
        for name in names:
            orig = getattr(owner, name, None)
            if orig is None:
                continue
            had_own = name in vars(owner)
            api = f"ndarray.{name}" if is_method else f"cupy.{name}"
            try:
                setattr(owner, name, _hook(direction, api, orig, nd, is_method))
            except (TypeError, AttributeError):
                counter.unpatched.append(api)
                continue
            _tr_saved.append((owner, name, had_own, orig))


def _uninstall():
    while _tr_saved:
        owner, name, had_own, orig = _tr_saved.pop()
        try:
            if had_own:
                setattr(owner, name, orig)
            else:
                delattr(owner, name)
        except (TypeError, AttributeError):
            pass


@contextlib.contextmanager
def count_host_transfers(cupy=None):
    """Count host<->device copies made through CuPy's Python API in the block::

        with count_host_transfers() as t:
            trainer.step(x, y)
        assert t.to_host == 0, t.summary()

    Hooks (for the duration of the outermost block): device->host ``cupy.asnumpy``,
    ``ndarray.get/item/tolist`` and the ``float()/int()/bool()`` conversions; host->device
    ``cupy.asarray/array/ascontiguousarray/asanyarray`` of non-CuPy data and ``ndarray.set``.
    A copy made inside another hooked call counts once. Copies made inside compiled code
    (cuBLAS, CuPy's C internals) are not seen. ``cupy`` injects a module (tests)."""
    if cupy is None:
        import cupy
    counter = TransferCounter()
    with _tr_lock:
        if not _tr_active:
            _install(cupy, counter)
        _tr_active.append(counter)
    try:
        yield counter
    finally:
        with _tr_lock:
            _tr_active.remove(counter)
            if not _tr_active:
                _uninstall()
