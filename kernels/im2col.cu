// im2col / col2im for NCHW float32 convolution (stride, zero padding, dilation).
// Launches: gpucnn/ops/conv/device.py. Geometry (Ho, Wo) comes from gpucnn/ops/conv (ConvGeom).
//
// Column layout, for a chunk of nb images, P = Ho * Wo output positions per image:
//
//   cols[n][(c * kh + i) * kw + j][p] = x[n][c][ho * sh - ph + i * dh][wo * sw - pw + j * dw]
//
// with p = ho * Wo + wo, and 0 where the tap falls in the padding. Each image's block is a
// (C * kh * kw) x P row-major matrix; since a group's channels are contiguous, group g's
// K x P matrix (K = C/groups * kh * kw) starts at row g * K of it. So the convolution of
// image n, group g is the GEMM  W_g (F/groups x K) @ cols[n, g] (K x P), and its output
// lands directly in y[n, g * F/groups : (g+1) * F/groups] (an NCHW slice).
//
// col2im is the adjoint, written as a gather: each thread owns one input pixel and sums,
// in a fixed order (i, then j ascending), every column entry that was read from it. No
// atomics, deterministic.

#include "common.cuh"

// One thread per (n, c, ho, wo) writes the kh * kw column entries of that output position
// (consecutive threads write consecutive p: coalesced stores). Grid-stride loop.
// gpucnn: block=256
extern "C" __global__ void im2col(
    const float* __restrict__ x, float* __restrict__ cols, int nb, int C, int H, int W,
    int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw, int Ho, int Wo)
{
    const int P = Ho * Wo;
    const int total = nb * C * P;
    const int taps = kh * kw;
    GRID_STRIDE_LOOP(index, total) {
        const int p = index % P;
        const int plane = index / P;            // n * C + c
        const int ho = p / Wo;
        const int wo = p - ho * Wo;
        const int h0 = ho * sh - ph;
        const int w0 = wo * sw - pw;
        const float* x_plane = x + (long long)plane * H * W;
        float* out = cols + (long long)plane * taps * P + p;
        for (int i = 0; i < kh; ++i) {
            const int h = h0 + i * dh;
            const int h_ok = (h >= 0) && (h < H);
            for (int j = 0; j < kw; ++j) {
                const int w = w0 + j * dw;
                *out = (h_ok && w >= 0 && w < W) ? x_plane[h * W + w] : 0.0f;
                out += P;
            }
        }
    }
}

// x[n][c][h][w] = sum of cols[n][(c * kh + i) * kw + j][ho * Wo + wo] over the taps (i, j)
// and output positions (ho, wo) with ho * sh - ph + i * dh == h and wo * sw - pw + j * dw == w.
// One thread per input pixel (grid-stride); every pixel is written (0 if no tap reads it).
// gpucnn: block=256
extern "C" __global__ void col2im(
    const float* __restrict__ cols, float* __restrict__ x, int nb, int C, int H, int W,
    int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw, int Ho, int Wo)
{
    const int P = Ho * Wo;
    const int total = nb * C * H * W;
    const int taps = kh * kw;
    GRID_STRIDE_LOOP(index, total) {
        const int w = index % W;
        const int rest = index / W;
        const int h = rest % H;
        const int plane = rest / H;             // n * C + c
        const float* col_plane = cols + (long long)plane * taps * P;
        float sum = 0.0f;
        for (int i = 0; i < kh; ++i) {
            // Tap row i reads input row h from output row ho = (h + ph - i * dh) / sh, when
            // that division is exact and ho is in range. The numerator falls as i grows.
            const int hn = h + ph - i * dh;
            if (hn < 0)
                break;
            const int ho = hn / sh;
            if (ho * sh != hn || ho >= Ho)
                continue;
            for (int j = 0; j < kw; ++j) {
                const int wn = w + pw - j * dw;
                if (wn < 0)
                    break;
                const int wo = wn / sw;
                if (wo * sw != wn || wo >= Wo)
                    continue;
                sum += col_plane[(i * kw + j) * P + ho * Wo + wo];
            }
        }
        x[index] = sum;
    }
}
