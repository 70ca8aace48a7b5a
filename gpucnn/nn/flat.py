"""Parameters and gradients as views into one contiguous buffer each.

A model's parameters (:class:`FlatParameters`, made by ``Sequential.bind``) live in one flat
array and their gradients in another, each parameter's ``data`` and ``grad_view`` a C-order
view of its slice, in ``named_parameters()`` order. The backward ops write each weight's
gradient straight into its view, and the optimisers keep their state in flat buffers of the
same layout, so one update launch covers every parameter (and one all-reduce, for data
parallel training, every gradient). Names, shapes, checkpoints and results are unchanged:
the update is elementwise, the same arithmetic per element as one launch per parameter.

A parameter whose ``data`` is replaced by another array (``load_state_dict`` copies into the
view instead; a user or ``gpucnn verify`` may assign one) is no longer backed by the buffer:
its layer then lets the op allocate its gradient, and the optimisers, which check that every
parameter is still its view, fall back to one update per parameter.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["FlatParameters"]


class FlatParameters:
    """``data`` and ``grad``: flat buffers on ``backend`` holding ``params`` (all of one
    dtype: :meth:`of` says whether they can be)."""

    @classmethod
    def of(cls, backend, params):
        """The flat buffers of ``params``, or None when there are none or their dtypes
        differ (then each parameter keeps its own arrays)."""
        params = list(params)
        if not params or len({p.data.dtype for p in params}) != 1:
            return None
        return cls(backend, params)

    def __init__(self, backend, params):
        self.params = list(params)
        self.dtype = np.dtype(self.params[0].data.dtype)
        self.slices, start = [], 0
        for p in self.params:
            n = math.prod(p.data.shape)
            self.slices.append((start, start + n, tuple(p.data.shape)))
            start += n
        self.size = start
        self.data = backend.zeros((start,), self.dtype)
        self.grad = backend.zeros((start,), self.dtype)
        for p, view, gview in zip(self.params, self.views(self.data), self.views(self.grad)):
            view[...] = p.data
            p.data = p.data_view = view
            p.grad_view = gview
            p.grad = None
            p.flat = self

    def views(self, flat):
        """Per-parameter views into ``flat`` (a buffer of this layout: data, grads, state)."""
        return [flat[a:b].reshape(shape) for a, b, shape in self.slices]

    def intact_list(self, params):
        """Whether ``params`` are exactly this buffer's parameters, in order."""
        return len(params) == len(self.params) and all(p is q for p, q in zip(params,
                                                                              self.params))

    def intact(self, params):
        """Whether ``params`` are exactly this buffer's, in order, each still its view and
        with its gradient in its gradient view (then one update over the buffers does what
        one update per parameter would)."""
        return self.intact_list(params) and all(p.data is p.data_view and p.grad is p.grad_view
                                                for p in params)
