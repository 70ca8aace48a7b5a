"""Training steps per second, eager and replayed as a graph, per precision
(bench/gpu_validate.sh, step 4).

    python bench/gpu_train.py --graphs --json train.json     # LeNet-5, AlexNet-CIFAR, b128
    python bench/gpu_train.py --summarize train.json         # its markdown table

Each net's training step (forward, softmax cross-entropy, backward, SGD momentum update: the
``train_step`` of ``gpucnn bench --nets``, built by the same gpucnn/bench/nets.py) is timed
eagerly and, with ``--graphs``, as the replay of that step captured once
(``backend.capture``, what ``gpucnn train --cuda-graphs`` replays; a replay includes copying
the batch into the graph's inputs, as the trainer does). Both in one process, interleaved
(eager, graph, eager, ...), on the same net and data, so the ratio is not a comparison of
two processes. ``gpucnn bench`` times the eager step but not a replay on a GPU (its
``--cuda-graphs`` is for ``--host-overhead`` on the null device), hence this helper.

Where ``gpucnn train --cuda-graphs`` would run a net eagerly (``graph_blocker``) the replay
is timed all the same, the reason written next to it. A capture that fails is reported per
net; the eager figures stay.

Each net is timed in every precision of ``--precisions`` (default fp32, tf32, bf16: the
backend ``get_backend(name, precision)``, as ``gpucnn train --precision`` makes it), in
order of precision first (fp32's rows for both nets before the tensor-core ones, so a step
stopped at its bound has the eager-vs-graph answer first); ``--budget S`` starts no new
(precision, net) after S seconds (what it skips is listed). Each entry records its precision
asked for and in force (a GPU below compute capability 8.0 runs the tensor-core precisions as
fp32: not timed again).

The JSON file is rewritten after every net; ``--summarize`` prints the ``@summary`` table
(:func:`summarize`: pure, tested with fake timings).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's gpucnn

from gpu_steps import print_summary_file  # noqa: E402 - beside this script

SCHEMA = "gpucnn-gpu-train/2"
PRECISIONS = ("fp32", "tf32", "3xtf32", "bf16")    # gpucnn.ops.precision.PRECISIONS


def _graph_api():
    """(graph_blocker, None) where this gpucnn replays training steps, else (None, why)."""
    try:
        from gpucnn.train_graph import graph_blocker
    except ImportError as exc:
        return None, f"not in this gpucnn ({exc})"
    return graph_blocker, None


def time_net(name, B, args, timer, graph_blocker):
    import numpy as np
    from gpucnn.bench.nets import GpucnnNet, host_batches
    from gpucnn.bench.timing import Runner, run_interleaved
    net = GpucnnNet(name, B, host_batches(name, args.batch, np.random.default_rng(args.seed),
                                          args.rotate), seed=args.seed)
    entry = {"net": name, "batch": args.batch}
    runners = [Runner("eager", net.train_step, timer)]
    if graph_blocker is not None:
        entry["graph_note"] = graph_blocker(B, net.model, net.opt)
        try:
            net.train_step(0)  # plans and workspaces exist before a capture
            xp = B.xp
            graph = B.capture(net.train_arrays, xp.empty_like(net.xs[0]),
                              xp.empty_like(net.ys[0]))

            def replay(i):
                j = i % len(net.xs)
                net.opt.steps += 1  # the host-side count opt.step() would keep
                graph.replay(net.xs[j], net.ys[j])
            runners.append(Runner("graph", replay, timer))
        except Exception as exc:  # noqa: BLE001 - reported; the eager figures stay
            entry["graph_error"] = f"{type(exc).__name__}: {exc}"[:500]
    stats = run_interleaved(runners, args.warmup, args.repeat)
    for label, s in stats.items():
        entry[label] = {"median_ms": s["median_ms"], "min_ms": s["min_ms"], "n": s["n"],
                        "images_per_s": args.batch / (s["median_ms"] / 1e3)}
    return entry


def measure(args, res, save, log):
    import numpy as np
    from gpucnn.backends import get_backend
    from gpucnn.bench.timing import CupyEventTimer, WallTimer
    t0 = time.monotonic()
    graph_blocker = None
    if args.graphs:
        graph_blocker, why = _graph_api()
        res["graphs"] = why or "timed"
    else:
        res["graphs"] = "not asked for"
    save()
    timer = None
    for prec in args.precisions:
        B = get_backend(args.backend, prec)
        if timer is None:
            timer = CupyEventTimer(B.xp) if B.xp is not np else WallTimer(B.synchronize)
            res["backend"] = B.describe()
        res["precisions"][prec] = {"in_force": B.precision,
                                   "fallback": getattr(B, "fallback_reason", None)}
        for name in args.nets:
            base = {"net": name, "batch": args.batch, "precision": prec,
                    "in_force": B.precision}
            if prec != "fp32" and B.precision != prec:
                entry = {**base, "skipped": f"runs as {B.precision} here: "
                                            f"{getattr(B, 'fallback_reason', None) or '?'}"}
            elif args.budget and time.monotonic() - t0 > args.budget:
                entry = {**base, "skipped": f"time budget ({args.budget:g} s)"}
            else:
                try:
                    entry = {**time_net(name, B, args, timer, graph_blocker), **base}
                except Exception as exc:  # noqa: BLE001 - one net failing must not hide the rest
                    entry = {**base, "error": f"{type(exc).__name__}: {exc}"[:500]}
            res["nets"].append(entry)
            save()
            log(f"{name} {prec}: " + ", ".join(f"{k} {entry[k]['median_ms']:.3f} ms "
                                               f"({entry[k]['images_per_s']:.0f} img/s)"
                                               for k in ("eager", "graph") if k in entry)
                + "".join(f"; {k}: {entry[k]}" for k in ("error", "graph_error", "graph_note",
                                                         "skipped") if entry.get(k)))


def _eager_fp32(res):
    """{net: fp32 eager stats} of a result, for the speed-up of the other precisions."""
    return {e["net"]: e["eager"] for e in res.get("nets", [])
            if e.get("precision", "fp32") == "fp32" and "eager" in e}


def summarize(res):
    """The ``@summary`` lines of a result dict (pure: fake timings in the tests)."""
    precisions = res.get("precisions") or {}
    lines = [f"backend: {res.get('backend', '?')}; graph mode: {res.get('graphs', '?')}; "
             f"median of {res.get('repeat', '?')} timed steps after {res.get('warmup', '?')} "
             f"warm-up, interleaved"
             + (f"; precisions: {', '.join(precisions)}" if precisions else ""), "",
             "| net | precision | batch | execution | ms per step | images/s | note |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    fp32 = _eager_fp32(res)
    for e in res.get("nets", []):
        head = f"| {e['net']} | {e.get('precision', 'fp32')} | {e['batch']}"
        if "error" in e or "skipped" in e:
            what = f"FAILED: {e['error'][:200]}" if "error" in e else \
                f"skipped: {e['skipped'][:200]}"
            lines.append(f"{head} | - | - | - | {what} |")
            continue
        for mode in ("eager", "graph"):
            if mode not in e:
                continue
            notes = []
            if mode == "graph":
                ratio = e["eager"]["median_ms"] / e["graph"]["median_ms"]
                notes.append(f"{ratio:.2f}x the eager speed")
                if e.get("graph_note"):
                    notes.append(f"gpucnn train would run it eagerly: {e['graph_note']}")
            base = fp32.get(e["net"])
            if e.get("precision", "fp32") != "fp32" and base:
                notes.append(f"{base['median_ms'] / e[mode]['median_ms']:.2f}x fp32's eager "
                             f"speed")
            lines.append(f"{head} | {mode} | {e[mode]['median_ms']:.3f} | "
                         f"{e[mode]['images_per_s']:.0f} | {'; '.join(notes)} |")
        if e.get("graph_error"):
            lines.append(f"{head} | graph | - | - | capture FAILED: {e['graph_error'][:200]} |")
    if "stopped" in res:
        lines.append(f"(stopped: {res['stopped']})")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="cuda", help="gpucnn backend (default: cuda)")
    p.add_argument("--nets", default="lenet5,alexnet_cifar",
                   help="comma-separated nets (default: lenet5,alexnet_cifar)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default: 128)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (default: 2)")
    p.add_argument("--repeat", type=int, default=10, help="timed steps (default: 10)")
    p.add_argument("--rotate", type=int, default=2, help="input batches in rotation (default: 2)")
    p.add_argument("--graphs", action="store_true", help="also time graph replays")
    p.add_argument("--precisions", default="fp32,tf32,bf16",
                   help="comma-separated precisions (fp32, tf32, 3xtf32, bf16; default: "
                        "fp32,tf32,bf16)")
    p.add_argument("--budget", type=float, default=0,
                   help="seconds after which no new (precision, net) starts, 0: none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="result file, rewritten after every net")
    p.add_argument("--summarize", metavar="JSON", help="print the table of a result file")
    args = p.parse_args(argv)
    if args.summarize:
        return print_summary_file(args.summarize, summarize)
    args.nets = [n for n in args.nets.split(",") if n]
    args.precisions = list(dict.fromkeys(s.strip().lower() for s in args.precisions.split(",")
                                         if s.strip()))
    if not args.precisions or not set(args.precisions) <= set(PRECISIONS):
        p.error(f"--precisions: comma-separated from {', '.join(PRECISIONS)}, got "
                f"{args.precisions}")
    res = {"schema": SCHEMA, "warmup": args.warmup, "repeat": args.repeat, "precisions": {},
           "nets": []}
    out = Path(args.json) if args.json else None

    def save():
        if out is not None:
            out.write_text(json.dumps(res, indent=1))

    t0 = time.perf_counter()
    try:
        measure(args, res, save, lambda msg: print(msg, flush=True))
    except KeyboardInterrupt:  # the step's time limit (SIGINT): keep what was measured
        res["stopped"] = "interrupted (time limit)"
        save()
        return 130
    print(f"done in {time.perf_counter() - t0:.1f} s", flush=True)
    # a failed capture fails the step too: graph mode is meant to work on a GPU
    return 1 if any("error" in e or "graph_error" in e for e in res["nets"]) else 0


if __name__ == "__main__":
    sys.exit(main())
