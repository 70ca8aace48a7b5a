"""What ``gpucnn train`` trains on and what it builds: the dataset splits (a built-in dataset or
an image folder, gpucnn.data.folder) and the model's name, options and input shape (a
built-in model at ``--input C,H,W`` or its own shape, a model file, gpucnn.modelfile, or an
ONNX file, gpucnn.onnx.trainable, trained as the model file describing its layers would be).

For an image folder the model follows the folder: its input channels are ``--channels``
(default: a model file's, an ONNX file's or ``--input``'s C, else 3), H x W the model's
(``--input``, the model file's "input", the ONNX graph's input, or the built-in model's own),
and its class count the folder's classes.
"""
from __future__ import annotations

import math

from .data import load_dataset
from .data.preprocess import Preprocess
from .modelfile import ModelFileError, is_model_file, load_net
from .models import describe_model
from .onnx.trainable import ImportedNet, is_onnx_file

__all__ = ["RunInputs", "check_input_options"]


class RunInputs:
    """``train_set``, ``test_set``, ``model_name``, ``model_kwargs`` (num_classes included),
    ``input_shape`` (None: the model's own), ``data_record`` (the classes and preprocessing
    of the data, gpucnn.data.preprocess), ``skipped`` ((path, why) of unreadable images),
    ``line`` (what was loaded, printed at start-up) and ``imported`` (an .onnx --model's
    ImportedNet, else None) of run configuration ``cfg``."""

    def __init__(self, cfg):
        self.model_kwargs = dict(cfg.model_kwargs)
        self.imported = None  # an .onnx --model: gpucnn.onnx.trainable.ImportedNet
        if is_onnx_file(cfg.model):
            self.imported = ImportedNet(cfg.model)
        if is_model_file(cfg.model) or self.imported is not None:
            kwargs, file_shape = (load_net(cfg.model) if self.imported is None else
                                  ({"layers": self.imported.layers}, self.imported.input_shape))
            self.model_name = "sequential"
            self.model_kwargs.update(kwargs)
            if cfg.input is not None and tuple(cfg.input) != file_shape:
                what = "the 'input'" if self.imported is None else "the graph input"
                raise ModelFileError(f"--input {','.join(map(str, cfg.input))} differs from "
                                     f"{what} of {cfg.model} "
                                     f"({','.join(map(str, file_shape))}): give one of them")
            self.input_shape = file_shape
        else:
            self.model_name = cfg.model
            self.input_shape = None if cfg.input is None else tuple(cfg.input)
        self.data_record, self.skipped, self.line = None, [], None
        if cfg.dataset == "folder":
            self._load_folder(cfg)
        else:
            for flag, value, default in (("--channels", cfg.channels, None),
                                         ("--augment", cfg.augment, "none"),
                                         ("--mean", cfg.mean, None), ("--std", cfg.std, None),
                                         ("--cache-decoded", cfg.cache_decoded, False)):
                if value != default:
                    raise ValueError(f"{flag} applies to --dataset folder only (the built-in "
                                     f"datasets have their own preprocessing)")
            self.train_set = load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.download,
                                          cfg.limit)
            self.test_set = load_dataset(cfg.dataset, "test", cfg.data_dir, cfg.download,
                                         cfg.test_limit)
            self.data_record = Preprocess.of_dataset(self.train_set).to_record()
        self.model_kwargs.setdefault("num_classes", self.train_set.num_classes)
        if self.imported is not None:
            self.imported.check_classes(self.train_set.num_classes,
                                        f"the image folder {cfg.data_dir}"
                                        if cfg.dataset == "folder" else cfg.dataset)

    def set_initial_weights(self, model, cfg):
        """An .onnx --model's weights into the freshly built ``model`` (kept as built, the
        seeded initialisation, with --reinit); a line says which. A --resume then restores
        the checkpoint's over them."""
        if self.imported is not None:
            if not cfg.reinit:
                model.load_state_dict(self.imported.state)
            self.imported.state = None  # the file's arrays are not kept past this
            print(self.imported.line(cfg.reinit, cfg.seed), flush=True)

    def _load_folder(self, cfg):
        from .data.folder import load_folder
        from .data.workers import default_workers
        if cfg.data_dir is None:
            raise ValueError("--dataset folder needs --data-dir DIR (DIR/train/<class>/<images>"
                             ", optionally DIR/val/<class>/<images>)")
        shape = self.input_shape
        if shape is None:
            shape = describe_model(self.model_name, **self.model_kwargs).input_shape
            given_c = None
        else:
            given_c = shape[0]
        channels = cfg.channels or given_c or 3
        where = (cfg.model if is_model_file(cfg.model) or self.imported is not None
                 else "--input")
        if given_c is not None and cfg.channels is not None and cfg.channels != given_c:
            raise ValueError(f"--channels {cfg.channels} differs from the {given_c} input "
                             f"channels of {where}")
        if channels not in (1, 3):
            raise ValueError(f"{where} takes {channels} input channels; the images of an "
                             f"image folder give 1 (grey) or 3 (RGB)")
        self.input_shape = (channels, *shape[1:])
        data = load_folder(cfg.data_dir, channels, self.input_shape[1:], cfg.val_split,
                           cfg.seed, cfg.limit, cfg.test_limit, cfg.allow_empty_classes,
                           cfg.strict, cfg.augment, cfg.mean, cfg.std,
                           workers=default_workers() if cfg.workers is None else cfg.workers,
                           cache_decoded=cfg.cache_decoded)
        self.train_set, self.test_set = data.train, data.val
        self.data_record, self.skipped, self.line = (data.preprocess.to_record(), data.skipped,
                                                     data.line)
        print(f"data: {data.line}", flush=True)


def check_input_options(cfg):
    """TrainConfig's --input and image-folder options, checked (ValueError naming them)."""
    from .data.preprocess import AUGMENTS
    if getattr(cfg, "reinit", False) and not is_onnx_file(cfg.model):
        raise ValueError(f"--reinit applies to an .onnx --model only (it trains the imported "
                         f"net from a seeded initialisation instead of the file's weights); "
                         f"--model is {cfg.model!r}")
    if cfg.input is not None:
        cfg.input = tuple(cfg.input)
        if len(cfg.input) != 3 or not all(isinstance(v, int) and not isinstance(v, bool)
                                           and 1 <= v <= 65536 for v in cfg.input):
            raise ValueError(f"input must be 3 ints C,H,W in [1, 65536], got {cfg.input!r}")
    if cfg.workers is not None and not (isinstance(cfg.workers, int) and 0 <= cfg.workers <= 256):
        raise ValueError(f"workers must be an int in [0, 256], got {cfg.workers!r}")
    if cfg.channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {cfg.channels!r}")
    if not (isinstance(cfg.val_split, (int, float)) and 0.0 <= cfg.val_split < 1.0):
        raise ValueError(f"val_split must be a number in [0, 1), got {cfg.val_split!r}")
    if cfg.augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got "
                         f"{cfg.augment!r}")
    for name in ("mean", "std"):
        v = getattr(cfg, name)
        if v is not None:
            v = tuple(v)
            setattr(cfg, name, v)
            if not v or not all(isinstance(x, (int, float)) and math.isfinite(x) and
                                (x > 0 if name == "std" else True) for x in v):
                raise ValueError(f"{name} must be finite numbers{' > 0' if name == 'std' else ''}"
                                 f", one per channel, got {v!r}")
    if (cfg.mean is None) != (cfg.std is None):
        raise ValueError("give --mean and --std together (or neither: computed from the "
                         "training images)")
