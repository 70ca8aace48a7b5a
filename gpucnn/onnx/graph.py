"""The first pass of the importer over an ONNX graph: which values are constants (initialisers,
Constant nodes and everything computed from them alone, which is folded here with NumPy: the
shape arithmetic exporters emit), the shape of every value that depends on the input, and
the nodes left to map onto layers. An ``If`` whose condition folds to a constant is replaced
by the branch it takes (torch's exporter puts one in every LocalResponseNorm).

The batch size is symbolic in most exported graphs; here it is a number no CNN dimension is
(:data:`BATCH`), so ``Shape`` folds, and a reshape to ``[batch, -1]`` is recognised as a flatten
by that number in its target."""
from __future__ import annotations

import math

import numpy as np

from .reader import OnnxError, require_onnx, tensor_array

__all__ = ["Node", "Graph", "BATCH", "evaluate"]

BATCH = 1_000_003  # the symbolic batch size (a prime far above any channel or feature count)


class Node:
    """One ONNX node: name, op type, input and output names ('' for an absent optional
    input) and attributes as Python values (a subgraph stays a GraphProto)."""

    def __init__(self, proto, index):
        onnx = require_onnx()
        self.name = proto.name or f"#{index}"
        self.op, self.domain = proto.op_type, proto.domain
        self.inputs, self.outputs = list(proto.input), list(proto.output)
        self.attrs = {}
        for a in proto.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                self.attrs[a.name] = tensor_array(a.t, f"node {self.name!r}")
            elif a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                self.attrs[a.name] = a.g if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            else:
                v = onnx.helper.get_attribute_value(a)
                self.attrs[a.name] = v.decode() if isinstance(v, bytes) else v

    def __str__(self):
        return f"node {self.name!r} ({self.op})"


class Graph:
    """``consts`` {name: array}, ``shapes`` {name: full shape (batch first)} of the values
    that depend on the input, ``live`` (the nodes computing them, in order), the input and
    output names."""

    def __init__(self):
        self.consts, self.shapes, self.live = {}, {}, []
        self.extra = {}  # second outputs of live nodes (MaxPool's Indices): not imported
        self.input = self.output = None


def _np(x):
    return np.asarray(x)


def _ints(a):
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _div(a, b):
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return (np.trunc(a / b)).astype(np.result_type(a, b))  # ONNX integer Div truncates
    return a / b


def _slice(data, starts, ends, axes=None, steps=None):
    axes = range(len(starts)) if axes is None else [a % data.ndim for a in _ints(axes)]
    steps = [1] * len(starts) if steps is None else _ints(steps)
    idx = [slice(None)] * data.ndim
    for ax, s, e, st in zip(axes, _ints(starts), _ints(ends), steps):
        idx[ax] = slice(s, e, st)
    return data[tuple(idx)]


def _constant(node):
    a = node.attrs
    for key, conv in (("value", lambda v: v), ("value_float", np.float32),
                      ("value_floats", lambda v: np.asarray(v, np.float32)),
                      ("value_int", np.int64), ("value_ints", lambda v: np.asarray(v, np.int64))):
        if key in a:
            return _np(conv(a[key]))
    raise OnnxError(f"{node}: a Constant of a kind gpucnn does not read (sparse or strings)")


def _cast(node, x):
    onnx = require_onnx()
    to = node.attrs.get("to")
    allowed = {1: np.float32, 11: np.float64, 7: np.int64, 6: np.int32, 9: np.bool_}
    if to not in allowed:
        raise OnnxError(f"{node}: Cast to {onnx.helper.tensor_dtype_to_string(to)} is not "
                        f"supported")
    return x.astype(allowed[to])


def _fold(node, v, shapes):
    """The value of ``node`` (one output) from the constants ``v`` of its inputs; for Shape
    the input may be live (its shape is known)."""
    op, a = node.op, node.attrs
    if op == "Constant":
        return _constant(node)
    if op == "Shape":
        shape = shapes[node.inputs[0]] if node.inputs[0] in shapes else v[0].shape
        return np.asarray(shape[a.get("start", 0):a.get("end", None)], np.int64)
    if op == "ConstantOfShape":
        value = a.get("value", np.zeros(1, np.float32))
        return np.full(_bounded(node, _ints(v[0])), value.reshape(-1)[0], value.dtype)
    if op == "Identity":
        return v[0]
    if op == "Cast":
        return _cast(node, v[0])
    if op == "Gather":
        return np.take(v[0], v[1].astype(np.int64), axis=a.get("axis", 0))
    if op == "Unsqueeze":
        out = v[0]
        for ax in sorted(x % (out.ndim + len(_ints(v[1]))) for x in _ints(v[1])):
            out = np.expand_dims(out, ax)
        return out
    if op == "Squeeze":
        return np.squeeze(v[0], None if len(v) < 2 or v[1] is None else
                          tuple(_ints(v[1])))
    if op == "Concat":
        return np.concatenate([x.reshape(-1) if x.ndim == 0 else x for x in v], a["axis"])
    if op == "Slice":
        return _slice(*v)
    if op == "Transpose":
        return np.transpose(v[0], a.get("perm"))
    if op == "Reshape":
        return v[0].reshape(resolve_reshape(v[0].shape, _ints(v[1]), a.get("allowzero", 0),
                                            node))
    if op == "Equal":
        return np.equal(v[0], v[1])
    if op in ("Add", "Sub", "Mul", "Div"):
        f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _div}[op]
        return _np(f(v[0], v[1]))
    if op == "Neg":
        return -v[0]
    if op == "Range":
        start, limit, step = (x.item() for x in v)
        _bounded(node, [max(math.ceil((limit - start) / step), 0) if step else 0])
        return np.arange(start, limit, step).astype(v[0].dtype)
    return None


# A folded constant is shape arithmetic or a padding list: a few values, never this many.
_MAX_FOLDED = 1 << 20


def _bounded(node, dims):
    if any(d < 0 for d in dims) or math.prod(dims) > _MAX_FOLDED:
        raise OnnxError(f"{node}: would build a constant of shape {dims}; gpucnn folds "
                        f"constants of at most {_MAX_FOLDED} values")
    return dims


def resolve_reshape(shape, target, allowzero, node):
    """The shape a Reshape of ``shape`` to ``target`` gives (0 copies a dimension unless
    allowzero, one -1 takes what is left)."""
    out = [shape[i] if t == 0 and not allowzero else t for i, t in enumerate(target)]
    total = math.prod(shape)
    if out.count(-1) > 1 or any(t < -1 for t in out):
        raise OnnxError(f"{node}: invalid reshape target {target}")
    if -1 in out:
        rest = math.prod(t for t in out if t != -1)
        if rest == 0 or total % rest:
            raise OnnxError(f"{node}: cannot reshape {tuple(shape)} to {target}")
        out[out.index(-1)] = total // rest
    if math.prod(out) != total:
        raise OnnxError(f"{node}: cannot reshape {tuple(shape)} to {target}")
    return tuple(out)


def _pool_shape(node, x, kernel):
    """Output shape of Conv/MaxPool/AveragePool/LpPool (ONNX's rule, explicit pads)."""
    a, n = node.attrs, len(kernel)
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise OnnxError(f"{node}: auto_pad={a['auto_pad']} is not supported (explicit pads or "
                        f"VALID)")
    pads = a.get("pads", [0] * 2 * n) if a.get("auto_pad", "NOTSET") == "NOTSET" else [0] * 2 * n
    strides, dil = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    rnd = math.ceil if a.get("ceil_mode", 0) else math.floor
    out = []
    for i in range(n):
        span = x[2 + i] + pads[i] + pads[n + i] - dil[i] * (kernel[i] - 1) - 1
        if span < 0:
            raise OnnxError(f"{node}: the kernel {kernel} does not fit the input {x[2:]}")
        out.append(rnd(span / strides[i]) + 1)
    return tuple(out)


_SAME = ("Relu", "Sign", "Abs", "Identity", "Dropout", "Softmax", "LRN", "Neg", "Sqrt")
_BROADCAST = ("Add", "Sub", "Mul", "Div", "Pow")


def _live_shape(node, s, v):
    """The output shape of a node with a live input: ``s`` the input shapes (None for
    constants), ``v`` the constants (None for live inputs)."""
    op, a = node.op, node.attrs
    x = s[0]
    if op in _SAME:
        return x
    if op in _BROADCAST:
        return tuple(np.broadcast_shapes(*[sh if sh is not None else c.shape
                                           for sh, c in zip(s, v)]))
    if op == "Conv":
        w = v[1]
        if w is None:
            raise OnnxError(f"{node}: its weights are computed from the input; gpucnn imports "
                            f"weights held as initialisers")
        return (x[0], w.shape[0], *_pool_shape(node, x, w.shape[2:]))
    if op in ("MaxPool", "AveragePool", "LpPool"):
        return (x[0], x[1], *_pool_shape(node, x, a["kernel_shape"]))
    if op == "Reshape" and v[1] is not None:
        return resolve_reshape(x, _ints(v[1]), a.get("allowzero", 0), node)
    if op == "Flatten":
        ax = a.get("axis", 1) % len(x)
        return (math.prod(x[:ax]), math.prod(x[ax:]))
    if op == "Squeeze":
        axes = [i % len(x) for i in _ints(v[1])] if len(v) > 1 and v[1] is not None else \
            [i for i, d in enumerate(x) if d == 1]
        return tuple(d for i, d in enumerate(x) if i not in axes)
    if op == "Unsqueeze" and v[1] is not None:
        out = list(x)
        for ax in sorted(i % (len(x) + len(_ints(v[1]))) for i in _ints(v[1])):
            out.insert(ax, 1)
        return tuple(out)
    if op == "Pad" and v[1] is not None:
        p, n = _ints(v[1]), len(x)
        if len(v) > 3 and v[3] is not None:
            raise OnnxError(f"{node}: Pad with axes is not supported")
        return tuple(d + p[i] + p[n + i] for i, d in enumerate(x))
    if op == "Gemm" and v[1] is not None:
        w = v[1].T if a.get("transB", 0) else v[1]
        return (x[0], w.shape[1])
    if op == "MatMul" and v[1] is not None and v[1].ndim == 2:
        return (*x[:-1], v[1].shape[1])
    return None


def evaluate(model):
    """The :class:`Graph` of ``model`` (a checked ModelProto)."""
    g, out = model.graph, Graph()
    inits = {t.name for t in g.initializer}
    for t in g.initializer:
        out.consts[t.name] = tensor_array(t, "initialiser")
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1 or len(g.output) != 1:
        raise OnnxError(f"the graph has {len(inputs)} inputs and {len(g.output)} outputs; "
                        f"gpucnn imports nets with one image input and one output")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(shape) != 4 or None in shape[1:] or min(shape[1:]) < 1:
        raise OnnxError(f"input {inputs[0].name!r} has shape "
                        f"{[d.dim_value or d.dim_param or '?' for d in dims]}; gpucnn imports "
                        f"nets on (N, C, H, W) images with C, H and W fixed")
    out.input, out.output = inputs[0].name, g.output[0].name
    out.shapes[out.input] = (shape[0] or BATCH, *shape[1:])
    _walk(g.node, out, 0)
    if out.output not in out.shapes:
        raise OnnxError(f"the output {out.output!r} does not depend on the input")
    return out


def _walk(nodes, out, depth):
    for i, proto in enumerate(nodes):
        node = Node(proto, i)
        if node.domain not in ("", "ai.onnx"):
            raise OnnxError(f"{node}: operator domain {node.domain!r}; gpucnn imports the "
                            f"standard ONNX operators only")
        ins = node.inputs
        live = [n in out.shapes for n in ins]
        v = [out.consts.get(n) if n else None for n in ins]
        missing = [n for n, lv, c in zip(ins, live, v) if n and not lv and c is None]
        if missing and missing[0] in out.extra:
            raise OnnxError(f"{node} uses {missing[0]!r}, the second output of "
                            f"{out.extra[missing[0]]}; gpucnn imports only first outputs "
                            f"(MaxPool's Indices count otherwise than its switches)")
        if missing:
            raise OnnxError(f"{node}: input {missing[0]!r} is produced by no node before it")
        if node.op == "If":
            if live[0] or v[0] is None:
                raise OnnxError(f"{node}: an If on a value computed from the input; gpucnn "
                                f"imports graphs whose branches are fixed by shapes")
            branch = node.attrs["then_branch" if bool(v[0].reshape(-1)[0]) else "else_branch"]
            if depth > 8:
                raise OnnxError(f"{node}: If nested more than 8 deep")
            _walk(branch.node, out, depth + 1)
            for o, bo in zip(node.outputs, branch.output):
                _alias(o, bo.name, out, node)
            continue
        folding = not any(live) or node.op == "Shape"
        try:
            result = (_fold(node, v, out.shapes) if folding else
                      _live_shape(node, [out.shapes.get(n) for n in ins], v))
        except OnnxError:
            raise
        except (ValueError, IndexError, TypeError, KeyError, OverflowError,
                ZeroDivisionError) as exc:  # attributes or operands no exporter writes
            raise OnnxError(f"{node}: invalid: {type(exc).__name__}: {exc}") from None
        if result is None:
            raise OnnxError(f"{node}: an operator on constants that gpucnn does not fold"
                            if folding else f"{node} is not supported: {SUPPORTED_TEXT}")
        if folding:
            out.consts[node.outputs[0]] = result
            continue
        out.shapes[node.outputs[0]] = result
        out.extra.update({o: node for o in node.outputs[1:] if o})
        out.live.append(node)


def _alias(name, source, out, node):
    """``name`` (an If's output) is ``source`` (its branch's)."""
    if source in out.consts:
        out.consts[name] = out.consts[source]
    else:
        ident = Node.__new__(Node)
        ident.name, ident.op, ident.domain = node.name, "Identity", ""
        ident.inputs, ident.outputs, ident.attrs = [source], [name], {}
        out.shapes[name] = out.shapes[source]
        out.live.append(ident)


SUPPORTED_TEXT = ("gpucnn imports chains of Conv, MaxPool, AveragePool, LpPool, LRN, Gemm "
                  "(or MatMul + Add), Relu, Flatten, Reshape (to flatten), Dropout, Identity and "
                  "a final Softmax, plus the subgraphs torch.onnx.export emits for "
                  "LocalResponseNorm and LPPool2d")
