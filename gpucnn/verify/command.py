"""``gpucnn verify MODEL ...``: the command line. ``gpucnn/cli.py`` registers it with
:func:`add_arguments` and :func:`run`; :func:`main` (``python -m gpucnn.verify``) is the same
command with its own parser."""
from __future__ import annotations

import argparse
import math
import sys

from ..argtypes import chw_shape, int_in, seed_int
from ..backends import Backend, BackendUnavailable, get_backend
from ..backends.emu import EmuError
from ..checkpoint import CheckpointError
from ..models import NAMED as MODELS  # the names a user gives (no "sequential")
from .compare import ORDERS, TOLERANCES, verify_model
from ..membudget import check_fits, host_available_bytes
from ..outputs import OutputRefused, check_outputs, write_atomic
from .report import format_table, summary_line, to_json

__all__ = ["add_arguments", "run", "main", "MIN_TOLERANCE", "MAX_BATCH"]

MIN_TOLERANCE = 2.0 ** -23  # float32's resolution (machine epsilon): nothing finer is checkable
MAX_BATCH = 4096            # a layer-by-layer check needs a few samples, not a training batch

DESCRIPTION = """\
Check that the device kernels compute what the CPU computes for a model: one forward and one
backward (softmax cross-entropy on random labels) on the device backend and on the plain
float64 reference, from the same random input and weights, compared layer by layer as
||device - reference|| / ||reference|| for each layer's output, input gradient and parameter
gradients, plus the max-pool switches. Each layer gets the same input on both sides, so an
error shows in the layer that makes it.

Two input passes: "integer" -- every layer's input integer-valued in [-4, 4] and the weights
rounded to 4 significant bits, so conv and linear sums are exact in float32: max-pool windows
tie often, and the switches must equal the reference's exactly (the first maximum wins);
"normal" -- standard normal input with the exact weights (a near-tie float32 may decide the
other way is counted as a tie, not a mismatch).

Exit status: 0 when every layer is within tolerance, 1 otherwise, 2 on bad usage."""


def _tolerance_table():
    rows = [f"  {p:<10} {tol:<10.0e} {what}" for p, (tol, what) in TOLERANCES.items()]
    return ("default tolerances per precision (relative error, each figure of each layer):\n"
            f"  {'precision':<10} {'tolerance':<10} computed with\n" + "\n".join(rows)
            + "\n(reduced-precision modes, e.g. TF32 convolutions, will add their rows)")



def _tolerance(text):
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    if v < MIN_TOLERANCE:
        raise argparse.ArgumentTypeError(
            f"{text} is below float32's resolution ({MIN_TOLERANCE:.3g} relative): no float32 "
            f"result can be checked that finely; give at least "
            f"{math.ceil(MIN_TOLERANCE * 1e9) / 1e9:g}")
    if v >= 1:
        raise argparse.ArgumentTypeError(
            f"{text}: a relative error of 1 or more passes any result (all zeros too); give "
            f"less than 1")
    return v


def _orders(text):
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in ORDERS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of "
                                         f"{', '.join(ORDERS)}, got {text!r}")
    return tuple(dict.fromkeys(names))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``gpucnn verify`` (also sets the parser's description and the
    tolerance table as its epilog)."""
    parser.description = DESCRIPTION
    parser.epilog = _tolerance_table()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model", metavar="MODEL",
                        help=f"a model name ({', '.join(MODELS)}), a model file net.json, "
                             f"or a checkpoint .npz written by gpucnn train (its weights and "
                             f"model config are used)")
    parser.add_argument("--backend", choices=("auto", "cuda", "emu"), default="auto",
                        help="device backend to check: cuda (the GPU), emu (the same CUDA "
                             "kernels on the CPU emulator, its checks on) or auto (cuda when "
                             "usable, else emu) (default: %(default)s)")
    parser.add_argument("--input", type=chw_shape, default=None, metavar="C,H,W",
                        help="input shape of one sample (default: the model's)")
    parser.add_argument("--batch", type=int_in(1, MAX_BATCH), default=4, metavar="N",
                        help="samples per pass (default: %(default)s)")
    parser.add_argument("--algo", default=None, metavar="NAME",
                        help="convolution algorithm to check (sets GPUCNN_CONV_ALGO for the "
                             "run; needs a backend with algorithm selection) (default: the "
                             "backend's own choice)")
    parser.add_argument("--tolerance", type=_tolerance, default=None, metavar="T",
                        help="relative error allowed for every figure (default: the "
                             "precision's, see the table below: fp32 "
                             f"{TOLERANCES['fp32'][0]:.0e})")
    parser.add_argument("--orders", type=_orders, default=None, metavar="LIST",
                        help="emu only: repeat the run with the threads of each block run in "
                             f"these orders, comma-separated from {', '.join(ORDERS)}; a race "
                             "or an out-of-bounds access fails the layer it happens in "
                             "(default: forward)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write every figure, per layer and per run, with the "
                             "environment (versions, device, algorithms) to this JSON file "
                             "(default: none); an existing file is replaced only if it is a "
                             "previous verify result")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --json replace a file that is not a previous verify result "
                             "(default: refuse)")
    parser.add_argument("--seed", type=seed_int, default=0,
                        help="seed of the inputs, labels and (for a model name) the weights "
                             "(default: %(default)s)")


def _error(message):
    print(f"gpucnn verify: error: {message}", file=sys.stderr)
    return 2


def _resolve_backend(name):
    """The backend to verify on, or a BackendUnavailable; auto falls back to emu, saying why."""
    if name == "auto":
        try:
            get_backend("cuda")
            return "cuda"
        except BackendUnavailable as exc:
            print(f"gpucnn verify: no usable GPU ({exc}); checking the kernels on the CPU "
                  f"emulator instead (--backend emu)", file=sys.stderr)
            return "emu"
    if name == "cuda":
        get_backend("cuda")  # raises BackendUnavailable with the reason
    return name


def run(args) -> int:
    """Run ``gpucnn verify`` for parsed ``args``; the exit status. ``args.backend`` may also be
    a Backend object (verified as it is, once)."""
    def no_orders(name):
        return _error(f"--orders: thread orders can be chosen only on the emulator (--backend "
                      f"emu); the {name} backend runs once")

    if args.orders and args.backend == "cuda":  # before asking for a GPU: usage comes first
        return no_orders("cuda")
    try:
        check_outputs([("--json", args.json, "verify")], getattr(args, "overwrite", False),
                      "nothing was run")
        # A lower bound, whatever the model: the float64 reference's and the device's inputs
        # and their gradients, of at least a 1x28x28 sample.
        per_sample = math.prod(args.input) if args.input else 28 * 28
        check_fits(f"--batch {args.batch}" + (f" at --input {','.join(map(str, args.input))}"
                                              if args.input else ""),
                   2 * (8 + 4) * args.batch * per_sample, host_available_bytes())
    except (OutputRefused, ValueError) as exc:
        return _error(str(exc))
    try:
        backend = (args.backend if isinstance(args.backend, Backend)
                   else _resolve_backend(args.backend))
    except BackendUnavailable as exc:
        return _error(f"--backend {args.backend}: {exc}; --backend emu checks the same kernels "
                      f"on the CPU emulator")
    name = getattr(backend, "name", backend)
    if args.orders and name != "emu":
        return no_orders(name)
    try:
        result = verify_model(args.model, backend=backend, input_shape=args.input,
                              batch=args.batch, tolerance=args.tolerance, orders=args.orders,
                              seed=args.seed, algo=args.algo)
    except CheckpointError as exc:
        return _error(f"MODEL: {exc}")
    except EmuError as exc:  # the kernels do not even build for the emulator: a failure
        print(f"gpucnn verify: FAIL: the emulator could not build the kernels: {exc}",
              file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:
        return _error(str(exc))
    doc = result.to_dict()
    print(format_table(doc))
    if args.json is not None:
        data = to_json(doc).encode("utf-8")  # recognised by its keys (gpucnn/outputs.py)
        write_atomic(args.json, lambda f: f.write(data))
    if result.exit_status:  # the table is on stdout; the verdict's reason goes with the status
        tolerance = args.tolerance or doc["layers"][0]["tolerance"] if doc["layers"] else None
        print(f"gpucnn verify: {summary_line(doc)}"
              + (f" (tolerance {tolerance:g}, relative)" if tolerance else ""), file=sys.stderr)
    return result.exit_status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gpucnn verify")
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    return run(args)
