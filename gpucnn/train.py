"""The training loop behind ``gpucnn train``: epochs, evaluation, checkpoints, exact resume.

A step is forward, loss, backward and the optimiser update, all on the backend. The only host
transfer inside the loop is reading the scalar loss and the running correct-count every
``check_every`` steps (every step on the CPU backends, where it costs nothing). The training
split is uploaded once; each epoch's permutation is uploaded once and batches are gathered on
the device (CIFAR augmentation is the exception: it runs on the host, batch by batch).
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import __version__
from .backends import get_backend
from .checkpoint import CheckpointError, check_compatible, load_checkpoint, save_checkpoint
from .data import load_dataset
from .data.loader import epoch_permutation, num_batches
from .models import build_model
from .nn import SoftmaxCrossEntropy
from .optim import SGD, Adam, make_schedule

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "train", "SCHEMA_VERSION",
           "upgrade_metadata"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped before saving a broken checkpoint."""


# The layout of the metadata the trainer saves. 1: gpucnn 0.1.0 (no "schema_version" key);
# 2: adds "schema_version" and "written_by". A later schema adds its keys here with an
# upgrade step from the one before, so every older checkpoint keeps loading.
SCHEMA_VERSION = 2


def upgrade_metadata(meta, path):
    """The metadata of a checkpoint of any earlier schema, brought to SCHEMA_VERSION."""
    version = meta.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path}: metadata schema_version must be a positive int, got "
                              f"{version!r}")
    if version > SCHEMA_VERSION:
        raise CheckpointError(f"{path}: metadata schema {version} was written by a newer "
                              f"gpucnn ({meta.get('written_by', 'unknown')}); this one reads "
                              f"schemas 1 to {SCHEMA_VERSION}")
    meta = dict(meta)
    if version == 1:
        meta["written_by"] = "gpucnn 0.1.0"
    meta["schema_version"] = SCHEMA_VERSION
    return meta


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
    data_dir: str | None = None
    download: bool = False
    limit: int | None = None
    test_limit: int | None = None
    checkpoint: str | None = None
    resume: bool = False
    metrics_json: str | None = None
    plot: str | None = None
    progress: bool = True
    check_every: int | None = None
    model_kwargs: dict = field(default_factory=dict)

    def validate(self):
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.resume and not self.checkpoint:
            raise ValueError("--resume needs --checkpoint PATH (the file to continue from)")


class Trainer:
    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        self.B = get_backend(cfg.backend)
        self.train_set = load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.download,
                                      cfg.limit)
        self.test_set = load_dataset(cfg.dataset, "test", cfg.data_dir, cfg.download,
                                     cfg.test_limit)
        kwargs = dict(cfg.model_kwargs)
        kwargs.setdefault("num_classes", self.train_set.num_classes)
        self.model = build_model(cfg.model, backend=self.B, seed=cfg.seed, **kwargs)
        if tuple(self.model.input_shape) != tuple(self.train_set.input_shape):
            raise ValueError(f"model {cfg.model} takes inputs of shape {self.model.input_shape} "
                             f"but {cfg.dataset} has {tuple(self.train_set.input_shape)}")
        self.loss = SoftmaxCrossEntropy().bind(self.B)
        params = self.model.parameters()
        if cfg.optimizer == "sgd":
            self.opt = SGD(params, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay,
                           backend=self.B)
        else:
            self.opt = Adam(params, cfg.lr, weight_decay=cfg.weight_decay, backend=self.B)
        self.schedule = make_schedule(cfg.schedule, cfg.lr, cfg.epochs)
        self.augment = self.train_set.name == "cifar10"
        self.epoch, self.batch_in_epoch = 0, 0
        self.history: list[dict] = []
        self._epoch_sums = [0.0, 0, 0, 0.0]  # loss*n, correct, seen, seconds
        self.check_every = cfg.check_every or (1 if self.B.xp is np else 20)
        if not self.augment:
            self.train_x = self.B.asarray(self.train_set.images)
            self.train_y = self.B.asarray(self.train_set.labels, dtype=np.int32)

    # ---- checkpoints -------------------------------------------------------------------------
    def state(self):
        arrays = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        opt_arrays, opt_meta = self.opt.state_dict(self.B)
        arrays.update({f"optim/{k}": v for k, v in opt_arrays.items()})
        meta = {"schema_version": SCHEMA_VERSION, "written_by": f"gpucnn {__version__}",
                "model": self.model.config, "model_extra": self.model.extra_state(),
                "optimizer": opt_meta, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "epoch_sums": self._epoch_sums,
                "history": self.history, "config": _jsonable_config(self.cfg)}
        return arrays, meta

    def save(self, path=None):
        path = path or self.cfg.checkpoint
        if path:
            arrays, meta = self.state()
            save_checkpoint(path, arrays, meta)

    def load(self, path):
        arrays, meta = load_checkpoint(path)
        meta = upgrade_metadata(meta, path)
        try:
            check_compatible(meta, self.model.config, key="model")
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        try:
            self.model.load_state_dict({k[6:]: v for k, v in arrays.items()
                                        if k.startswith("model/")})
            self.opt.load_state_dict(self.B, {k[6:]: v for k, v in arrays.items()
                                              if k.startswith("optim/")}, meta["optimizer"])
            self.model.load_extra_state(meta.get("model_extra", {}))
            self.epoch, self.batch_in_epoch = int(meta["epoch"]), int(meta["batch_in_epoch"])
            self._epoch_sums = list(meta["epoch_sums"])
            self.history = list(meta["history"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: checkpoint does not fit this run: {exc}") from exc

    # ---- one step -------------------------------------------------------------------------------
    def step(self, x, y):
        """Forward, loss, backward, update. Returns (loss, correct) as backend 0-d arrays."""
        logits = self.model.forward(x)
        loss = self.loss.forward(logits, y)
        self.model.backward(self.loss.backward())
        self.opt.step()
        correct = (self.B.xp.argmax(self.loss.probs, axis=1) == y).sum()
        return loss, correct

    def _batches(self, epoch, start):
        cfg, n = self.cfg, len(self.train_set)
        if self.augment:
            for x, y in self.train_set.batches(cfg.batch_size, True, cfg.seed, epoch,
                                               augment=True, start_batch=start):
                yield self.B.asarray(x), self.B.asarray(y, dtype=np.int32)
            return
        order = self.B.asarray(epoch_permutation(n, cfg.seed, epoch).astype(np.int64),
                               dtype=np.int64)
        for b in range(start, num_batches(n, cfg.batch_size)):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            yield self.train_x[idx], self.train_y[idx]

    def evaluate(self, dataset, batch_size=None):
        """Top-1 accuracy on a dataset split (eval mode: no dropout)."""
        self.model.eval()
        bs = batch_size or max(self.cfg.batch_size, 256)
        correct = 0
        try:
            for x, y in dataset.batches(bs, shuffle=False):
                logits = self.model.forward(self.B.asarray(x))
                pred = self.B.to_numpy(self.B.xp.argmax(logits, axis=1))
                correct += int((pred == y).sum())
        finally:
            self.model.train()
        return correct / len(dataset)

    # ---- the loop ---------------------------------------------------------------------------------
    def fit(self, on_step=None):
        cfg = self.cfg
        n_batches = num_batches(len(self.train_set), cfg.batch_size)
        self.model.train()
        self._interrupted = False
        previous = None
        if threading.current_thread() is threading.main_thread():
            # Ctrl-C only raises a flag; the loop stops *between* steps so the checkpoint
            # holds a consistent state that --resume continues from exactly. A second
            # Ctrl-C interrupts at once.
            def on_sigint(signum, frame):
                if self._interrupted:
                    raise KeyboardInterrupt
                self._interrupted = True
            previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            while self.epoch < cfg.epochs:
                self._run_epoch(n_batches, on_step)
        except KeyboardInterrupt:
            if cfg.checkpoint:
                self.save()
                print(f"\ninterrupted at epoch {self.epoch + 1}, batch {self.batch_in_epoch}: "
                      f"checkpoint written to {cfg.checkpoint}; continue with --resume")
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return self.metrics()

    def _run_epoch(self, n_batches, on_step):
        cfg, B = self.cfg, self.B
        self.opt.lr = self.schedule.lr_at(self.epoch)
        bar = _progress(n_batches, self.batch_in_epoch, f"epoch {self.epoch + 1}/{cfg.epochs}",
                        cfg.progress)
        pending = []  # (loss, correct, n) on the device, read every check_every steps
        t0 = time.perf_counter()
        try:
            for x, y in self._batches(self.epoch, self.batch_in_epoch):
                loss, correct = self.step(x, y)
                pending.append((loss, correct, len(y)))
                self.batch_in_epoch += 1
                if len(pending) >= self.check_every or self.batch_in_epoch == n_batches:
                    self._drain(pending, time.perf_counter() - t0, bar)
                    t0 = time.perf_counter()
                if on_step is not None:
                    on_step(self)
                if self._interrupted:
                    raise KeyboardInterrupt
        finally:
            if pending:
                self._drain(pending, time.perf_counter() - t0, bar, check=False)
            if bar is not None:
                bar.close()
        loss_sum, correct, seen, seconds = self._epoch_sums
        record = {"epoch": self.epoch + 1, "lr": self.opt.lr, "train_loss": loss_sum / seen,
                  "train_accuracy": correct / seen, "seconds": seconds,
                  "images_per_s": seen / seconds if seconds > 0 else None,
                  "test_accuracy": self.evaluate(self.test_set)}
        self.history.append(record)
        if cfg.progress:
            print(f"epoch {record['epoch']}: loss {record['train_loss']:.4f}, train accuracy "
                  f"{record['train_accuracy']:.4f}, test accuracy "
                  f"{record['test_accuracy']:.4f}, {record['images_per_s']:.0f} images/s")
        self.epoch += 1
        self.batch_in_epoch = 0
        self._epoch_sums = [0.0, 0, 0, 0.0]
        self.save()
        if cfg.metrics_json:
            write_metrics(cfg.metrics_json, self.metrics())

    def _drain(self, pending, seconds, bar, check=True):
        B = self.B
        losses = [float(B.to_numpy(l)) for l, _, _ in pending]
        corrects = [int(B.to_numpy(c)) for _, c, _ in pending]
        ns = [n for _, _, n in pending]
        pending.clear()
        if check and not all(math.isfinite(v) for v in losses):
            raise TrainingDiverged(
                f"the training loss became {losses[-1]} at epoch {self.epoch + 1}, batch "
                f"{self.batch_in_epoch}: check the input data for NaN/inf and lower the "
                f"learning rate (lr={self.cfg.lr}); no checkpoint was written for this state")
        s = self._epoch_sums
        s[0] += sum(l * n for l, n in zip(losses, ns))
        s[1] += sum(corrects)
        s[2] += sum(ns)
        s[3] += seconds
        if bar is not None:
            bar.update(len(ns))
            bar.set_postfix(loss=f"{s[0] / s[2]:.4f}", acc=f"{s[1] / s[2]:.3f}",
                            img_s=f"{s[2] / s[3]:.0f}" if s[3] > 0 else "-")

    def metrics(self):
        last = self.history[-1] if self.history else {}
        seen_s = [(r["images_per_s"]) for r in self.history if r.get("images_per_s")]
        return {"model": self.cfg.model, "dataset": self.cfg.dataset,
                "backend": self.B.name, "device": self.B.describe(),
                "epochs": self.history, "test_accuracy": last.get("test_accuracy"),
                "train_images_per_s": float(np.median(seen_s)) if seen_s else None,
                "batch_size": self.cfg.batch_size, "seed": self.cfg.seed,
                "config": _jsonable_config(self.cfg)}


def _jsonable_config(cfg):
    return {k: v for k, v in asdict(cfg).items() if k not in ("progress",)}


def _progress(total, initial, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False,
                dynamic_ncols=True)


def write_metrics(path, metrics):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train(cfg: TrainConfig, on_step=None):
    """Build, optionally resume, fit; returns the metrics dict."""
    trainer = Trainer(cfg)
    if cfg.resume:
        if not os.path.exists(cfg.checkpoint):
            raise FileNotFoundError(f"--resume: checkpoint {cfg.checkpoint} does not exist")
        trainer.load(cfg.checkpoint)
    metrics = trainer.fit(on_step)
    if cfg.metrics_json:
        write_metrics(cfg.metrics_json, metrics)
    if cfg.plot:
        plot_metrics(metrics, cfg.plot)
    return metrics
