"""Graph mode for the trainer (``gpucnn train --cuda-graphs``, ``GPUCNN_CUDA_GRAPHS=1``):
the forward, loss, backward and update of one batch shape recorded once as a graph and
replayed for every later batch of that shape (gpucnn/backends/graph.py).

Per (batch shape, learning rate) the first step runs eagerly — it makes the plans and
workspaces a capture needs — and its launches are then captured into a graph whose inputs
are static arrays; later steps copy their batch into those and replay. A learning rate is a
kernel argument, frozen by capture: a schedule that changes it gets a new graph (kept, at
most :data:`MAX_GRAPHS` of them). Per-step scalars that cannot be frozen yet — Adam's step
count, a dropout seed — make the step ineligible: it runs eagerly, said once in a warning,
and the metrics count ``graph_replayed_steps`` and ``eager_steps`` so a fall-back is seen.
Replay is bit-identical to the eager step (tests/test_train_graph.py, on ``emu``).
"""
from __future__ import annotations

import warnings

__all__ = ["GraphSteps", "graph_blocker", "MAX_GRAPHS", "GraphModeWarning"]

MAX_GRAPHS = 4  # the full batch and the last partial one, across a learning-rate change


class GraphModeWarning(RuntimeWarning):
    """Graph mode was asked for but a step runs eagerly (the message says why)."""


def graph_blocker(backend, model, opt):
    """Why this run's steps cannot be replayed as graphs (None: they can)."""
    if backend.kind != "device":
        return f"the {backend.name} backend runs on the CPU: there are no launches to capture"
    if not hasattr(getattr(backend, "module", None), "begin_capture"):
        return f"the {backend.name} backend's kernels cannot be captured"
    if type(opt).__name__ == "Adam":
        return ("Adam's step count (its bias corrections) changes every step and would be "
                "frozen into the graph")
    dropout = [l for l in getattr(model, "layers", ()) if type(l).__name__ == "Dropout"
               and l.p > 0]
    if dropout:
        return (f"{type(dropout[0]).__name__}(p={dropout[0].p}) draws a new mask seed every "
                f"step, which would be frozen into the graph")
    if getattr(backend, "use_cublas", False) and backend.name != "cuda":
        return "GPUCNN_CUBLAS runs host-side GEMMs that the emulator cannot record"
    return None


class GraphSteps:
    """``steps(x, y) -> (loss, probs)`` of one training step, replayed where it can be.
    ``update(x, y)`` is the step's work (forward, loss, backward, the optimiser's launches);
    ``opt`` is told of each step the graph does for it (its host-side step count)."""

    def __init__(self, backend, update, opt, blocker=None):
        self.backend, self.update, self.opt = backend, update, opt
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
        key = (x.shape, x.dtype, y.shape, y.dtype, self.opt.lr)
        graph = self.graphs.get(key)
        if graph is not None:
            self.opt.steps += 1  # what opt.step() counts on the host; the graph launches
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
        self.graphs[key] = self.backend.capture(self._captured, *static)
        return out

    def _captured(self, x, y):
        steps = self.opt.steps
        try:
            return self.update(x, y)
        finally:
            self.opt.steps = steps  # the capture ran no step: nothing happened yet
