"""What a kernel source includes: the kernel-folder headers its macros and #defines come
from (:func:`with_local_headers`), and whether it uses tensor cores (:func:`uses_tensor_cores`)."""
from __future__ import annotations

import re
from pathlib import Path

from .parse import strip_comments

__all__ = ["with_local_headers", "uses_tensor_cores"]


_LOCAL_INCLUDE_RE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"', re.M)


def with_local_headers(text: str, folders) -> str:
    """``text`` followed by the text of every header it includes as ``#include "name"`` that
    lies in one of ``folders`` (recursively, each once): what the parsers here need to see
    the macros and integer #defines a kernel file takes from its headers. Appended, not
    inlined, so that line numbers within ``text`` stay its own (headers define no kernels)."""
    folders = [Path(f) for f in folders]
    seen, parts, todo = set(), [text], [text]
    while todo:
        for name in _LOCAL_INCLUDE_RE.findall(todo.pop()):
            path = next((f / name for f in folders if (f / name).is_file()), None)
            if path is None or name in seen:
                continue
            seen.add(name)
            body = path.read_text()
            parts.append(body)
            todo.append(body)
    return "\n".join(parts)


def uses_tensor_cores(text: str) -> bool:
    """Whether a source (with its headers, :func:`with_local_headers`) uses WMMA: it needs
    sm_80 and CUDA's mma.h, and its loads want 32-byte aligned pointers."""
    return re.search(r"\bwmma::", strip_comments(text)) is not None
