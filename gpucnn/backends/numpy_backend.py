"""The NumPy backend: the CPU reference every kernel is checked against, and the fallback.

It takes float32 (training) or float64 (the reference for equivalence tests) and computes in
the input's precision. Convolution is im2col + one GEMM per group and batch chunk; the column
matrix is laid out channel-major, ``cols[(c, i, j), (n, ho, wo)]``, so a conv is a single
``W(F, K) @ cols(K, n*Ho*Wo)`` and its result rows are whole output channels. The workspace is
bounded by ``workspace_bytes``: larger batches are processed in chunks.
"""
from __future__ import annotations

import os

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .base import Backend, adam_bias_corrections, dropout_hash, dropout_threshold

__all__ = ["NumpyBackend"]


def _pad_hw(x, ph, pw, value=0.0):
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _window_view(xp, g, kh_step, kw_step):
    """View (N, C, kh, kw, Ho, Wo) of the padded input: element [n, c, i, j, ho, wo] is
    xp[n, c, ho*sh + i*kh_step, wo*sw + j*kw_step]."""
    sN, sC, sH, sW = xp.strides
    N, C = xp.shape[:2]
    return as_strided(xp, (N, C, g.kh, g.kw, g.Ho, g.Wo),
                      (sN, sC, sH * kh_step, sW * kw_step, sH * g.sh, sW * g.sw),
                      writeable=False)


def _tap_slices(g, i, j, dh=1, dw=1):
    """Slices of the padded plane touched by kernel tap (i, j) over all output positions."""
    h0, w0 = i * dh, j * dw
    return (slice(h0, h0 + g.sh * (g.Ho - 1) + 1, g.sh),
            slice(w0, w0 + g.sw * (g.Wo - 1) + 1, g.sw))


class NumpyBackend(Backend):
    name = "numpy"
    xp = np
    float_dtypes = (np.dtype(np.float32), np.dtype(np.float64))

    def __init__(self, workspace_bytes=None):
        if workspace_bytes is None:
            workspace_bytes = int(float(os.environ.get("GPUCNN_WORKSPACE_MB", "256")) * 2**20)
        self.workspace_bytes = int(workspace_bytes)

    def describe(self):
        return "numpy (CPU)"

    def asarray(self, a, dtype=None):
        a = np.asarray(a)
        if dtype is None:
            dtype = np.int32 if np.issubdtype(a.dtype, np.integer) else np.float32
        return np.ascontiguousarray(a, dtype=dtype)

    def to_numpy(self, a):
        return np.array(a, copy=True)

    # ---- convolution ------------------------------------------------------------------------
    def _chunks(self, g, itemsize):
        """Batch ranges whose column matrix (K x n*Ho*Wo) fits in the workspace."""
        per_image = g.K * g.Ho * g.Wo * itemsize
        step = max(1, self.workspace_bytes // max(per_image, 1))
        return [(n0, min(n0 + step, g.N)) for n0 in range(0, g.N, step)]

    def _im2col(self, xpad_chunk, g, c0):
        """cols (K, n*Ho*Wo) for channels [c0, c0 + Cg) of a padded batch chunk."""
        view = _window_view(xpad_chunk[:, c0:c0 + g.Cg], g, g.dh, g.dw)
        n = xpad_chunk.shape[0]
        return view.transpose(1, 2, 3, 0, 4, 5).reshape(g.K, n * g.Ho * g.Wo)

    def _col2im_add(self, dcols, dxpad_chunk, g, c0):
        """Scatter-add cols back into the padded gradient (the adjoint of _im2col)."""
        n = dxpad_chunk.shape[0]
        d = dcols.reshape(g.Cg, g.kh, g.kw, n, g.Ho, g.Wo)
        for i in range(g.kh):
            for j in range(g.kw):
                hs, ws = _tap_slices(g, i, j, g.dh, g.dw)
                dxpad_chunk[:, c0:c0 + g.Cg, hs, ws] += d[:, i, j].transpose(1, 0, 2, 3)

    def _conv2d(self, x, w, b, g, relu):
        if w.dtype != x.dtype:
            raise TypeError(f"conv2d: w dtype {w.dtype} differs from x dtype {x.dtype}")
        y = np.empty(g.y_shape, dtype=x.dtype)
        xpad = _pad_hw(x, g.ph, g.pw)
        wmat = w.reshape(g.F, g.K)
        for n0, n1 in self._chunks(g, x.itemsize):
            for gi in range(g.groups):
                f0 = gi * g.Fg
                cols = self._im2col(xpad[n0:n1], g, gi * g.Cg)
                out = wmat[f0:f0 + g.Fg] @ cols  # (Fg, n*Ho*Wo), channel-major
                out = out.reshape(g.Fg, n1 - n0, g.Ho, g.Wo)
                if b is not None:
                    out += b[f0:f0 + g.Fg, None, None, None]
                if relu:
                    np.maximum(out, 0, out=out)
                y[n0:n1, f0:f0 + g.Fg] = out.transpose(1, 0, 2, 3)
        return y

    def _conv2d_backward(self, dy, x, w, g):
        dt = x.dtype
        xpad = _pad_hw(x, g.ph, g.pw)
        dxpad = np.zeros(xpad.shape, dtype=dt)
        wmat = w.reshape(g.F, g.K)
        dw = np.zeros((g.F, g.K), dtype=dt)
        for n0, n1 in self._chunks(g, x.itemsize):
            n = n1 - n0
            for gi in range(g.groups):
                f0, c0 = gi * g.Fg, gi * g.Cg
                dy_g = dy[n0:n1, f0:f0 + g.Fg].transpose(1, 0, 2, 3).reshape(
                    g.Fg, n * g.Ho * g.Wo)
                cols = self._im2col(xpad[n0:n1], g, c0)
                dw[f0:f0 + g.Fg] += dy_g @ cols.T
                self._col2im_add(wmat[f0:f0 + g.Fg].T @ dy_g, dxpad[n0:n1], g, c0)
        dx = dxpad[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W]
        db = dy.sum(axis=(0, 2, 3))
        return np.ascontiguousarray(dx), dw.reshape(w.shape), db

    # ---- pooling ------------------------------------------------------------------------------
    def _max_pool2d(self, x, g):
        xpad = _pad_hw(x, g.ph, g.pw, value=-np.inf)
        view = _window_view(xpad, g, 1, 1)
        best = view[:, :, 0, 0].copy()
        arg = np.zeros(g.y_shape, dtype=np.int32)
        # Strict '>' over taps in row-major order: the first maximum wins ties.
        for t in range(1, g.kh * g.kw):
            v = view[:, :, t // g.kw, t % g.kw]
            better = v > best
            np.copyto(best, v, where=better)
            arg[better] = t
        ti, tj = np.divmod(arg, g.kw)
        h = np.arange(g.Ho, dtype=np.int32)[:, None] * g.sh - g.ph + ti
        w = np.arange(g.Wo, dtype=np.int32)[None, :] * g.sw - g.pw + tj
        return best, (h * g.W + w).astype(np.int32)

    def _max_pool2d_backward(self, dy, switches, g):
        plane = g.H * g.W
        if switches.size and (switches.min() < 0 or switches.max() >= plane):
            raise ValueError(f"max_pool2d_backward: switches must lie in [0, {plane}) for "
                             f"input planes of {g.H}x{g.W}")
        base = (np.arange(g.N * g.C, dtype=np.int64) * plane).reshape(g.N, g.C, 1, 1)
        # bincount sums duplicates in index order, so overlapping windows are deterministic.
        dx = np.bincount((base + switches).ravel(), weights=dy.ravel(),
                         minlength=g.N * g.C * plane)
        return dx.astype(dy.dtype).reshape(g.x_shape)

    def _avg_pool2d(self, x, g):
        view = _window_view(_pad_hw(x, g.ph, g.pw), g, 1, 1)
        return (view.sum(axis=(2, 3)) / (g.kh * g.kw)).astype(x.dtype)

    def _avg_pool2d_backward(self, dy, g):
        dxpad = np.zeros((g.N, g.C, g.H + 2 * g.ph, g.W + 2 * g.pw), dtype=dy.dtype)
        share = dy / dy.dtype.type(g.kh * g.kw)
        for i in range(g.kh):
            for j in range(g.kw):
                hs, ws = _tap_slices(g, i, j)
                dxpad[:, :, hs, ws] += share
        return np.ascontiguousarray(dxpad[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W])

    # ---- activations, linear, loss ---------------------------------------------------------------
    def _relu(self, x):
        return np.maximum(x, 0)

    def _relu_backward(self, dy, y):
        return np.where(y > 0, dy, 0).astype(dy.dtype)

    def _linear(self, x, w, b, relu):
        if w.dtype != x.dtype:
            raise TypeError(f"linear: w dtype {w.dtype} differs from x dtype {x.dtype}")
        y = x @ w.T
        if b is not None:
            y += b
        if relu:
            np.maximum(y, 0, out=y)
        return y

    def _linear_backward(self, dy, x, w):
        return dy @ w, dy.T @ x, dy.sum(axis=0)

    def _check_label_range(self, labels, classes):
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(f"labels must lie in [0, {classes}) for {classes} classes, got "
                             f"values in [{labels.min()}, {labels.max()}]")

    def _softmax_cross_entropy(self, logits, labels):
        self._check_label_range(labels, logits.shape[1])
        m = logits.max(axis=1, keepdims=True)
        e = np.exp(logits - m)
        s = e.sum(axis=1, keepdims=True)
        probs = e / s
        rows = np.arange(logits.shape[0])
        nll = np.log(s[:, 0]) + m[:, 0] - logits[rows, labels]
        return np.asarray(nll.mean(), dtype=logits.dtype), probs

    def _softmax_cross_entropy_backward(self, probs, labels):
        self._check_label_range(labels, probs.shape[1])
        d = probs.copy()
        d[np.arange(probs.shape[0]), labels] -= 1
        d /= probs.shape[0]
        return d

    # ---- local response normalisation --------------------------------------------------------------
    @staticmethod
    def _channel_window_sum(a, before, after):
        """out[:, c] = sum of a[:, c - before .. c + after] (zeros outside the channels)."""
        C = a.shape[1]
        padded = np.pad(a, ((0, 0), (before, after), (0, 0), (0, 0)))
        out = np.zeros_like(a)
        for t in range(before + after + 1):
            out += padded[:, t:t + C]
        return out

    def _local_response_norm(self, x, size, alpha, beta, k):
        sq = self._channel_window_sum(x * x, size // 2, (size - 1) // 2)
        scale = (k + (alpha / size) * sq).astype(x.dtype)
        return (x * scale ** -beta).astype(x.dtype), scale

    def _local_response_norm_backward(self, dy, x, y, scale, size, alpha, beta, k):
        # dx_i = dy_i s_i^-b - (2ab/size) x_i * sum_{j: i in window(j)} dy_j y_j / s_j;
        # i lies in j's window exactly when j lies in the mirrored window around i.
        t = self._channel_window_sum(dy * y / scale, (size - 1) // 2, size // 2)
        dx = dy * scale ** -beta - (2.0 * alpha * beta / size) * x * t
        return dx.astype(x.dtype)

    # ---- dropout ------------------------------------------------------------------------------
    def _dropout(self, x, p, seed):
        h = dropout_hash(seed, np.arange(x.size, dtype=np.uint32)).reshape(x.shape)
        keep = (h >> np.uint32(8)) >= np.uint32(dropout_threshold(p))
        mask = keep * x.dtype.type(np.float32(1.0 / (1.0 - p)))
        return x * mask, mask.astype(x.dtype)

    def _dropout_backward(self, dy, mask):
        return dy * mask

    # ---- optimiser updates ---------------------------------------------------------------------
    def _sgd_update(self, param, grad, velocity, lr, momentum, weight_decay, nesterov):
        d = grad + weight_decay * param if weight_decay else grad
        if momentum:
            velocity *= momentum
            velocity += d
            d = d + momentum * velocity if nesterov else velocity
        param -= (lr * d).astype(param.dtype)

    def _adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
        g = grad + weight_decay * param if weight_decay else grad
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * g * g
        c1, c2 = adam_bias_corrections(beta1, beta2, step)
        param -= ((lr / c1) * m / (np.sqrt(v) / c2 + eps)).astype(param.dtype)
