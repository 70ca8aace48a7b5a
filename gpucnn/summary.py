"""Per-layer summary: output shape, parameters, FLOPs and receptive field."""
from __future__ import annotations

from .nn.module import Sequential

__all__ = ["summarize", "format_summary", "SCHEMA"]

SCHEMA = "gpucnn-summary/1"  # the "schema" of `gpucnn summary --json` (gpucnn/outputs.py)


def summarize(model: Sequential, input_shape=None):
    """Rows (index, layer, output shape, params, forward FLOPs, receptive field) per layer
    for one sample; fused ReLUs are listed with the layer that computes them."""
    shape = tuple(input_shape or model.input_shape)
    rf, jump = 1, 1
    rows = []
    for i, layer in enumerate(model.layers):
        flops = layer.flops(shape)
        shape = layer.output_shape(shape)
        k, s = layer.receptive()
        rf += (k - 1) * jump
        jump *= s
        params = _params(layer)
        rows.append({"index": i, "layer": repr(layer), "output_shape": list(shape),
                     "params": params, "flops": flops, "receptive_field": rf})
    return rows


def _params(layer):
    """A layer's parameter count from its weight shape: the model need not hold its weights
    (gpucnn summary describes VGG-16 without allocating its 138M parameters)."""
    shape = getattr(layer, "weight_shape", None)
    if shape is None:
        return 0
    n = 1
    for d in shape:
        n *= d
    return n + (shape[0] if layer.use_bias else 0)


def format_summary(rows, input_shape):
    head = f"{'#':>3}  {'layer':<52} {'output':>14} {'params':>12} {'MFLOPs':>10} {'RF':>4}"
    lines = [f"input: {'x'.join(map(str, input_shape))}", head, "-" * len(head)]
    for r in rows:
        out = "x".join(map(str, r["output_shape"]))
        lines.append(f"{r['index']:>3}  {r['layer'][:52]:<52} {out:>14} {r['params']:>12,} "
                     f"{r['flops'] / 1e6:>10.2f} {r['receptive_field']:>4}")
    lines.append("-" * len(head))
    total_p = sum(r["params"] for r in rows)
    total_f = sum(r["flops"] for r in rows)
    lines.append(f"total: {total_p:,} parameters, {total_f / 1e6:,.1f} MFLOPs forward per sample "
                 f"(a multiply-add counts 2)")
    return "\n".join(lines)
