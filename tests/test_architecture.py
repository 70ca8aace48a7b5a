"""The layout rules of gpucnn/ (issue 7): dependencies point one way, no import cycles (lazy
imports inside functions count), small files, and tests that use public or op-level names.

The import graph is read from the source with ``ast`` (nothing is imported), so a cycle hidden
behind a function-level import is found as well.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "gpucnn"

# Lower layers never import higher ones: toolchain -> ops -> backends -> nn -> models -> train
# -> bench -> cli. Leaves (rank 0) import nothing of gpucnn outside their own subpackage.
RANKS = {
    "gpucnn.filerules": -1,  # the reading rules: below every loader, imports nothing of gpucnn
    "gpucnn.outputs": -1,  # the output-file rules of every command: the standard library only
    "gpucnn.toolchain": 0, "gpucnn.cpu": 0, "gpucnn.data": 0, "gpucnn.checkpoint": 0,
    "gpucnn.argtypes": 0, "gpucnn.testing": 0, "gpucnn.membudget": 0,
    "gpucnn.ops": 1,
    "gpucnn.backends": 2, "gpucnn": 2,  # the root package re-exports get_backend
    "gpucnn.nn": 3, "gpucnn.optim": 3,
    "gpucnn.modelfile": 3.5,  # model files: read with filerules, built from nn; models uses it
    "gpucnn.models": 4, "gpucnn.summary": 4, "gpucnn.pictures": 4,
    "gpucnn.runsafety": 4.5, "gpucnn.runmeta": 4.5,  # below train, which imports them
    "gpucnn.runstate": 4.5,
    "gpucnn.onnx": 4.5,
    "gpucnn.predict": 4.6,  # class probabilities and dense maps of images, for a built net  # ONNX export/import: builds nn layers, reads through filerules
    "gpucnn.train_checkpoint": 4.75, "gpucnn.train_graph": 4.75, "gpucnn.train_data": 4.75, "gpucnn.train_inputs": 4.75,  # train's checkpoint I/O: uses the three above
    "gpucnn.train": 5,
    "gpucnn.distributed": 5.5,  # gpucnn train --distributed: a Trainer per MPI rank
    "gpucnn.bench": 6,
    "gpucnn.verify": 6.5,  # uses bench.env (equal ranks may not import each other); cli uses it
    "gpucnn.saved": 6.6,  # a checkpoint's or an .onnx file's model, via verify's checked reader
    "gpucnn.cli_saved": 6.8,  # export, show, predict: the cli imports it
    "gpucnn.cli": 7, "gpucnn.kernel_report": 7, "gpucnn.__main__": 8,
}
MAX_LINES = 500
LARGE_OK = set()  # files exempt from MAX_LINES: none


def _modules():
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _imports(mod, is_pkg, node, mods):
    """The gpucnn modules an import statement loads (a package only when a name is taken
    from the package itself, not when every name is one of its submodules)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if node.level:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module
    subs = {f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in mods}
    return subs if len(subs) == len(node.names) else subs | {prefix}


def import_graph():
    mods = _modules()
    graph = {}
    for mod, (path, is_pkg) in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= {d for d in _imports(mod, is_pkg, node, mods) if d in mods and d != mod}
        graph[mod] = deps
    return graph


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _group(mod):
    """The RANKS entry a module belongs to (its longest listed prefix)."""
    best = max((k for k in RANKS if mod == k or mod.startswith(k + ".")), key=len, default=None)
    assert best is not None, f"{mod} has no layer in tests/test_architecture.py RANKS"
    return best


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_dependencies_point_one_way():
    bad = []
    for mod, deps in import_graph().items():
        g = _group(mod)
        for dep in deps:
            h = _group(dep)
            if RANKS[h] > RANKS[g] or (RANKS[h] == RANKS[g] and h != g and g != "gpucnn"):
                bad.append(f"{mod} (layer {RANKS[g]}) imports {dep} (layer {RANKS[h]})")
    assert not bad, "\n".join(sorted(bad))


def test_toolchain_is_a_leaf():
    for mod, deps in import_graph().items():
        if mod.startswith("gpucnn.toolchain"):
            assert all(d.startswith("gpucnn.toolchain") or d == "gpucnn.outputs"
                       for d in deps), (mod, deps)


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in PKG.rglob("*.py")))
def test_source_files_stay_small(path):
    if path in LARGE_OK:
        return
    lines = (ROOT / path).read_text().count("\n")
    assert lines <= MAX_LINES, f"{path} has {lines} lines (split it: at most {MAX_LINES})"


def test_tests_use_public_names():
    """Tests import no ``_private`` name from gpucnn and call none on a gpucnn module."""
    bad = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gpucnn"):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        bad.append(f"{path.name}: from {node.module} import {a.name}")
                    modules.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                modules |= {a.asname or a.name for a in node.names if a.name.startswith("gpucnn")}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                    and node.value.id in modules):
                bad.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


# ---- the narrow backend (issue 16): ops own their dispatch ---------------------------------
# What a backend class may define: its arrays, its context and limits, one way to run an op
# (plan), the checks the ops call, and the convolution-algorithm bookkeeping. The functional
# API (B.conv2d, ...) is the ops' own entry points (gpucnn/ops/dispatch.py), never a method
# written on a backend.
BACKEND_API = {
    "__init__", "asarray", "to_numpy", "zeros", "empty", "synchronize", "on_device",
    "raise_device_errors", "describe", "plan", "forget_plans", "check", "check_array",
    "capture", "_refuse_in_capture",
    "_refuse", "check_labels", "conv_selector", "conv_algorithms", "set_conv_algorithms",
    "conv_policy", "threads", "workspace_bytes", "max_blocks", "dw_target_blocks", "use_cublas",
    "use_precision",
}


def _backend_classes():
    for path in sorted((PKG / "backends").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith("Backend")
                    for b in node.bases) or (isinstance(node, ast.ClassDef)
                                             and node.name == "Backend"):
                yield path, node


def test_backends_define_no_op_methods():
    from gpucnn.ops.dispatch import API
    classes = list(_backend_classes())
    assert {n.name for _, n in classes} >= {"Backend", "DeviceBackend", "NumpyBackend",
                                            "ReferenceBackend"}
    bad = []
    for path, cls in classes:
        for item in cls.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = item.name
                if name not in BACKEND_API or name.lstrip("_") in API:
                    bad.append(f"{path.relative_to(ROOT)}: {cls.name}.{name}")
    assert not bad, ("backend classes define methods beyond the narrow API (an op's entry "
                     "point belongs in its gpucnn/ops module):\n" + "\n".join(bad))


def test_every_op_entry_point_is_a_backend_method():
    from gpucnn.backends.base import Backend
    from gpucnn.ops.dispatch import API
    assert len(API) >= 20
    for name, fn in API.items():
        assert getattr(Backend, name) is fn, name
