"""Argument helpers shared by the ops' geometry functions (one wording for every error)."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["pair", "output_size", "check_hparams", "is_int", "hyper", "NCHWShapes"]


def is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def pair(value, name):
    """An int, a one-element or a two-element tuple/list of ints -> a tuple of two Python
    ints (one element means the same for both axes, as in PyTorch), with a clear error
    otherwise."""
    if is_int(value):
        return int(value), int(value)
    if (isinstance(value, (tuple, list)) and len(value) in (1, 2)
            and all(is_int(v) for v in value)):
        return int(value[0]), int(value[-1])
    raise TypeError(f"{name} must be an int or a pair of ints (a one-element tuple means the "
                    f"same for both axes), got {value!r}")


def output_size(size, k, s, pad_total, d, what, axis, ceil_mode=False):
    """Output positions along one axis: floor (or ceil) of (size + pads - span) / s + 1."""
    span = d * (k - 1) + 1
    room = size + pad_total - span
    out = (-(-room // s) if ceil_mode else room // s) + 1 if room >= 0 else 0
    if out <= 0:
        raise ValueError(
            f"{what}: output {axis} would be {out} (input {size}, kernel {k}, stride {s}, "
            f"padding {pad_total}, dilation {d}); expected an output size >= 1 — use a "
            f"smaller kernel or more padding")
    return out


def check_hparams(what, **values):
    """stride/dilation >= 1, padding >= 0, each a pair."""
    for name, (a, b) in values.items():
        lo = 0 if name.startswith("padding") else 1
        if a < lo or b < lo:
            raise ValueError(f"{what}: {name} must be >= {lo}, got {(a, b)}")


class NCHWShapes:
    """The input and output shapes of a geometry record (fields N, C, H, W, Ho, Wo; the
    output has ``out_channels`` planes per image)."""

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def y_shape(self):
        return (self.N, self.out_channels, self.Ho, self.Wo)


def hyper(op, name, value, low=None, high=None, low_open=False, high_open=False):
    """``value`` as a float, or a ValueError naming the op, the argument and its range. NaN
    and inf never pass: one NaN learning rate silently turns every parameter into NaN."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    ok = (math.isfinite(v) and (low is None or (v > low if low_open else v >= low))
          and (high is None or (v < high if high_open else v <= high)))
    if not ok:
        if low is not None and high is not None:
            want = f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            want = f" {'>' if low_open else '>='} {low}"
        else:
            want = ""
        raise ValueError(f"{op}: {name} must be a finite number{want}, got {value!r}")
    return v
