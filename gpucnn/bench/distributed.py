"""``gpucnn bench --distributed``: data-parallel training steps under ``mpiexec`` (issue 19).

Each rank times ``--repeat`` training steps of ``--model`` on random inputs with a per-process
batch of ``--batch-size``, the gradients all-reduced as in ``gpucnn train --distributed``
(one all-reduce of the flat buffer per step). Reported: images/s in all and per rank, the
time in the all-reduce per step (host time: on a GPU after a synchronisation; it includes
waiting for the slowest rank), and the **scaling efficiency**: images/s per rank over the
images/s of one process alone (rank 0, the same batch and threads, no all-reduce, the other
ranks sleeping meanwhile), i.e. weak scaling. On the CPU backends rank 0 also times one
process with every core of its machine (the batch of all ranks), the fair comparison on a
machine whose cores the ranks share.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from ..argtypes import MAX_BATCH, add_backend_arg, int_in, seed_int

__all__ = ["SCHEMA", "main", "run_distributed_bench"]

SCHEMA = "gpucnn-bench/distributed-1"


def build_parser():
    ap = argparse.ArgumentParser(prog="gpucnn bench --distributed",
                                 description="data-parallel training steps under mpiexec")
    ap.add_argument("--model", default="lenet5", choices=("lenet5", "alexnet_cifar", "alexnet"))
    ap.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=64,
                    help="images per process per step (default: %(default)s)")
    ap.add_argument("--repeat", type=int_in(1, 10000), default=20,
                    help="timed steps (default: %(default)s)")
    ap.add_argument("--warmup", type=int_in(0, 1000), default=3,
                    help="untimed steps first (default: %(default)s)")
    ap.add_argument("--communicator", choices=("auto", "mpi", "nccl"), default="auto")
    ap.add_argument("--seed", type=seed_int, default=0)
    ap.add_argument("--json", metavar="PATH", default=None,
                    help="write the result (rank 0) to this JSON file")
    ap.add_argument("--overwrite", action="store_true")
    add_backend_arg(ap)
    return ap


class _Steps:
    """A model, its optimiser and a random batch on ``backend``; ``run(n, reduce)`` times n
    steps, returning (seconds, all-reduce seconds)."""

    def __init__(self, backend, model_name, batch, seed, comm=None, grads=None):
        from ..models import build_model
        from ..nn import SoftmaxCrossEntropy
        from ..optim import SGD
        self.B = backend
        self.model = build_model(model_name, backend=backend, seed=seed)
        self.opt = SGD(self.model.parameters(), 0.01, 0.9, backend=backend)
        self.loss = SoftmaxCrossEntropy().bind(backend)
        rng = np.random.default_rng(seed)
        self.x = backend.asarray(rng.standard_normal((batch, *self.model.input_shape))
                                 .astype(np.float32))
        self.y = backend.asarray(rng.integers(0, 10, batch).astype(np.int32), dtype=np.int32)
        self.comm, self.grads, self.weight = comm, grads, 1.0

    def run(self, n):
        B, reduce_s = self.B, 0.0
        t0 = time.perf_counter()
        for _ in range(n):
            with B.on_device():
                self.loss.forward(self.model.forward(self.x), self.y)
                self.model.backward(self.loss.backward())
                if self.comm is not None:
                    B.synchronize()
                    t = time.perf_counter()
                    buf, packed = self.grads.gather()
                    self.comm.allreduce_mean(buf, self.weight)
                    B.synchronize()
                    reduce_s += time.perf_counter() - t
                    self.grads.scatter(buf, packed)
                self.opt.step()
        float(B.to_numpy(self.loss.forward(self.model.forward(self.x), self.y)))
        return time.perf_counter() - t0, reduce_s


def _quiet_barrier(world):
    """A barrier whose waiting ranks sleep instead of spinning (MPI polls), so that rank 0's
    solo timing has the machine's cores."""
    if world.size == 1:
        return
    req = world.comm.Ibarrier()
    while not req.Test():
        time.sleep(0.002)


def run_distributed_bench(args, world):
    from ..backends import get_backend
    from ..distributed.communicators import GradientBuffer, make_communicator
    backend = get_backend(args.backend)
    comm = make_communicator(args.communicator, world, backend)
    steps = _Steps(backend, args.model, args.batch_size, args.seed)
    steps.comm, steps.grads = comm, GradientBuffer(backend, steps.model.parameters())
    steps.weight = 1.0 / world.size
    result = {"schema": SCHEMA, "model": args.model, "backend": backend.describe(),
              "world_size": world.size, "local_size": world.local_size,
              "communicator": comm.name, "batch_per_process": args.batch_size,
              "repeat": args.repeat, "threads_per_rank": getattr(backend, "threads", None)}
    _quiet_barrier(world)
    if world.is_root:  # one process alone: the same batch and threads, no all-reduce
        alone = _Steps(backend, args.model, args.batch_size, args.seed)
        alone.run(args.warmup)
        result["one_process_images_per_s"] = args.batch_size * args.repeat / alone.run(
            args.repeat)[0]
        if backend.kind == "cpu" and world.size > 1:
            result.update(_all_cores(args, world))
    _quiet_barrier(world)
    steps.run(args.warmup)
    world.barrier()
    seconds, reduce_s = steps.run(args.repeat)
    slowest = max(world.allgather(seconds))
    reduce_ms = float(np.mean(world.allgather(reduce_s))) * 1e3 / args.repeat
    total = world.size * args.batch_size * args.repeat / slowest
    result.update({"images_per_s": total, "images_per_s_per_rank": total / world.size,
                   "allreduce_ms_per_step": reduce_ms,
                   "step_ms": slowest * 1e3 / args.repeat})
    result["scaling_efficiency"] = (result["images_per_s_per_rank"]
                                    / world.bcast(result.get("one_process_images_per_s")))
    return result


def _all_cores(args, world):
    """One process with every core of this machine and the global batch (rank 0, the others
    asleep): what the ranks' total should beat to be worth it on a shared machine."""
    from ..backends.numpy_backend import NumpyBackend
    from ..cpu.threads import set_blas_threads
    cores = os.cpu_count() or 1
    set_blas_threads(cores)
    try:
        steps = _Steps(NumpyBackend(threads=cores), args.model,
                       args.batch_size * world.size, args.seed)
        steps.run(args.warmup)
        seconds = steps.run(args.repeat)[0]
    finally:
        set_blas_threads(int(os.environ.get("GPUCNN_NUMPY_THREADS", "1")))
    return {"one_process_all_cores": {"threads": cores, "batch": args.batch_size * world.size,
                                      "images_per_s": args.batch_size * world.size
                                      * args.repeat / seconds}}


def format_result(r):
    lines = [f"{r['model']} on {r['backend']}: {r['world_size']} rank(s) x batch "
             f"{r['batch_per_process']}, communicator {r['communicator']}",
             f"  {r['images_per_s']:.0f} images/s in all, {r['images_per_s_per_rank']:.0f} per "
             f"rank; step {r['step_ms']:.2f} ms, all-reduce {r['allreduce_ms_per_step']:.2f} "
             f"ms per step",
             f"  one process alone (same batch and threads): "
             f"{r['one_process_images_per_s']:.0f} images/s -> scaling efficiency "
             f"{r['scaling_efficiency']:.0%}"]
    allc = r.get("one_process_all_cores")
    if allc:
        ratio = r["images_per_s"] / allc["images_per_s"]
        lines.append(f"  one process with all {allc['threads']} cores and batch "
                     f"{allc['batch']}: {allc['images_per_s']:.0f} images/s (the "
                     f"{r['world_size']} ranks: {ratio:.2f}x of it)")
    return "\n".join(lines)


def main(argv):
    """``gpucnn bench --distributed ...`` (``argv`` without --distributed)."""
    from ..distributed import init_world
    from ..distributed.world import default_threads
    from ..outputs import OutputRefused, check_outputs, write_json
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    world = init_world()
    if not world.is_root:
        sys.stdout = open(os.devnull, "w")
    os.environ.setdefault("GPUCNN_NUMPY_THREADS", str(default_threads(world)))
    from ..cpu.threads import set_blas_threads
    set_blas_threads(int(os.environ["GPUCNN_NUMPY_THREADS"]))
    try:
        world.root_verdict(lambda: check_outputs([("--json", args.json, "bench")],
                                                 args.overwrite, "nothing was run"))
    except (OutputRefused, ValueError) as exc:
        if world.is_root:
            print(f"gpucnn bench: error: {exc}", file=sys.stderr)
        return 2
    result = run_distributed_bench(args, world)
    if world.is_root:
        print(format_result(result), flush=True)
        if args.json:
            print(f"wrote {write_json(args.json, result)}")
    world.barrier()
    return 0
