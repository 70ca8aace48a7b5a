"""``gpucnn train --distributed``: one model trained data-parallel over the processes of an
MPI job (README: "Training on several processes, GPUs and machines").

The semantics are those of PyTorch DDP, Horovod and ChainerMN: ``--batch-size`` is per
process; step i's global batch is the one-process batch of size ranks x B at step i (one
seeded permutation), rank r taking its contiguous part; each rank's gradient buffer is scaled
by its share of the global batch and the buffers summed (one all-reduce per step); the
initial parameters (and a resumed run's state) are broadcast from rank 0. So N processes of
batch B compute the updates one process of batch N x B computes, up to the order of the
floating-point sums. A last global batch smaller than the others is split as evenly as the
ranks allow and weighted by the real sizes (each image counts as in one process); one with
fewer images than ranks is refused at start-up.

Rank 0 alone shows progress, prints, and writes the checkpoint, the metrics and the plot; the
checks of those outputs run on rank 0 and their verdict stops every rank together. The
test-set evaluation is sharded over the ranks and its counts summed. A stop signal to any rank
is agreed at the next step boundary, so every rank stops after the same step and rank 0 saves
that state.
"""
from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np

from ..nn import Dropout
from ..runsafety import (RunLock, check_output_paths, check_room, file_size_limit_as_error,
                         prepare_checkpoint, write_with_retry)
from ..runstate import RunState
from ..train import Trainer, TrainingDiverged, _Unread, plot_metrics
from ..train_data import shard_bounds
from .communicators import GradientBuffer, communicator_name, make_communicator
from .faults import fail_rank
from .watchdog import Watchdog, watchdog_seconds
from .world import CollectiveError

__all__ = ["DistributedTrainer", "train_distributed"]


class DistributedTrainer(Trainer):
    """A Trainer that is one rank of ``world``, reducing through ``communicator`` (a name of
    communicators.COMMUNICATORS)."""

    def __init__(self, cfg, world, communicator="auto"):
        self.world = world

        def build():  # nothing collective inside: every rank reaches the agreement below
            if cfg.cuda_graphs:
                raise ValueError("--cuda-graphs with --distributed: not supported yet (the "
                                 "all-reduce is not captured); leave out one of them")
            Trainer.__init__(self, cfg)
            return communicator_name(communicator, self.backend)

        name = world.all_or_none(build)  # a rank that could not start stops every rank
        self.run_checkpoint.world_size = world.size
        self.grads = GradientBuffer(self.backend, self.model.parameters())
        self.dropouts = [m for m in getattr(self.model, "layers", ()) if isinstance(m, Dropout)]
        n, g = len(self.train_set), self.global_batch
        world.check_same({"model": self.model.config, "parameters": self.grads.size,
                          "train_images": n, "test_images": len(self.test_set),
                          "global_batch": g, "seed": cfg.seed, "backend": self.backend.name,
                          "communicator": name})
        self.comm = make_communicator(name, world, self.backend)
        if 0 < n % g < world.size:
            raise CollectiveError(f"the last global batch of each epoch would hold {n % g} "
                                  f"images for {world.size} ranks: choose --limit or "
                                  f"--batch-size so that it holds none or at least one per "
                                  f"rank")
        self.sync_state()  # the initial parameters: rank 0's

    global_batch = property(lambda self: self.cfg.batch_size * self.world.size)

    # ---- state: rank 0's, on every rank --------------------------------------------------
    def sync_state(self):
        """Broadcast rank 0's parameters, optimiser state, layer counters and run position."""
        params = self.model.parameters()
        flat = params[0].flat
        for buf in ([flat.data] if flat is not None and flat.intact_list(params)
                    else [p.data for p in params]):
            self.comm.broadcast(buf)
        for buf in (list(self.opt.flat_state.values()) if self.opt.flat is not None
                    else [a for lst in self.opt.state.values() for a in lst]):
            self.comm.broadcast(buf)
        meta = self.world.bcast((self.opt.lr, self.opt.steps, self.model.extra_state(),
                                 self.run.metadata(), self.resume_unchecked))
        self.opt.lr, self.opt.steps = meta[0], meta[1]
        self.model.load_extra_state(meta[2])
        self.run = RunState.from_metadata(meta[3])
        self.resume_unchecked = list(meta[4])
        if hasattr(self.opt, "_device_step"):
            self.opt._device_step = None  # Adam on a device: made again from the count

    def load(self, path):
        """Rank 0 reads and checks the checkpoint (every rank stops on its error); every rank
        then takes rank 0's state."""
        self.world.root_verdict(lambda: Trainer.load(self, path))
        self.sync_state()

    def save(self, path=None):
        """Rank 0 writes; the others wait for it, so that no rank ends (and makes mpiexec end
        the job) while rank 0 is still saving a stop's checkpoint."""
        if self.world.is_root:
            super().save(path)
        self.world.barrier()

    def write_metrics(self):
        if self.world.is_root:
            super().write_metrics()

    # ---- steps ------------------------------------------------------------------------------
    def _batches(self, epoch, start):
        return self.feed.batches(self.global_batch, self.cfg.seed, epoch, start,
                                 shard=(self.world.rank, self.world.size))

    def _update(self, x, y):
        n, b = len(self.train_set), self.run.batch_in_epoch  # the global batch of this step
        whole = min(self.global_batch, n - b * self.global_batch)
        for layer in self.dropouts:  # the masks of this rank's slice of the global batch
            layer.first_sample = shard_bounds(0, whole, self.world.rank, self.world.size)[0]
        logits = self.model.forward(x)
        loss = self.loss.forward(logits, y)
        self.model.backward(self.loss.backward())
        buf, packed = self.grads.gather()
        self.comm.allreduce_mean(buf, len(y) / whole)
        self.grads.scatter(buf, packed)
        self.opt.step()
        return loss, self.loss.probs

    def _drain(self, pending, seconds, bar):
        """The batches' results summed over the ranks before the base class reads them, so
        every rank holds the global record and a non-finite loss anywhere stops all."""
        B = self.backend
        local = np.array([[float(B.to_numpy(u.loss)) * u.images, int(B.to_numpy(u.correct)),
                           u.images] for u in pending], np.float64)
        self.world.allreduce_sum(local)
        pending[:] = [_Unread(np.float64(s / n), int(c), int(n)) for s, c, n in local]
        try:
            super()._drain(pending, seconds, bar)
        except TrainingDiverged as exc:
            exc.collective = True  # every rank saw the same sums
            raise

    def evaluate(self, dataset, batch_size=None):
        """Top-1 accuracy, each rank evaluating its contiguous part of the split."""
        a, z = _part(len(dataset), self.world)
        correct = np.zeros(1, np.int64)
        if z > a:
            part = dataclasses.replace(dataset, images=dataset.images[a:z],
                                       labels=dataset.labels[a:z])
            correct[0] = round(super().evaluate(part, batch_size) * (z - a))
        return int(self.world.allreduce_sum(correct)[0]) / len(dataset)

    # ---- stopping together ------------------------------------------------------------------
    # A signal only records a request (Trainer._stop_signals sets this flag); the next step
    # boundary's agreement turns it into every rank's stop (fit). A second signal stops this
    # rank at once (the job then ends: see gpucnn.distributed.faults).
    _stop_flag = "_requested"

    def fit(self, on_step=None):
        self._requested = 0
        seconds = watchdog_seconds()

        def stalled():
            fail_rank(self.world, TimeoutError(
                f"no training step finished in {seconds:g} s (GPUCNN_WATCHDOG_S): a peer "
                f"stopped making progress"), self.comm)

        with Watchdog(seconds, stalled) as watchdog:
            def agree(trainer):
                if on_step is not None:
                    on_step(trainer)
                signum = self.world.agree_max(self._requested)
                watchdog.beat()
                if signum:
                    self._interrupted = signum

            return super().fit(agree)

    def metrics(self):
        m = super().metrics()
        rate = m.get("train_images_per_s")
        m.update({"world_size": self.world.size, "communicator": self.comm.name,
                  "global_batch": self.global_batch,
                  "images_per_s_per_rank": rate / self.world.size if rate else None,
                  "allreduce_calls": self.comm.calls,
                  "allreduce_seconds_per_call": (self.comm.seconds / self.comm.calls
                                                 if self.comm.calls else None)})
        return m


def _part(n, world):
    return shard_bounds(0, n, world.rank, world.size)


def train_distributed(cfg, world, communicator="auto"):
    """gpucnn.train.train for one rank of ``world``: rank 0 checks and owns the outputs and
    every rank stops on its verdict; returns the metrics dict (the same on every rank)."""
    cfg.validate()
    if not world.is_root:
        cfg.progress = False
    lock = None

    def check_outputs():
        nonlocal lock
        if cfg.plot and importlib.util.find_spec("matplotlib") is None:
            raise ValueError("--plot needs matplotlib: pip install 'gpucnn[plot]'")
        check_output_paths({"--checkpoint": cfg.checkpoint, "--metrics-json": cfg.metrics_json,
                            "--plot": cfg.plot}, overwrite=cfg.overwrite, resume=cfg.resume)
        if cfg.checkpoint:
            lock = RunLock(cfg.checkpoint)
            lock.__enter__()
            try:
                prepare_checkpoint(cfg.checkpoint, cfg.resume, cfg.overwrite, lock)
            except BaseException:
                lock.__exit__(None, None, None)
                lock = None
                raise

    with file_size_limit_as_error():
        world.root_verdict(check_outputs)
        try:
            trainer = DistributedTrainer(cfg, world, communicator)
            trainer.lock = lock
            if cfg.checkpoint:
                world.root_verdict(lambda: check_room(trainer.checkpoint_target,
                                                      trainer.run_checkpoint.size_estimate()))
            if cfg.resume:
                trainer.load(cfg.checkpoint)
                if trainer.run.epoch >= cfg.epochs:
                    print(f"{cfg.checkpoint} holds {trainer.run.epoch} finished epoch(s): "
                          f"nothing to train for --epochs {cfg.epochs} (give more to "
                          f"continue)")
            metrics = trainer.fit()

            def finish():
                trainer.write_metrics()
                if cfg.plot:
                    write_with_retry("plot", cfg.plot, lambda: plot_metrics(metrics, cfg.plot),
                                     cfg.save_retry_s, "the metrics and the checkpoint are "
                                                       "written")
            world.root_verdict(finish)
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)
    return metrics

