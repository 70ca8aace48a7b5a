"""Memory that command-line sizes imply, checked against what the machine has before any of
it is allocated: a ``--batch-size`` or ``--gemm-size`` that cannot fit is one line naming the
option, the memory it needs and the memory available -- not a MemoryError (or the OOM killer)
minutes later.

Estimates are lower bounds (the arrays a step cannot do without), so a refusal is certain;
a run that passes may still need more. A leaf module: the standard library only.
"""
from __future__ import annotations

import math
import os
import resource

__all__ = ["host_available_bytes", "free_device_bytes", "check_fits", "activation_elements",
           "format_bytes"]

_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(n) -> str:
    n = float(n)
    i = 0
    while n >= 1024 and i < len(_UNITS) - 1:
        n /= 1024
        i += 1
    return f"{n:.0f} bytes" if i == 0 else f"{n:.1f} {_UNITS[i]}"


def _cgroup_room():
    """What this process's cgroup (v2) still allows, or None."""
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((line.split("::", 1)[1].strip() for line in f
                        if line.startswith("0::")), None)
        if rel is None:
            return None
        base = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
        with open(os.path.join(base, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(base, "memory.current")) as f:
            return max(int(limit) - int(f.read().strip()), 0)
    except (OSError, ValueError, IndexError):
        return None


def host_available_bytes():
    """Host memory a new allocation can get: /proc/meminfo's MemAvailable, capped by the
    cgroup's limit and ``ulimit -v``; None when nothing can be read."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            pass
    room = _cgroup_room()
    if room is not None:
        found.append(room)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        found.append(soft)
    return min(found) if found else None


def check_fits(what: str, need: int, available, where="of host memory is available") -> None:
    """Raise ValueError ('<what> needs at least about X, but only Y <where>; ...') when
    ``need`` bytes exceed ``available`` (None: unknown, nothing is checked)."""
    if available is not None and need > available:
        raise ValueError(f"{what} needs at least about {format_bytes(need)}, but only "
                         f"{format_bytes(available)} {where}; choose a smaller value")


def activation_elements(model, input_shape=None) -> int:
    """Elements one sample's input and layer outputs take (what a training step keeps for
    its backward, and as many again for the gradients), from the layers' shapes."""
    shape = tuple(input_shape or model.input_shape)
    total = math.prod(shape)
    for layer in model.layers:
        shape = layer.output_shape(shape)
        total += math.prod(shape)
    return int(total)


def free_device_bytes(backend):
    """(free bytes or None, where): on cuda the driver's free memory plus what CuPy's pool
    holds unused (it is reused before the driver is asked); on emu and the null device, whose
    arrays are host arrays, the available host memory."""
    if backend.name == "cuda":
        xp = backend.xp
        with backend.on_device():
            free = xp.cuda.runtime.memGetInfo()[0] + xp.get_default_memory_pool().free_bytes()
        return int(free), "free on the GPU"
    return host_available_bytes(), f"of host memory available (the {backend.name} device's)"
