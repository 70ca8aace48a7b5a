"""Errors of backend selection (a leaf module, so backends can raise them without importing
the selection code in ``__init__``)."""


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine; the message says why."""
