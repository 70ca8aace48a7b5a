"""2-D pooling: max (with switches, dilation), average, power-average (LP); ceil_mode for all.

Where each part lives (one hop apart):
  geometry ........ here: :class:`PoolGeom`, :func:`pool_geometry`, :func:`lp_norm_type`
  reference ....... ``reference.py``: the plain definitions, the oracle of every test
  tuned CPU ....... ``cpu.py`` (max-pool over plain windows by tap trees, scatter backward)
  device .......... ``device.py``: launches of ``kernels/pool.cu``
  tests ........... ``tests/ops/test_pool.py``

Conventions (PyTorch's): window ``i`` of an axis starts at ``i * stride - padding`` and has
taps ``dilation`` apart; max-pool pads with -inf; switches are int32 indices ``h * W + w``
into the *unpadded* input plane; ties go to the first maximum in row-major window order (the
GPU kernels match this exactly). Output sizes round down, or up with ``ceil_mode`` as long as
the last window starts inside the input or the left padding. Average pooling divides by
``divisor_override`` if given, else by the window clipped to the padded input
(``count_include_pad``, the default) or to the input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..common import NCHWShapes, check_hparams, is_int, output_size, pair

__all__ = ["PoolGeom", "pool_geometry", "check_switches", "lp_norm_type"]


@dataclass(frozen=True)
class PoolGeom(NCHWShapes):
    N: int
    C: int
    H: int
    W: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    Ho: int
    Wo: int
    dh: int = 1
    dw: int = 1
    # average pooling's divisor rule (max-pool ignores both)
    count_include_pad: bool = True
    divisor_override: Optional[int] = None

    @property
    def out_channels(self):
        return self.C

    @property
    def span_h(self):
        return self.dh * (self.kh - 1) + 1

    @property
    def span_w(self):
        return self.dw * (self.kw - 1) + 1

    @property
    def plain(self):
        """Every window is kh x kw adjacent taps inside the input: no padding, no dilation,
        no ceil_mode window reaching past the edge (the tuned CPU paths need this)."""
        return (not (self.ph or self.pw) and self.dh == self.dw == 1
                and (self.Ho - 1) * self.sh + self.kh <= self.H
                and (self.Wo - 1) * self.sw + self.kw <= self.W)

    @property
    def overlapping(self):
        """Some input element can lie in two windows (then a backward cannot scatter)."""
        return self.sh < self.span_h or self.sw < self.span_w


def _bool(value, name, what):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what}: {name} must be True or False, got {value!r}")
    return bool(value)


def _axis_size(size, k, s, p, d, ceil_mode, what, axis):
    """PyTorch's pooling output size along one axis."""
    if not ceil_mode:
        return output_size(size, k, s, 2 * p, d, what, axis)
    out = -(-(size + 2 * p - d * (k - 1) - 1) // s) + 1
    if (out - 1) * s >= size + p:
        out -= 1  # the last window would start in the right padding: PyTorch drops it
    if out <= 0:
        output_size(size, k, s, 2 * p, d, what, axis)  # raises the shared error
    return out


def _check_windows_reach_input(size, k, s, p, d, out, what, axis):
    """With dilation a window starting in the left padding can step over the whole input
    (PyTorch then returns -inf and a switch outside the plane): refuse it."""
    if d == 1:
        return  # padding <= k // 2 leaves an undilated window at least one tap inside
    for i in range(min(out, -(-p // s))):  # only windows that start in the padding
        start = i * s - p
        if not any(0 <= start + t * d < size for t in range(k)):
            raise ValueError(f"{what}: window {i} along the {axis} has no tap inside the "
                             f"input (input {size}, kernel {k}, dilation {d}, padding {p}); "
                             f"expected every window to reach the input — use less padding "
                             f"or dilation")


def pool_geometry(x_shape, kernel_size, stride=None, padding=0, what="max_pool2d", *,
                  dilation=1, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """The checked :class:`PoolGeom` of a pooling call (PyTorch's rules and errors)."""
    kh, kw = pair(kernel_size, "kernel_size")
    # PyTorch's default stride: None or an empty sequence (its signature's default is [])
    empty = stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0)
    sh, sw = (kh, kw) if empty else pair(stride, "stride")
    ph, pw = pair(padding, "padding")
    dh, dw = pair(dilation, "dilation")
    ceil_mode = _bool(ceil_mode, "ceil_mode", what)
    count_include_pad = _bool(count_include_pad, "count_include_pad", what)
    if divisor_override is not None and not (is_int(divisor_override) and divisor_override > 0):
        raise ValueError(f"{what}: divisor_override must be None or a positive int, got "
                         f"{divisor_override!r}")
    if kh < 1 or kw < 1:
        raise ValueError(f"{what}: kernel_size must be >= 1, got {(kh, kw)}")
    check_hparams(what, stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw))
    if ph > kh // 2 or pw > kw // 2:
        # Beyond half the kernel a window can lie wholly in the padding (PyTorch's rule,
        # on the undilated kernel as PyTorch checks it).
        raise ValueError(f"{what}: padding {(ph, pw)} must be at most half of kernel_size "
                         f"{(kh, kw)}")
    if len(x_shape) != 4:
        raise ValueError(f"{what}: x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    N, C, H, W = (int(s) for s in x_shape)
    Ho = _axis_size(H, kh, sh, ph, dh, ceil_mode, what, "height")
    Wo = _axis_size(W, kw, sw, pw, dw, ceil_mode, what, "width")
    _check_windows_reach_input(H, kh, sh, ph, dh, Ho, what, "height")
    _check_windows_reach_input(W, kw, sw, pw, dw, Wo, what, "width")
    return PoolGeom(N, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, dh, dw, count_include_pad,
                    None if divisor_override is None else int(divisor_override))


def lp_norm_type(norm_type, what="lp_pool2d"):
    """The power p of LP pooling as a float: a finite number > 0."""
    ok = isinstance(norm_type, (int, float, np.integer, np.floating)) and not isinstance(
        norm_type, (bool, np.bool_))
    if not ok or not math.isfinite(norm_type) or norm_type <= 0:
        raise ValueError(f"{what}: norm_type must be a finite number > 0, got {norm_type!r}")
    return float(norm_type)


def check_switches(switches, H, W):
    """Switches must point into their H x W input plane (they index it without checks)."""
    plane = H * W
    if switches.size and (switches.min() < 0 or switches.max() >= plane):
        raise ValueError(f"max_pool2d_backward: switches must lie in [0, {plane}) for "
                         f"input planes of {H}x{W}")
