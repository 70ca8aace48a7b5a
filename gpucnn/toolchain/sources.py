"""Where gpucnn's kernel sources are, and what they declare, read once per process.

The ``.cu`` file owns each of its constants: Python reads tile sizes and block sizes from
here (:func:`source_defines`, :func:`kernel_block`) instead of retyping them.
"""
from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .includes import with_local_headers
from .parse import int_defines, parse_kernel_decls, parse_kernels

__all__ = ["kernel_dir", "kernel_sources", "source_text", "source_with_headers", "source_defines",
           "kernel_decls", "kernel_block", "kernel_signatures"]


def kernel_dir() -> Path:
    """Where the .cu files are: ``$GPUCNN_KERNELS`` if set, else the installed
    ``gpucnn.kernels`` package, else the checkout. The override exists because an editable
    install maps ``gpucnn.kernels`` to one fixed checkout: a second worktree of the repository
    run with ``PYTHONPATH`` would otherwise compile and test the first one's kernels."""
    override = os.environ.get("GPUCNN_KERNELS")
    if override:
        d = Path(override).resolve()
        if not any(d.glob("*.cu")):
            raise FileNotFoundError(f"GPUCNN_KERNELS={override}: no .cu files there")
        return d
    try:
        d = Path(str(resources.files("gpucnn.kernels")))
        if any(d.glob("*.cu")):
            return d
    except (ModuleNotFoundError, TypeError):
        pass
    d = Path(__file__).resolve().parents[2] / "kernels"
    if any(d.glob("*.cu")):
        return d
    raise FileNotFoundError("gpucnn's CUDA sources (kernels/*.cu) were not found: the package "
                            "install is incomplete (expected package data gpucnn/kernels/*.cu)")


def kernel_sources():
    """Sorted paths of every kernel source file."""
    return sorted(kernel_dir().glob("*.cu"))


@lru_cache(maxsize=None)
def source_text(name: str) -> str:
    """The text of ``kernels/<name>`` (``"sgemm.cu"``)."""
    path = kernel_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"no kernel source {name} in {kernel_dir()}")
    return path.read_text()


def source_with_headers(name: str) -> str:
    """The text of ``kernels/<name>`` followed by the kernel-folder headers it includes
    (:func:`~.parse.with_local_headers`): what its macros and #defines are read from."""
    return with_local_headers(source_text(name), [kernel_dir()])


@lru_cache(maxsize=None)
def _defines(name):
    return int_defines(source_with_headers(name))


def source_defines(name: str, prefix: str) -> dict:
    """``{NAME: int}`` for every ``#define PREFIX_NAME <integer>`` of ``kernels/<name>``:
    ``source_defines("sgemm.cu", "SGEMM") -> {"BM": 64, ...}``."""
    p = prefix + "_"
    return {k[len(p):]: v for k, v in _defines(name).items() if k.startswith(p)}


@lru_cache(maxsize=None)
def _all_decls():
    decls = {}
    for path in kernel_sources():
        file_decls, _problems = parse_kernel_decls(source_with_headers(path.name), path.name)
        for k, d in file_decls.items():
            if k in decls and decls[k].file != d.file:
                raise ValueError(f"kernel {k} is declared in both {decls[k].file} and {d.file}")
            decls[k] = d
    return decls


def kernel_decls() -> dict:
    """``{kernel_name: KernelDecl}`` over every kernel source (budgets of the annotations)."""
    return dict(_all_decls())


def kernel_block(kernel: str) -> int:
    """Threads per block that ``kernel`` is launched with: the ``block=`` of its
    ``// gpucnn:`` annotation (the compile gates check its registers at that size)."""
    d = _all_decls().get(kernel)
    if d is None:
        raise KeyError(f"kernel {kernel!r} is not declared in any of {kernel_dir()}/*.cu")
    if not d.block_annotated:
        raise KeyError(f"kernel {kernel!r} ({d.file}:{d.line}) has no block= in a "
                       f"'// gpucnn:' annotation")
    return d.block


@lru_cache(maxsize=None)
def _signatures():
    sigs, where = {}, {}
    for path in kernel_sources():
        try:
            kernels = parse_kernels(source_with_headers(path.name))
        except ValueError as exc:
            raise ValueError(f"{path.name}: {exc}") from exc
        for k, params in kernels.items():
            if k in where:
                raise ValueError(f"kernel {k} is defined in both {where[k]} and {path.name}")
            sigs[k], where[k] = params, path.name
    return sigs


def kernel_signatures() -> dict:
    """``{kernel_name: [Param, ...]}`` over every kernel source (kernel names are unique
    across files)."""
    return dict(_signatures())
