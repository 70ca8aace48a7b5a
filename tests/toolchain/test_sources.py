"""gpucnn.toolchain.sources: the kernel sources and what Python reads from them, and the
toolchain's place as a leaf of the package."""
import ast
import sys
from pathlib import Path

import pytest

import gpucnn.toolchain as toolchain
from gpucnn.toolchain import (kernel_block, kernel_decls, kernel_dir, kernel_signatures,
                              kernel_sources, source_defines)
from gpucnn.toolchain.includes import with_local_headers
from gpucnn.toolchain.parse import int_defines, parse_kernels


def test_kernel_sources():
    srcs = kernel_sources()
    assert srcs == sorted(srcs) and {"sgemm.cu", "pool.cu"} <= {p.name for p in srcs}
    assert all(p.parent == kernel_dir() for p in srcs)


def test_source_defines():
    t = source_defines("sgemm.cu", "SGEMM")
    assert {"BM", "BN", "BK", "TM", "TN", "THREADS"} <= set(t)
    assert (t["BM"] // t["TM"]) * (t["BN"] // t["TN"]) == t["THREADS"]
    text = (kernel_dir() / "sgemm.cu").read_text()
    assert t == {k[len("SGEMM_"):]: v for k, v in int_defines(text).items()
                 if k.startswith("SGEMM_")}
    assert source_defines("sgemm.cu", "NO_SUCH_PREFIX") == {}
    with pytest.raises(FileNotFoundError):
        source_defines("missing.cu", "X")


def test_kernel_block():
    assert kernel_block("max_pool2d_forward") == 256
    decls = kernel_decls()
    for name, d in decls.items():
        if d.block_annotated:
            assert kernel_block(name) == d.block
    with pytest.raises(KeyError, match="no_such_kernel"):
        kernel_block("no_such_kernel")


def test_kernel_signatures_cover_every_source():
    sigs = kernel_signatures()
    for src in kernel_sources():
        for name, params in parse_kernels(with_local_headers(src.read_text(),
                                                             [src.parent])).items():
            assert sigs[name] == params
    p = sigs["max_pool2d_forward"]
    assert p and all(q.dtype is not None or q.base == "void" for q in p)


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((a.name, 0) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level


def test_toolchain_is_a_leaf():
    """Only the standard library, NumPy and the toolchain's own modules: the runtime reads
    from the toolchain, never the reverse."""
    folder = Path(toolchain.__file__).parent
    allowed = set(sys.stdlib_module_names) | {"numpy"}
    for path in sorted(folder.glob("*.py")):
        for module, level in _imports(path):
            top = module.split(".")[0]
            if level:   # gpucnn.outputs (the output-file rules) is a stdlib-only leaf too
                assert level == 1 or (level, module) == (2, "outputs"), \
                    f"{path.name}: imports from outside gpucnn.toolchain"
            else:
                assert top in allowed, f"{path.name}: imports {module}"
