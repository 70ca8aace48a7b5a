// Local response normalisation across channels (AlexNet), NCHW float32, PyTorch's formula:
//
//   scale[n, c, h, w] = k + alpha / size * sum of x[n, c', h, w]^2
//                       over c' in [c - size / 2, c + (size - 1) / 2] clipped to [0, C)
//   y = x * scale^(-beta)
//
// One thread per element in both passes (grid-stride); each sums its own channel window
// directly, so no running sums and no ordering between threads. Each pass is written once
// for float32 and for bf16 activations (x, y, dy, dx: bf16_storage.cuh; the _bf16io kernels);
// scale and every sum stay float32.

#include "common.cuh"
#include "bf16_storage.cuh"

// The channel window of output channel c is [c - size / 2, c + (size - 1) / 2]. For even
// sizes it is lopsided, so the backward pass needs the mirror image: the outputs c whose
// window contains input channel i are c in [i - (size - 1) / 2, i + size / 2].

template <class T>
__device__ __forceinline__ void lrn_forward_body(
    const T* x, T* y, float* scale,
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

        const T* column = x + (index - c * plane);  // x[n, 0, h, w]
        float sum_sq = 0.0f;
        for (int cc = c_first; cc <= c_last; ++cc) {
            float v = act_load(&column[cc * plane]);
            sum_sq += v * v;
        }
        float s = k + alpha_over_size * sum_sq;
        scale[index] = s;
        act_store(&y[index], act_load(&x[index]) * powf(s, -beta));
    }
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void lrn_forward(
    const float* x, float* y, float* scale,
    int N, int C, int H, int W, int size, float alpha_over_size, float beta, float k)
{
    lrn_forward_body(x, y, scale, N, C, H, W, size, alpha_over_size, beta, k);
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void lrn_forward_bf16io(
    const bf16_bits* x, bf16_bits* y, float* scale,
    int N, int C, int H, int W, int size, float alpha_over_size, float beta, float k)
{
    lrn_forward_body(x, y, scale, N, C, H, W, size, alpha_over_size, beta, k);
}

// dx_i = dy_i * scale_i^(-beta)
//        - (2 * alpha * beta / size) * x_i * sum over outputs c whose window holds i of
//          dy_c * y_c / scale_c
// (all at the same n, h, w); coeff = 2 * alpha * beta / size, computed on the host. The
// bf16 kernel recomputes y_c = x_c * scale_c^(-beta) in float32 rather than reading the bf16
// y it stored: the gradient is then the float32 layer's, for float32 inputs of the same
// (bf16) values.
template <class T, bool STORED_Y>
__device__ __forceinline__ void lrn_backward_body(
    const T* dy, const T* x, const float* y, const float* scale, T* dx,
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
            float yj = STORED_Y ? y[j] : act_load(&x[j]) * powf(scale[j], -beta);
            acc += act_load(&dy[j]) * yj / scale[j];
        }
        act_store(&dx[index], act_load(&dy[index]) * powf(scale[index], -beta)
                                  - coeff * act_load(&x[index]) * acc);
    }
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void lrn_backward(
    const float* dy, const float* x, const float* y, const float* scale, float* dx,
    int N, int C, int H, int W, int size, float beta, float coeff)
{
    lrn_backward_body<float, true>(dy, x, y, scale, dx, N, C, H, W, size, beta, coeff);
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void lrn_backward_bf16io(
    const bf16_bits* dy, const bf16_bits* x, const float* scale, bf16_bits* dx,
    int N, int C, int H, int W, int size, float beta, float coeff)
{
    lrn_backward_body<bf16_bits, false>(dy, x, nullptr, scale, dx, N, C, H, W, size, beta,
                                        coeff);
}
