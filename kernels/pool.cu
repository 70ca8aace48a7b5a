// Max and average pooling over NCHW float32 tensors.
//
// Geometry (output size, padding limits) is defined once in gpucnn/backends/base.py (PoolGeom);
// the launches are in gpucnn/backends/device_misc.py. Every kernel is a grid-stride loop with
// one thread per element of the tensor it writes.
//
// Conventions (base.py): max-pool pads with -inf; the switch of a window is the index h * W + w
// of its maximum in the *unpadded* input plane, and ties go to the first maximum in row-major
// window order. Average pooling divides by kh * kw (padded zeros count).
//
// The backward passes are gathers, not scatters: each thread owns one input pixel and sums
// the gradient of every window that contains it, in a fixed order. Overlapping windows
// (AlexNet's 3x3 stride 2) therefore need no atomics and the result is deterministic.

// Window i of a pooled axis covers input positions i * stride - pad ... i * stride - pad + k - 1.
// The windows covering input position `pos` are i in [pool_first_window, pool_last_window).
__device__ __forceinline__ int pool_first_window(int pos, int k, int stride, int pad)
{
    int padded = pos + pad;
    return (padded < k) ? 0 : (padded - k) / stride + 1;
}

__device__ __forceinline__ int pool_last_window(int pos, int stride, int pad, int out_size)
{
    int last = (pos + pad) / stride + 1;
    return (last < out_size) ? last : out_size;
}

// y[n, c, i, j] = max over the window; switches[n, c, i, j] = h * W + w of that maximum.
// gpucnn: block=256 max_regs=64
extern "C" __global__ void max_pool2d_forward(
    const float* x, float* y, int* switches,
    int N, int C, int H, int W, int Ho, int Wo,
    int kh, int kw, int sh, int sw, int ph, int pw)
{
    int total = N * C * Ho * Wo;
    for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += blockDim.x * gridDim.x) {
        int j = index % Wo;
        int i = (index / Wo) % Ho;
        int plane = index / (Wo * Ho);          // n * C + c
        const float* x_plane = x + plane * H * W;

        // The window clipped to the input: padding is -inf, so it never wins.
        int h_start = i * sh - ph;
        int w_start = j * sw - pw;
        int h_end = (h_start + kh < H) ? h_start + kh : H;
        int w_end = (w_start + kw < W) ? w_start + kw : W;
        if (h_start < 0) h_start = 0;
        if (w_start < 0) w_start = 0;

        // base.py limits padding to half the kernel, so the clipped window is never empty.
        int best_index = h_start * W + w_start;
        float best = x_plane[best_index];
        for (int h = h_start; h < h_end; ++h) {
            for (int w = w_start; w < w_end; ++w) {
                float v = x_plane[h * W + w];
                // Strictly greater: the first maximum keeps its place.
                if (v > best) {
                    best = v;
                    best_index = h * W + w;
                }
            }
        }
        y[index] = best;
        switches[index] = best_index;
    }
}

// dx[n, c, h, w] = sum of dy over the windows containing (h, w) whose switch is h * W + w.
// gpucnn: block=256 max_regs=64
extern "C" __global__ void max_pool2d_backward(
    const float* dy, const int* switches, float* dx,
    int N, int C, int H, int W, int Ho, int Wo,
    int kh, int kw, int sh, int sw, int ph, int pw)
{
    int total = N * C * H * W;
    for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += blockDim.x * gridDim.x) {
        int w = index % W;
        int h = (index / W) % H;
        int plane = index / (W * H);
        int offset = plane * Ho * Wo;           // start of this (n, c) in dy and switches
        int me = h * W + w;

        int i_first = pool_first_window(h, kh, sh, ph);
        int i_last = pool_last_window(h, sh, ph, Ho);
        int j_first = pool_first_window(w, kw, sw, pw);
        int j_last = pool_last_window(w, sw, pw, Wo);
        float grad = 0.0f;
        for (int i = i_first; i < i_last; ++i) {
            for (int j = j_first; j < j_last; ++j) {
                if (switches[offset + i * Wo + j] == me) {
                    grad += dy[offset + i * Wo + j];
                }
            }
        }
        dx[index] = grad;
    }
}

// y[n, c, i, j] = (sum of the window's input pixels) / (kh * kw); padding contributes zeros.
// gpucnn: block=256 max_regs=64
extern "C" __global__ void avg_pool2d_forward(
    const float* x, float* y,
    int N, int C, int H, int W, int Ho, int Wo,
    int kh, int kw, int sh, int sw, int ph, int pw)
{
    int total = N * C * Ho * Wo;
    for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += blockDim.x * gridDim.x) {
        int j = index % Wo;
        int i = (index / Wo) % Ho;
        int plane = index / (Wo * Ho);
        const float* x_plane = x + plane * H * W;

        int h_start = i * sh - ph;
        int w_start = j * sw - pw;
        int h_end = (h_start + kh < H) ? h_start + kh : H;
        int w_end = (w_start + kw < W) ? w_start + kw : W;
        if (h_start < 0) h_start = 0;
        if (w_start < 0) w_start = 0;

        float sum = 0.0f;
        for (int h = h_start; h < h_end; ++h) {
            for (int w = w_start; w < w_end; ++w) {
                sum += x_plane[h * W + w];
            }
        }
        y[index] = sum / (float)(kh * kw);
    }
}

// dx[n, c, h, w] = (sum of dy over the windows containing (h, w)) / (kh * kw).
// gpucnn: block=256 max_regs=64
extern "C" __global__ void avg_pool2d_backward(
    const float* dy, float* dx,
    int N, int C, int H, int W, int Ho, int Wo,
    int kh, int kw, int sh, int sw, int ph, int pw)
{
    int total = N * C * H * W;
    for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += blockDim.x * gridDim.x) {
        int w = index % W;
        int h = (index / W) % H;
        int plane = index / (W * H);
        const float* dy_plane = dy + plane * Ho * Wo;

        int i_first = pool_first_window(h, kh, sh, ph);
        int i_last = pool_last_window(h, sh, ph, Ho);
        int j_first = pool_first_window(w, kw, sw, pw);
        int j_last = pool_last_window(w, sw, pw, Wo);
        float sum = 0.0f;
        for (int i = i_first; i < i_last; ++i) {
            for (int j = j_first; j < j_last; ++j) {
                sum += dy_plane[i * Wo + j];
            }
        }
        dx[index] = sum / (float)(kh * kw);
    }
}
