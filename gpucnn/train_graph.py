"""Graph mode for the trainer (``gpucnn train --cuda-graphs``, ``GPUCNN_CUDA_GRAPHS=1``):
the forward, loss, backward and update of one batch shape recorded once as a graph and
replayed for every later batch of that shape (gpucnn/backends/graph.py). What changes every
step lives on the device: the learning rate (written when a schedule changes it), Adam's
step count and bias corrections (``adam_prepare``), each dropout layer's call count
(``dropout_advance``), the batch (copied into the graph's input arrays); the host keeps its
own counts in step (``after_replay``).

Per batch shape the first step runs eagerly — it makes the plans and workspaces a capture
needs — and its launches are then captured into a graph whose inputs are static arrays;
later steps copy their batch into those and replay (the last partial batch gets a graph of
its own; at most :data:`MAX_GRAPHS` are kept). A run that cannot be captured (the CPU backends), or
whose capture fails (e.g. an op copying a host value to the device or allocating outside the
device context, gpucnn/backends/capture_rules.py: the error names it),
runs eagerly, said once in a warning, and the metrics count ``graph_replayed_steps`` and
``eager_steps`` so a fall-back is seen.
Replay is bit-identical to the eager step (tests/test_train_graph.py, on ``emu``).
"""
from __future__ import annotations

import warnings

__all__ = ["GraphSteps", "graph_blocker", "MAX_GRAPHS", "GraphModeWarning"]

MAX_GRAPHS = 4  # the full batch and the last partial one (and room for a size change)


class GraphModeWarning(RuntimeWarning):
    """Graph mode was asked for but a step runs eagerly (the message says why)."""


def graph_blocker(backend, model, opt):
    """Why this run's steps cannot be replayed as graphs (None: they can)."""
    if backend.kind != "device":
        return f"the {backend.name} backend runs on the CPU: there are no launches to capture"
    if not hasattr(getattr(backend, "module", None), "begin_capture"):
        return f"the {backend.name} backend's kernels cannot be captured"
    if getattr(backend, "use_cublas", False) and backend.name != "cuda":
        return "GPUCNN_CUBLAS runs host-side GEMMs that the emulator cannot record"
    return None


class GraphSteps:
    """``steps(x, y) -> (loss, probs)`` of one training step, replayed where it can be.
    ``update(x, y)`` is the step's work (forward, loss, backward, the optimiser's launches);
    ``model`` and ``opt`` are told of each step the graph does for them (the counts they keep
    on the host: dropout calls, the optimiser's steps; their device copies advance in the
    graph)."""

    def __init__(self, backend, update, model, opt, blocker=None):
        self.backend, self.update, self.model, self.opt = backend, update, model, opt
        self.blocker = blocker
        self.graphs = {}
        self.replayed = self.eager = 0
        if blocker is not None:
            warnings.warn(f"gpucnn: --cuda-graphs: every step runs eagerly: {blocker}",
                          GraphModeWarning, stacklevel=3)

    def __call__(self, x, y):
        if self.blocker is not None:
            self.eager += 1
            return self.update(x, y)
        key = (x.shape, x.dtype, y.shape, y.dtype)
        graph = self.graphs.get(key)
        if graph is not None:
            self.opt.device_lr()  # a new learning rate reaches the device before the replay
            self.opt.steps += 1  # what opt.step() counts on the host; the graph launches
            self.model.after_replay()
            loss, probs = graph.replay(x, y)
            self.replayed += 1
            # The graph writes the same arrays every replay: the step's loss is kept in one
            # of its own (read later, with the others); probs is used at once.
            return loss.copy(), probs
        out = self.update(x, y)  # plans, workspaces; this step's result
        self.eager += 1
        if len(self.graphs) >= MAX_GRAPHS:
            self.graphs.clear()
        xp = self.backend.xp
        static = (xp.empty_like(x), xp.empty_like(y))
        steps, counts = self.opt.steps, self.model.extra_state()
        try:
            self.graphs[key] = self.backend.capture(self.update, *static)
        except Exception as exc:  # noqa: BLE001 - any failed capture: eager from now on
            self.blocker = f"the capture failed: {type(exc).__name__}: {exc}"
            warnings.warn(f"gpucnn: --cuda-graphs: every step runs eagerly from now on: "
                          f"{self.blocker}", GraphModeWarning, stacklevel=3)
        finally:
            # The capture ran no step: the host counts it advanced go back (the device
            # copies were not touched: their advances were recorded, not run).
            self.opt.steps = steps
            self.model.load_extra_state(counts)
        return out
