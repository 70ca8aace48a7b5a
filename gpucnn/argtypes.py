"""Argument types and options shared by the ``gpucnn`` command line and ``gpucnn bench``.

A leaf module: both parsers import it, so neither has to import the other.
"""
from __future__ import annotations

import argparse
import math

__all__ = ["chw_shape", "int_at_least", "positive_int", "nonneg_int", "number_above", "positive_number",
           "nonneg_number", "add_backend_arg", "BACKEND_CHOICES"]

BACKEND_CHOICES = ("auto", "numpy", "cuda", "emu", "reference")


def int_at_least(minimum):
    """An argparse type: an integer >= minimum, with a message naming the expected value."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return v
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def number_above(minimum, inclusive):
    """An argparse type: a finite float > minimum (>= with ``inclusive``). float() alone
    accepts 'nan' and 'inf', which would only fail later, or silently."""
    op = ">=" if inclusive else ">"

    def parse(text):
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and (v >= minimum if inclusive else v > minimum)):
            raise argparse.ArgumentTypeError(f"expected a finite number {op} {minimum}, got "
                                             f"{text!r}")
        return v
    return parse


positive_number = number_above(0, inclusive=False)
nonneg_number = number_above(0, inclusive=True)


def add_backend_arg(parser, note=""):
    """``--backend``: the compute backend; ``note`` is appended to its help."""
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                        help="compute backend: auto (cuda when usable, else numpy), numpy, "
                             "cuda, emu (the CUDA kernels on the CPU emulator) or reference "
                             "(the plain definitions: slow, for checking a result) "
                             "(default: $GPUCNN_BACKEND or auto)" + note)


def add_precision_arg(parser, precisions):
    """``--precision``: the arithmetic of the GEMMs and convolutions, one of ``precisions``
    (gpucnn.ops.precision.PRECISIONS, passed in: this module depends on nothing)."""
    parser.add_argument("--precision", type=str.lower, choices=precisions, default=None,
                        help="arithmetic of the convolutions and fully connected layers: fp32 "
                             "(CUDA cores), tf32 (tensor cores, 10-bit operands), 3xtf32 "
                             "(tensor cores, FP32-accurate), bf16 (tensor cores, 7-bit "
                             "operands, FP32 accumulation and storage); the numpy backend "
                             "computes in fp32 only (default: $GPUCNN_PRECISION or fp32)")


def chw_shape(text):
    """An argparse type: ``C,H,W`` -> a tuple of three positive ints (an image's shape)."""
    try:
        dims = tuple(int(t) for t in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W with three positive ints (e.g. "
                                         f"1,28,28), got {text!r}")
    return dims
