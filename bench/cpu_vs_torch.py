"""LeNet-5 training step: gpucnn's NumPy backend against PyTorch on the CPU, in one process.

One step = forward, softmax cross-entropy, backward, SGD momentum update, batch of
``--batch-size`` 1x28x28 images. The two frameworks are timed interleaved (A B A B ...) so a
noisy, shared machine affects both alike; warm-up steps are excluded, inputs are drawn from a
small pool of random batches in rotation, and the medians are reported. The ratio is
numpy speed / torch speed (> 1 means the NumPy backend is faster).

PyTorch is imported only here: it is never a dependency of gpucnn itself.

By default the script sets OMP_WAIT_POLICY=PASSIVE (unless already set) before importing torch:
otherwise torch's idle OpenMP threads keep spinning for a while after each torch step, on the
same cores, during the NumPy step that follows (measured: NumPy's median 29 -> 22 ms/step on 2
cores, torch's own median unchanged). --omp-active keeps libgomp's default spin-waiting.

    python bench/cpu_vs_torch.py [--steps 60] [--batch-size 128] [--warmup 5] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gpucnn.nn  # noqa: E402
import gpucnn.optim  # noqa: E402
from gpucnn.models import lenet5  # noqa: E402


def blas_info():
    """Thread pools and BLAS libraries: threadpoolctl's view if installed, else numpy's."""
    try:
        from threadpoolctl import threadpool_info
        return [{k: d.get(k) for k in ("user_api", "internal_api", "version", "num_threads",
                                        "architecture", "filepath")}
                for d in threadpool_info()]
    except ImportError:
        pass
    info = {"source": "numpy.show_config (threadpoolctl not installed)"}
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info.update(name=blas.get("name"), version=blas.get("version"),
                    config=blas.get("openblas configuration"))
    except Exception as exc:  # older numpy: no dict mode
        info["error"] = repr(exc)
    try:
        from gpucnn.backends import numpy_backend as nb
        info["openblas_runtime"] = nb.openblas_info()
    except Exception:
        pass
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                      "MKL_NUM_THREADS", "GPUCNN_NUMPY_THREADS")
           if k in os.environ}
    info["env"] = env
    return [info]


class NumpyStep:
    def __init__(self, batch):
        self.model = lenet5(backend="numpy")
        self.model.train()
        self.loss = gpucnn.nn.SoftmaxCrossEntropy().bind("numpy")
        self.opt = gpucnn.optim.SGD(self.model.parameters(), 0.05, momentum=0.9,
                                    backend="numpy")

    def __call__(self, x, y):
        logits = self.model.forward(x)
        loss = self.loss.forward(logits, y)
        self.model.backward(self.loss.backward())
        self.opt.step()
        return loss


class TorchStep:
    def __init__(self, torch):
        nn = torch.nn
        self.torch = torch
        self.model = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, 10))
        self.model.train()
        self.crit = nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

    def __call__(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = self.crit(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60, help="timed steps per framework")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per framework")
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--pool", type=int, default=8, help="random batches rotated through")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    ap.add_argument("--no-torch", action="store_true", help="time the NumPy backend only")
    ap.add_argument("--omp-active", action="store_true",
                    help="do not set OMP_WAIT_POLICY=PASSIVE for torch's OpenMP threads")
    args = ap.parse_args(argv)

    torch = None
    if not args.no_torch:
        if not args.omp_active:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch
        torch.set_num_threads(args.torch_threads)
        torch.manual_seed(0)

    rng = np.random.default_rng(0)
    n = args.batch_size
    xs = [rng.standard_normal((n, 1, 28, 28)).astype(np.float32) for _ in range(args.pool)]
    ys = [rng.integers(0, 10, n).astype(np.int64) for _ in range(args.pool)]

    np_step = NumpyStep(n)
    B = np_step.model.B
    np_in = [(B.asarray(x), B.asarray(y, dtype=np.int64)) for x, y in zip(xs, ys)]
    runners = [("numpy", np_step, np_in)]
    if torch is not None:
        t_step = TorchStep(torch)
        t_in = [(torch.from_numpy(x.copy()), torch.from_numpy(y.copy())) for x, y in zip(xs, ys)]
        runners.append(("torch", t_step, t_in))

    times = {name: [] for name, _, _ in runners}
    losses = {name: [] for name, _, _ in runners}
    for i in range(args.warmup + args.steps):
        for name, step, inputs in runners:
            x, y = inputs[i % len(inputs)]
            t0 = time.perf_counter()
            loss = step(x, y)
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[name].append(dt)
            if i in (0, args.warmup + args.steps - 1):
                losses[name].append(float(loss.detach() if hasattr(loss, "detach") else loss))

    res = {"batch_size": n, "steps": args.steps, "warmup": args.warmup,
           "python": platform.python_version(), "numpy_version": np.__version__,
           "cpu_count": os.cpu_count(), "loadavg": os.getloadavg()}
    for name, _, _ in runners:
        med = statistics.median(times[name])
        res[name] = {"median_ms": 1e3 * med, "images_per_s": n / med,
                     "min_ms": 1e3 * min(times[name]),
                     "first_last_loss": losses[name]}
    res["numpy"]["describe"] = B.describe()
    if torch is not None:
        res["torch"].update(version=torch.__version__, threads=torch.get_num_threads(),
                            interop_threads=torch.get_num_interop_threads(),
                            omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "(default)"))
        res["ratio_numpy_over_torch_speed"] = (res["numpy"]["images_per_s"]
                                              / res["torch"]["images_per_s"])
    res["blas"] = blas_info()

    if args.json:
        print(json.dumps(res, indent=1, default=str))
        return res
    print(f"LeNet-5 training step, batch {n}, {args.steps} timed steps each "
          f"(after {args.warmup} warm-up), interleaved; load average {res['loadavg']}")
    for name, _, _ in runners:
        r = res[name]
        extra = (f"  [torch {r['version']}, {r['threads']} threads, OMP_WAIT_POLICY="
                 f"{r['omp_wait_policy']}]" if name == "torch" else f"  [{r['describe']}]")
        print(f"  {name:6s} median {r['median_ms']:8.2f} ms/step  {r['images_per_s']:9.0f} "
              f"images/s  (min {r['min_ms']:.2f} ms){extra}")
    if torch is not None:
        print(f"  ratio (numpy speed / torch speed): {res['ratio_numpy_over_torch_speed']:.3f}")
    print("  BLAS:", json.dumps(res["blas"], default=str))
    return res


if __name__ == "__main__":
    main()
