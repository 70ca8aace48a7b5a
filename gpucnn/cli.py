"""The ``gpucnn`` command line: train, summary, info, kernels, bench."""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys

from . import __version__
from .argtypes import (MAX_BATCH, MAX_COUNT, MAX_EPOCHS, MAX_RETRY_S, add_backend_arg,
                       add_precision_arg, chw_shape, int_in, nonneg_number, number_in,
                       positive_number, seed_int)
from .cli_saved import COMMANDS as SAVED_MODEL_COMMANDS
from .cli_saved import add_saved_model_commands
from .ops.precision import PRECISIONS

__all__ = ["main"]


def build_parser():
    ap = argparse.ArgumentParser(prog="gpucnn", description="A CNN engine: NumPy reference, "
                                 "hand-written CUDA kernels, and a CPU emulator for them.")
    ap.add_argument("--version", action="version", version=f"gpucnn {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on a dataset")
    t.add_argument("--model", default="lenet5",
                   help="model to train: lenet5, alexnet_cifar, alexnet, vgg11, vgg16, a "
                        "model file net.json (README: the model-file format), or an ONNX file "
                        "net.onnx (from its weights; see --reinit) (default: %(default)s)")
    t.add_argument("--reinit", action="store_true",
                   help="with an .onnx --model: train its architecture from a seeded "
                        "initialisation (as a model file's) instead of the file's weights "
                        "(default: the file's weights)")
    t.add_argument("--dataset", default="fashion-mnist",
                   help="dataset: fashion-mnist, mnist, kmnist, cifar10, or folder (an image "
                        "folder at --data-dir: DIR/train/<class>/*, DIR/val/<class>/*) "
                        "(default: %(default)s)")
    t.add_argument("--input", type=chw_shape, default=None,
                   help="input shape C,H,W the model is built for (its classifier sized from "
                        "it); for --dataset folder H,W is the size images are resized and "
                        "cropped to (default: the model's own)")
    t.add_argument("--epochs", type=int_in(1, MAX_EPOCHS), default=1,
                   help="number of passes over the training set (default: %(default)s)")
    t.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=128,
                   help="images per optimizer step (default: %(default)s)")
    t.add_argument("--lr", type=positive_number, default=0.05,
                   help="learning rate, the starting one under --schedule "
                        "(default: %(default)s)")
    t.add_argument("--momentum", type=nonneg_number, default=0.9,
                   help="SGD momentum; unused by adam (default: %(default)s)")
    t.add_argument("--nesterov", action="store_true",
                   help="Nesterov momentum for SGD (default: off)")
    t.add_argument("--weight-decay", type=nonneg_number, default=0.0,
                   help="L2 weight decay (default: %(default)s)")
    t.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="optimizer (default: %(default)s)")
    t.add_argument("--schedule", choices=("constant", "step", "cosine"), default="constant",
                   help="learning-rate schedule over the epochs: constant, step (x0.1 every "
                        "third of the epochs) or cosine (default: %(default)s)")
    t.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the weight init and the shuffling (default: %(default)s)")
    add_backend_arg(t)
    add_precision_arg(t, PRECISIONS)
    t.add_argument("--data-dir", default=None,
                   help="folder searched first for the dataset files (default: only "
                        "$GPUCNN_DATA and the user cache are searched)")
    t.add_argument("--download", action="store_true",
                   help="download the dataset when it is not found, each file digest-checked "
                        "(default: off)")
    t.add_argument("--limit", type=int_in(1, MAX_COUNT), default=None,
                   help="use only the first N training images, for quick runs "
                        "(default: all)")
    t.add_argument("--test-limit", type=int_in(1, MAX_COUNT), default=None,
                   help="evaluate on only the first N test images (default: all)")
    t.add_argument("--checkpoint", default=None,
                   help="checkpoint file (.npz), written after every epoch and on Ctrl-C or "
                        "SIGTERM; an existing one is refused unless --resume or --overwrite "
                        "(default: none)")
    t.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint, exactly; a different run configuration "
                        "(batch size, seed, ...) is refused (default: start afresh)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace an existing --checkpoint with this new run, and a file at "
                        "--metrics-json or --plot that is not a previous output of its kind "
                        "(never a checkpoint) (default: refuse)")
    t.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue although the run configuration differs "
                        "from the checkpoint's; recorded in the metrics (default: refuse)")
    t.add_argument("--save-retry-s", type=number_in(0, MAX_RETRY_S), default=10.0,
                   help="seconds to wait before the one retry of a failed checkpoint/metrics "
                        "write, e.g. a full disk (default: %(default)s)")
    t.add_argument("--metrics-json", default=None,
                   help="write the per-epoch metrics to this JSON file; an existing file is "
                        "replaced only if it is a previous metrics file (default: none)")
    t.add_argument("--plot", default=None,
                   help="write loss/accuracy curves to this .png (or .pdf, .svg); an existing "
                        "file is replaced only if it is a previous gpucnn plot (default: none)")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: shown)")
    t.add_argument("--cuda-graphs", action="store_true",
                   default=os.environ.get("GPUCNN_CUDA_GRAPHS", "").strip().lower()
                   in ("1", "true", "yes", "on"),
                   help="replay each training step as a graph (cuda; emulated on emu; the CPU "
                        "backends warn and run eagerly); also GPUCNN_CUDA_GRAPHS=1 (default: "
                        "off until a GPU run confirms it)")
    from .train_data import DEVICE_DATA_MODES, DEVICE_DATA_SHARE
    t.add_argument("--device-data", choices=DEVICE_DATA_MODES, default="auto",
                   help="keep the training images on the device as uint8 and build each "
                        "batch there with a gather kernel (bit-identical to host batches): "
                        f"auto when they fit in {DEVICE_DATA_SHARE * 100:.0f}%% of the free device "
                        "memory, on (an error when they do not), off (batches prepared as "
                        "before); device backends only (default: %(default)s)")
    _add_distributed_args(t)

    _add_folder_args(t)

    s = sub.add_parser("summary", help="per-layer shapes, parameters, FLOPs, receptive field")
    s.add_argument("model", help="model name (lenet5, alexnet_cifar, alexnet, vgg11, vgg16), "
                                 "a model file net.json, or an .onnx file (gpucnn.onnx.load)")
    s.add_argument("--input", type=chw_shape, default=None,
                   help="input shape C,H,W (default: the model's)")
    s.add_argument("--json", default=None,
                   help="also write the summary to this JSON file; an existing file is "
                        "replaced only if it is a previous summary (default: none)")
    s.add_argument("--overwrite", action="store_true",
                   help="let --json replace a file that is not a previous summary (default: "
                        "refuse)")

    add_saved_model_commands(sub)

    i = sub.add_parser("info", help="versions, backend choice, compilers, GPU")
    add_backend_arg(i)

    k = sub.add_parser("kernels", help="compile the CUDA kernels with NVRTC (and nvcc) and "
                       "report registers, spills, shared memory and occupancy per kernel",
                       add_help=False)
    k.add_argument("rest", nargs=argparse.REMAINDER)

    b = sub.add_parser("bench", help="throughput benchmarks (see gpucnn bench --help)",
                       add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)

    from .verify import add_arguments as add_verify_arguments
    v = sub.add_parser("verify", help="check a device backend against the float64 reference, "
                                      "layer by layer, for a model or a checkpoint")
    add_verify_arguments(v)
    return ap


def _add_folder_args(t):
    """The options of --dataset folder (gpucnn/data/folder.py)."""
    from .argtypes import number_list
    t.add_argument("--val-split", type=number_in(0, 0.99), default=0.1,
                   help="folder without val/: the share of each class of train/ held out "
                        "for validation, seeded (default: %(default)s)")
    t.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="folder: convert images to 1 (grayscale) or 3 (RGB) channels "
                        "(default: the model file's or --input's C, else 3)")
    t.add_argument("--allow-empty-classes", action="store_true",
                   help="folder: accept a class folder without images (default: an error "
                        "naming it)")
    t.add_argument("--strict", action="store_true",
                   help="folder: an unreadable image file is an error (default: skipped with "
                        "a warning naming it, counted in the metrics)")
    t.add_argument("--augment", choices=("none", "random-resized-crop"), default="none",
                   help="folder: training augmentation, torchvision's RandomResizedCrop "
                        "(scale 0.08-1, ratio 3/4-4/3) + horizontal flip (default: "
                        "%(default)s: short-side resize + centre crop)")
    t.add_argument("--mean", type=number_list, default=None,
                   help="folder: per-channel mean of pixels in [0, 1], e.g. 0.485,0.456,0.406 "
                        "(default: computed from the training images)")
    t.add_argument("--std", type=number_list, default=None,
                   help="folder: per-channel std, with --mean (default: computed)")
    t.add_argument("--workers", type=int_in(0, 256), default=None,
                   help="folder with --augment: processes that decode and augment the batches "
                        "ahead of the steps, in shared memory (0: threads of this process; "
                        "results do not depend on it) (default: the cores, divided among the "
                        "ranks of a node under mpiexec)")
    t.add_argument("--cache-decoded", action="store_true",
                   help="folder: keep the decoded images in a memory-mapped file under the "
                        "user cache (keyed by the files' names, sizes and times), so later "
                        "epochs and runs skip decoding; results are the same (default: off)")


def _add_distributed_args(t):
    t.add_argument("--distributed", action="store_true",
                   help="train data-parallel over the processes mpiexec starts (mpiexec -n N "
                        "gpucnn train --distributed ...; alone: a world of one); --batch-size "
                        "is per process; needs pip install '.[distributed]' (default: off)")
    t.add_argument("--communicator", choices=("auto", "mpi", "nccl"), default=None,
                   help="with --distributed: how gradients are all-reduced, mpi (on the host) "
                        "or nccl (on the GPUs, one process per GPU); auto: nccl for --backend "
                        "cuda when NCCL loads, else mpi (default: auto)")


def _trainer(args):
    """gpucnn.train.train, or this process's part of a --distributed run."""
    if not args.distributed:
        if args.communicator is not None:
            raise ValueError("--communicator applies to --distributed only")
        from .train import train
        return train
    from .distributed import run_train
    return lambda cfg: run_train(cfg, args.communicator or "auto")


def cmd_train(args):
    from .train import SaveFailed, TrainConfig, TrainingDiverged
    train = _trainer(args)
    cfg = TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                      nesterov=args.nesterov, weight_decay=args.weight_decay,
                      optimizer=args.optimizer, schedule=args.schedule, seed=args.seed,
                      backend=args.backend, precision=args.precision,
                      data_dir=args.data_dir, download=args.download,
                      limit=args.limit, test_limit=args.test_limit, checkpoint=args.checkpoint,
                      resume=args.resume, overwrite=args.overwrite,
                      allow_config_change=args.allow_config_change,
                      save_retry_s=args.save_retry_s, metrics_json=args.metrics_json,
                      plot=args.plot, progress=not args.no_progress,
                      cuda_graphs=args.cuda_graphs, device_data=args.device_data,
                      input=args.input, channels=args.channels, val_split=args.val_split,
                      allow_empty_classes=args.allow_empty_classes, strict=args.strict,
                      augment=args.augment, mean=args.mean, std=args.std,
                      workers=args.workers, cache_decoded=args.cache_decoded,
                      reinit=args.reinit)
    try:
        m = train(cfg)
    except KeyboardInterrupt as exc:  # 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM
        return 128 + int(getattr(exc, "signum", 2))
    except TrainingDiverged as exc:
        print(f"gpucnn train: stopped: {exc}", file=sys.stderr)
        return 3
    except SaveFailed as exc:  # one line: what, why, what was kept
        print(f"gpucnn train: error: {exc}", file=sys.stderr)
        return 2
    print(f"test accuracy {m['test_accuracy']:.4f} after {len(m['epochs'])} epoch(s); "
          f"{m['train_images_per_s']:.0f} train images/s on {m['device']}")
    return 0


def cmd_summary(args):
    from .modelfile import is_model_file, load_net
    from .models import describe_model
    from .onnx.trainable import is_onnx_file
    from .outputs import check_outputs, write_json
    from .summary import SCHEMA, format_summary, summarize
    check_outputs([("--json", args.json, "summary")], args.overwrite, "nothing was written")
    name, kwargs, shape = args.model, {}, args.input
    if is_onnx_file(args.model):
        from .onnx import load
        model = load(args.model, backend="numpy")
        shape = shape or model.input_shape
    else:
        if is_model_file(args.model):
            kwargs, file_shape = load_net(args.model)
            name, shape = "sequential", shape or file_shape
        model = describe_model(name, input_shape=shape, **kwargs)  # no weights allocated
        shape = model.input_shape
    rows = summarize(model, shape)
    print(format_summary(rows, shape))
    if args.json is not None:
        write_json(args.json, {"schema": SCHEMA, "model": args.model, "input": list(shape),
                               "layers": rows})
    return 0


def _tool_version(cmd, line=-1):
    path = shutil.which(cmd[0])
    if not path:
        return "not found"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{path} (version query failed: {exc})"
    lines = [l for l in out.splitlines() if l.strip()]
    return f"{path}: {lines[line] if lines else '?'}"


def info_lines(backend_name=None):
    import numpy as np
    from .backends import auto_reason, get_backend
    lines = [f"gpucnn {__version__}", f"Python {platform.python_version()} ({sys.executable})",
             f"NumPy {np.__version__}"]
    try:
        import cupy
        lines.append(f"CuPy {cupy.__version__}")
    except Exception as exc:  # any import failure is informational here
        lines.append(f"CuPy not available ({type(exc).__name__}: {exc})")
    if backend_name in (None, "auto"):
        lines.append(f"backend: {auto_reason()}")
    else:
        lines.append(f"backend: {get_backend(backend_name).describe()} (requested)")
    chosen = get_backend(backend_name)
    try:
        from .ops.precision import default_precision
        lines.append(f"precision: {default_precision()} (fp32, tf32, 3xtf32 or bf16: "
                     f"$GPUCNN_PRECISION, --precision; bf16 also holds the activations "
                     f"in bfloat16 on cuda and emu)")
    except ValueError as exc:
        lines.append(f"precision: {exc}")
    lines.append(f"g++: {_tool_version(['g++', '--version'], line=0)}")
    lines.append(f"nvcc: {_tool_version(['nvcc', '--version'])}")
    try:
        from .toolchain.compilers import nvrtc_version_string
        lines.append(f"NVRTC: {nvrtc_version_string()}")
    except Exception as exc:
        lines.append(f"NVRTC: not available ({exc})")
    lines.append(f"CPU kernels: {_native_line()}")
    try:
        from .backends.emu import emulator_info
        lines.append(f"emulator: {emulator_info()}")
    except Exception as exc:
        lines.append(f"emulator: not available ({exc})")
    lines += _nvml_lines()
    from .distributed import mpi_info_lines
    return lines + mpi_info_lines(chosen)


def _native_line():
    """The numpy backend's compiled kernels (gpucnn/ops/conv/direct.cpp): built here, or why
    not (built on first use, so this may take a second once per machine)."""
    from .cpu import native
    from .ops.conv import direct
    if direct.available():
        lanes = direct.lanes()
        isa = {16: "AVX-512", 8: "AVX2/AVX", 4: "SSE"}.get(lanes, f"{lanes} lanes")
        return (f"direct convolution built for this CPU ({lanes} float lanes, {isa}; "
                f"{native.compiler()} -O3 -march=native; cache: {native.cache_dir()})")
    return (f"not available ({direct.unavailable_reason()}); the numpy backend runs its "
            f"NumPy-only convolutions")


def _nvml_lines():
    try:
        import pynvml
    except ImportError:
        return ["GPU: NVML not available (pip install nvidia-ml-py)"]
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return [f"GPU: none found (NVML could not initialise: {exc})"]
    try:
        out = [f"NVIDIA driver {pynvml.nvmlSystemGetDriverVersion()}"]
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            out.append(f"GPU {i}: {pynvml.nvmlDeviceGetName(h)}, {mem.total / 2**30:.1f} GiB")
        return out
    finally:
        pynvml.nvmlShutdown()


def cmd_info(args):
    print("\n".join(info_lines(args.backend)))
    return 0


def cmd_kernels(args):
    from .toolchain.report import main as report_main
    # `gpucnn kernels --report` is the documented spelling; the report is what it does.
    return report_main([a for a in args.rest if a != "--report"], prog="gpucnn kernels --report")


def cmd_bench(args):
    from .bench.cli import main as bench_main
    return bench_main(args.rest)


def cmd_verify(args):
    from .verify import run
    return run(args)


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("kernels", "bench"):
        args.rest = extra + args.rest  # their own parsers read the options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "backend", None) and args.command != "verify":
        # (verify's --backend names the device side only: auto means cuda, else emu)
        os.environ["GPUCNN_BACKEND"] = args.backend
    from .backends import BackendUnavailable
    from .checkpoint import CheckpointError
    from .data.errors import DataError
    try:
        return {"train": cmd_train, "summary": cmd_summary, "info": cmd_info,
                "kernels": cmd_kernels, "bench": cmd_bench, "verify": cmd_verify,
                **SAVED_MODEL_COMMANDS}[args.command](args)
    except (BackendUnavailable, CheckpointError, DataError, FileNotFoundError, ValueError,
            TypeError) as exc:
        print(f"gpucnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # (train saves and returns its own status before this)
        print(f"gpucnn {args.command}: interrupted; nothing more was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
