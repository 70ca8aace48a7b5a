"""The commands that use a saved model (a checkpoint written by ``gpucnn train`` or an .onnx
file): export, show and predict; their parsers and what they run."""
from __future__ import annotations

import os

from .argtypes import MAX_COUNT, int_in

__all__ = ["add_saved_model_commands", "COMMANDS"]


def add_saved_model_commands(sub):
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
    w.add_argument("--overwrite", action="store_true",
                   help="replace an output file that is not a previous gpucnn plot (default: "
                        "refuse)")


def _saved_model(path, onnx_ok=False):
    """(model on numpy in eval mode, its dataset's DatasetInfo or None) of a checkpoint
    (read by verify's checked reader, rebuilt by gpucnn.models) or, with ``onnx_ok``, an
    .onnx file (gpucnn.onnx.load)."""
    from .checkpoint import CheckpointError, open_checkpoint
    from .data.datasets import dataset_info
    if onnx_ok and str(path).lower().endswith(".onnx"):
        from .onnx import load
        net = load(path, backend="numpy").eval()
        dataset = net.onnx_metadata.get("gpucnn.dataset")  # written by gpucnn export
        try:
            return net, dataset_info(dataset) if dataset else None
        except ValueError:
            return net, None
    from .verify.source import build_copy, load_model_source
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    model = build_copy(load_model_source(path), "numpy", seed=0).eval()
    with open_checkpoint(path) as ck:
        config = ck.metadata.get("config")
    dataset = config.get("dataset") if isinstance(config, dict) else None
    try:
        return model, dataset_info(dataset) if isinstance(dataset, str) else None
    except ValueError:
        return model, None


def cmd_export(args):
    """The checkpoint's model to ONNX, with its dataset's class names in the metadata."""
    from .onnx import export
    from .outputs import check_outputs
    targets = check_outputs([("OUTPUT", args.output, "onnx")], args.overwrite,
                            "nothing was written")
    model, info = _saved_model(args.checkpoint)
    classes = info.classes if info is not None else None
    meta = {"gpucnn.dataset": info.name} if info is not None else {}
    path = export(model, targets["OUTPUT"], softmax=args.softmax, class_names=classes,
                  metadata=meta)
    print(f"wrote {path}: {len(model.layers)} layers, input (N, "
          f"{', '.join(map(str, model.input_shape))})")
    return 0


def cmd_show(args):
    """Filters or feature maps of a checkpoint's or an ONNX file's model as a picture."""
    from .outputs import check_outputs
    from .pictures import load_image, save_activations, save_filters
    targets = check_outputs([("OUTPUT", args.output, "plot")], args.overwrite,
                            "nothing was written")
    model, info = _saved_model(args.model, onnx_ok=True)
    title = os.path.basename(args.model)
    if args.filters is not None:
        save_filters(model, args.filters, targets["OUTPUT"], title)
    else:
        mean = std = None
        if info is not None and info.mean is not None:
            mean, std = info.mean, info.std
        x, how = load_image(args.activations, model.input_shape, mean, std)
        print(f"{args.activations}: {how}"
              + ("" if mean is not None else " (no dataset constants known for this model: "
                                             "not normalised)"))
        save_activations(model, x, targets["OUTPUT"], f"{title}: {args.activations}")
    print(f"wrote {targets['OUTPUT']}")
    return 0


COMMANDS = {"export": cmd_export, "show": cmd_show}
