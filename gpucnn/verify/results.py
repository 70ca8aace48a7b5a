"""The results of ``gpucnn verify``: per layer, the figures of every run (thread order x
input pass) and their worst values; for the model, the verdict and the exit status."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LayerResult", "VerifyResult"]


def _worst(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _sum(values):
    values = [v for v in values if v is not None]
    return sum(values) if values else None


@dataclass
class LayerResult:
    index: object          # the layer's index in model.layers ("loss" for the loss)
    members: list          # indices of the layers fused into it (ReLU, MaxPool2d)
    layer: str
    tolerance: float
    output_shape: list = field(default_factory=list)
    runs: list = field(default_factory=list)  # one dict of figures per (order, pass)

    def worst(self, key):
        return _worst(r[key] for r in self.runs)

    @property
    def param_grad_errors(self):
        names = sorted({n for r in self.runs for n in r["param_grad_errors"]})
        return {n: _worst(r["param_grad_errors"].get(n) for r in self.runs) for n in names}

    @property
    def conv_algorithms(self):
        return {k: v for r in self.runs for k, v in r["conv_algorithms"].items()}

    @property
    def errors(self):
        return [f"{r['order']} order, {r['inputs']} inputs: {r['error']}"
                for r in self.runs if r["error"]]

    @property
    def passed(self):
        figures = [self.worst("forward_error"), self.worst("input_grad_error"),
                   _worst(self.param_grad_errors.values())]
        return (not self.errors and all(e is None or e <= self.tolerance for e in figures)
                and not self.worst("switch_mismatches") and not self.element_mismatches())

    def element_mismatches(self):
        """Elements beyond the element-wise bound over all runs (one wrong element among
        many hardly moves the norm-wise error, so it fails the layer on its own)."""
        total = 0
        for r in self.runs:
            m = r.get("element_mismatches") or {}
            total += sum(v or 0 for v in (m.get("forward"), m.get("input_grad")))
            total += sum(v or 0 for v in (m.get("param_grads") or {}).values())
        return total

    def to_dict(self):
        return {"index": self.index, "members": self.members, "layer": self.layer,
                "output_shape": self.output_shape,
                "forward_error": self.worst("forward_error"),
                "input_grad_error": self.worst("input_grad_error"),
                "param_grad_errors": self.param_grad_errors,
                "param_grad_error": _worst(self.param_grad_errors.values()),
                # counts are totals over the runs, errors their worst
                "switch_mismatches": _sum(r["switch_mismatches"] for r in self.runs),
                "switch_ties": _sum(r["switch_ties"] for r in self.runs),
                "tied_windows": _sum(r["tied_windows"] for r in self.runs),
                "element_mismatches": self.element_mismatches(),
                "tolerance": self.tolerance, "conv_algorithms": self.conv_algorithms,
                "passed": self.passed, "errors": self.errors, "runs": self.runs}


@dataclass
class VerifyResult:
    layers: list           # LayerResult per layer Sequential runs, then the loss
    summary: dict          # what was run: model, backend, orders, passes, end to end, ...
    environment: dict

    @property
    def passed(self):
        # The chained run's figures are information, but a kernel fault in it is a failure.
        e2e = self.summary.get("end_to_end", {}).values()
        return all(l.passed for l in self.layers) and not any("error" in e for e in e2e)

    @property
    def exit_status(self):
        return 0 if self.passed else 1

    def to_dict(self):
        layers = [l.to_dict() for l in self.layers]
        summary = dict(self.summary, passed=self.passed, layers=len(layers),
                       failed=[l["layer"] for l in layers if not l["passed"]])
        for key in ("forward_error", "input_grad_error", "param_grad_error",
                    "switch_mismatches"):
            summary[f"worst_{key}"] = _worst(l[key] for l in layers)
        return {"layers": layers, "summary": summary, "environment": self.environment}
