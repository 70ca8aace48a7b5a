"""The comparison behind ``gpucnn verify``: one model, a device backend and the float64
reference, layer by layer.

Both copies of the model are built by :func:`gpucnn.models.build_model` and run through the
layers' own ``forward``/``backward`` (the calls :class:`~gpucnn.nn.Sequential` makes, fused
layers included), so the kernels checked are the ones training launches.

Each layer is checked *in isolation*: the device layer and the reference layer get the same
input (the reference chain's value, rounded to float32), and in the backward pass the same
output gradient and the same forward state (the device's ``y``, ``switches``, ``scale``,
``mask``). So an error is reported in the layer that makes it, not in every layer after it,
and a legitimate fp32-vs-float64 difference (a ReLU or a max-pool window deciding the other
way on a near-tie) cannot turn into a gradient failure further on. The whole net is also run
chained (``model.forward``/``model.backward`` exactly as in training) and its end-to-end
errors are reported alongside, for information.

Besides each norm-wise error, a run counts in ``element_mismatches`` the elements farther
from the reference than ``ELEM_TOL_FACTOR * tolerance * (|ref| + rms(ref))`` (the element
check of :func:`gpucnn.testing.assert_close`): one wrong element among many hardly moves the
norm.

Two input passes: ``integer`` — every layer's input is integer-valued in [-4, 4] and the
weights are rounded to 4 significant bits per layer (a power-of-two step), so every conv and
linear sum is exact in float32: pooled values and max-pool switches must equal the
reference's exactly, ties included (the first maximum wins); ``normal`` — standard normal
input and the exact weights (a near-tie a float32 sum may decide the other way is counted
as a tie, not a mismatch).
"""
from __future__ import annotations

import hashlib
import math
import os
import time

import numpy as np

from ..backends import Backend, get_backend
from ..nn import SoftmaxCrossEntropy
from ..testing import ELEM_TOL_FACTOR, element_mismatches, rel_error
from .report import algorithm_names, collect_environment, conv_algorithms
from .results import LayerResult, VerifyResult
from .source import build_copy, load_model_source

__all__ = ["TOLERANCES", "PASSES", "ORDERS", "verify_model", "device_backend",
           "switch_mismatches", "tied_windows", "weights_digest", "precision_of",
           "default_tolerance"]

# Default tolerance on ||device - reference|| / ||reference|| per device precision. fp32:
# products and sums in float32 (about 1e-7 per operation, grown by long reductions: AlexNet
# sums 10^4 products per output and 10^5 per weight gradient). Reduced-precision modes (TF32
# convolutions, issue 8) add their row here; the device backend's ``precision`` attribute
# (absent today: fp32) picks it.
TOLERANCES = {"fp32": (1e-4, "float32 products and sums: the cuda and emu kernels today")}
PASSES = ("integer", "normal")
ORDERS = ("forward", "reverse", "random")
# What a layer's forward keeps for its backward besides its input (see the module docstring).
FORWARD_STATE = ("y", "switches", "scale", "mask")
INT_RANGE = 4  # integer-valued inputs lie in [-INT_RANGE, INT_RANGE]


def precision_of(backend):
    return getattr(backend, "precision", "fp32")


def default_tolerance(backend):
    precision = precision_of(backend)
    if precision not in TOLERANCES:
        raise ValueError(f"the {backend.name} backend computes in {precision!r}, which has no "
                         f"default tolerance (known: {', '.join(TOLERANCES)}); give --tolerance")
    return TOLERANCES[precision][0]


def device_backend(name, order="forward", seed=0):
    """The backend under test: ``emu`` is built fresh per thread order with its checks on
    (guarded buffers, poisoned outputs); ``cuda`` is the usual one."""
    if name == "emu":
        from ..backends.device import make_emu_backend
        return make_emu_backend(order=order, checks=True, seed=seed)
    return get_backend(name)


def _check_algo(backend, algo):
    valid = algorithm_names(backend)
    if valid is None:
        raise ValueError(f"algo (--algo): the {backend.name} backend has no convolution "
                         f"algorithm selection in this gpucnn; omit --algo")
    if algo not in valid:
        raise ValueError(f"algo (--algo) must be one of {', '.join(valid)} on the "
                         f"{backend.name} backend; got {algo!r}")


def _units(model):
    """(index, layer, fused member indices) for each layer Sequential runs."""
    return [(i, layer, [j for j, m in enumerate(model.layers) if m.fused_into is layer])
            for i, layer in enumerate(model.layers) if layer.fused_into is None]


def _label(model, index, members):
    # the layers' reprs without their "[fused into ...]" notes (the row shows the fusion)
    names = [repr(model.layers[j]).split(" [")[0].removesuffix("()")
             for j in [index, *members]]
    return " + ".join(names)


class _Loss:
    """Softmax cross-entropy on fixed labels, as a layer: forward(logits), backward(_)."""

    def __init__(self, backend, labels):
        self.backend, self.labels = backend, backend.asarray(labels, dtype=np.int32)
        self.f = SoftmaxCrossEntropy().bind(backend)

    def forward(self, logits):
        return self.f.forward(logits, self.labels)

    def backward(self, dy):
        return self.f.backward()

    def named_parameters(self):
        return []


# ---- figures --------------------------------------------------------------------------------
def switch_mismatches(dev_sw, ref_sw, pool_in, exact, tol):
    """(mismatches, ties) between device and reference max-pool switches. ``pool_in`` is the
    reference's pool input. A differing switch is a *tie* (accepted) only when not ``exact``
    and the two chosen values differ, by at most ``tol`` times the largest input: a near-tie
    that float32 may decide the other way. Equal values with a different switch break the
    first-maximum convention: a mismatch."""
    n, c = dev_sw.shape[:2]
    d, r = dev_sw.reshape(n * c, -1).astype(np.int64), ref_sw.reshape(n * c, -1)
    plane = np.asarray(pool_in, np.float64).reshape(n * c, -1)
    diff = d != r
    if not diff.any():
        return 0, 0
    valid = (d >= 0) & (d < plane.shape[1])
    gap = np.abs(np.take_along_axis(plane, np.clip(d, 0, plane.shape[1] - 1), 1)
                 - np.take_along_axis(plane, r, 1))
    ties = diff & valid & (gap > 0) & (gap <= tol * np.abs(plane).max())
    ties = ties if not exact else np.zeros_like(ties)
    return int(diff.sum() - ties.sum()), int(ties.sum())


def _new_entries(before, after):
    """What a backend's algorithm report (a dict) gained or changed during one layer's call:
    the algorithms that layer was given."""
    if not isinstance(after, dict):
        return {}
    before = before if isinstance(before, dict) else {}
    return {k: v for k, v in after.items() if before.get(k) != v}


def tied_windows(pool_in, pool):
    """How many windows of max-pool layer ``pool`` hold their maximum more than once in
    ``pool_in``: the ties the switch convention decides (ceil_mode's extra windows aside)."""
    (kh, kw), (sh, sw), (ph, pw) = pool.kernel_size, pool.stride, pool.padding
    dh, dw = pool.options.get("dilation", (1, 1))
    x = np.pad(np.asarray(pool_in, np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)),
               constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1),
                                                   axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    top = win.max(axis=(-2, -1), keepdims=True)
    return int(((win == top).sum(axis=(-2, -1)) > 1).sum())


def weights_digest(params):
    """SHA-256 of the float32 weights (names and bytes in name order): which weights ran."""
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode() + b"\0" + np.ascontiguousarray(params[name], np.float32).tobytes())
    return h.hexdigest()


def _integer_valued(h):
    """h scaled so its RMS is 2, rounded and clipped to [-INT_RANGE, INT_RANGE] (zeros stay
    zeros, so a ReLU's output keeps its tied zeros)."""
    rms = float(np.sqrt(np.mean(np.square(h)))) if h.size else 0.0
    q = np.rint(h * (2.0 / rms)) if rms > 0 else np.zeros_like(h)
    return np.clip(q, -INT_RANGE, INT_RANGE).astype(np.float32)


def _quantized(params):
    """Each layer's weight (and its bias, on the same step) rounded to a power-of-two step
    of max|w| / 8..16: with integer inputs in [-4, 4] every sum is a multiple of the step
    below 2^24 steps, so exact in float32 in any order."""
    out = dict(params)
    for name, w in params.items():
        if name.endswith(".weight") and np.abs(w).max() > 0:
            step = 2.0 ** (math.floor(math.log2(float(np.abs(w).max()))) - 3)
            for n in (name, name[:-len("weight")] + "bias"):
                if n in params:
                    out[n] = (np.rint(params[n] / step) * step).astype(np.float32)
    return out


def _set_params(model, params, dtype):
    for name, p in model.named_parameters():
        p.data = model.backend.asarray(np.asarray(params[name], dtype), dtype=dtype)


def _pool_input(ref_layer, x):
    """The reference's input to the max-pool of a layer: ``x`` itself for MaxPool2d, the
    conv + ReLU output for a conv with a fused pool (None: not a max-pool)."""
    if getattr(ref_layer, "fused_pool", None) is not None:
        b = None if ref_layer.bias is None else ref_layer.bias.data
        return ref_layer.backend.to_numpy(ref_layer.backend.conv2d(
            x, ref_layer.weight.data, b, stride=ref_layer.stride, padding=ref_layer.padding,
            dilation=ref_layer.dilation, groups=ref_layer.groups, relu=True))
    return x if type(ref_layer).__name__ == "MaxPool2d" else None


def _copy_state(dev_layer, ref_layer):
    """The device's forward state into the reference layer (float64), see the docstring."""
    B, R = dev_layer.backend, ref_layer.backend
    for attr in FORWARD_STATE:
        v = getattr(dev_layer, attr, None)
        if isinstance(v, B.xp.ndarray) and hasattr(ref_layer, attr):
            host = B.to_numpy(v)
            setattr(ref_layer, attr, R.asarray(host, dtype=host.dtype if host.dtype.kind == "i"
                                               else np.float64))


def _error(counts, key, got, ref, tol):
    """rel_error(got, ref); ``counts[key]`` gets the number of elements beyond
    ELEM_TOL_FACTOR * tol (as gpucnn.testing.assert_close counts them), since one wrong
    element among many hardly moves the norm-wise error."""
    counts[key] = element_mismatches(got, ref, ELEM_TOL_FACTOR * tol).count
    return rel_error(got, ref)


def _run_pass(pairs, x, integer, tol):
    """One forward and backward, layer by layer; a dict of figures per (device, reference)
    layer pair (the last pair is the loss)."""
    recs = [{"forward_error": None, "input_grad_error": None, "param_grad_errors": {},
             "switch_mismatches": None, "switch_ties": None, "tied_windows": None,
             "element_mismatches": {"forward": None, "input_grad": None, "param_grads": {}},
             "conv_algorithms": {},
             "error": None} for _ in pairs]
    h = x
    for rec, (dl, rl) in zip(recs, pairs):
        # The net's own input is integer-valued already; later inputs are made so.
        xin = _integer_valued(h) if integer and h is not x else h.astype(np.float32)
        x64 = rl.backend.asarray(xin, dtype=np.float64)
        h = rl.backend.to_numpy(rl.forward(x64))
        rec["output_shape"] = list(h.shape)
        try:
            before = conv_algorithms(dl.backend)
            y = dl.backend.to_numpy(dl.forward(dl.backend.asarray(xin)))
            rec["conv_algorithms"] = _new_entries(before, conv_algorithms(dl.backend))
            rec["forward_error"] = _error(rec["element_mismatches"], "forward", y, h, tol)
            pool_in = _pool_input(rl, x64)
            if pool_in is not None:
                rec["switch_mismatches"], rec["switch_ties"] = switch_mismatches(
                    dl.backend.to_numpy(dl.switches), rl.switches, pool_in, integer, tol)
                rec["tied_windows"] = tied_windows(pool_in, getattr(rl, "fused_pool", None)
                                                   or rl)
        except Exception as exc:  # a kernel fault is this layer's failure; go on with the next
            rec["error"] = f"forward: {type(exc).__name__}: {exc}"
    dy = None
    for rec, (dl, rl) in zip(reversed(recs), reversed(pairs)):
        dy32 = None if dy is None else dy.astype(np.float32)
        if rec["error"] is None:
            _copy_state(dl, rl)
        dx_ref = rl.backward(None if dy is None else rl.backend.asarray(dy32, dtype=np.float64))
        if rec["error"] is None:
            try:
                before = conv_algorithms(dl.backend)
                dx = dl.backward(None if dy is None else dl.backend.asarray(dy32))
                rec["conv_algorithms"].update(_new_entries(before, conv_algorithms(dl.backend)))
                if dx_ref is not None:
                    rec["input_grad_error"] = _error(rec["element_mismatches"], "input_grad",
                                                     dl.backend.to_numpy(dx), dx_ref, tol)
                refp = dict(rl.named_parameters())
                rec["param_grad_errors"] = {
                    n: _error(rec["element_mismatches"]["param_grads"], n,
                              dl.backend.to_numpy(p.grad), refp[n].grad, tol)
                    for n, p in dl.named_parameters()}
            except Exception as exc:
                rec["error"] = f"backward: {type(exc).__name__}: {exc}"
        dy = None if dx_ref is None else rl.backend.to_numpy(dx_ref)
    return recs


def _end_to_end(dev, ref, x, labels):
    """The chained net, exactly as a training step runs it (no update)."""
    try:
        out = []
        for m, dtype in ((dev, np.float32), (ref, np.float64)):
            loss = _Loss(m.backend, labels)
            logits = m.forward(m.backend.asarray(x, dtype=dtype))
            value = loss.forward(logits)
            m.backward(loss.backward(None))
            out.append((m.backend.to_numpy(logits), m.backend.to_numpy(value),
                        {n: m.backend.to_numpy(p.grad) for n, p in m.named_parameters()}))
        (ld, vd, gd), (lr, vr, gr) = out
        return {"logits_error": rel_error(ld, lr), "loss_error": rel_error(vd, vr),
                "param_grad_error": max(rel_error(gd[n], gr[n]) for n in gr)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def verify_model(model_or_checkpoint, backend="emu", input_shape=None, batch=4, tolerance=None,
                 orders=None, seed=0, algo=None):
    """Verify a model (name, checkpoint path or built model) on ``backend`` ("emu", "cuda"
    or a Backend object) against the float64 reference; a :class:`VerifyResult`.

    ``orders``: emu thread orders to repeat the run in (default: forward only; a Backend
    object or cuda runs once). ``algo``: the convolution algorithm (GPUCNN_CONV_ALGO) for
    this run. ``tolerance``: default TOLERANCES[the backend's precision]."""
    source = load_model_source(model_or_checkpoint)
    given = isinstance(backend, Backend)
    if orders and (given or backend != "emu") and tuple(orders) != ("forward",):
        raise ValueError(f"orders: thread orders can be chosen only on the emu backend, not on "
                         f"{getattr(backend, 'name', backend)}")
    orders = tuple(orders or ("forward",))
    bad = [o for o in orders if o not in ORDERS]
    if bad:
        raise ValueError(f"orders must be among {', '.join(ORDERS)}; got {', '.join(bad)}")
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be a finite number > 0, got {tolerance!r}")
    R = get_backend("reference", "fp32")  # the plain float64 definitions, not $GPUCNN_PRECISION
    probe = build_copy(source, R, seed)
    host = source.params if source.params is not None else probe.state_dict()
    source.params = host  # every copy gets exactly these weights
    shape = tuple(input_shape or probe.input_shape)
    try:
        out_shape = probe.output_shape(shape)
    except ValueError as exc:
        raise ValueError(f"input_shape (--input) {','.join(map(str, shape))} does not fit "
                         f"{source.config['name']}: {exc}") from None
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, out_shape[0], batch)
    inputs = {"integer": rng.integers(-INT_RANGE, INT_RANGE + 1, (batch, *shape)),
              "normal": rng.standard_normal((batch, *shape))}
    weights = {"integer": _quantized(host), "normal": host}
    prev_algo = os.environ.get("GPUCNN_CONV_ALGO")
    t0 = time.perf_counter()
    results, e2e, B = None, {}, None
    try:
        for order in orders:
            B = backend if given else device_backend(backend, order, seed)
            if algo is not None:
                _check_algo(B, algo)
                # the global switch (per call, else auto): layers it does not fit run auto,
                # and each layer's row records the algorithms it ran
                os.environ["GPUCNN_CONV_ALGO"] = algo
            tol = default_tolerance(B) if tolerance is None else float(tolerance)
            # Both copies fresh per order, so their dropout call counters (hence masks) agree.
            dev, ref = build_copy(source, B, seed), build_copy(source, R, seed)
            units = _units(dev)
            pairs = [(dl, ref.layers[i]) for i, dl, _ in units]
            pairs.append((_Loss(B, labels), _Loss(R, labels)))
            if results is None:
                results = [LayerResult(i, m, _label(dev, i, m), tol) for i, _, m in units]
                results.append(LayerResult("loss", [], "SoftmaxCrossEntropy (random labels)",
                                           tol))
            for kind in PASSES:
                _set_params(dev, weights[kind], np.float32)
                _set_params(ref, weights[kind], np.float64)
                t = time.perf_counter()
                for res, rec in zip(results, _run_pass(pairs, inputs[kind], kind == "integer",
                                                       tol)):
                    rec.update(order=order, inputs=kind, pass_seconds=time.perf_counter() - t)
                    res.runs.append(rec)
            e2e[order] = _end_to_end(dev, ref, inputs["normal"].astype(np.float32), labels)
    finally:
        if algo is not None:
            if prev_algo is None:
                os.environ.pop("GPUCNN_CONV_ALGO", None)
            else:
                os.environ["GPUCNN_CONV_ALGO"] = prev_algo
    for res in results:
        res.output_shape = res.runs[0]["output_shape"]
        for run in res.runs:
            del run["output_shape"]
    summary = {"model": source.label, "model_config": probe.config,
               "weights_sha256": weights_digest(host), "backend": B.name,
               "device": B.describe(),
               "precision": precision_of(B), "tolerance": results[0].tolerance,
               "orders": list(orders), "passes": list(PASSES), "batch": batch,
               "input_shape": list(shape), "seed": seed, "algo": algo,
               "end_to_end": e2e, "seconds": time.perf_counter() - t0}
    return VerifyResult(results, summary, collect_environment(B, orders))
