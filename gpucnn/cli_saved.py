"""The commands that use a saved model (a checkpoint written by ``gpucnn train`` or an .onnx
file): export, show and predict; their parsers and what they run."""
from __future__ import annotations

import os
import sys

from .argtypes import MAX_COUNT, add_backend_arg, int_in, number_list

__all__ = ["add_saved_model_commands", "COMMANDS"]


def add_saved_model_commands(sub):
    p = sub.add_parser("predict", help="class probabilities of image files for a checkpoint or "
                                       "an .onnx file")
    p.add_argument("model", help="checkpoint (.npz) written by gpucnn train, or an .onnx file")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files (any Pillow reads) and folders, whose .png, .jpg, "
                        ".jpeg, .bmp, .gif and .webp files are taken in sorted order (not "
                        "sub-folders)")
    p.add_argument("--topk", type=int_in(1, 1000), default=5,
                   help="classes listed per image, most probable first (default: %(default)s)")
    p.add_argument("--json", default=None,
                   help="also write the results to this JSON file, one object per input file "
                        "in input order; an existing file is replaced only if it is a "
                        "previous gpucnn predict output (default: none)")
    p.add_argument("--dense", action="store_true",
                   help="also score every window of the net's input size over the whole "
                        "image (the net made fully convolutional): a classes x H' x W' map "
                        "of probabilities per image (default: off)")
    p.add_argument("--batch-size", type=int_in(1, 4096), default=64,
                   help="images per forward pass (default: %(default)s)")
    _add_stats_args(p)
    p.add_argument("--overwrite", action="store_true",
                   help="let --json replace a file that is not a previous predict output "
                        "(default: refuse)")
    add_backend_arg(p)

    e = sub.add_parser("export", help="write a checkpoint's model as an ONNX file")
    e.add_argument("checkpoint", help="checkpoint (.npz) written by gpucnn train")
    e.add_argument("output", help="the .onnx file to write; an existing file is replaced only "
                                  "if it is a previous gpucnn export")
    e.add_argument("--softmax", action="store_true",
                   help="end the graph in a Softmax (output 'probabilities'; default: "
                        "'logits')")
    e.add_argument("--overwrite", action="store_true",
                   help="replace an output file that is not a previous export (never a "
                        "checkpoint) (default: refuse)")

    w = sub.add_parser("show", help="pictures of a model: its filters, or its feature maps "
                                    "for one image")
    w.add_argument("model", help="checkpoint (.npz) written by gpucnn train, or an .onnx file")
    what = w.add_mutually_exclusive_group(required=True)
    what.add_argument("--filters", type=int_in(0, MAX_COUNT), metavar="LAYER",
                      help="the filters of this Conv2d layer (its index in gpucnn summary) "
                           "(default: none; this or --activations)")
    what.add_argument("--activations", metavar="IMAGE",
                      help="every Conv2d's feature maps for this PNG or JPEG (default: none; this "
                           "or --filters)")
    w.add_argument("output", help="the picture to write (.png, .pdf or .svg); an existing "
                                  "file is replaced only if it is a previous gpucnn plot")
    _add_stats_args(w)
    w.add_argument("--overwrite", action="store_true",
                   help="replace an output file that is not a previous gpucnn plot (default: "
                        "refuse)")


def _add_stats_args(p):
    p.add_argument("--mean", type=number_list, default=None,
                   help="per-channel mean of pixels in [0, 1], for a model that records no "
                        "preprocessing (an .onnx file made elsewhere) (default: none: pixels "
                        "scaled to [0, 1])")
    p.add_argument("--std", type=number_list, default=None,
                   help="per-channel std, with --mean (default: none)")


def cmd_export(args):
    """The checkpoint's model to ONNX, with its classes and preprocessing in the metadata
    (gpucnn predict reads them back)."""
    from .data.datasets import dataset_info
    from .onnx import export
    from .outputs import check_outputs
    from .saved import PREPROCESS_PROPERTY, read_saved
    targets = check_outputs([("OUTPUT", args.output, "onnx")], args.overwrite,
                            "nothing was written")
    model, pre, dataset = read_saved(args.checkpoint)
    meta, classes = {}, None
    if pre is not None:
        meta[PREPROCESS_PROPERTY], classes = pre.to_record(), pre.classes
    if dataset is not None:
        meta["gpucnn.dataset"] = dataset
        classes = classes or dataset_info(dataset).classes
    path = export(model, targets["OUTPUT"], softmax=args.softmax, class_names=classes,
                  metadata=meta)
    print(f"wrote {path}: {len(model.layers)} layers, input (N, "
          f"{', '.join(map(str, model.input_shape))})")
    return 0


def cmd_show(args):
    """Filters or feature maps of a checkpoint's or an ONNX file's model as a picture."""
    from .outputs import check_outputs
    from .pictures import save_activations, save_filters
    from .saved import open_saved, read_saved
    targets = check_outputs([("OUTPUT", args.output, "plot")], args.overwrite,
                            "nothing was written")
    title = os.path.basename(args.model)
    if args.filters is not None:
        save_filters(read_saved(args.model)[0], args.filters, targets["OUTPUT"], title)
    else:
        saved = open_saved(args.model, mean=args.mean, std=args.std)
        pre = saved.preprocess
        print(f"preprocessing: {_printable(saved.how)}")
        x = pre.normalize(pre.pixels(args.activations)[None])[0]
        save_activations(saved.net, x, targets["OUTPUT"], f"{title}: {args.activations}")
    print(f"wrote {targets['OUTPUT']}")
    return 0


def cmd_predict(args):
    """Top-k classes (and with --dense the window maps) of image files, printed (and written)
    as they come; exit 1 when any file failed, after every other one was predicted."""
    from .outputs import check_outputs, write_atomic
    from .predict import image_files, predict, write_results
    from .saved import open_saved
    targets = check_outputs([("--json", args.json, "predictions")], args.overwrite,
                            "nothing was predicted")
    saved = open_saved(args.model, backend=args.backend, mean=args.mean, std=args.std)
    print(f"preprocessing: {_printable(saved.how)}", flush=True)
    results = predict(saved.net, saved.preprocess, image_files(args.inputs), args.topk,
                      args.dense, args.batch_size)
    counts = [0, 0]  # predicted, failed

    def report(results):
        for r in results:
            counts["error" in r] += 1
            name = _printable(r["file"])
            if "error" in r:
                print(f"{name}: error: {_printable(r['error'])}", file=sys.stderr, flush=True)
            else:
                print(f"{name}: " + ", ".join(f"{_printable(t['class'])} "
                                              f"{100 * t['prob']:.1f}%" for t in r["topk"]),
                      flush=True)
            if "dense" in r:
                print(_dense_lines(r["dense"]), flush=True)
            yield r

    if args.json is None:
        for _ in report(results):
            pass
    else:  # written as it goes, moved into place at the end (the old file kept till then)
        def write(f):
            for _ in write_results(f, report(results)):
                pass
        write_atomic(targets["--json"], write)
    print(f"{counts[0]} image(s) predicted, {counts[1]} failed"
          + (f"; wrote {targets['--json']}" if args.json is not None else ""))
    return 1 if counts[1] else 0


def _printable(text):
    """``text`` with its control characters escaped (class names and paths come from files
    and folders others made: no terminal escapes reach the screen)."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode()
                   for ch in str(text))


def _dense_lines(dense, most=24):
    """The dense map's shape and, when it is small enough to read, each window's best class
    index."""
    k, h, w = dense["shape"]
    lines = [f"  dense: {h}x{w} windows x {k} classes"]
    if h <= most and w <= most:
        best = dense["scores"].argmax(axis=0)
        lines += ["    " + " ".join(f"{int(v):>{len(str(k - 1))}}" for v in row) for row in best]
    return "\n".join(lines)


COMMANDS = {"export": cmd_export, "show": cmd_show, "predict": cmd_predict}
