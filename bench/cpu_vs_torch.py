"""gpucnn's NumPy backend against PyTorch on the CPU, measured the way a user would compare them.

Each framework runs in its OWN process with its own default settings: nothing is set in the
competitor's environment (no OMP_WAIT_POLICY, no thread variables); both get the same thread
count through their own API (gpucnn: GPUCNN_NUMPY_THREADS, PyTorch: torch.set_num_threads, and
only when it differs from PyTorch's default). Processes are alternated A B A B ..., so a noisy
machine affects both alike; inside each process warm-up steps are excluded and the median step
is kept; the report gives the median over processes and the spread (min-max), plus each
process's peak RSS, the CPU model and its vector ISA.

Workloads (the same model, initialisation scheme, optimizer and batch in both frameworks, on
random inputs from a fixed seed):
  lenet5-step        LeNet-5 training step (forward, softmax cross-entropy, backward, SGD
                     momentum 0.9), batch 128
  lenet5-infer       LeNet-5 inference, batch 1000
  alexnet_cifar-step AlexNet-CIFAR training step, batch 128
  lenet5-epoch       one LeNet-5 training epoch over Fashion-MNIST's 60,000 training images
                     (batch 128, the last one 96, one fixed shuffle; needs the dataset:
                     apt-get install dataset-fashion-mnist), timed whole after one warm-up step

    python bench/cpu_vs_torch.py [--workloads lenet5-step,lenet5-infer] [--rounds 5] [--json]

PyTorch is imported only in its own child process: it is never a dependency of gpucnn.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
WORKLOADS = {
    # name: (model, batch, training?, default steps, default warm-up)
    "lenet5-step": ("lenet5", 128, True, 40, 5),
    "lenet5-infer": ("lenet5", 1000, False, 20, 3),
    "alexnet_cifar-step": ("alexnet_cifar", 128, True, 4, 1),
    "lenet5-epoch": ("lenet5", 128, True, 1, 1),  # steps: epochs
}
FRAMEWORKS = ("gpucnn", "torch")


# ---- the child: one framework, one workload, one process ------------------------------------
def _inputs(model, batch, pool=4):
    import numpy as np
    rng = np.random.default_rng(0)
    shape = (1, 28, 28) if model == "lenet5" else (3, 32, 32)
    return [(rng.standard_normal((batch, *shape)).astype(np.float32),
             rng.integers(0, 10, batch).astype(np.int64)) for _ in range(pool)]


def _gpucnn_step(model, training):
    import gpucnn.nn
    import gpucnn.optim
    from gpucnn.models import build_model
    net = build_model(model, backend="numpy", seed=0)
    B = net.backend
    if not training:
        net.eval()
        return lambda x, y: net.forward(x), B, B.describe()
    net.train()
    crit = gpucnn.nn.SoftmaxCrossEntropy().bind(B)
    opt = gpucnn.optim.SGD(net.parameters(), 0.01, momentum=0.9, backend=B)

    def step(x, y):
        loss = crit.forward(net.forward(x), y)
        net.backward(crit.backward())
        opt.step()
        return loss
    return step, B, B.describe()


def _torch_model(torch, model):
    # the very layers (and initial weights) of the gpucnn model
    from gpucnn.bench.nets import torch_sequential
    from gpucnn.models import build_model
    return torch_sequential(build_model(model, backend="reference"), torch)


def _torch_step(model, training, threads):
    import torch
    if threads and threads != torch.get_num_threads():
        torch.set_num_threads(threads)  # the same thread count as ours, through its own API
    torch.manual_seed(0)
    net = _torch_model(torch, model)
    info = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}")
    if not training:
        net.eval()

        def infer(x, y):
            with torch.no_grad():
                return net(x)
        return infer, torch, info
    net.train()
    crit = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = crit(net(x), y)
        loss.backward()
        opt.step()
        return loss
    return step, torch, info


def _epoch_batches(batch):
    """Fashion-MNIST's training split in one fixed shuffle, cut into batches (the last one
    shorter)."""
    import numpy as np
    from gpucnn.data.datasets import load_dataset
    ds = load_dataset("fashion-mnist", "train")
    order = np.random.default_rng(0).permutation(len(ds.labels))
    x, y = ds.images[order], ds.labels[order].astype(np.int64)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(y), batch)]


def child(framework, workload, steps, warmup, threads):
    model, batch, training, _, _ = WORKLOADS[workload]
    epoch = workload.endswith("-epoch")
    data = _epoch_batches(batch) if epoch else _inputs(model, batch)
    if framework == "gpucnn":
        step, B, info = _gpucnn_step(model, training)
        data = [(B.asarray(x), B.asarray(y, dtype="int64")) for x, y in data]
    else:
        step, torch, info = _torch_step(model, training, threads)
        data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data]
    times = []
    if epoch:  # steps = timed epochs, warmup = untimed steps before the first
        for i in range(warmup):
            step(*data[i % len(data)])
        for _ in range(steps):
            t0 = time.perf_counter()
            for x, y in data:
                step(x, y)
            times.append(time.perf_counter() - t0)
        images = sum(len(y) for _, y in data)
    else:
        for i in range(warmup + steps):
            x, y = data[i % len(data)]
            t0 = time.perf_counter()
            step(x, y)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        images = batch
    med = statistics.median(times)
    return {"framework": framework, "workload": workload, "info": info, "median_s": med,
            "images_per_s": images / med, "steps": steps, "warmup": warmup,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ---- the parent: alternate processes, summarise ------------------------------------------------
def cpu_description():
    """CPU model and its widest vector ISA (AVX-512 changes PyTorch's kernels)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx512f", "avx512_bf16", "avx512_vnni", "avx2", "fma") if f in flags]
    return {"model": model, "isa": isa, "cpus": os.cpu_count()}


def run_child(framework, workload, steps, warmup, threads):
    env = dict(os.environ)
    if framework == "gpucnn":
        env["GPUCNN_NUMPY_THREADS"] = str(threads)  # ours; the competitor's env is untouched
    cmd = [sys.executable, os.path.abspath(__file__), "--child", framework, "--workloads",
           workload, "--steps", str(steps), "--warmup", str(warmup), "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{framework} {workload} failed (exit {out.returncode}):\n"
                           f"{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(workloads, rounds, threads, steps=None, warmup=None, frameworks=FRAMEWORKS,
            log=print):
    res = {"cpu": cpu_description(), "python": platform.python_version(), "threads": threads,
           "rounds": rounds, "method": "one process per framework and round, alternated "
           "A B A B; each framework with its own defaults", "workloads": {}}
    for wl in workloads:
        _, batch, _, d_steps, d_warm = WORKLOADS[wl]
        st, wu = steps or d_steps, d_warm if warmup is None else warmup
        runs = {fw: [] for fw in frameworks}
        for r in range(rounds):
            order = frameworks if r % 2 == 0 else frameworks[::-1]
            for fw in order:
                runs[fw].append(run_child(fw, wl, st, wu, threads))
        entry = {"batch": batch, "steps": st, "warmup": wu}
        for fw, rs in runs.items():
            ips = [r["images_per_s"] for r in rs]
            entry[fw] = {"images_per_s_median": statistics.median(ips),
                         "images_per_s_min": min(ips), "images_per_s_max": max(ips),
                         "ms_per_step_median": 1e3 * batch / statistics.median(ips),
                         "peak_rss_mib_max": max(r["peak_rss_mib"] for r in rs),
                         "info": rs[0]["info"]}
        if "gpucnn" in runs and "torch" in runs:
            per_round = [a["images_per_s"] / b["images_per_s"]
                         for a, b in zip(runs["gpucnn"], runs["torch"])]
            entry["ratio_gpucnn_over_torch"] = {"median": statistics.median(per_round),
                                                "min": min(per_round), "max": max(per_round)}
        res["workloads"][wl] = entry
        log(_format(wl, entry))
    return res


def _format(wl, e):
    lines = [f"{wl} (batch {e['batch']}, {e['steps']} timed steps after {e['warmup']} per "
             f"process)"]
    for fw in FRAMEWORKS:
        if fw in e:
            r = e[fw]
            lines.append(f"  {fw:6s} {r['ms_per_step_median']:9.2f} ms/step "
                         f"{r['images_per_s_median']:9.0f} img/s (spread "
                         f"{r['images_per_s_min']:.0f}-{r['images_per_s_max']:.0f}), peak RSS "
                         f"{r['peak_rss_mib_max']:.0f} MiB  [{r['info']}]")
    if "ratio_gpucnn_over_torch" in e:
        q = e["ratio_gpucnn_over_torch"]
        lines.append(f"  speed ratio gpucnn / torch: median {q['median']:.2f} "
                     f"(rounds {q['min']:.2f}-{q['max']:.2f})")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="lenet5-step,lenet5-infer",
                    help=f"comma separated, of {', '.join(WORKLOADS)} "
                         f"(default: lenet5-step,lenet5-infer)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="processes per framework, alternated (default: 5)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per process (default: per workload)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps per process (default: per workload)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads for both frameworks (default: the CPU count)")
    ap.add_argument("--no-torch", action="store_true", help="time gpucnn only (default: off)")
    ap.add_argument("--json", metavar="PATH", default=None,
                    help="also write every figure to this JSON file (default: none)")
    ap.add_argument("--child", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        ap.error(f"--workloads: unknown {unknown}; expected some of {', '.join(WORKLOADS)}")
    sys.path.insert(0, ROOT)  # this checkout's gpucnn
    if args.child:
        _, _, _, d_steps, d_warm = WORKLOADS[workloads[0]]
        print(json.dumps(child(args.child, workloads[0], args.steps or d_steps,
                               d_warm if args.warmup is None else args.warmup, args.threads)))
        return 0
    fws = ("gpucnn",) if args.no_torch else FRAMEWORKS
    cpu = cpu_description()
    print(f"CPU: {cpu['model']} ({cpu['cpus']} CPUs; {' '.join(cpu['isa'])}); "
          f"{args.threads} threads each; {args.rounds} processes per framework, alternated")
    res = compare(workloads, args.rounds, args.threads, args.steps, args.warmup, fws)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
