"""What ``gpucnn verify`` prints and writes: the per-layer table, the summary line, the JSON
document and the environment it records (for a bug report)."""
from __future__ import annotations

import json
import math

from ..testing import ELEM_TOL_FACTOR

__all__ = ["format_table", "summary_line", "to_json", "collect_environment",
           "conv_algorithms", "algorithm_names", "jsonable"]


def jsonable(value):
    """``value`` with string keys, lists for tuples/sets and non-finite floats as strings
    ("inf", "nan"), so that strict JSON holds it."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # NumPy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def conv_algorithms(backend):
    """The convolution algorithms the backend reports having chosen (``conv_algorithms``, a
    mapping or a callable returning one, added with algorithm selection), JSON-able; None
    when the backend reports none."""
    report = getattr(backend, "conv_algorithms", None)
    if callable(report):
        report = report()
    return None if report is None else jsonable(report)


def algorithm_names(backend):
    """The convolution algorithm names ``backend`` accepts ("auto" first), from the registry
    of :mod:`gpucnn.ops.conv.algos`; None where this gpucnn or backend has no selection."""
    kind = getattr(backend, "conv_kind", None)
    try:
        from ..ops.conv import algos
    except ImportError:
        return None
    return None if kind is None else [algos.AUTO, *algos.names(kind)]


def collect_environment(backend, orders):
    """Backend, device, driver, CuPy, NVRTC and emulator versions where available, and the
    host environment that ``gpucnn bench`` records (:func:`gpucnn.bench.env.environment`)."""
    from ..bench.env import environment
    host = environment(backend)
    gpu = host.get("gpu", {})
    env = {"backend": backend.name, "device": backend.describe(),
           "precision": getattr(backend, "precision", "fp32"),
           "driver": gpu.get("driver_version"), "cuda_runtime": gpu.get("runtime_version"),
           "cupy": host["versions"].get("cupy"), "gpucnn": host["versions"].get("gpucnn")}
    try:
        from ..toolchain.compilers import nvrtc_version_string
        env["nvrtc"] = nvrtc_version_string()
    except Exception as exc:  # informational: a missing NVRTC is not an error here
        env["nvrtc"] = f"not available ({type(exc).__name__}: {exc})"
    if backend.name == "emu":
        from ..backends.emu import emulator_info
        env["emulator"] = emulator_info()
        env["emulator_orders"] = list(orders)
        env["emulator_checks"] = bool(getattr(backend.module, "checks", False))
    env["conv_algorithms"] = conv_algorithms(backend)
    env["host"] = host
    return jsonable(env)


def _fig(value):
    if value is None:
        return "-"
    if isinstance(value, str) or math.isinf(value) or math.isnan(value):
        return str(value)
    return "0" if value == 0 else f"{value:.1e}"


def _switches(layer):
    """Mismatches, then (in brackets) the tied windows the runs held, and near-ties that
    float32 decided the other way (accepted)."""
    if layer["switch_mismatches"] is None:
        return "-"
    near = f", {layer['switch_ties']} near" if layer["switch_ties"] else ""
    return f"{layer['switch_mismatches']} ({layer['tied_windows']} tied{near})"


def _index(layer):
    if layer["members"]:
        return f"{layer['index']}-{layer['members'][-1]}"
    return str(layer["index"])


def _header(doc):
    s, env = doc["summary"], doc["environment"]
    shape = "x".join(map(str, s["input_shape"]))
    checks = "on" if env.get("emulator_checks") else "off"
    orders = (f", thread orders {','.join(s['orders'])} (emulator checks {checks})"
              if s["backend"] == "emu" else "")
    algo = f", conv algorithm {s['algo']}" if s.get("algo") else ""
    return (f"gpucnn verify {s['model']}: {s['device']} vs the float64 reference; "
            f"{s['precision']}, batch {s['batch']}, input {shape}, seed {s['seed']}{orders}{algo}; "
            f"inputs {' + '.join(s['passes'])}")


def summary_line(doc):
    s, layers = doc["summary"], doc["layers"]
    bad = [l for l in layers if not l["passed"]]
    if bad:
        head = (f"FAIL: {len(bad)} of {len(layers)} layers out of tolerance or failing: "
                + "; ".join(f"{_index(l)} {l['layer']}" for l in bad))
    elif not s["passed"]:
        head = ("FAIL: every layer passed alone, but the chained run (model.forward/backward) "
                "raised an error (see end to end)")
    else:
        head = (f"PASS: all {len(layers)} layers within tolerance "
                f"{_fig(layers[0]['tolerance'])} ({s['precision']})")
    return f"{head}; {s['seconds']:.1f} s"


def end_to_end_line(doc):
    """The chained net's errors per thread order (information, not part of the verdict)."""
    by_text = {}  # the figures' text -> the orders that gave it (usually all the same)
    for order, e in doc["summary"]["end_to_end"].items():
        text = (e["error"] if "error" in e else
                f"logits {_fig(e['logits_error'])}, loss {_fig(e['loss_error'])}, parameter "
                f"gradients {_fig(e['param_grad_error'])}")
        by_text.setdefault(text, []).append(order)
    parts = [f"{text} ({','.join(orders)} order{'s' if len(orders) > 1 else ''})"
             for text, orders in by_text.items()]
    return "end to end (model.forward/backward chained, for information): " + "; ".join(parts)


def format_table(doc):
    """The per-layer table, failure messages and the summary line of a result document."""
    cols = ("#", "layer", "output", "forward", "input grad", "param grad", "switches (ties)",
            "tolerance", "result")
    rows = [(_index(l), l["layer"], "x".join(map(str, l["output_shape"])) or "scalar",
             _fig(l["forward_error"]), _fig(l["input_grad_error"]),
             _fig(l["param_grad_error"]), _switches(l), _fig(l["tolerance"]),
             "PASS" if l["passed"] else "FAIL") for l in doc["layers"]]
    width = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    # text columns left-aligned, figures right-aligned
    line = lambda r: "  ".join(v.ljust(w) if i < 3 or i == 8 else v.rjust(w)  # noqa: E731
                               for i, (v, w) in enumerate(zip(r, width))).rstrip()
    out = [_header(doc), line(cols), line(["-" * w for w in width])]
    out += [line(r) for r in rows]
    notes = [f"  layer {_index(l)}: {e}" for l in doc["layers"] for e in l["errors"]]
    notes += [f"  layer {_index(l)}: {l['element_mismatches']} element(s) beyond the "
              f"element-wise bound ({ELEM_TOL_FACTOR:g} x the tolerance, relative to |reference| "
              f"+ its RMS), "
              f"which the norm-wise figures hide" for l in doc["layers"]
              if l.get("element_mismatches")]
    if notes:
        out += ["", "errors:"] + notes
    out += ["", end_to_end_line(doc), summary_line(doc)]
    return "\n".join(out)


def to_json(doc):
    return json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n"
