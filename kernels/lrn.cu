// Local response normalisation across channels (AlexNet), NCHW float32, PyTorch's formula:
//
//   scale[n, c, h, w] = k + alpha / size * sum of x[n, c', h, w]^2
//                       over c' in [c - size / 2, c + (size - 1) / 2] clipped to [0, C)
//   y = x * scale^(-beta)
//
// One thread per element in both passes (grid-stride); each sums its own channel window
// directly, so no running sums and no ordering between threads.

#include "common.cuh"

// The channel window of output channel c is [c - size / 2, c + (size - 1) / 2]. For even
// sizes it is lopsided, so the backward pass needs the mirror image: the outputs c whose
// window contains input channel i are c in [i - (size - 1) / 2, i + size / 2].

// gpucnn: block=256 max_regs=64
extern "C" __global__ void lrn_forward(
    const float* x, float* y, float* scale,
    int N, int C, int H, int W, int size, float alpha_over_size, float beta, float k)
{
    int plane = H * W;
    int total = N * C * plane;
    GRID_STRIDE_LOOP(index, total) {
        int c = (index / plane) % C;
        int c_first = c - size / 2;
        int c_last = c + (size - 1) / 2;
        if (c_first < 0) c_first = 0;
        if (c_last > C - 1) c_last = C - 1;

        const float* column = x + (index - c * plane);  // x[n, 0, h, w]
        float sum_sq = 0.0f;
        for (int cc = c_first; cc <= c_last; ++cc) {
            float v = column[cc * plane];
            sum_sq += v * v;
        }
        float s = k + alpha_over_size * sum_sq;
        scale[index] = s;
        y[index] = x[index] * powf(s, -beta);
    }
}

// dx_i = dy_i * scale_i^(-beta)
//        - (2 * alpha * beta / size) * x_i * sum over outputs c whose window holds i of
//          dy_c * y_c / scale_c
// (all at the same n, h, w); coeff = 2 * alpha * beta / size, computed on the host.
// gpucnn: block=256 max_regs=64
extern "C" __global__ void lrn_backward(
    const float* dy, const float* x, const float* y, const float* scale, float* dx,
    int N, int C, int H, int W, int size, float beta, float coeff)
{
    int plane = H * W;
    int total = N * C * plane;
    GRID_STRIDE_LOOP(index, total) {
        int c = (index / plane) % C;
        int c_first = c - (size - 1) / 2;
        int c_last = c + size / 2;
        if (c_first < 0) c_first = 0;
        if (c_last > C - 1) c_last = C - 1;

        int column = index - c * plane;  // flat index of [n, 0, h, w]
        float acc = 0.0f;
        for (int cc = c_first; cc <= c_last; ++cc) {
            int j = column + cc * plane;
            acc += dy[j] * y[j] / scale[j];
        }
        dx[index] = dy[index] * powf(scale[index], -beta) - coeff * x[index] * acc;
    }
}
