"""What ``gpucnn verify`` verifies: a model name, a checkpoint written by ``gpucnn train``
(its model config and weights; read with :func:`gpucnn.checkpoint.open_checkpoint`, never
unpickled) or a model built by :mod:`gpucnn.models`; and the copies of it built on each
backend, by the same :func:`gpucnn.models.build_model` that training uses."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..backends import get_backend
from ..checkpoint import CheckpointError, open_checkpoint
from ..filerules import check_metadata
from ..modelfile import is_model_file, load_net
from ..models import MODELS, build_from_config, parameter_shapes
from ..train import upgrade_metadata

__all__ = ["ModelSource", "load_model_source", "build_copy"]


class ModelSource:
    """label (name or path), config (build_model's), params (float32 arrays keyed like
    ``state_dict``, or None: the seed's initial weights) and extra (layers' extra state)."""

    def __init__(self, label, config, params=None, extra=None):
        self.label, self.config, self.params, self.extra = label, config, params, extra or {}


def _is_checkpoint(ref):
    text = os.fspath(ref)
    return text.endswith(".npz") or os.sep in text or Path(text).is_file()


def load_model_source(model_or_checkpoint):
    """The :class:`ModelSource` of a model name, a checkpoint path or a built model. Raises
    ValueError (CheckpointError for a checkpoint) naming what is wrong."""
    src = model_or_checkpoint
    if hasattr(src, "layers"):
        cfg = getattr(src, "config", None)
        if cfg is None:
            raise ValueError("model: a model to verify must come from gpucnn.models (it needs "
                             "its .config to be built a second time on the reference)")
        return ModelSource(cfg["name"], cfg, src.state_dict(), src.extra_state())
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError(f"model must be a model name, a checkpoint path or a model built by "
                        f"gpucnn.models, got {type(src).__name__}")
    if is_model_file(src):  # a model file: its net with the seed's weights
        kwargs, shape = load_net(src)
        return ModelSource(str(src), {"name": "sequential", "kwargs": kwargs,
                                      "input_shape": list(shape)})
    if not _is_checkpoint(src):
        key = str(src).replace("-", "_").lower()
        if key not in MODELS:
            raise ValueError(f"MODEL must be one of {', '.join(MODELS)} or a checkpoint .npz "
                             f"path; got {str(src)!r}")
        return ModelSource(key, {"name": key, "kwargs": {}})
    with open_checkpoint(src) as ck:
        meta = upgrade_metadata(ck.metadata, src)
        if "model" not in meta:
            raise CheckpointError(f"{src}: its metadata has no model config ('model'); verify "
                                  f"reads checkpoints written by gpucnn train")
        # What verify acts on is checked before anything is built or read: the model config
        # against what this version builds, then the weights against the shapes it implies.
        check_metadata(meta, src, CheckpointError, fields=("model", "model_extra"))
        cfg = meta["model"]
        try:
            shapes = parameter_shapes(cfg["name"], input_shape=cfg.get("input_shape"),
                                      **cfg.get("kwargs", {}))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{src}: its model config {cfg!r} cannot be built: "
                                  f"{exc}") from None
        arrays = ck.arrays({f"model/{k}": v for k, v in shapes.items()}, dtype=np.float32,
                           skip_others=True, fits=f"its model {cfg['name']}")
    params = {k[len("model/"):]: v for k, v in arrays.items()}
    return ModelSource(str(src), cfg, params, meta.get("model_extra", {}))


def build_copy(source, backend, seed):
    """The model of ``source`` on ``backend``, in training mode, with the source's weights."""
    if isinstance(backend, str) or backend is None:
        backend = get_backend(backend)  # its own error (e.g. a precision it lacks), not the file's
    try:
        model = build_from_config(source.config, backend=backend, seed=seed)
        if source.params is not None:
            model.load_state_dict(source.params)
        model.load_extra_state(source.extra)
    except (ValueError, TypeError, KeyError) as exc:
        if source.params is None:
            raise
        raise CheckpointError(f"{source.label}: does not fit its model "
                              f"{source.config['name']}: {exc}") from None
    return model.train()
