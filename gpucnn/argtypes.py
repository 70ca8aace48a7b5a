"""Argument types and options shared by the ``gpucnn`` command line and ``gpucnn bench``.

A leaf module: both parsers import it, so neither has to import the other.
"""
from __future__ import annotations

import argparse
import math

__all__ = ["check_number", "chw_shape", "number_list", "int_at_least", "int_in", "positive_int", "nonneg_int", "seed_int",
           "number_above", "number_in", "positive_number", "nonneg_number", "add_backend_arg",
           "BACKEND_CHOICES", "MAX_COUNT", "MAX_EPOCHS", "MAX_BATCH", "MAX_REPEAT", "MAX_SEED",
           "MAX_RETRY_S", "MAX_DIM"]

BACKEND_CHOICES = ("auto", "numpy", "cuda", "emu", "reference")

# Sane maxima of command-line sizes and counts: beyond them a value is a typo or an attack,
# never a run anyone waits for. Sizes that imply memory are checked against the machine as
# well, once the command knows what they allocate (gpucnn/membudget.py).
MAX_COUNT = 2**31 - 1     # images (--limit, --test-limit): 32-bit indices
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20       # samples per step (and the memory check)
MAX_REPEAT = 100_000      # timed runs, warm-up runs, rounds
MAX_SEED = 2**63 - 1      # fits every integer type a seed meets (JSON readers included)
MAX_RETRY_S = 3600.0      # a retry pause longer than an hour is a stuck run
MAX_DIM = 1 << 16         # one dimension of an input shape C,H,W


def int_in(minimum, maximum=None):
    """An argparse type: an integer in [minimum, maximum], with a message naming the range.
    int() of a 5,000-digit string raises ValueError: reported like any other non-integer."""
    want = (f"an integer >= {minimum}" if maximum is None
            else f"an integer >= {minimum} and <= {maximum}")

    def parse(text):
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < minimum or (maximum is not None and v > maximum):
            shown = text if len(text) <= 40 else text[:40] + "..."
            raise argparse.ArgumentTypeError(f"expected {want}, got {shown!r}")
        return v
    return parse


def int_at_least(minimum):
    """An argparse type: an integer >= minimum, with a message naming the expected value."""
    return int_in(minimum)


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)
seed_int = int_in(0, MAX_SEED)


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


def number_in(minimum, maximum):
    """An argparse type: a finite float in [minimum, maximum]."""
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and minimum <= v <= maximum):
            raise argparse.ArgumentTypeError(f"expected a finite number >= {minimum:g} and "
                                             f"<= {maximum:g}, got {text!r}")
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
                             "(tensor cores, FP32-accurate), bf16 (mixed precision: tensor "
                             "cores, 7-bit operands, FP32 accumulation, activations held in "
                             "bf16, weights and optimizer state in FP32); the numpy backend "
                             "computes in fp32 only (default: $GPUCNN_PRECISION or fp32)")


def chw_shape(text):
    """An argparse type: ``C,H,W`` -> a tuple of three ints in [1, MAX_DIM] (an image's
    shape)."""
    try:
        dims = tuple(int(t) for t in text.split(",")) if len(text) < 100 else ()
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1 or max(dims) > MAX_DIM:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise argparse.ArgumentTypeError(f"expected C,H,W with three ints in [1, {MAX_DIM}] "
                                         f"(e.g. 1,28,28), got {shown!r}")
    return dims


def number_list(text):
    """An argparse type: ``a,b,c`` -> a tuple of 1 to 3 finite numbers (per-channel values)."""
    try:
        values = tuple(float(t) for t in text.split(",")) if len(text) < 200 else ()
    except ValueError:
        values = ()
    if not 1 <= len(values) <= 3 or not all(math.isfinite(v) for v in values):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise argparse.ArgumentTypeError(f"expected 1 or 3 comma-separated finite numbers, one "
                                         f"per channel (e.g. 0.485,0.456,0.406), got {shown!r}")
    return values


def check_number(name, value, positive=False, integer=False, optional=False):
    """Raise ValueError naming ``name`` unless ``value`` is a finite number (``integer``: an
    int) >= 0 (``positive``: > 0); None passes when ``optional``. For values given in Python
    (TrainConfig), where argparse types have not checked them."""
    if optional and value is None:
        return
    if integer:
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an integer"
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value)
        want = "a finite number"
    if not (ok and (value > 0 if positive else value >= 0)):
        raise ValueError(f"{name} must be {want} {'>' if positive else '>='} 0, got {value!r}")
