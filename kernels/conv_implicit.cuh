// Implicit-GEMM convolution, NCHW float32: forward (+ bias, ReLU), backward-data and
// backward-weights, each a GEMM whose operand tiles are gathered from x / dy / w while they
// are loaded into shared memory. No column matrix is ever written (cuDNN's IMPLICIT_GEMM,
// CUTLASS's implicit-GEMM convolutions; here for NCHW). Launches and launch geometry:
// gpucnn/ops/conv/implicit.py; the im2col + SGEMM algorithm is kernels/im2col.cu.
//
// This header holds the gathers, the tile and the kernel bodies, each body a template over
// its math (ConvFp32 here; the tensor-core precisions in tensor_core.cuh): the FP32 kernels
// are exported by conv_implicit.cu, the TF32 / 3xTF32 / BF16 ones by conv_implicit_tc.cu, so
// a change to a gather or an epilogue reaches every precision at once.
//
// Notation (gpucnn/ops/conv ConvGeom): N images; C input and F output channels in `groups`
// groups of Cg = C / groups and Fg = F / groups; kernel kh x kw; stride sh, sw; top/left
// padding ph, pw; dilation dh, dw; output Ho x Wo, P = Ho * Wo. Tap (i, j) of output position
// (ho, wo) reads input (ho * sh - ph + i * dh, wo * sw - pw + j * dw), 0 outside the input:
// the kernels bound-check every read, so the bottom/right padding of an asymmetric ('same')
// geometry needs no argument of its own. The flattened filter index is
// k = (c * kh + i) * kw + j, the order of w's memory, K = Cg * kh * kw.
//
// The three GEMMs, for each group g (grid z):
//
//   forward   y[n, f, p]      = sum_k W[f, k] * X[k, (n, p)]          M = Fg  N = N * P   K = K
//   bwd data  dx[n, c, h, w]  = sum_t W'[c, t] * DY[t, (n, h, w)]      M = Cg  N = pixels  (below)
//   bwd wts   dw[f, k]        = sum_q DY[f, q] * X[k, q]              M = Fg  N = K       K = N * P
//
// X[k, q] is the input element that tap k reads for output position q = n * P + p: the
// im2col matrix, gathered a tile at a time and never stored. DY[f, q] = dy[n, f, p].
//
// Backward-data is a gather (each thread owns input pixels and sums what reaches them: no
// atomics) decomposed as CUTLASS's strided dgrad: input row h receives from tap i only if
// h + ph - i * dh is a multiple of sh. The host splits the input pixels into sh * sw phases,
// h = ah + sh * th (th < Hr) and w = aw + sw * tw (tw < Wr); in a phase the taps that reach
// its pixels are i = i0 + u * istep (u < ni) and j = j0 + v * jstep (v < nj), all others give
// nothing, and tap u reads output row ho = th + (ah + ph - i * dh) / sh, an exact division
// the host does: ho = th + ho0 - u * ho_step (and the same for columns with wo0, wo_step).
// One launch per phase: its reduction runs over t = (f * ni + u) * nj + v only (Fg * ni * nj
// terms), so a strided convolution does not multiply the zeros of the stride. Stride 1 is
// one phase with every tap.
//
// Backward-weights splits its long reduction (all images and output positions) over grid z
// when the host asks (few output tiles): split s sums q in [s * q_per_split, ...) into its
// own partial result `out + s * F * K`, and the host adds the partials in order s = 0, 1, ...
// (gpucnn/ops/gemm.py sum_partials). Every sum here runs in a fixed order: deterministic.
//
// Tiling (one main loop for all three): a block of CONV_THREADS threads computes a
// CONV_BM x CONV_BN tile of the output matrix, stepping through the reduction in slices of
// CONV_BK, double buffered in shared memory (slice s + 1 is gathered into registers while
// slice s is multiplied; one barrier per slice). A thread owns CONV_TM x CONV_TN accumulators
// and reads them per k as one float4 of A and one of B (128-bit shared loads). Loading, the
// thread id is (row, lane) = (tid / CONV_LANES, tid % CONV_LANES), and each thread gathers
// CONV_LOADS elements of each operand per slice, in one of two layouts:
//   "k on lanes":  slice row `lane`, tile columns row + e * CONV_ROWS (e < CONV_LOADS)
//   "k on rows":   slice row `row`,  tile columns lane + e * CONV_LANES
// Consecutive lanes then read consecutive addresses of the operand where its memory is
// contiguous, and a thread decodes ONE reduction index per slice (a division or two),
// shared by its A and B elements where both operands use the same layout.
//
// Offsets: tensor bases (image n of x, dy, y, dx; partial s) are 64-bit, since a tensor can
// pass 2^31 elements; offsets inside one image, and in w, are int: the host checks that an
// image of each tensor (its padded extent for x) and w fit in int32.

#pragma once

#include "common.cuh"

#define CONV_BM 64
#define CONV_BN 64
#define CONV_BK 16
#define CONV_TM 4
#define CONV_TN 4
#define CONV_THREADS 256
// Shared rows are padded by 4 floats: rows stay float4-aligned and the transposed stores of
// a "k on lanes" operand spread over more banks.
#define CONV_PAD 4
// Three blocks per SM (at most 80 registers; 38% theoretical occupancy on sm_80/sm_90): the
// compilers meet it with no spill and the same main-loop instructions as without a cap (at
// four, 64 registers, backward-data spills under NVRTC for sm_90).
#define CONV_MIN_BLOCKS 3

#define CONV_LANES CONV_BK                            // 16: threads along a slice row
#define CONV_ROWS (CONV_THREADS / CONV_LANES)          // 16
#define CONV_LOADS (CONV_BM * CONV_BK / CONV_THREADS)  // 4 elements per operand per slice

#if CONV_BM != CONV_BN || CONV_ROWS != CONV_BK || CONV_LOADS * CONV_ROWS != CONV_BM
#error "conv_implicit.cu: the loader layouts need BM == BN == BK * LOADS and THREADS == BK^2"
#endif
#if CONV_TM != 4 || CONV_TN != 4 || (CONV_BM / CONV_TM) * (CONV_BN / CONV_TN) != CONV_THREADS
#error "conv_implicit.cu: one float4 of A and of B per k needs 4 x 4 accumulators per thread"
#endif

// A coordinate no tap reaches: NOWHERE plus any offset the kernels add to it (a tap's, a
// window's, or NOWHERE again) stays negative without overflowing, since the host keeps padded
// sizes below 2^29; conv_inside() then says no.
#define CONV_NOWHERE (-(1 << 30))

// The parameter lists of the three kernels (one list each, shared by the FP32 kernels in
// conv_implicit.cu and the tensor-core ones in conv_implicit_tc.cu; gpucnn/toolchain/parse.py
// expands them when it reads their signatures).
#define CONV_FPROP_PARAMS                                                               \
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ \
    bias, float* __restrict__ y, int N, int C, int H, int W, int F, int kh, int kw, int \
    sh, int sw, int ph, int pw, int dh, int dw, int Ho, int Wo, int groups, int         \
    has_bias, int relu
#define CONV_FPROP_ARGS                                                           \
    x, w, bias, y, N, C, H, W, F, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, groups, \
    has_bias, relu
#define CONV_DGRAD_PARAMS                                                                \
    const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,   \
    int N, int C, int H, int W, int F, int kh, int kw, int sh, int sw, int Ho, int Wo,   \
    int groups, int ah, int Hr, int i0, int istep, int ni, int ho0, int ho_step, int aw, \
    int Wr, int j0, int jstep, int nj, int wo0, int wo_step
#define CONV_DGRAD_ARGS                                                              \
    dy, w, dx, N, C, H, W, F, kh, kw, sh, sw, Ho, Wo, groups, ah, Hr, i0, istep, ni, \
    ho0, ho_step, aw, Wr, j0, jstep, nj, wo0, wo_step
#define CONV_WGRAD_PARAMS                                                               \
    const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ out, \
    int N, int C, int H, int W, int F, int kh, int kw, int sh, int sw, int ph, int pw,  \
    int dh, int dw, int Ho, int Wo, int groups, int q_per_split
#define CONV_WGRAD_ARGS                                                        \
    dy, x, out, N, C, H, W, F, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, groups, \
    q_per_split

struct __align__(16) ConvSmem {
    float a[2][CONV_BK][CONV_BM + CONV_PAD];
    float b[2][CONV_BK][CONV_BN + CONV_PAD];
};

// True when 0 <= v < n (a negative v is a huge unsigned number).
__device__ __forceinline__ bool conv_inside(int v, int n)
{
    return (unsigned)v < (unsigned)n;
}

// ---- the input gather shared by forward and backward-weights ---------------------------

// Tap k of the flattened filter: its offset (i * dh, j * dw) from a window's top-left
// corner, and its offset in an image of x, c * H * W + i * dh * W + j * dw. A k past K
// gets dh_off = NOWHERE: never inside the input.
struct ConvTap {
    int dh_off, dw_off, offset;
};

__device__ __forceinline__ ConvTap conv_tap(int k, int K, int kh, int kw, int dh, int dw,
                                            int H, int W)
{
    ConvTap t;
    if (k >= K) {
        t.dh_off = CONV_NOWHERE;
        t.dw_off = 0;
        t.offset = 0;
        return t;
    }
    const int c = k / (kh * kw);
    const int r = k - c * (kh * kw);
    const int i = r / kw;
    const int j = r - i * kw;
    t.dh_off = i * dh;
    t.dw_off = j * dw;
    t.offset = c * H * W + t.dh_off * W + t.dw_off;
    return t;
}

// The window of output position (n, ho, wo) in x: the 64-bit offset of its top-left tap
// (h0, w0) (which may lie in the padding) for input channel c_first, and h0, w0 themselves.
struct ConvWindow {
    long long offset;
    int h0, w0;
};

__device__ __forceinline__ ConvWindow conv_window(int n, int ho, int wo, int c_first, int C,
                                                  int H, int W, int sh, int sw, int ph, int pw)
{
    ConvWindow win;
    win.h0 = ho * sh - ph;
    win.w0 = wo * sw - pw;
    win.offset = (long long)n * C * H * W + (c_first * H + win.h0) * W + win.w0;
    return win;
}

__device__ __forceinline__ ConvWindow conv_window_nowhere()
{
    ConvWindow win;
    win.offset = 0;
    win.h0 = CONV_NOWHERE;
    win.w0 = CONV_NOWHERE;
    return win;
}

// X[tap, window]: the input element the tap reads for that window, 0 in the padding.
__device__ __forceinline__ float conv_x_at(const float* __restrict__ x, const ConvWindow& win,
                                           const ConvTap& tap, int H, int W)
{
    const int h = win.h0 + tap.dh_off;
    const int w = win.w0 + tap.dw_off;
    return (conv_inside(h, H) && conv_inside(w, W)) ? x[win.offset + tap.offset] : 0.0f;
}

// ---- the main loop -----------------------------------------------------------------------

// Store this thread's gathered elements of one slice into shared memory, a[k][m] and b[k][n]
// (rows of LDA / LDB elements), each operand in its Op layout (file header), converted by
// `cvt` to the shared type (identity for FP32 and TF32; bfloat16 for BF16: rounded once here,
// not per fragment load).
struct ConvKeep {
    __device__ __forceinline__ float operator()(float v) const { return v; }
};

template <class Op, class T, int LDA, int LDB, class Cvt>
__device__ __forceinline__ void conv_store_slice(T (*a)[LDA], T (*b)[LDB],
                                                 const float (&ra)[CONV_LOADS],
                                                 const float (&rb)[CONV_LOADS], int lane,
                                                 int row, Cvt cvt)
{
#pragma unroll
    for (int e = 0; e < CONV_LOADS; ++e) {
        if (Op::A_K_ON_LANES)
            a[lane][row + e * CONV_ROWS] = cvt(ra[e]);
        else
            a[row][lane + e * CONV_LANES] = cvt(ra[e]);
        if (Op::B_K_ON_LANES)
            b[lane][row + e * CONV_ROWS] = cvt(rb[e]);
        else
            b[row][lane + e * CONV_LANES] = cvt(rb[e]);
    }
}

// acc += the block tile's product over `slices` reduction slices. Op gathers: op.fetch(s,
// ra, rb) loads this thread's CONV_LOADS elements of A and of B for slice s into registers;
// Op::A_K_ON_LANES / B_K_ON_LANES name each operand's layout (file header). Every thread of
// the block calls this with the same `slices` (the barrier is unconditional).
template <class Op>
__device__ __forceinline__ void conv_mainloop(const Op& op, int slices, ConvSmem& sm,
                                              float (&acc)[CONV_TM][CONV_TN])
{
    const int lane = threadIdx.x % CONV_LANES;
    const int row = threadIdx.x / CONV_LANES;
    const int tx = threadIdx.x % (CONV_BN / CONV_TN);  // accumulator columns tx * TN + ...
    const int ty = threadIdx.x / (CONV_BN / CONV_TN);  // accumulator rows ty * TM + ...
    float ra[CONV_LOADS], rb[CONV_LOADS];
    for (int s = 0; s <= slices; ++s) {
        // 1. Gather slice s into registers (global loads in flight during step 2).
        if (s < slices)
            op.fetch(s, ra, rb);
        // 2. Multiply slice s - 1 (buffer (s - 1) & 1).
        if (s > 0) {
            const int buf = (s - 1) & 1;
#pragma unroll
            for (int k = 0; k < CONV_BK; ++k) {
                const float4 a4 = *reinterpret_cast<const float4*>(&sm.a[buf][k][ty * CONV_TM]);
                const float4 b4 = *reinterpret_cast<const float4*>(&sm.b[buf][k][tx * CONV_TN]);
                const float a[CONV_TM] = {a4.x, a4.y, a4.z, a4.w};
                const float b[CONV_TN] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
                for (int i = 0; i < CONV_TM; ++i)
#pragma unroll
                    for (int j = 0; j < CONV_TN; ++j)
                        acc[i][j] += a[i] * b[j];
            }
        }
        // 3. Store slice s into the other buffer, last read (slice s - 2) before the barrier
        //    that ended the previous step.
        if (s < slices)
            conv_store_slice<Op>(sm.a[s & 1], sm.b[s & 1], ra, rb, lane, row, ConvKeep());
        __syncthreads();
    }
}

// The FP32 math of the kernel bodies below (CUDA cores): its shared memory and main loop.
// The tensor-core kernels (conv_implicit_tc.cu) pass their own; every body hands its
// epilogue the same per-thread accumulators, acc[i][j] = tile element (ty * TM + i,
// tx * TN + j), whichever math filled them.
struct ConvFp32 {
    typedef ConvSmem Smem;
    template <class Op>
    __device__ __forceinline__ static void run(const Op& op, int slices, Smem& sm,
                                               float (&acc)[CONV_TM][CONV_TN])
    {
        conv_mainloop(op, slices, sm, acc);
    }
};

// ---- forward -----------------------------------------------------------------------------

// A = W (Fg x K rows of w: contiguous in k, so k on lanes); B = X (K x N * P: consecutive
// lanes take consecutive output positions, so k on rows). A thread's four output positions
// (its B columns) are fixed for the block: their windows are computed once.
struct ConvFprop {
    static const bool A_K_ON_LANES = true;
    static const bool B_K_ON_LANES = false;
    const float* __restrict__ x;
    const float* __restrict__ wg;  // group g's filters: Fg rows of K
    int K, Fg, f0, lane, row, kh, kw, dh, dw, H, W;
    ConvWindow win[CONV_LOADS];

    __device__ __forceinline__ void fetch(int s, float (&ra)[CONV_LOADS],
                                          float (&rb)[CONV_LOADS]) const
    {
        const int ka = s * CONV_BK + lane;
#pragma unroll
        for (int e = 0; e < CONV_LOADS; ++e) {
            const int f = f0 + row + e * CONV_ROWS;
            ra[e] = (f < Fg && ka < K) ? wg[f * K + ka] : 0.0f;
        }
        const ConvTap tap = conv_tap(s * CONV_BK + row, K, kh, kw, dh, dw, H, W);
#pragma unroll
        for (int e = 0; e < CONV_LOADS; ++e)
            rb[e] = conv_x_at(x, win[e], tap, H, W);
    }
};

// y[n, g * Fg + f, p] = (relu)(sum_k w[g * Fg + f, k] * X[k, (n, p)] + bias[g * Fg + f]).
// Grid (ceil(N * P / BN), ceil(Fg / BM), groups). `bias` is read only when has_bias.
template <class Math>
__device__ __forceinline__ void conv_fprop(CONV_FPROP_PARAMS)
{
    __shared__ typename Math::Smem sm;
    const int g = blockIdx.z;
    const int Cg = C / groups, Fg = F / groups;
    const int K = Cg * kh * kw;
    const int P = Ho * Wo;
    const int NP = N * P;
    const int q0 = blockIdx.x * CONV_BN;  // first output position (n * P + p) of the tile
    const int f0 = blockIdx.y * CONV_BM;  // first filter of the tile, within the group

    ConvFprop op;
    op.x = x;
    op.wg = w + (long long)g * Fg * K;
    op.K = K;
    op.Fg = Fg;
    op.f0 = f0;
    op.lane = threadIdx.x % CONV_LANES;
    op.row = threadIdx.x / CONV_LANES;
    op.kh = kh;
    op.kw = kw;
    op.dh = dh;
    op.dw = dw;
    op.H = H;
    op.W = W;
#pragma unroll
    for (int e = 0; e < CONV_LOADS; ++e) {
        const int q = q0 + op.lane + e * CONV_LANES;
        if (q < NP) {
            const int n = q / P;
            const int p = q - n * P;
            const int ho = p / Wo;
            op.win[e] = conv_window(n, ho, p - ho * Wo, g * Cg, C, H, W, sh, sw, ph, pw);
        } else {
            op.win[e] = conv_window_nowhere();
        }
    }

    float acc[CONV_TM][CONV_TN] = {};
    Math::run(op, (K + CONV_BK - 1) / CONV_BK, sm, acc);

    const int tx = threadIdx.x % (CONV_BN / CONV_TN);
    const int ty = threadIdx.x / (CONV_BN / CONV_TN);
#pragma unroll
    for (int j = 0; j < CONV_TN; ++j) {
        const int q = q0 + tx * CONV_TN + j;
        if (q >= NP)
            continue;
        const int n = q / P;
        float* out = y + (long long)n * F * P + (long long)g * Fg * P + (q - n * P);
#pragma unroll
        for (int i = 0; i < CONV_TM; ++i) {
            const int f = f0 + ty * CONV_TM + i;
            if (f >= Fg)
                continue;
            float v = acc[i][j];
            if (has_bias)
                v += bias[g * Fg + f];
            if (relu && v < 0.0f)  // a NaN stays NaN
                v = 0.0f;
            out[f * P] = v;
        }
    }
}

// ---- backward-data -----------------------------------------------------------------------

// Reduction index t = (f * ni + u) * nj + v of a phase (file header): tap (i, j) =
// (i0 + u * istep, j0 + v * jstep) of filter f. Its offset in w for input channel 0 of the
// group (w_off; channel c adds c * kh * kw); the output row and column it reads for phase
// pixel (th, tw), th + dho and tw + dwo; and dy_off = f * P + dho * Wo + dwo, its offset from
// that pixel's (th, tw) in plane 0 of the group. A t past the reduction gets valid = false
// and dho = NOWHERE (never inside).
struct DgradTap {
    int w_off, dy_off, dho, dwo;
    bool valid;
};

// The dy side of a phase pixel: the offset of (n, the group's filter 0, th, tw) in dy, and
// th, tw (NOWHERE past the phase's pixels).
struct DgradPixel {
    long long offset;
    int th, tw;
};

// The taps of one phase along one axis: i = first + u * step for u < count, reading output
// row (or column) t + out0 - u * out_step for phase row t.
struct DgradAxis {
    int first, step, count, out0, out_step;
};

// A = W' (Cg x T: A[c, t] = w[g * Fg + f, c, i, j]) and B = DY (T x phase pixels), both
// with t on rows: one decoded t per slice serves the thread's A and B elements, and
// consecutive lanes read consecutive pixels of dy.
struct ConvDgrad {
    static const bool A_K_ON_LANES = false;
    static const bool B_K_ON_LANES = false;
    const float* __restrict__ dy;
    const float* __restrict__ wg;  // group g's filters, input channel 0
    int T, Cg, c0, lane, row, kw, khkw, P, Ho, Wo;
    DgradAxis ax_h, ax_w;
    DgradPixel pix[CONV_LOADS];

    __device__ __forceinline__ DgradTap tap(int t) const
    {
        DgradTap d;
        d.valid = t < T;
        if (!d.valid) {
            d.w_off = d.dy_off = d.dwo = 0;
            d.dho = CONV_NOWHERE;
            return d;
        }
        const int f = t / (ax_h.count * ax_w.count);
        const int r = t - f * (ax_h.count * ax_w.count);
        const int u = r / ax_w.count;
        const int v = r - u * ax_w.count;
        d.dho = ax_h.out0 - u * ax_h.out_step;
        d.dwo = ax_w.out0 - v * ax_w.out_step;
        d.w_off = f * Cg * khkw + (ax_h.first + u * ax_h.step) * kw + ax_w.first +
                  v * ax_w.step;
        d.dy_off = f * P + d.dho * Wo + d.dwo;
        return d;
    }

    __device__ __forceinline__ void fetch(int s, float (&ra)[CONV_LOADS],
                                          float (&rb)[CONV_LOADS]) const
    {
        const DgradTap d = tap(s * CONV_BK + row);
#pragma unroll
        for (int e = 0; e < CONV_LOADS; ++e) {
            const int c = c0 + lane + e * CONV_LANES;
            ra[e] = (d.valid && c < Cg) ? wg[d.w_off + c * khkw] : 0.0f;
        }
#pragma unroll
        for (int e = 0; e < CONV_LOADS; ++e) {
            const bool inside = conv_inside(pix[e].th + d.dho, Ho) &&
                                conv_inside(pix[e].tw + d.dwo, Wo);
            rb[e] = inside ? dy[pix[e].offset + d.dy_off] : 0.0f;
        }
    }
};

// dx[n, g * Cg + c, ah + th * sh, aw + tw * sw] = sum over the phase's t of W'[c, t] *
// DY[t, (n, th, tw)], for the N * Hr * Wr pixels of one phase (th < Hr, tw < Wr; the taps
// i0, istep, ni, ho0, ho_step and j0, ... of the file header). Every pixel of dx belongs to
// exactly one phase and is written by it (0 where no tap reaches it).
// Grid (ceil(N * Hr * Wr / BN), ceil(Cg / BM), groups).
template <class Math>
__device__ __forceinline__ void conv_dgrad(CONV_DGRAD_PARAMS)
{
    __shared__ typename Math::Smem sm;
    const int g = blockIdx.z;
    const int Cg = C / groups, Fg = F / groups;
    const int P = Ho * Wo;
    const int R = Hr * Wr;                // pixels of the phase per image
    const int NR = N * R;
    const int q0 = blockIdx.x * CONV_BN;  // first phase pixel n * R + th * Wr + tw of the tile
    const int c0 = blockIdx.y * CONV_BM;  // first input channel of the tile, within the group

    ConvDgrad op;
    op.dy = dy;
    op.wg = w + (long long)g * Fg * Cg * kh * kw;
    op.T = Fg * ni * nj;
    op.Cg = Cg;
    op.c0 = c0;
    op.lane = threadIdx.x % CONV_LANES;
    op.row = threadIdx.x / CONV_LANES;
    op.kw = kw;
    op.khkw = kh * kw;
    op.P = P;
    op.Ho = Ho;
    op.Wo = Wo;
    op.ax_h = DgradAxis{i0, istep, ni, ho0, ho_step};
    op.ax_w = DgradAxis{j0, jstep, nj, wo0, wo_step};
#pragma unroll
    for (int e = 0; e < CONV_LOADS; ++e) {
        const int q = q0 + op.lane + e * CONV_LANES;
        DgradPixel px;
        if (q < NR) {
            const int n = q / R;
            const int r = q - n * R;
            px.th = r / Wr;
            px.tw = r - px.th * Wr;
            px.offset = (long long)n * F * P + (long long)g * Fg * P + px.th * Wo + px.tw;
        } else {
            px.th = px.tw = CONV_NOWHERE;
            px.offset = 0;
        }
        op.pix[e] = px;
    }

    float acc[CONV_TM][CONV_TN] = {};
    Math::run(op, (op.T + CONV_BK - 1) / CONV_BK, sm, acc);

    const int tx = threadIdx.x % (CONV_BN / CONV_TN);
    const int ty = threadIdx.x / (CONV_BN / CONV_TN);
#pragma unroll
    for (int j = 0; j < CONV_TN; ++j) {
        const int q = q0 + tx * CONV_TN + j;
        if (q >= NR)
            continue;
        const int n = q / R;
        const int r = q - n * R;
        const int th = r / Wr;
        const int h = ah + th * sh;
        const int wc = aw + (r - th * Wr) * sw;
        float* out = dx + (long long)n * C * H * W + ((g * Cg) * H + h) * W + wc;
#pragma unroll
        for (int i = 0; i < CONV_TM; ++i) {
            const int c = c0 + ty * CONV_TM + i;
            if (c < Cg)
                out[c * H * W] = acc[i][j];
        }
    }
}

// ---- backward-weights --------------------------------------------------------------------

// A = DY (Fg x q) and B = X^T (q x K), both with q on lanes: consecutive lanes read
// consecutive output positions of dy and of x's windows, and one decoded q per slice serves
// both. A thread's four B columns (taps k) are fixed for the block: decoded once.
struct ConvWgrad {
    static const bool A_K_ON_LANES = true;
    static const bool B_K_ON_LANES = true;
    const float* __restrict__ dy;
    const float* __restrict__ x;
    int q_begin, q_end, Fg, f0, lane, row, g, Cg, C, F, H, W, sh, sw, ph, pw, P, Wo;
    ConvTap taps[CONV_LOADS];

    __device__ __forceinline__ void fetch(int s, float (&ra)[CONV_LOADS],
                                          float (&rb)[CONV_LOADS]) const
    {
        const int q = q_begin + s * CONV_BK + lane;
        const bool valid = q < q_end;
        int n = 0, p = 0;
        ConvWindow win = conv_window_nowhere();
        if (valid) {
            n = q / P;
            p = q - n * P;
            const int ho = p / Wo;
            win = conv_window(n, ho, p - ho * Wo, g * Cg, C, H, W, sh, sw, ph, pw);
        }
        const long long dy_off = (long long)n * F * P + (long long)g * Fg * P + p;
#pragma unroll
        for (int e = 0; e < CONV_LOADS; ++e) {
            const int f = f0 + row + e * CONV_ROWS;
            ra[e] = (valid && f < Fg) ? dy[dy_off + f * P] : 0.0f;
        }
#pragma unroll
        for (int e = 0; e < CONV_LOADS; ++e)
            rb[e] = conv_x_at(x, win, taps[e], H, W);
    }
};

// out[s * F * K + (g * Fg + f) * K + k] = sum over q in split s of dy[n, g * Fg + f, p] *
// X[k, q] (q = n * P + p; split s = blockIdx.z / groups covers [s * q_per_split, (s + 1) *
// q_per_split) of N * P; q_per_split is a multiple of CONV_BK). With one split, out is dw.
// Grid (ceil(K / BN), ceil(Fg / BM), groups * splits).
template <class Math>
__device__ __forceinline__ void conv_wgrad(CONV_WGRAD_PARAMS)
{
    __shared__ typename Math::Smem sm;
    const int g = blockIdx.z % groups;
    const int split = blockIdx.z / groups;
    const int Cg = C / groups, Fg = F / groups;
    const int K = Cg * kh * kw;
    const int P = Ho * Wo;
    const int NP = N * P;
    const int k0 = blockIdx.x * CONV_BN;  // first tap of the tile
    const int f0 = blockIdx.y * CONV_BM;  // first filter of the tile, within the group

    ConvWgrad op;
    op.dy = dy;
    op.x = x;
    op.q_begin = split * q_per_split;
    op.q_end = NP - op.q_begin < q_per_split ? NP : op.q_begin + q_per_split;
    op.Fg = Fg;
    op.f0 = f0;
    op.lane = threadIdx.x % CONV_LANES;
    op.row = threadIdx.x / CONV_LANES;
    op.g = g;
    op.Cg = Cg;
    op.C = C;
    op.F = F;
    op.H = H;
    op.W = W;
    op.sh = sh;
    op.sw = sw;
    op.ph = ph;
    op.pw = pw;
    op.P = P;
    op.Wo = Wo;
#pragma unroll
    for (int e = 0; e < CONV_LOADS; ++e)
        op.taps[e] = conv_tap(k0 + op.row + e * CONV_ROWS, K, kh, kw, dh, dw, H, W);

    float acc[CONV_TM][CONV_TN] = {};
    const int count = op.q_end > op.q_begin ? op.q_end - op.q_begin : 0;
    Math::run(op, (count + CONV_BK - 1) / CONV_BK, sm, acc);

    const int tx = threadIdx.x % (CONV_BN / CONV_TN);
    const int ty = threadIdx.x / (CONV_BN / CONV_TN);
    float* part = out + (long long)split * F * K;
#pragma unroll
    for (int i = 0; i < CONV_TM; ++i) {
        const int f = f0 + ty * CONV_TM + i;
        if (f >= Fg)
            continue;
#pragma unroll
        for (int j = 0; j < CONV_TN; ++j) {
            const int k = k0 + tx * CONV_TN + j;
            if (k < K)
                part[(g * Fg + f) * K + k] = acc[i][j];
        }
    }
}
