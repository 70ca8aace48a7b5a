"""2-D convolution (NCHW, weight ``(C_out, C_in/groups, kH, kW)``, zero padding).

Padding is an int, a pair of ints (the same on both sides of an axis), or PyTorch's strings:
``'valid'`` (none) and ``'same'`` (stride 1 only: total ``dilation * (k - 1)`` per axis, the
top/left ``total // 2`` and the bottom/right the rest, so even kernels pad one more at the
end). :class:`ConvGeom` keeps the top/left padding as ``ph``/``pw`` and the bottom/right one
as ``ph_end``/``pw_end``; every implementation pads with both.

Where each part lives (one hop apart; an algorithm's file is named after its registry entry):
  geometry ........ here: :class:`ConvGeom`, :func:`conv_geometry`
  reference ....... ``reference.py``: the plain definition, the oracle of every test
  tuned CPU ....... ``wide.py`` (wide columns; im2col + GEMM, the general path),
                    ``wide_fused.py`` (conv+ReLU+pool on wide columns), ``winograd.py``
                    (Winograd F(2x2,3x3/5x5), F(4x4,3x3)), ``direct.py`` (compiled loops,
                    ``direct.cpp``, conv+ReLU+pool fused too)
  device .......... ``im2col.py``: im2col (``kernels/im2col.cu``) + SGEMM (:mod:`..gemm`,
                    ``kernels/sgemm.cu``) + bias gradients (``kernels/conv_reduce.cu``);
                    ``implicit.py``: implicit GEMM (``kernels/conv_implicit.cu``), no columns
  algorithms ...... ``algos.py``: the registry of names per backend kind (device: im2col,
                    implicit; cpu: wide, direct, im2col, winograd_f2, winograd_f4), the
                    heuristic, workspace bytes; ``selector.py``: how ``auto`` picks (timed on
                    a GPU) and what a run records
  entry points .... ``api.py``: ``B.conv2d``, ``B.conv2d_backward``, the fused
                    ``B.conv2d_relu_maxpool`` (+ backward), their plans
  tests ........... ``tests/ops/test_conv.py``, ``tests/ops/test_fused.py``,
                    ``tests/ops/test_conv_implicit.py`` (implicit kernels, the registry),
                    ``tests/ops/test_conv_winograd.py``, ``tests/ops/test_conv_direct.py``
"""
from __future__ import annotations

from dataclasses import dataclass

from ..common import NCHWShapes, check_hparams, is_int, output_size, pair

__all__ = ["ConvGeom", "conv_geometry"]


@dataclass(frozen=True)
class ConvGeom(NCHWShapes):
    N: int
    C: int
    H: int
    W: int
    F: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    groups: int
    Ho: int
    Wo: int
    ph_end: int = None  # bottom / right padding; None: the same as ph / pw
    pw_end: int = None

    def __post_init__(self):
        if self.ph_end is None:
            object.__setattr__(self, "ph_end", self.ph)
        if self.pw_end is None:
            object.__setattr__(self, "pw_end", self.pw)

    @property
    def symmetric(self):
        return self.ph == self.ph_end and self.pw == self.pw_end

    @property
    def conv_kw(self):
        """stride/padding/dilation/groups keywords that give this geometry again (for ops
        composed of backend calls). Asymmetric padding only comes from 'same', so 'same'
        reproduces it."""
        return dict(stride=(self.sh, self.sw),
                    padding=(self.ph, self.pw) if self.symmetric else "same",
                    dilation=(self.dh, self.dw), groups=self.groups)

    @property
    def Cg(self):  # input channels per group
        return self.C // self.groups

    @property
    def Fg(self):  # output channels per group
        return self.F // self.groups

    @property
    def K(self):  # rows of one group's im2col matrix
        return self.Cg * self.kh * self.kw

    @property
    def out_channels(self):
        return self.F

    @property
    def w_shape(self):
        return (self.F, self.Cg, self.kh, self.kw)

    def flops(self):
        """Multiply-adds counted as 2 FLOPs, forward pass."""
        return 2 * self.N * self.F * self.Ho * self.Wo * self.K


_PADDING_STRINGS = ("same", "valid")


def _check_padding_string(padding, stride, what):
    if padding not in _PADDING_STRINGS:  # case-sensitive, like PyTorch
        raise ValueError(f"{what}: padding must be an int, a pair of ints, 'same' or 'valid', "
                         f"got {padding!r}")
    if padding == "same" and stride != (1, 1):
        raise ValueError(f"{what}: padding='same' is not supported for strided convolutions "
                         f"(stride={stride})")


def _string_padding(padding, dilation, kernel):
    """((top, left), (bottom, right)) of PyTorch's 'valid' / 'same'."""
    if padding == "valid":
        return (0, 0), (0, 0)
    total = [d * (k - 1) for d, k in zip(dilation, kernel)]
    return tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)


def conv_geometry(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1):
    what = "conv2d"
    by_name = isinstance(padding, str)
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    if by_name:
        check_hparams(what, stride=stride, dilation=dilation)
        _check_padding_string(padding, stride, what)
    else:
        padding = pair(padding, "padding")
        check_hparams(what, stride=stride, padding=padding, dilation=dilation)
    if len(x_shape) != 4:
        raise ValueError(f"{what}: x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"{what}: w must be 4-D (C_out, C_in/groups, kH, kW), got shape "
                         f"{tuple(w_shape)}")
    if not is_int(groups) or groups < 1:
        raise ValueError(f"{what}: groups must be a positive int, got {groups!r}")
    N, C, H, W = (int(s) for s in x_shape)
    F, Cg, kh, kw = (int(s) for s in w_shape)
    if C % groups or F % groups:
        raise ValueError(f"{what}: groups={groups} must divide in_channels ({C}) and "
                         f"out_channels ({F})")
    if Cg * groups != C:
        raise ValueError(f"{what}: w expects {Cg * groups} input channels (w.shape[1]={Cg} x "
                         f"groups={groups}) but x has C={C}")
    if min(N, kh, kw, F) < 1:
        raise ValueError(f"{what}: empty dimension in x {tuple(x_shape)} or w {tuple(w_shape)}")
    padding, end = (_string_padding(padding, dilation, (kh, kw)) if by_name
                    else (padding, padding))
    Ho = output_size(H, kh, stride[0], padding[0] + end[0], dilation[0], what, "height")
    Wo = output_size(W, kw, stride[1], padding[1] + end[1], dilation[1], what, "width")
    return ConvGeom(N, C, H, W, F, kh, kw, *stride, *padding, *dilation, int(groups), Ho, Wo,
                    *end)
