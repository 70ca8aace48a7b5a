// Max, average and LP (power-average) pooling over NCHW float32 tensors; max-pool also over
// bf16 ones (kernels/bf16_storage.cuh: <name>_bf16io, bf16 x / dy in, bf16 y / dx out).
//
// Geometry (output size with floor or ceil_mode, padding limits, dilation) is defined once in
// gpucnn/ops/pool (PoolGeom); the launches and the plain reference are beside it (device.py,
// reference.py). Every kernel is a grid-stride loop with one thread per element of the tensor
// it writes.
//
// Conventions (gpucnn/ops/pool, PyTorch's): window i of an axis starts at i * stride - pad and
// its taps are dilation apart. Max-pool pads with -inf; the switch of a window is the index
// h * W + w of its maximum in the *unpadded* input plane, and ties go to the first maximum in
// row-major window order. Average pooling divides by divisor_override if it is > 0, else by the
// window clipped to the padded input (count_include_pad) or to the input. With ceil_mode a last
// window may reach past the right padding; it always starts inside the input or left padding.
//
// The backward passes are gathers, not scatters: each thread owns one input pixel and sums
// the gradient of every window that contains it, in a fixed order. Overlapping windows
// (AlexNet's 3x3 stride 2) therefore need no atomics and the result is deterministic.
//
// Max-pool's bodies are templates over the activation element type T (float or bf16_bits),
// computing in float32 either way. Forward: a bf16 input widens exactly, the maximum is one
// of the inputs, so y rounds nothing (but NaNs, to 0x7FFF) and the switches are the float
// kernel's on the widened input. Backward: the gather sums in float32 in the float kernel's
// order and rounds once at the store, so dx is round_bf16 of the float kernel's dx on the
// widened dy, bit for bit.

#include "common.cuh"
#include "bf16_storage.cuh"

// The windows whose span (span = dilation * (k - 1) + 1 input positions from i * stride - pad)
// covers input position `pos` are i in [pool_first_window, pool_last_window).
__device__ __forceinline__ int pool_first_window(int pos, int span, int stride, int pad)
{
    int padded = pos + pad;
    return (padded < span) ? 0 : (padded - span) / stride + 1;
}

__device__ __forceinline__ int pool_last_window(int pos, int stride, int pad, int out_size)
{
    int last = (pos + pad) / stride + 1;
    return (last < out_size) ? last : out_size;
}

// The windows covering input pixel `in`: rows [i_first, i_last) x columns [j_first, j_last)
// of its output plane (what every backward gathers over).
struct WindowRange {
    int i_first, i_last, j_first, j_last;
};

__device__ __forceinline__ WindowRange windows_covering(PlanePos in, int span_h, int span_w,
                                                        int sh, int sw, int ph, int pw,
                                                        int Ho, int Wo)
{
    WindowRange r;
    r.i_first = pool_first_window(in.row, span_h, sh, ph);
    r.i_last = pool_last_window(in.row, sh, ph, Ho);
    r.j_first = pool_first_window(in.col, span_w, sw, pw);
    r.j_last = pool_last_window(in.col, sw, pw, Wo);
    return r;
}

// Window i of an (undilated) axis clipped to the input: [*start, *end). Returns its extent
// clipped to the *padded* input only: PyTorch's count_include_pad divisor along this axis.
__device__ __forceinline__ int pool_window(int i, int k, int stride, int pad, int size,
                                           int* start, int* end)
{
    int s = i * stride - pad;
    int padded_end = (s + k < size + pad) ? s + k : size + pad;
    *start = (s > 0) ? s : 0;
    *end = (padded_end < size) ? padded_end : size;
    return padded_end - s;
}

// The average-pool divisor of the window with extents (h_padded, w_padded) in the padded
// input and [h_start, h_end) x [w_start, w_end) in the input.
__device__ __forceinline__ float pool_divisor(int divisor_override, int count_include_pad,
                                              int h_padded, int w_padded, int h_start,
                                              int h_end, int w_start, int w_end)
{
    if (divisor_override > 0) return (float)divisor_override;
    if (count_include_pad) return (float)(h_padded * w_padded);
    return (float)((h_end - h_start) * (w_end - w_start));
}

// y[n, c, i, j] = max over the window's taps; switches[n, c, i, j] = h * W + w of that maximum.
template <typename T>
__device__ __forceinline__ void max_pool2d_forward_body(
    const T* x, T* y, int* switches,
    int N, int C, int H, int W, int Ho, int Wo,
    int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw)
{
    int total = N * C * Ho * Wo;
    GRID_STRIDE_LOOP(index, total) {
        PlanePos o = plane_pos(index, Ho, Wo);
        int i = o.row, j = o.col;
        const T* x_plane = x + plane_offset(o.plane, H, W);

        // Taps outside the input are -inf padding: skipped, they never win. pool_geometry
        // makes sure every window has a tap inside, so best_index is always set.
        float best = 0.0f;
        int best_index = -1;
        for (int a = 0; a < kh; ++a) {
            int h = i * sh - ph + a * dh;
            if (h < 0 || h >= H) continue;
            for (int b = 0; b < kw; ++b) {
                int w = j * sw - pw + b * dw;
                if (w < 0 || w >= W) continue;
                float v = act_load(x_plane + (h * W + w));
                // PyTorch's rule: strictly greater, so the first maximum keeps its place;
                // a NaN always takes over, so a NaN anywhere in the window is the result
                // (its switch: the last NaN in window order).
                if (best_index < 0 || v > best || isnan(v)) {
                    best = v;
                    best_index = h * W + w;
                }
            }
        }
        act_store(y + index, best);
        switches[index] = best_index;
    }
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void max_pool2d_forward(
    const float* x, float* y, int* switches,
    int N, int C, int H, int W, int Ho, int Wo,
    int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw)
{
    max_pool2d_forward_body(x, y, switches, N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw);
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void max_pool2d_forward_bf16io(
    const bf16_bits* x, bf16_bits* y, int* switches,
    int N, int C, int H, int W, int Ho, int Wo,
    int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw)
{
    max_pool2d_forward_body(x, y, switches, N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw);
}

// dx[n, c, h, w] = sum of dy over the windows containing (h, w) whose switch is h * W + w.
template <typename T>
__device__ __forceinline__ void max_pool2d_backward_body(
    const T* dy, const int* switches, T* dx,
    int N, int C, int H, int W, int Ho, int Wo,
    int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw)
{
    int total = N * C * H * W;
    GRID_STRIDE_LOOP(index, total) {
        PlanePos in = plane_pos(index, H, W);
        long long offset = plane_offset(in.plane, Ho, Wo);  // this (n, c) in dy and switches
        int me = in.row * W + in.col;

        // Every window whose span covers (h, w): the switch test picks those that chose it.
        WindowRange win = windows_covering(in, dh * (kh - 1) + 1, dw * (kw - 1) + 1, sh, sw,
                                           ph, pw, Ho, Wo);
        float grad = 0.0f;
        for (int i = win.i_first; i < win.i_last; ++i) {
            for (int j = win.j_first; j < win.j_last; ++j) {
                if (switches[offset + i * Wo + j] == me) {
                    grad += act_load(dy + (offset + i * Wo + j));
                }
            }
        }
        act_store(dx + index, grad);
    }
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void max_pool2d_backward(
    const float* dy, const int* switches, float* dx,
    int N, int C, int H, int W, int Ho, int Wo,
    int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw)
{
    max_pool2d_backward_body(dy, switches, dx, N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh,
                             dw);
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void max_pool2d_backward_bf16io(
    const bf16_bits* dy, const int* switches, bf16_bits* dx,
    int N, int C, int H, int W, int Ho, int Wo,
    int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw)
{
    max_pool2d_backward_body(dy, switches, dx, N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh,
                             dw);
}

// y[n, c, i, j] = (sum of the window's input pixels) / divisor (see pool_divisor).
// gpucnn: block=256 max_regs=64
extern "C" __global__ void avg_pool2d_forward(
    const float* x, float* y,
    int N, int C, int H, int W, int Ho, int Wo,
    int kh, int kw, int sh, int sw, int ph, int pw,
    int count_include_pad, int divisor_override)
{
    int total = N * C * Ho * Wo;
    GRID_STRIDE_LOOP(index, total) {
        PlanePos o = plane_pos(index, Ho, Wo);
        int i = o.row, j = o.col;
        const float* x_plane = x + plane_offset(o.plane, H, W);

        int h_start, h_end, w_start, w_end;
        int h_padded = pool_window(i, kh, sh, ph, H, &h_start, &h_end);
        int w_padded = pool_window(j, kw, sw, pw, W, &w_start, &w_end);
        float sum = 0.0f;
        for (int h = h_start; h < h_end; ++h) {
            for (int w = w_start; w < w_end; ++w) {
                sum += x_plane[h * W + w];
            }
        }
        y[index] = sum / pool_divisor(divisor_override, count_include_pad, h_padded, w_padded,
                                      h_start, h_end, w_start, w_end);
    }
}

// dx[n, c, h, w] = sum over the windows containing (h, w) of dy / that window's divisor.
// gpucnn: block=256 max_regs=64
extern "C" __global__ void avg_pool2d_backward(
    const float* dy, float* dx,
    int N, int C, int H, int W, int Ho, int Wo,
    int kh, int kw, int sh, int sw, int ph, int pw,
    int count_include_pad, int divisor_override)
{
    int total = N * C * H * W;
    GRID_STRIDE_LOOP(index, total) {
        PlanePos in = plane_pos(index, H, W);
        const float* dy_plane = dy + plane_offset(in.plane, Ho, Wo);
        WindowRange win = windows_covering(in, kh, kw, sh, sw, ph, pw, Ho, Wo);
        float sum = 0.0f;
        for (int i = win.i_first; i < win.i_last; ++i) {
            int h_start, h_end;
            int h_padded = pool_window(i, kh, sh, ph, H, &h_start, &h_end);
            for (int j = win.j_first; j < win.j_last; ++j) {
                int w_start, w_end;
                int w_padded = pool_window(j, kw, sw, pw, W, &w_start, &w_end);
                sum += dy_plane[i * Wo + j]
                     / pool_divisor(divisor_override, count_include_pad, h_padded, w_padded,
                                    h_start, h_end, w_start, w_end);
            }
        }
        dx[index] = sum;
    }
}

// The sum of x^p over the taps of output element `index`'s window that lie inside the input;
// *padded = the window's extent in the padded input (the count_include_pad divisor).
__device__ __forceinline__ float lp_window_sum(const float* x, int index, int H, int W, int Ho,
                                               int Wo, int kh, int kw, int sh, int sw, int ph,
                                               int pw, float p, int* padded)
{
    PlanePos o = plane_pos(index, Ho, Wo);
    const float* x_plane = x + plane_offset(o.plane, H, W);
    int h_start, h_end, w_start, w_end;
    int h_padded = pool_window(o.row, kh, sh, ph, H, &h_start, &h_end);
    int w_padded = pool_window(o.col, kw, sw, pw, W, &w_start, &w_end);
    *padded = h_padded * w_padded;
    float sum = 0.0f;
    for (int h = h_start; h < h_end; ++h) {
        for (int w = w_start; w < w_end; ++w) {
            sum += powf(x_plane[h * W + w], p);
        }
    }
    return sum;
}

// y = (avg_pool2d(x^p) * kh * kw)^(1/p): PyTorch's F.lp_pool2d, in its order of operations so
// that ceil_mode's partial windows (divisor = the clipped window) come out as PyTorch's do.
// No abs: a negative x with a non-integer p gives NaN, as powf does. lp_pool2d has no padding
// (ph = pw = 0); the divisor is the count_include_pad one.
// gpucnn: block=256 max_regs=64
extern "C" __global__ void lp_pool2d_forward(
    const float* x, float* y,
    int N, int C, int H, int W, int Ho, int Wo,
    int kh, int kw, int sh, int sw, int ph, int pw, float p)
{
    int total = N * C * Ho * Wo;
    GRID_STRIDE_LOOP(index, total) {
        int padded;
        float sum = lp_window_sum(x, index, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, p, &padded);
        y[index] = powf(sum / (float)padded * (float)(kh * kw), 1.0f / p);
    }
}

// Backward, step 1 (one thread per window): r = dy * y / S with S the window's sum of x^p
// (dy/dx_j = y * x_j^(p-1) / S: the kh * kw / divisor scale cancels); r = 0 where S = 0.
// gpucnn: block=256 max_regs=64
extern "C" __global__ void lp_pool2d_backward_ratio(
    const float* dy, const float* x, const float* y, float* r,
    int N, int C, int H, int W, int Ho, int Wo,
    int kh, int kw, int sh, int sw, int ph, int pw, float p)
{
    int total = N * C * Ho * Wo;
    GRID_STRIDE_LOOP(index, total) {
        int padded;
        float sum = lp_window_sum(x, index, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, p, &padded);
        r[index] = (sum != 0.0f) ? dy[index] * y[index] / sum : 0.0f;
    }
}

// Backward, step 2 (one thread per input pixel): dx = x^(p-1) * G, G = the sum of r over the
// windows containing the pixel; dx = 0 where G = 0 (even where x^(p-1) is infinite).
// gpucnn: block=256 max_regs=64
extern "C" __global__ void lp_pool2d_backward(
    const float* r, const float* x, float* dx,
    int N, int C, int H, int W, int Ho, int Wo,
    int kh, int kw, int sh, int sw, int ph, int pw, float p)
{
    int total = N * C * H * W;
    GRID_STRIDE_LOOP(index, total) {
        PlanePos in = plane_pos(index, H, W);
        const float* r_plane = r + plane_offset(in.plane, Ho, Wo);
        WindowRange win = windows_covering(in, kh, kw, sh, sw, ph, pw, Ho, Wo);
        float grad = 0.0f;
        for (int i = win.i_first; i < win.i_last; ++i) {
            for (int j = win.j_first; j < win.j_last; ++j) {
                grad += r_plane[i * Wo + j];
            }
        }
        dx[index] = (grad != 0.0f) ? grad * powf(x[index], p - 1.0f) : 0.0f;
    }
}
