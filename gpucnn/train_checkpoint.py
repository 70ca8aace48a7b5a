"""The trainer's checkpoint I/O: what ``gpucnn train`` saves of a run, and how ``--resume``
checks and takes it back.

The pieces are elsewhere and stay there: the file format (:mod:`gpucnn.checkpoint`), the
metadata schema, its upgrades and validation and the run configuration ``--resume`` compares
(:mod:`gpucnn.runmeta`), what protects the files (:mod:`gpucnn.runsafety`) and the run's
position (:mod:`gpucnn.runstate`). :class:`RunCheckpoint` puts them together for one run's
model, optimiser and backend.
"""
from __future__ import annotations

import os
from dataclasses import asdict

import numpy as np

from . import __version__
from .checkpoint import CheckpointError, check_compatible, open_checkpoint, save_checkpoint
from .ops.conv import selector as conv_selector
from .runmeta import (SCHEMA_VERSION, compare_run, config_mismatch_message, upgrade_metadata,
                      validate_metadata)
from .runsafety import check_finite_state, write_with_retry
from .runstate import RunState

__all__ = ["RunCheckpoint", "config_record"]


def config_record(cfg):
    """The run configuration as the checkpoint and the metrics record it (the progress bar,
    graph mode and device data, whose replays and batches are bit-identical to eager steps
    and host-built batches, change nothing of the run)."""
    return {k: v for k, v in asdict(cfg).items()
            if k not in ("progress", "cuda_graphs", "device_data")}


def _arrays_under(arrays, prefix):
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


class RunCheckpoint:
    """Saves and restores the run of ``model`` and ``opt`` on backend ``B``, configured by
    ``cfg`` (a gpucnn.train.TrainConfig)."""

    world_size = 1  # processes of a data-parallel run (gpucnn.distributed sets it)

    def __init__(self, cfg, model, opt, B, data_record=None):
        self.cfg, self.model, self.opt, self.backend = cfg, model, opt, B
        self.data_record = data_record  # the data's classes and preprocessing (gpucnn.data.preprocess)

    global_batch = property(lambda self: self.cfg.batch_size * self.world_size)

    def run_record(self):
        """What this run is, saved in the checkpoint and compared by --resume (the keys of
        gpucnn.runmeta.RESUME_KEYS are paths into it); a new compared key is recorded here."""
        return {"config": config_record(self.cfg), "conv_algos": conv_selector.record(self.backend),
                "data": self.data_record,
                "data_parallel": {"world_size": self.world_size,
                                  "global_batch": self.global_batch}}

    def contents(self, run: RunState):
        """(arrays, metadata): what the checkpoint of ``run`` holds."""
        arrays = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        opt_arrays, opt_meta = self.opt.state_dict(self.backend)
        arrays.update({f"optim/{k}": v for k, v in opt_arrays.items()})
        meta = {"schema_version": SCHEMA_VERSION, "written_by": f"gpucnn {__version__}",
                "model": self.model.config, "model_extra": self.model.extra_state(),
                "optimizer": opt_meta, **run.metadata(), **self.run_record()}
        return arrays, meta

    def state_shapes(self):
        """{checkpoint array name: shape} of this run's model and optimiser."""
        shapes = {f"model/{k}": tuple(p.shape) for k, p in self.model.named_parameters()}
        shapes.update({f"optim/{n}.{i}": tuple(a.shape) for n, lst in self.opt.state.items()
                       for i, a in enumerate(lst)})
        return shapes

    def size_estimate(self):
        """About the size of this run's checkpoint file (for the start-up room check)."""
        n = sum(p.data.size for p in self.model.parameters()) * 4
        arrays = len(self.model.parameters()) * (1 + len(self.opt.state_names))
        return n * (1 + len(self.opt.state_names)) + 400 * arrays + 4096 + 300 * self.cfg.epochs

    def save(self, run: RunState, path):
        """Write the checkpoint, never a non-finite one; a failed write is retried once."""
        arrays, meta = self.contents(run)
        check_finite_state(arrays, meta["epoch_sums"], f"checkpoint {path}")
        kept = (f"the previous checkpoint {path} is kept unchanged" if os.path.exists(path)
                else "no checkpoint file was written")
        write_with_retry("checkpoint", path, lambda: save_checkpoint(path, arrays, meta),
                         self.cfg.save_retry_s, kept)

    def restore(self, path, n_train):
        """Load checkpoint ``path`` into the model and the optimiser, for a run of ``n_train``
        training images. Every metadata field is validated, the run configuration compared
        and the saved convolution algorithms checked against what they must run, before any
        array is read; the arrays are then read only if they are the ones this model and
        optimiser hold (names, shapes), bounded by their sizes, and refused unless finite as
        float32. Returns (the RunState to continue from, the run keys the checkpoint did not
        record)."""
        with open_checkpoint(path) as ck:
            meta = upgrade_metadata(ck.metadata, path)
            differences, unchecked = compare_run(meta, self.run_record())
            if differences and not self.cfg.allow_config_change:
                raise CheckpointError(config_mismatch_message(path, differences))
            same_data = not any(k in differences for k in
                                ("config.batch_size", "data_parallel.global_batch",
                                 "config.limit", "config.dataset"))
            validate_metadata(meta, path, n_train, self.global_batch, same_data)
            try:
                check_compatible(meta, self.model.config, key="model")
            except CheckpointError as exc:
                raise CheckpointError(f"{path}: {exc}") from None
            if meta["optimizer"]["type"] != type(self.opt).__name__:
                raise CheckpointError(f"{path}: its optimizer state is for "
                                      f"{meta['optimizer']['type']!r}, this run uses "
                                      f"{type(self.opt).__name__!r}")
            try:  # auto then runs the checkpoint's algorithms again
                conv_selector.restore(self.backend, meta.get("conv_algos"))
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"{path}: conv_algos: {exc}") from None
            arrays = ck.arrays(self.state_shapes(), dtype=np.float32,
                               fits="this run's model and optimizer")
        try:
            self.model.load_state_dict(_arrays_under(arrays, "model/"))
            self.opt.load_state_dict(self.backend, _arrays_under(arrays, "optim/"), meta["optimizer"])
            self.model.load_extra_state(meta["model_extra"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: checkpoint does not fit this run: {exc}") from exc
        run = RunState.from_metadata(meta)
        if differences:
            run.config_changes.append({"epoch": run.epoch, "batch_in_epoch":
                                       run.batch_in_epoch, "changes": differences})
            print("resuming with a changed configuration (--allow-config-change): "
                  + "; ".join(f"{k.split('.')[-1]} {d['checkpoint']!r} -> {d['now']!r}"
                              for k, d in differences.items()), flush=True)
        return run, unchecked
