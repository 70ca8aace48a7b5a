"""Every op module with entry points, imported once so that their ``@api`` registrations
exist, then installed as the methods of :class:`~gpucnn.ops.dispatch.FunctionalAPI` (the base
of every backend). Adding an op module means adding it here."""
from __future__ import annotations

from . import activation, cast, data, linear, loss, lrn, optim
from .conv import api as conv_api
from .dispatch import API, FunctionalAPI
from .pool import api as pool_api

__all__ = ["MODULES", "API"]

MODULES = (conv_api, pool_api, activation, cast, data, linear, loss, lrn, optim)

FunctionalAPI.install()
