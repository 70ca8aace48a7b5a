"""The training loop behind ``gpucnn train``: epochs, evaluation, checkpoints, exact resume.

A step is forward, loss, backward and the optimiser update, all on the backend. The only host
transfer inside the loop is reading the scalar loss and the running correct-count every
``check_every`` steps (every step on the CPU backends, where it costs nothing); that read is
also where the errors device kernels flag (out-of-range labels) are raised. The training split
is uploaded once (as uint8 pixels where it fits: gpucnn/train_data.py); each epoch's
permutation is uploaded once and batches are gathered on the device (without device data,
CIFAR augmentation runs on the host, batch by batch).

What protects the user's files (README: "What gpucnn guarantees about your files"): before any
work, :func:`train` checks every output path, takes the checkpoint's lock, refuses to replace
another run's checkpoint and removes the temporary files of interrupted writes
(:mod:`gpucnn.runsafety`); ``--resume`` validates the checkpoint's metadata and compares its
run configuration before using anything of it (:mod:`gpucnn.train_checkpoint`, which saves and
restores the run's position, a :class:`gpucnn.runstate.RunState`); nothing non-finite is ever
saved; Ctrl-C and SIGTERM stop between two steps and save; a failed write is retried once.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .argtypes import MAX_BATCH, MAX_COUNT, MAX_EPOCHS, MAX_RETRY_S, MAX_SEED
from .argtypes import check_number as _check_number
from .backends import get_backend
from .data.loader import num_batches
from .models import build_model
from .nn import SoftmaxCrossEntropy
from .ops.loss import check_label_range
from .ops.precision import check_precision
from .ops.storage import activation_itemsize, activation_storage
from .optim import SGD, Adam, make_schedule
from .runmeta import SCHEMA_VERSION, upgrade_metadata
from .membudget import activation_elements, check_fits, host_available_bytes
from .outputs import write_atomic, write_json, write_target
from .runsafety import (RunLock, SaveFailed, TrainingDiverged, check_output_paths, check_room,
                        file_size_limit_as_error, prepare_checkpoint, write_with_retry)
from .runstate import RunState
from .train_checkpoint import RunCheckpoint, config_record
from .train_data import TrainBatches, check_device_data_mode, free_device_bytes
from .train_inputs import RunInputs, check_input_options
from .train_graph import GraphSteps, graph_blocker

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "TrainingInterrupted", "SaveFailed",
           "train", "SCHEMA_VERSION", "upgrade_metadata"]


_NUMERIC_WARNINGS = r"(overflow|invalid value|divide by zero|underflow) encountered"
METRICS_SCHEMA = "gpucnn-train-metrics/1"  # what gpucnn.outputs recognises a metrics file by


class _Unread(NamedTuple):
    """A step's results still on the device: read back every check_every steps."""
    loss: Any
    correct: Any
    images: int


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped training. ``immediate``: a second signal, which
    stops at once, mid-step, so nothing is saved (the previous checkpoint is kept)."""

    def __init__(self, signum=signal.SIGINT, immediate=False):
        super().__init__(signum)
        self.signum, self.immediate = signum, immediate


@dataclass
class TrainConfig:
    model: str = "lenet5"
    dataset: str = "fashion-mnist"
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    schedule: str = "constant"
    seed: int = 0
    backend: str | None = None
    precision: str | None = None       # of GEMMs and convolutions (gpucnn/ops/precision.py)
    data_dir: str | None = None
    download: bool = False
    limit: int | None = None
    test_limit: int | None = None
    checkpoint: str | None = None
    resume: bool = False
    overwrite: bool = False            # replace an existing --checkpoint of another run
    allow_config_change: bool = False  # --resume with a different run configuration
    save_retry_s: float = 10.0         # pause before the one retry of a failed write
    metrics_json: str | None = None
    plot: str | None = None
    progress: bool = True
    check_every: int | None = None
    cuda_graphs: bool = False          # replay each step as a graph (gpucnn/train_graph.py)
    device_data: str = "auto"          # the training split on the device (gpucnn/train_data.py)
    model_kwargs: dict = field(default_factory=dict)
    # --input C,H,W and image folders (gpucnn/train_inputs.py, gpucnn/data/folder.py)
    input: tuple | None = None
    channels: int | None = None        # folder: 1 or 3 (default: the model's C, else 3)
    val_split: float = 0.1             # folder without val/: the share held out per class
    allow_empty_classes: bool = False
    strict: bool = False               # folder: an unreadable image is an error, not skipped
    augment: str = "none"              # folder: none or random-resized-crop
    mean: tuple | None = None          # folder: per-channel mean/std (default: computed)
    std: tuple | None = None
    workers: int | None = None         # folder + augment: input processes (None: the cores)
    cache_decoded: bool = False        # folder: decoded images memory-mapped under the cache
    reinit: bool = False               # an .onnx --model: seeded init, not the file's weights

    def validate(self):
        for name in ("epochs", "batch_size"):
            _check_number(name, getattr(self, name), positive=True, integer=True)
        for name in ("limit", "test_limit", "check_every"):
            _check_number(name, getattr(self, name), positive=True, integer=True, optional=True)
        _check_number("seed", self.seed, integer=True)
        _check_number("lr", self.lr, positive=True)
        for name in ("momentum", "weight_decay", "save_retry_s"):
            _check_number(name, getattr(self, name))
        for name, most in (("epochs", MAX_EPOCHS), ("batch_size", MAX_BATCH),
                           ("limit", MAX_COUNT), ("test_limit", MAX_COUNT), ("seed", MAX_SEED),
                           ("save_retry_s", MAX_RETRY_S)):
            if (getattr(self, name) or 0) > most:
                raise ValueError(f"{name} must be at most {most:g}, got "
                                 f"{getattr(self, name)!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.resume and not self.checkpoint:
            raise ValueError("--resume needs --checkpoint PATH (the file to continue from)")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the checkpoint and --overwrite replaces it: "
                             "give one of them")
        if self.allow_config_change and not self.resume:
            raise ValueError("--allow-config-change applies to --resume only")
        check_device_data_mode(self.device_data)
        check_input_options(self)
        if self.precision is not None:
            self.precision = check_precision(self.precision)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.backend = get_backend(cfg.backend, cfg.precision)
        # The precision in force (after a fallback, or from $GPUCNN_PRECISION) is what the
        # checkpoint records: an exact resume runs the same arithmetic.
        cfg.precision = self.backend.precision
        self.cfg = cfg
        inputs = RunInputs(cfg)
        self.train_set, self.test_set = inputs.train_set, inputs.test_set
        self.data_record, self.skipped = inputs.data_record, inputs.skipped
        kwargs = inputs.model_kwargs
        self.model = build_model(inputs.model_name, backend=self.backend, seed=cfg.seed,
                                 input_shape=inputs.input_shape, **kwargs)
        inputs.set_initial_weights(self.model, cfg)
        if tuple(self.model.input_shape) != tuple(self.train_set.input_shape):
            raise ValueError(f"model {cfg.model} takes inputs of shape {self.model.input_shape} "
                             f"but {cfg.dataset} has {tuple(self.train_set.input_shape)}")
        self._check_batch_memory(kwargs["num_classes"])
        self.data_files = {}
        for ds in (self.train_set, self.test_set):
            # Checked once here, on the host: a device backend only flags bad labels later.
            try:
                check_label_range(ds.labels, kwargs["num_classes"])
            except ValueError as exc:
                raise ValueError(f"{cfg.dataset} {ds.split} split ({ds.files[-1]}): {exc}; the "
                                 f"model has num_classes={kwargs['num_classes']}") from None
            self.data_files[ds.split] = [str(f) for f in ds.files]
        print(f"data: {cfg.dataset}, train {len(self.train_set)} images from "
              f"{', '.join(self.data_files['train'])}; test {len(self.test_set)} images from "
              f"{', '.join(self.data_files['test'])}", flush=True)
        self.loss = SoftmaxCrossEntropy().bind(self.backend)
        params = self.model.parameters()
        if cfg.optimizer == "sgd":
            self.opt = SGD(params, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay,
                           backend=self.backend)
        else:
            self.opt = Adam(params, cfg.lr, weight_decay=cfg.weight_decay, backend=self.backend)
        self.schedule = make_schedule(cfg.schedule, cfg.lr, cfg.epochs)
        self.augment = (self.train_set.name == "cifar10"
                        or getattr(self.train_set, "host_batches", False))
        self.run = RunState()
        self.run_checkpoint = RunCheckpoint(cfg, self.model, self.opt, self.backend,
                                            self.data_record)
        # Saved to the file a link points to (replacing the link would leave two checkpoints)
        self.checkpoint_target = write_target(cfg.checkpoint) if cfg.checkpoint else None
        self.lock = None  # the RunLock train() holds: re-taken on each new checkpoint file
        self.resume_unchecked: list[str] = []  # run keys the checkpoint did not record
        self._interrupted = None  # the signal that asked to stop, if any
        self.eager_steps = 0  # this process's steps without graph mode (graph_steps counts its own)
        self.check_every = cfg.check_every or (1 if self.backend.xp is np else 20)
        self.feed = TrainBatches(self.backend, self.train_set, cfg.device_data, self.augment)
        print(f"data: {self.feed.line}", flush=True)
        # What batches are gathered from (None for host-augmented batches).
        self.train_x, self.train_y = self.feed.images, self.feed.labels
        self.graph_steps = (GraphSteps(self.backend, self._update, self.model, self.opt,
                                       graph_blocker(self.backend, self.model, self.opt))
                            if cfg.cuda_graphs else None)

    def _check_batch_memory(self, num_classes):
        """Refuse a --batch-size whose activations cannot fit, before any upload: a step keeps
        every layer's output for the backward and as many gradients (a lower bound)."""
        cfg, itemsize = self.cfg, activation_itemsize(self.backend)
        per_sample = activation_elements(self.model) + num_classes
        batch = min(cfg.batch_size, len(self.train_set))
        eval_batch = min(max(cfg.batch_size, 256), len(self.test_set))
        need = itemsize * max(2 * batch, eval_batch) * per_sample
        if self.backend.name == "cuda":
            available, where = free_device_bytes(self.backend)
            where = f"is {where}"
        else:
            available, where = host_available_bytes(), "of host memory is available"
        check_fits(f"--batch-size {cfg.batch_size} ({batch} images of {cfg.model} per step)",
                   need, available, where)

    global_batch = property(lambda self: self.cfg.batch_size)  # per step, over all processes
    # The run's position, as on_step callbacks read it.
    epoch = property(lambda self: self.run.epoch)
    batch_in_epoch = property(lambda self: self.run.batch_in_epoch)
    history = property(lambda self: self.run.history)

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, path=None):
        """Write the checkpoint (to --checkpoint unless ``path``), never a non-finite one; a
        failed write is retried once."""
        path = path or self.checkpoint_target
        if path:
            self.run_checkpoint.save(self.run, path)
            if self.lock is not None:
                self.lock.hold_file(path)

    def load(self, path):
        """Continue from checkpoint ``path``: every metadata field is validated and the run
        configuration compared before anything of it is used."""
        self.run, self.resume_unchecked = self.run_checkpoint.restore(path, len(self.train_set))

    # ---- one step -------------------------------------------------------------------------------
    def step(self, x, y):
        """Forward, loss, backward, update (replayed as a graph with --cuda-graphs). Returns
        (loss, correct) as backend 0-d arrays. The GPU is made current once for the whole
        step, not per op."""
        if self.graph_steps is None:
            self.eager_steps += 1
        with self.backend.on_device():
            loss, probs = (self.graph_steps or self._update)(x, y)
            correct = (self.backend.xp.argmax(probs, axis=1) == y).sum()
        return loss, correct

    def _update(self, x, y):
        logits = self.model.forward(x)
        loss = self.loss.forward(logits, y)
        self.model.backward(self.loss.backward())
        self.opt.step()
        return loss, self.loss.probs

    def _batches(self, epoch, start):
        return self.feed.batches(self.cfg.batch_size, self.cfg.seed, epoch, start)

    def evaluate(self, dataset, batch_size=None):
        """Top-1 accuracy on a dataset split (eval mode: no dropout)."""
        self.model.eval()
        bs = batch_size or max(self.cfg.batch_size, 256)
        correct = 0
        try:
            for x, y in dataset.batches(bs, shuffle=False):
                logits = self.model.forward(self.backend.asarray(x))
                pred = self.backend.to_numpy(self.backend.xp.argmax(logits, axis=1))
                correct += int((pred == y).sum())
        finally:
            self.model.train()
        return correct / len(dataset)

    # ---- the loop ---------------------------------------------------------------------------------
    _stop_flag = "_interrupted"  # the attribute a stop signal sets (None: none yet)

    @contextlib.contextmanager
    def _stop_signals(self):
        """Ctrl-C and SIGTERM only set a flag: the loop stops *between* steps, so --resume
        continues exactly. A second signal stops at once, without saving a half-done step."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum, frame):  # the flag: _interrupted, or a subclass's _stop_flag
            if getattr(self, self._stop_flag):
                raise TrainingInterrupted(signum, immediate=True)
            setattr(self, self._stop_flag, signum)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def fit(self, on_step=None):
        cfg, run = self.cfg, self.run
        n_batches = num_batches(len(self.train_set), self.global_batch)
        self.model.train()
        self._interrupted = None
        with self._stop_signals():
            try:
                while run.epoch < cfg.epochs:
                    self._run_epoch(n_batches, on_step)
            except KeyboardInterrupt as exc:
                signum = getattr(exc, "signum", signal.SIGINT)
                if getattr(exc, "immediate", False):
                    print(f"\nstopped at once by a second {signal.Signals(signum).name}: no "
                          f"checkpoint written for this state (the previous one is kept)")
                    raise
                if cfg.checkpoint:
                    self.save()
                    print(f"\n{signal.Signals(signum).name} at epoch {run.epoch + 1}, batch "
                          f"{run.batch_in_epoch}: checkpoint written to {cfg.checkpoint}; "
                          f"continue with --resume", flush=True)
                raise TrainingInterrupted(signum) from None
        return self.metrics()

    def _run_epoch(self, n_batches, on_step):
        cfg, run = self.cfg, self.run
        self.opt.lr = self.schedule.lr_at(run.epoch)
        bar = _progress(n_batches, run.batch_in_epoch, f"epoch {run.epoch + 1}/{cfg.epochs}",
                        cfg.progress)
        pending: list[_Unread] = []
        t0 = time.perf_counter()
        # A diverging run is reported once, by the loss check of _drain, not by a stream of
        # overflow warnings from every op of every step. A warnings filter, not np.errstate:
        # errstate is per thread and the numpy backend computes on worker threads too.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _NUMERIC_WARNINGS, RuntimeWarning)
            try:
                for x, y in self._batches(run.epoch, run.batch_in_epoch):
                    loss, correct = self.step(x, y)
                    pending.append(_Unread(loss, correct, len(y)))
                    run.batch_in_epoch += 1
                    if len(pending) >= self.check_every or run.batch_in_epoch == n_batches:
                        self._drain(pending, time.perf_counter() - t0, bar)
                        t0 = time.perf_counter()
                    if on_step is not None:
                        on_step(self)
                    if self._interrupted is not None:
                        raise TrainingInterrupted(self._interrupted)
            except KeyboardInterrupt as exc:
                # The losses not read yet are checked too: a NaN is never saved on Ctrl-C.
                if pending and not getattr(exc, "immediate", False):
                    self._drain(pending, time.perf_counter() - t0, bar)
                raise
            finally:
                if bar is not None:
                    bar.close()
            s = run.sums
            record = {"epoch": run.epoch + 1, "lr": self.opt.lr,
                      "train_loss": s.loss / s.images, "train_accuracy": s.correct / s.images,
                      "seconds": s.seconds,
                      "images_per_s": s.images / s.seconds if s.seconds > 0 else None,
                      "test_accuracy": self.evaluate(self.test_set)}
        run.finish_epoch(record)
        if cfg.progress:
            print(f"epoch {record['epoch']}: loss {record['train_loss']:.4f}, train accuracy "
                  f"{record['train_accuracy']:.4f}, test accuracy "
                  f"{record['test_accuracy']:.4f}, {record['images_per_s']:.0f} images/s")
        self.save()
        self.write_metrics()

    def _drain(self, pending, seconds, bar):
        B, run = self.backend, self.run
        losses = [float(B.to_numpy(u.loss)) for u in pending]
        corrects = [int(B.to_numpy(u.correct)) for u in pending]
        images = [u.images for u in pending]
        pending.clear()
        B.raise_device_errors()  # e.g. a bad label a loss kernel flagged: a ValueError
        if not all(math.isfinite(v) for v in losses):
            bad = next(v for v in losses if not math.isfinite(v))
            raise TrainingDiverged(
                f"the training loss became {bad} at epoch {run.epoch + 1}, batch "
                f"{run.batch_in_epoch}: check the input data for NaN/inf and lower the "
                f"learning rate (lr={self.cfg.lr}); no checkpoint was written for this state "
                f"(the previous one, if any, is kept)")
        s = run.sums
        s.loss += sum(v * n for v, n in zip(losses, images))
        s.correct += sum(corrects)
        s.images += sum(images)
        s.seconds += seconds
        if bar is not None:
            bar.update(len(images))
            bar.set_postfix(loss=f"{s.loss / s.images:.4f}", acc=f"{s.correct / s.images:.3f}",
                            data=f"{self.feed.epoch_wait_s / max(s.seconds, 1e-9):.0%}",
                            img_s=f"{s.images / s.seconds:.0f}" if s.seconds > 0 else "-")

    def metrics(self):
        cfg, history = self.cfg, self.run.history
        last = history[-1] if history else {}
        seen_s = [(r["images_per_s"]) for r in history if r.get("images_per_s")]
        return {"model": cfg.model, "dataset": cfg.dataset,
                "backend": self.backend.name, "device": self.backend.describe(),
                "precision": self.backend.precision,
                "activations": activation_storage(self.backend), "epochs": history, "test_accuracy": last.get("test_accuracy"),
                "train_images_per_s": float(np.median(seen_s)) if seen_s else None,
                "batch_size": cfg.batch_size, "seed": cfg.seed,
                "data_files": self.data_files, "config_changes": self.run.config_changes,
                "resume_unchecked": self.resume_unchecked,
                "conv_algorithms": self.backend.conv_algorithms(),
                "cuda_graphs": bool(cfg.cuda_graphs), "device_data": self.feed.on_device,
                "graph_replayed_steps": self.graph_steps.replayed if self.graph_steps else 0,
                "eager_steps": (self.graph_steps.eager if self.graph_steps
                                else self.eager_steps),
                "config": config_record(cfg), "schema": METRICS_SCHEMA,
                "input_shape": list(self.model.input_shape), "data": self.data_record,
                **self.feed.record(self.skipped, sum(r["seconds"] for r in history))}

    def write_metrics(self):
        path = self.cfg.metrics_json
        if path:
            kept = (f"the previous {path} is kept unchanged" if os.path.exists(path)
                    else "no metrics file was written")
            write_with_retry("metrics", path, lambda: write_metrics(path, self.metrics()),
                             self.cfg.save_retry_s, kept)


def _progress(total, initial, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False,
                dynamic_ncols=True)


def write_metrics(path, metrics):
    write_json(path, metrics)


def plot_metrics(metrics, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [r["epoch"] for r in metrics["epochs"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(epochs, [r["train_loss"] for r in metrics["epochs"]], "o-")
    a.set_xlabel("epoch"), a.set_ylabel("train loss"), a.grid(alpha=0.3)
    b.plot(epochs, [r["train_accuracy"] for r in metrics["epochs"]], "o-", label="train")
    b.plot(epochs, [r["test_accuracy"] for r in metrics["epochs"]], "s-", label="test")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.legend(), b.grid(alpha=0.3)
    fig.suptitle(f"{metrics['model']} on {metrics['dataset']} ({metrics['device']})")
    fig.tight_layout()
    fmt = os.path.splitext(os.fspath(path))[1][1:].lower()  # checked at start-up
    try:
        write_atomic(path, lambda f: fig.savefig(f, format=fmt, dpi=120))
    finally:
        plt.close(fig)


def train(cfg: TrainConfig, on_step=None):
    """Check, build, optionally resume, fit; returns the metrics dict."""
    cfg.validate()
    if cfg.plot and importlib.util.find_spec("matplotlib") is None:  # not after the training
        raise ValueError("--plot needs matplotlib: pip install 'gpucnn[plot]'")
    with file_size_limit_as_error():
        check_output_paths({"--checkpoint": cfg.checkpoint, "--metrics-json": cfg.metrics_json,
                            "--plot": cfg.plot}, overwrite=cfg.overwrite, resume=cfg.resume)
        lock = RunLock(cfg.checkpoint) if cfg.checkpoint else None
        with lock or contextlib.nullcontext():
            if lock:
                prepare_checkpoint(cfg.checkpoint, cfg.resume, cfg.overwrite, lock)
            trainer = Trainer(cfg)
            trainer.lock = lock
            if cfg.checkpoint:
                check_room(trainer.checkpoint_target, trainer.run_checkpoint.size_estimate())
            if cfg.resume:
                trainer.load(cfg.checkpoint)
                if trainer.run.epoch >= cfg.epochs:
                    print(f"{cfg.checkpoint} holds {trainer.run.epoch} finished epoch(s): nothing "
                          f"to train for --epochs {cfg.epochs} (give more to continue)")
            metrics = trainer.fit(on_step)
            trainer.write_metrics()
            if cfg.plot:
                kept = "the metrics and the checkpoint are written"
                write_with_retry("plot", cfg.plot, lambda: plot_metrics(metrics, cfg.plot),
                                 cfg.save_retry_s, kept)
    return metrics
