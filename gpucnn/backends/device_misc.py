"""MiscKernels: the device backend's non-GEMM ops, each a launch of kernels in ``kernels/``.

pool.cu (max/avg pooling), activation.cu (ReLU, dropout), loss.cu (softmax cross-entropy),
lrn.cu (local response normalisation), optim.cu (SGD, Adam). A mixin for
:class:`~gpucnn.backends.device.DeviceBackend`: it relies on ``self.kernel(name)``,
``self.empty(shape, dtype)``, ``self.xp`` and ``self.max_blocks``. Arguments arrive already
checked by :class:`~gpucnn.backends.base.Backend`; the semantics are documented there.

Launch geometry lives in two helpers, :meth:`MiscKernels._launch_1d` (grid-stride over
elements) and :meth:`MiscKernels._launch_rows` (one block per row), and nowhere else.
Scalars are passed as np.int32 / np.uint32 / np.float32 matching each kernel's C types.
"""
from __future__ import annotations

import numpy as np

from .base import adam_bias_corrections, dropout_threshold
from .launch import grid_1d

__all__ = ["MiscKernels", "XENT_THREADS"]

# Threads per block of the softmax-xent reduction kernels: must equal XENT_THREADS in
# kernels/loss.cu (their shared-memory trees are sized by it).
XENT_THREADS = 128

_INT32_MAX = 2**31 - 1


def _pool_args(g):
    """The geometry arguments shared by every pooling kernel, in their C order."""
    return tuple(np.int32(v) for v in (g.N, g.C, g.H, g.W, g.Ho, g.Wo,
                                       g.kh, g.kw, g.sh, g.sw, g.ph, g.pw))


class MiscKernels:
    # ---- launch geometry ------------------------------------------------------------------
    def _launch_1d(self, name, n, *args):
        """Launch the grid-stride kernel ``name`` over ``n`` elements."""
        grid, block = grid_1d(n, self.max_blocks)
        if n + grid[0] * block[0] > _INT32_MAX:
            # The kernels index with int32 (including the last grid-stride increment).
            raise ValueError(f"{name}: {n} elements is too many for the device kernels "
                             f"(at most about 2^31)")
        self.kernel(name)(grid, block, args)

    def _launch_rows(self, name, rows, *args):
        """Launch ``name`` with one XENT_THREADS-thread block per row (block-stride over
        rows); ``rows == 0`` still launches one block, which then does nothing."""
        grid = (max(1, min(int(rows), self.max_blocks)), 1, 1)
        self.kernel(name)(grid, (XENT_THREADS, 1, 1), args)

    def _labels_int32(self, labels):
        return labels if labels.dtype == np.int32 else labels.astype(np.int32)

    # ---- pooling --------------------------------------------------------------------------
    def _max_pool2d(self, x, g):
        y = self.empty(g.y_shape, np.float32)
        switches = self.empty(g.y_shape, np.int32)
        self._launch_1d("max_pool2d_forward", y.size, x, y, switches, *_pool_args(g))
        return y, switches

    def _max_pool2d_backward(self, dy, switches, g):
        dx = self.empty(g.x_shape, np.float32)
        self._launch_1d("max_pool2d_backward", dx.size, dy, switches, dx, *_pool_args(g))
        return dx

    def _avg_pool2d(self, x, g):
        y = self.empty(g.y_shape, np.float32)
        self._launch_1d("avg_pool2d_forward", y.size, x, y, *_pool_args(g))
        return y

    def _avg_pool2d_backward(self, dy, g):
        dx = self.empty(g.x_shape, np.float32)
        self._launch_1d("avg_pool2d_backward", dx.size, dy, dx, *_pool_args(g))
        return dx

    # ---- activations ----------------------------------------------------------------------
    def _relu(self, x):
        y = self.empty(x.shape, np.float32)
        self._launch_1d("relu_forward", x.size, x, y, np.int32(x.size))
        return y

    def _relu_backward(self, dy, y):
        dx = self.empty(y.shape, np.float32)
        self._launch_1d("relu_backward", y.size, dy, y, dx, np.int32(y.size))
        return dx

    def _dropout(self, x, p, seed):
        y = self.empty(x.shape, np.float32)
        mask = self.empty(x.shape, np.float32)
        keep_scale = np.float32(1.0 / (1.0 - p))
        self._launch_1d("dropout_forward", x.size, x, y, mask, np.int32(x.size),
                        np.uint32(seed), np.uint32(dropout_threshold(p)), keep_scale)
        return y, mask

    def _dropout_backward(self, dy, mask):
        dx = self.empty(mask.shape, np.float32)
        self._launch_1d("dropout_backward", mask.size, dy, mask, dx, np.int32(mask.size))
        return dx

    # ---- loss -----------------------------------------------------------------------------
    def _softmax_cross_entropy(self, logits, labels):
        N, K = logits.shape
        labels = self._labels_int32(labels)
        probs = self.empty((N, K), np.float32)
        row_loss = self.empty((N,), np.float32)
        loss = self.empty((), np.float32)
        self._launch_rows("softmax_xent_forward", N, logits, labels, probs, row_loss,
                          np.int32(N), np.int32(K))
        self.kernel("softmax_xent_mean")((1, 1, 1), (XENT_THREADS, 1, 1),
                                         (row_loss, loss, np.int32(N)))
        return loss, probs

    def _softmax_cross_entropy_backward(self, probs, labels):
        N, K = probs.shape
        labels = self._labels_int32(labels)
        dlogits = self.empty((N, K), np.float32)
        self._launch_1d("softmax_xent_backward", probs.size, probs, labels, dlogits,
                        np.int32(N), np.int32(K))
        return dlogits

    # ---- local response normalisation -----------------------------------------------------
    def _local_response_norm(self, x, size, alpha, beta, k):
        N, C, H, W = x.shape
        y = self.empty(x.shape, np.float32)
        scale = self.empty(x.shape, np.float32)
        self._launch_1d("lrn_forward", x.size, x, y, scale,
                        np.int32(N), np.int32(C), np.int32(H), np.int32(W), np.int32(size),
                        np.float32(alpha / size), np.float32(beta), np.float32(k))
        return y, scale

    def _local_response_norm_backward(self, dy, x, y, scale, size, alpha, beta, k):
        # k is already folded into scale.
        N, C, H, W = x.shape
        dx = self.empty(x.shape, np.float32)
        self._launch_1d("lrn_backward", x.size, dy, x, y, scale, dx,
                        np.int32(N), np.int32(C), np.int32(H), np.int32(W), np.int32(size),
                        np.float32(beta), np.float32(2.0 * alpha * beta / size))
        return dx

    # ---- optimiser updates (in place) -----------------------------------------------------
    def _sgd_update(self, param, grad, velocity, lr, momentum, weight_decay, nesterov):
        self._launch_1d("sgd_update", param.size, param, grad, velocity, np.int32(param.size),
                        np.float32(lr), np.float32(momentum), np.float32(weight_decay),
                        np.int32(1 if nesterov else 0))

    def _adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
        bias1, bias2_sqrt = adam_bias_corrections(beta1, beta2, step)
        self._launch_1d("adam_update", param.size, param, grad, m, v, np.int32(param.size),
                        np.float32(lr / bias1), np.float32(beta1), np.float32(1.0 - beta1),
                        np.float32(beta2), np.float32(1.0 - beta2), np.float32(eps),
                        np.float32(weight_decay), np.float32(bias2_sqrt))
