"""Errors of backend selection (a leaf module, so backends can raise them without importing
the selection code in ``__init__``)."""


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine; the message says why."""


class GpuUnusable(BackendUnavailable):
    """CuPy imports and a GPU is visible, but gpucnn cannot use it (a library CuPy needs is
    missing, the kernels do not compile, ...): ``auto`` warns loudly instead of quietly
    falling back. The message names the cause and the command that fixes it."""


class GpuUnusableWarning(RuntimeWarning):
    """``auto`` fell back to the CPU although a GPU is present (the message says why)."""
