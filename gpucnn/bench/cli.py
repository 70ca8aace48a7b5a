"""``gpucnn bench``: command-line entry; :func:`main` returns the exit status.

Exit status: 0 every benchmark ran; 1 some benchmark failed (listed in the output and under
``errors`` in the JSON); 2 bad arguments or the backend is unavailable.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from ..argtypes import (MAX_BATCH, MAX_REPEAT, add_backend_arg, add_precision_arg, int_in,
                        number_in, seed_int)
from ..ops.precision import PRECISIONS
from . import layers as _layers
from . import nets as _nets

__all__ = ["main", "build_parser", "build_config"]

MAX_GEMM = 1 << 17  # 256 GiB of operands: beyond any device; memory is checked as well
MODEL_LAYER_SET = {"lenet5": "lenet5", "alexnet": "alexnet", "alexnet_cifar": "alexnet"}
EPILOG = """\
examples:
  gpucnn bench --model lenet5 --backend numpy --json out.json     # quick: LeNet-5 net + layers
  gpucnn bench --model alexnet_cifar --compare torch              # against PyTorch in its own process
  gpucnn bench --layers alexnet --nets none --roofline            # AlexNet layer set + roofline
  gpucnn bench --full --json full.json --plot full.png            # everything (slow on a CPU)
  gpucnn bench --backend emu                                      # emulator smoke run
  gpucnn bench --host-overhead --model lenet5 --json host.json    # host time per launch

Default batch sizes: nets lenet5 128, alexnet_cifar 128, alexnet 16 (on a GPU or with --full
also 128);
layer sets 128, except the AlexNet set on a CPU backend, 16 (128 with --full). --batch-size N
overrides all of them. Timing: warm-up runs excluded, then --repeat timed runs per benchmark,
alternated with PyTorch's own processes when comparing (--rounds); medians with min/max/IQR
are reported, and per comparison the spread of the per-round speed ratios.
"""



def _net_list(text):
    if text.strip().lower() in ("none", ""):
        return []
    out = []
    for t in text.split(","):
        key = t.strip().replace("-", "_").lower()
        if key not in _nets.DEFAULT_NET_BATCH:
            raise argparse.ArgumentTypeError(
                f"unknown net {t.strip()!r}; choose from {', '.join(_nets.DEFAULT_NET_BATCH)}")
        out.append(key)
    return out


def _mode_list(text):
    out = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in out if m not in _nets.NET_MODES]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"modes must be among {', '.join(_nets.NET_MODES)}; "
                                         f"got {text!r}")
    return tuple(out)


def build_parser():
    ap = argparse.ArgumentParser(
        prog="gpucnn bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Layer and network throughput of a gpucnn backend, optionally against "
                    "PyTorch, with the device's measured GEMM peak, roofline floors and GPU "
                    "telemetry.", epilog=EPILOG)
    ap.add_argument("--model", default="lenet5", choices=sorted(MODEL_LAYER_SET),
                    help="the default run: this net's benchmarks plus its layer set "
                         "(default: %(default)s)")
    add_backend_arg(ap, note="; emu runs a smoke test with tiny shapes")
    add_precision_arg(ap, PRECISIONS)
    ap.add_argument("--layers", choices=("alexnet", "lenet5", "tiny", "all", "none"),
                    default=None, help="layer set (default: the model's)")
    ap.add_argument("--nets", type=_net_list, default=None,
                    help="comma-separated nets (lenet5,alexnet_cifar,alexnet) or none "
                         "(default: the model)")
    ap.add_argument("--modes", type=_mode_list, default=_nets.NET_MODES,
                    help="net modes, comma separated "
                         "(default: forward,forward_backward,train_step)")
    ap.add_argument("--full", action="store_true",
                    help="everything: all nets (AlexNet at batch 16 and 128), all layer sets "
                         "at batch 128 (default: off)")
    ap.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=None,
                    help="batch size of every net and layer benchmark (default: per net and "
                         "layer set, see below)")
    ap.add_argument("--repeat", type=int_in(1, MAX_REPEAT), default=None,
                    help="timed runs per benchmark (default: 10; --quick 3; emu 2)")
    ap.add_argument("--warmup", type=int_in(0, MAX_REPEAT), default=None,
                    help="untimed warm-up runs per benchmark (default: 2; --quick/emu 1)")
    ap.add_argument("--rotate", type=int_in(1, 1024), default=4,
                    help="different input buffers used in rotation, capped at 512 MiB per "
                         "benchmark (default: %(default)s)")
    ap.add_argument("--compare", choices=("torch",), action="append", default=[],
                    help="also run PyTorch, each benchmark in PyTorch's own process with its "
                         "own default settings, alternated with ours in --rounds rounds (CPU "
                         "with the same thread count, or CUDA when our backend is cuda and "
                         "torch has it; default: no comparison)")
    ap.add_argument("--rounds", type=int_in(1, 1000), default=None,
                    help="with --compare: alternated rounds (ours, PyTorch's process, "
                         "PyTorch's, ours, ...) sharing --repeat (default: 3; --quick 2)")
    ap.add_argument("--threads", type=int_in(1, 4096), default=None,
                    help="threads for PyTorch and (with threadpoolctl) the BLAS (default: "
                         "the BLAS's current thread count)")
    ap.add_argument("--json", metavar="PATH", default=None,
                    help="write every figure to this JSON file; an existing file is replaced "
                         "only if it is a previous bench result (default: none)")
    ap.add_argument("--plot", metavar="PATH.png", default=None,
                    help="write bar charts of throughput per layer pass and net to this .png "
                         "(or .pdf, .svg); an existing file is replaced only if it is a "
                         "previous gpucnn plot (default: none)")
    ap.add_argument("--overwrite", action="store_true",
                    help="let --json and --plot replace a file that is not a previous output "
                         "of their kind (never a checkpoint) (default: refuse)")
    ap.add_argument("--roofline", action="store_true",
                    help="print the roofline table (H100 datasheet floors, measured floors) "
                         "and the per-kernel resource report (default: off)")
    ap.add_argument("--no-kernel-report", action="store_true",
                    help="with --roofline: skip compiling the kernels for their resources "
                         "(default: compile them)")
    ap.add_argument("--gemm-size", type=int_in(1, MAX_GEMM), default=None,
                    help="n of the n x n x n SGEMM that measures the peak (default: 2048 on a "
                         "CPU, 8192 on a GPU, 256 with --quick, 128 on emu)")
    ap.add_argument("--no-telemetry", action="store_true",
                    help="do not sample GPU telemetry through NVML (default: sample when NVML "
                         "is available)")
    ap.add_argument("--telemetry-interval", type=number_in(0.001, 60), default=0.02,
                    metavar="SECONDS",
                    help="seconds between NVML telemetry samples (default: %(default)s)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny shapes and few repeats, for tests and smoke runs (default: off)")
    ap.add_argument("--input-pipeline", action="store_true",
                    help="instead: images/s of the image-folder input pipeline (--workers "
                         "processes) against torch's DataLoader; its own options: gpucnn "
                         "bench --input-pipeline --help (default: off)")
    ap.add_argument("--host-overhead", action="store_true",
                    help="instead: time training steps of --model (lenet5 or alexnet_cifar, "
                         "--batch-size default 128) on the null device (launches checked and "
                         "counted, none run): host time per step and per launch; --repeat "
                         "fixes the timed steps, --warmup the untimed ones (default: off)")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="with --host-overhead: each timed step is one replay of the step "
                         "captured as a graph (default: off)")
    ap.add_argument("--seed", type=seed_int, default=0,
                    help="seed of the random inputs and weights (default: %(default)s)")
    ap.add_argument("--quiet", action="store_true",
                    help="no progress lines (default: print them)")
    return ap


def _resolve_backend(name):
    from ..backends import get_backend
    if name is None:
        name = os.environ.get("GPUCNN_BACKEND", "auto")
    return get_backend(name).name


def build_config(args, backend_name):
    from .suite import BenchConfig
    model = args.model
    emu = backend_name == "emu"
    cpu = backend_name in ("numpy", "emu")
    smoke = args.quick or emu
    notes = []
    if emu:
        notes.append("emu backend: a correctness tool (CUDA emulated on the CPU); this is a "
                     "smoke run with tiny shapes and its timings say nothing about performance")
    # nets
    if args.nets is not None:
        net_names = args.nets
    elif args.full:
        net_names = ["lenet5", "alexnet_cifar", "alexnet"]
    elif emu and model != "lenet5":
        net_names = ["lenet5"]
        notes.append(f"emu: smoke run of lenet5 only ({model} on the emulator would take very "
                     f"long; pass --nets {model} to insist)")
    else:
        net_names = [model]
    nets = []
    for n in net_names:
        if args.batch_size:
            nets.append((n, args.batch_size))
        elif smoke:
            nets.append((n, 2 if emu else 4))
        elif n == "alexnet" and (args.full or not cpu):
            nets += [(n, 16), (n, 128)]
        else:
            nets.append((n, _nets.DEFAULT_NET_BATCH[n]))
    # layers
    if args.layers is not None:
        sets = [] if args.layers == "none" else (
            ["alexnet", "lenet5"] if args.layers == "all" else [args.layers])
    elif args.full:
        sets = ["alexnet", "lenet5"]
    elif smoke:
        sets = ["tiny"]
    else:
        sets = [MODEL_LAYER_SET[model]]
    specs = []
    for s in sets:
        if args.batch_size:
            b = args.batch_size
        elif s == "tiny":
            b = 2
        elif smoke:
            b = 2
        elif s == "alexnet" and cpu and not args.full:
            b = 16
            notes.append("AlexNet layer set at batch 16 on the CPU (convnet-benchmarks uses "
                         "128: pass --full or --batch-size 128)")
        else:
            b = 128
        specs += _layers.layer_set(s, b)
    repeat = args.repeat or (2 if emu else 3 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if smoke else 2)
    gemm_n = args.gemm_size or (128 if emu else 256 if args.quick else 2048 if cpu else 8192)
    bw = 4 if emu else 8 if args.quick else 128 if cpu else 1024
    return BenchConfig(
        backend=backend_name, precision=args.precision, model=model, nets=nets,
        layer_specs=specs, layer_sets=sets,
        modes=tuple(args.modes), repeat=repeat, warmup=warmup, rotate=args.rotate,
        compare=tuple(dict.fromkeys(args.compare)), threads=args.threads, gemm_n=gemm_n,
        rounds=args.rounds or (2 if smoke else 3),
        bandwidth_mib=bw, quick=smoke, telemetry=not args.no_telemetry,
        telemetry_interval_s=args.telemetry_interval,
        kernel_report=args.roofline and not args.no_kernel_report, seed=args.seed,
        notes=notes)


def check_memory(cfg, args):
    """Refuse sizes whose arrays cannot fit, before any is allocated (ValueError, one line):
    the SGEMM's four n x n float32 matrices, each layer benchmark's rotated inputs and output
    gradients with its weights, and (for a --batch-size) each net's activations and their
    gradients. Lower bounds: the benchmark needs more."""
    from ..backends import get_backend
    from ..membudget import activation_elements, check_fits, host_available_bytes
    from ..train_data import free_device_bytes
    if cfg.backend == "cuda":
        available, where = free_device_bytes(get_backend("cuda"))
        where = f"is {where}"
    else:
        available, where = host_available_bytes(), "of host memory is available"
    check_fits(f"--gemm-size {cfg.gemm_n} (four {cfg.gemm_n} x {cfg.gemm_n} float32 matrices)",
               16 * cfg.gemm_n ** 2, available, where)
    for spec in cfg.layer_specs:
        x, w, _, y = spec.shapes()
        n = lambda s: math.prod(s) if s is not None else 0  # noqa: E731
        k = max(1, min(cfg.rotate, _layers.ROTATE_BUDGET_BYTES // max(4 * (n(x) + n(y)), 1)))
        check_fits(f"batch {spec.batch} of layer {spec.name}", 4 * ((k + 1) * (n(x) + n(y))
                                                                  + n(w)), available, where)
    if args.batch_size:
        from ..models import build_model
        for name, batch in cfg.nets:
            per_sample = activation_elements(build_model(name, backend="numpy"))
            check_fits(f"--batch-size {batch} of net {name}", 4 * 2 * batch * per_sample,
                       available, where)


def main(argv=None, nvml=None):
    """Run ``gpucnn bench`` with ``argv`` (a list, without the ``bench`` word); returns the
    exit status. ``nvml``: a pynvml-like module to use instead of ``pynvml`` (tests)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # "gpucnn bench -- --model ..." reaches us with the separator
        argv = argv[1:]
    if "--input-pipeline" in argv:  # its own options (gpucnn/bench/input_pipeline.py)
        from .input_pipeline import main as pipeline_main
        return pipeline_main([a for a in argv if a != "--input-pipeline"])
    if "--distributed" in argv:  # under mpiexec: gpucnn/bench/distributed.py
        from .distributed import main as distributed_main
        return distributed_main([a for a in argv if a != "--distributed"])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or an argparse error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    from ..outputs import OutputRefused, check_outputs
    try:
        check_outputs([("--json", args.json, "bench"), ("--plot", args.plot, "plot")],
                      args.overwrite, "nothing was run")
    except OutputRefused as exc:
        print(f"gpucnn bench: error: {exc}", file=sys.stderr)
        return 2
    if args.host_overhead:
        return _host_overhead(args)
    from ..backends import BackendUnavailable
    from .report import format_result, write_json
    from .suite import run_suite

    def log(msg):
        if not args.quiet:
            print(msg, flush=True)
    try:
        cfg = build_config(args, _resolve_backend(args.backend))
        check_memory(cfg, args)
        for n in cfg.notes:
            log(f"note: {n}")
        res = run_suite(cfg, log=log, nvml=nvml, argv=argv)
    except BackendUnavailable as exc:
        print(f"gpucnn bench: error: backend unavailable: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"gpucnn bench: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"gpucnn bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_result(res, roofline=args.roofline), flush=True)
    if args.json is not None:
        p = write_json(res, args.json)
        print(f"wrote {p}")
    if args.plot is not None:
        from .plot import plot_result
        try:
            p = plot_result(res, args.plot)
            print(f"wrote {p}")
        except RuntimeError as exc:
            print(f"gpucnn bench: plot not written: {exc}", file=sys.stderr)
            return 1
    return 1 if res["errors"] else 0


# Options of the suite that mean nothing to --host-overhead: refused rather than ignored.
_NOT_WITH_HOST_OVERHEAD = ("backend", "layers", "nets", "full", "compare", "rounds", "plot",
                           "roofline", "gemm_size")


def _host_overhead(args):
    from .host_overhead import (DEFAULT_BATCH, DEFAULT_WARMUP, HOST_OVERHEAD_MODELS,
                                format_host_overhead, run_host_overhead, write_host_overhead)
    defaults = build_parser().parse_args([])
    bad = [f"--{k.replace('_', '-')}" for k in _NOT_WITH_HOST_OVERHEAD
           if getattr(args, k) != getattr(defaults, k)]
    if bad:
        print(f"gpucnn bench: error: --host-overhead runs on the null device and takes "
              f"--model, --batch-size, --repeat, --warmup, --seed, --json, --quiet; not "
              f"{', '.join(bad)}", file=sys.stderr)
        return 2
    if args.cuda_graphs and not args.host_overhead:
        print("gpucnn bench: error: --cuda-graphs goes with --host-overhead", file=sys.stderr)
        return 2
    if args.model not in HOST_OVERHEAD_MODELS:
        print(f"gpucnn bench: error: --host-overhead runs {' or '.join(HOST_OVERHEAD_MODELS)}, "
              f"not {args.model!r}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"host overhead: {args.model} on the null device ...", flush=True)
    try:
        if args.batch_size:  # the null device's arrays are host arrays
            from ..membudget import activation_elements, check_fits, host_available_bytes
            from ..models import build_model
            check_fits(f"--batch-size {args.batch_size} of {args.model}", 4 * 2 *
                       args.batch_size * activation_elements(build_model(args.model,
                                                                         backend="numpy")),
                       host_available_bytes())
        res = run_host_overhead(args.model, batch=args.batch_size or DEFAULT_BATCH,
                                warmup=DEFAULT_WARMUP if args.warmup is None else args.warmup,
                                repeat=args.repeat, seed=args.seed,
                                cuda_graphs=args.cuda_graphs)
    except ValueError as exc:
        print(f"gpucnn bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_host_overhead(res), flush=True)
    if args.json is not None:
        print(f"wrote {write_host_overhead(res, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
