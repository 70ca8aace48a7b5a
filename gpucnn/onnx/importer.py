"""The second pass of the importer: the nodes that depend on the input, walked from the input
to the output as a chain, each run of nodes mapped onto one gpucnn layer (a node, or the
subgraph torch's exporters emit for LocalResponseNorm and LPPool2d). Every layer's output
shape is checked against the shape the graph gives that node, and every node must be used:
anything else is an error naming the node, never a different model."""
from __future__ import annotations

import math

import numpy as np

from ..nn import (AvgPool2d, Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, LPPool2d,
                  MaxPool2d, ReLU)
from .graph import SUPPORTED_TEXT
from .reader import OnnxError

__all__ = ["Step", "chain_layers"]


class Step:
    """One layer built from ``nodes``, with its parameters {name: array} and the ONNX names
    they came from."""

    def __init__(self, layer, nodes, params=None, sources=None):
        self.layer, self.nodes = layer, nodes
        self.params, self.sources = params or {}, sources or {}


def _f32(v):
    """A float the file holds as float32, as its shortest decimal (0.3, not 0.30000001...):
    the value the exporting program was given."""
    return float(str(np.float32(v)))


def _pair(values, node, what):
    values = list(values)
    if len(values) != 2:
        raise OnnxError(f"{node}: {what} {values}: gpucnn imports 2-D (image) operators only")
    return tuple(int(v) for v in values)


def _sym_pads(node, pads):
    """(top, left) of ONNX pads [top, left, bottom, right], which must be symmetric."""
    pads = [int(p) for p in (pads or [0, 0, 0, 0])]
    if len(pads) != 4 or pads[:2] != pads[2:]:
        raise OnnxError(f"{node}: pads {pads} are not symmetric; gpucnn's layers pad both "
                        f"sides alike")
    return tuple(pads[:2])


class _Chain:
    def __init__(self, graph):
        self.g = graph
        self.consumers = {}
        for n in graph.live:
            for name in set(n.inputs):
                if name in graph.shapes:
                    self.consumers.setdefault(name, []).append(n)
        self.used = set()

    # -- helpers --------------------------------------------------------------------------
    def const(self, node, i, what="input"):
        name = node.inputs[i] if i < len(node.inputs) else ""
        if name not in self.g.consts:
            raise OnnxError(f"{node}: its {what} must be a constant (an initialiser)")
        return self.g.consts[name]

    def scalar(self, node, x):
        """The constant operand of a binary node whose other operand is ``x``."""
        others = [n for n in node.inputs if n != x]
        if len(others) != 1 or others[0] not in self.g.consts or \
                self.g.consts[others[0]].size != 1:
            raise OnnxError(f"{node}: expected {node.op} of the value {x!r} by a constant "
                            f"scalar")
        return _f32(self.g.consts[others[0]].reshape(-1)[0])

    def only(self, value, want=None):
        """The one node consuming ``value`` (of op type ``want``)."""
        cons = self.consumers.get(value, [])
        if len(cons) != 1:
            raise OnnxError(self._fork_message(value, cons))
        if want and cons[0].op not in want:
            raise OnnxError(f"{cons[0]}: expected {' or '.join(want)} here: {SUPPORTED_TEXT}")
        return cons[0]

    def _fork_message(self, value, cons):
        if not cons:
            return f"the value {value!r} leads nowhere before the output"
        join = next((n for n in cons if sum(i in self.g.shapes for i in n.inputs) > 1), cons[-1])
        return (f"{join} is not supported: the value {value!r} feeds "
                f"{', '.join(str(n) for n in cons)} (a branch, not a chain); {SUPPORTED_TEXT}")

    def shape(self, value):
        return self.g.shapes[value][1:]  # per sample

    # -- the walk -------------------------------------------------------------------------
    def walk(self):
        steps, x, softmax = [], self.g.input, False
        while x != self.g.output:
            cons = self.consumers.get(x, [])
            if sorted(n.op for n in cons) == ["Div", "Mul"]:
                step, x_out = self._lrn(x, cons)
                self._check_shape(step, x, x_out)
                x = x_out
            elif len(cons) == 1 and cons[0].op == "Softmax" and cons[0].outputs[0] == self.g.output:
                node = cons[0]
                if node.attrs.get("axis", -1) not in (1, -1) or len(self.shape(x)) != 1:
                    raise OnnxError(f"{node}: a Softmax over other than the class axis")
                self.used.add(node)
                x, softmax = node.outputs[0], True
                continue
            else:
                node = self.only(x)
                try:
                    step, x_out = (self._lp_pool if node.op == "Pow" else self._single)(x, node)
                except OnnxError:
                    raise
                except (ValueError, TypeError) as exc:  # a layer refusing its options
                    raise OnnxError(f"{node}: {exc}") from None
                self._check_shape(step, x, x_out)
                x = x_out
            self.used.update(step.nodes)
            if step.layer is not None:
                steps.append(step)
        left = [n for n in self.g.live if n not in self.used]
        if left:
            raise OnnxError(f"{left[0]} is not on the chain from the input to the output; "
                            f"{SUPPORTED_TEXT}")
        return steps, softmax

    def _check_shape(self, step, x, out):
        """The layer computes the shape the graph says the node computes (ceil_mode pools:
        ONNX and PyTorch disagree on a last window starting in the padding)."""
        if step.layer is None:
            return
        got = tuple(step.layer.output_shape(self.shape(x)))
        if got != self.shape(out):
            raise OnnxError(f"{step.nodes[0]}: gpucnn's {step.layer!r} gives {got} per sample "
                            f"where the graph's node gives {self.shape(out)}; refused")

    def _single(self, x, node):
        op, a, out = node.op, node.attrs, node.outputs[0]
        if op == "Conv":
            w = self.const(node, 1, "weight")
            if w.ndim != 4:
                raise OnnxError(f"{node}: a {w.ndim - 2}-D convolution; gpucnn imports 2-D ones")
            groups = int(a.get("group", 1))
            b = self.const(node, 2, "bias") if len(node.inputs) > 2 and node.inputs[2] else None
            layer = Conv2d(self.shape(x)[0], w.shape[0], w.shape[2:],
                           stride=_pair(a.get("strides", [1, 1]), node, "strides"),
                           padding=_sym_pads(node, a.get("pads")),
                           dilation=_pair(a.get("dilations", [1, 1]), node, "dilations"),
                           groups=groups, bias=b is not None)
            params = {"weight": w} if b is None else {"weight": w, "bias": b}
            srcs = {"weight": node.inputs[1], **({"bias": node.inputs[2]} if b is not None else {})}
            return Step(layer, [node], params, srcs), out
        if op in ("MaxPool", "AveragePool", "LpPool"):
            return Step(self._pool(node), [node]), out
        if op == "LRN":
            size = int(a["size"])
            if size % 2 == 0:
                raise OnnxError(f"{node}: LRN of even size {size}: ONNX centres its window "
                                f"otherwise than gpucnn (and PyTorch) do; refused")
            return Step(LocalResponseNorm(size, _f32(a.get("alpha", 1e-4)),
                                          _f32(a.get("beta", 0.75)), _f32(a.get("bias", 1.0))),
                        [node]), out
        if op in ("Gemm", "MatMul"):
            return self._linear(x, node)
        if op == "Relu":
            return Step(ReLU(), [node]), out
        if op in ("Flatten", "Reshape"):
            n, rest = self.g.shapes[out][0], self.g.shapes[out][1:]
            if self.g.shapes[out] == self.g.shapes[x]:
                return Step(None, [node]), out
            if n == self.g.shapes[x][0] and rest == (math.prod(self.shape(x)),):
                return Step(Flatten(), [node]), out
            raise OnnxError(f"{node}: reshapes {self.g.shapes[x]} to {self.g.shapes[out]}; "
                            f"gpucnn imports a reshape only as a flatten to (batch, features)")
        if op == "Identity":
            return Step(None, [node]), out
        if op == "Dropout":
            p = _f32(self.const(node, 1, "ratio").reshape(-1)[0]) \
                if len(node.inputs) > 1 and node.inputs[1] else _f32(a.get("ratio", 0.5))
            if len(node.inputs) > 2 and node.inputs[2] and \
                    bool(self.const(node, 2, "training_mode").reshape(-1)[0]):
                raise OnnxError(f"{node}: a Dropout in training mode")
            return Step(Dropout(p), [node]), out
        raise OnnxError(f"{node} is not supported: {SUPPORTED_TEXT}")

    def _pool(self, node):
        a = node.attrs
        k = _pair(a["kernel_shape"], node, "kernel_shape")
        s = _pair(a.get("strides", [1, 1]), node, "strides")
        pad = _sym_pads(node, a.get("pads"))
        d = _pair(a.get("dilations", [1, 1]), node, "dilations")
        ceil = bool(a.get("ceil_mode", 0))
        if node.op == "MaxPool":
            if a.get("storage_order", 0):
                raise OnnxError(f"{node}: storage_order=1 (column-major indices) is not supported")
            return MaxPool2d(k, s, pad, dilation=d, ceil_mode=ceil)
        if d != (1, 1):
            raise OnnxError(f"{node}: a dilated {node.op}; gpucnn's has no dilation")
        if node.op == "AveragePool":
            return AvgPool2d(k, s, pad, ceil_mode=ceil,
                             count_include_pad=bool(a.get("count_include_pad", 0)))
        p = a.get("p", 2)
        if p % 2 or pad != (0, 0):
            raise OnnxError(f"{node}: LpPool with p={p}, pads {pad}: ONNX's sums |x|^p, "
                            f"gpucnn's x^p without padding; only an even p without pads "
                            f"is the same")
        if ceil:
            raise OnnxError(f"{node}: LpPool with ceil_mode: gpucnn (as PyTorch) scales a "
                            f"partial window to the kernel's area, ONNX does not")
        return LPPool2d(p, k, s)

    def _linear(self, x, node):
        a = node.attrs
        if len(self.shape(x)) != 1:
            raise OnnxError(f"{node}: {node.op} of a {len(self.shape(x)) + 1}-D value; gpucnn "
                            f"imports it on (batch, features) only")
        w = self.const(node, 1, "weight")
        nodes, out, bias, bias_src = [node], node.outputs[0], None, None
        if node.op == "Gemm":
            if a.get("transA", 0):
                raise OnnxError(f"{node}: Gemm with transA=1")
            w = (w if a.get("transB", 0) else w.T) * a.get("alpha", 1.0)
            if len(node.inputs) > 2 and node.inputs[2]:
                bias, bias_src = self.const(node, 2, "bias C") * a.get("beta", 1.0), node.inputs[2]
        else:
            w = w.T
            nxt = self.consumers.get(out, [])
            if len(nxt) == 1 and nxt[0].op == "Add":
                add = nxt[0]
                other = [n for n in add.inputs if n != out]
                if len(other) == 1 and other[0] in self.g.consts:
                    bias, bias_src, out = self.g.consts[other[0]], other[0], add.outputs[0]
                    nodes.append(add)
        f_out, f_in = w.shape
        params, srcs = {"weight": w}, {"weight": node.inputs[1]}
        if bias is not None:
            try:
                params["bias"] = np.broadcast_to(bias, (1, f_out)).reshape(f_out)
            except ValueError:
                raise OnnxError(f"{node}: its bias of shape {bias.shape} is not one per "
                                f"output feature ({f_out})") from None
            srcs["bias"] = bias_src
        return Step(Linear(f_in, f_out, bias=bias is not None), nodes, params, srcs), out

    def _lrn(self, x, cons):
        """torch's LocalResponseNorm: x / (k + alpha * avg_pool3d(pad(x*x)))^beta, the pool
        running over the channels of a (N, 1, C, H, W) view."""
        mul = next(n for n in cons if n.op == "Mul")
        div = next(n for n in cons if n.op == "Div")
        if mul.inputs != [x, x] or div.inputs[0] != x:
            raise OnnxError(f"{mul}, {div}: not the LocalResponseNorm pattern torch exports")
        nodes, v, stage, found = [mul, div], mul.outputs[0], 0, {}
        while v != div.inputs[1]:
            n = self.only(v)
            nodes.append(n)
            if len(nodes) > 64:
                break
            if n.op in ("Reshape", "Unsqueeze", "Squeeze", "Identity"):
                if stage not in (0, 2):
                    break
            elif n.op == "Pad" and stage == 0:
                found["pads"] = [int(p) for p in self.const(n, 1, "pads")]
                value = self.g.consts.get(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
                if n.attrs.get("mode", "constant") != "constant" or (value is not None and value.any()):
                    break
                found["pad_in"] = self.g.shapes[v]
                stage = 1
            elif n.op == "AveragePool" and stage == 1:
                found["pool"] = n.attrs
                stage = 2
            elif n.op == {2: "Mul", 3: "Add", 4: "Pow"}.get(stage):  # alpha, k, beta
                found[n.op] = self.scalar(n, v)
                stage += 1
            else:
                break
            v = n.outputs[0]
        size = found.get("pool", {}).get("kernel_shape", [0])[0]
        c_hw = self.shape(x)
        expect = [0, 0, size // 2, 0, 0, 0, 0, (size - 1) // 2, 0, 0]
        if v != div.inputs[1] or stage != 5 or found.get("pads") != expect or \
                found.get("pad_in", ())[1:] != (1, *c_hw) or \
                list(found["pool"].get("kernel_shape", [])) != [size, 1, 1] or \
                list(found["pool"].get("strides", [1, 1, 1])) != [1, 1, 1] or \
                any(found["pool"].get("pads", [0] * 6)) or found["pool"].get("ceil_mode", 0) \
                or self.g.shapes[div.inputs[1]] != self.g.shapes[x]:
            raise OnnxError(f"{nodes[-1]}: the subgraph from {mul} to {div} is not the "
                            f"LocalResponseNorm torch exports (Mul, a (N, 1, C, H, W) view, Pad "
                            f"of the channels, AveragePool [size, 1, 1], a view back, Mul, Add, "
                            f"Pow, Div); {SUPPORTED_TEXT}")
        layer = LocalResponseNorm(size, found["Mul"], found["Pow"], found["Add"])
        return Step(layer, nodes), div.outputs[0]

    def _lp_pool(self, x, pow_node):
        """torch's LPPool2d: (sign(a) * relu(|a|) * kh * kw)^(1/p), a = avg_pool2d(x^p)."""
        p = self.scalar(pow_node, x)
        pool = self.only(pow_node.outputs[0], ("AveragePool",))
        nodes, v = [pow_node, pool], pool.outputs[0]
        cons = self.consumers.get(v, [])
        if sorted(n.op for n in cons) == ["Abs", "Sign"]:  # sign(a) * relu(|a|): a itself
            sign = next(n for n in cons if n.op == "Sign")
            relu = self.only(next(n for n in cons if n.op == "Abs").outputs[0], ("Relu",))
            mul = self.only(relu.outputs[0], ("Mul",))
            if sorted(mul.inputs) != sorted([sign.outputs[0], relu.outputs[0]]):
                raise OnnxError(f"{mul}: not the LPPool2d pattern torch exports")
            nodes += [*cons, relu, mul]
            v = mul.outputs[0]
        area = self.only(v, ("Mul",))
        root = self.only(area.outputs[0], ("Pow",))
        nodes += [area, root]
        layer = self._pool(pool)
        k = layer.kernel_size
        if layer.padding != (0, 0) or abs(self.scalar(area, v) - k[0] * k[1]) > 1e-6 or \
                abs(self.scalar(root, area.outputs[0]) * p - 1) > 1e-6:
            raise OnnxError(f"{pool}: the subgraph from {pow_node} to {root} is not the LPPool2d "
                            f"torch exports (Pow p, AveragePool, Mul by the kernel area, Pow 1/p)")
        return Step(LPPool2d(p, k, layer.stride, ceil_mode=layer.options["ceil_mode"]),
                    nodes), root.outputs[0]


def chain_layers(graph):
    """([Step, ...], whether a final Softmax was dropped) of an evaluated graph; each step's
    layer output shape is checked against the graph's."""
    chain = _Chain(graph)
    try:
        steps, softmax = chain.walk()
    except (ValueError, TypeError) as exc:  # a layer refusing the node's hyper-parameters
        if isinstance(exc, OnnxError):
            raise
        raise OnnxError(f"a node gpucnn's layer refuses: {exc}") from None
    return steps, softmax
