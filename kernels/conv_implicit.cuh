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
// Tiling (one main loop for all three): a block of THREADS threads computes a BM x BN tile
// of the output matrix, stepping through the reduction in slices of BK, double buffered in
// shared memory (slice s + 1 is gathered into registers while slice s is multiplied; one
// barrier per slice). The tile is a template argument (ConvTile): the FP32 kernels use the
// CONV_* one below, 128 x 128 x 8 with 8 x 8 accumulators per thread in the SGEMM's warp
// layout (sgemm.cu: per k, four 128-bit shared loads feed 64 FFMA); the tensor-core ones
// their own (tensor_core.cuh). Loading, each thread gathers LOADS = BM * BK / THREADS
// elements of each operand per slice, CPL = THREADS / BK tile columns apart, in one of two
// layouts:
//   "k on lanes":  slice row tid % BK,  tile columns tid / BK + e * CPL   (e < LOADS)
//   "k on rows":   slice row tid / CPL, tile columns tid % CPL + e * CPL
// Consecutive threads then read consecutive addresses of the operand where its memory is
// contiguous, a thread decodes ONE reduction index per slice (a division or two), shared by
// its A and B elements where both operands use the same layout, and a warp's shared stores
// hit 32 different banks in both layouts (rows padded by CONV_PAD floats).
//
// Activation element type: every gather and epilogue is a template over the element type A
// of the activation tensors (x, y, dy, dx): float, or bf16_bits for the _bf16io kernels
// (bf16_storage.cuh: bfloat16 bits, read through act_load, written through act_store: one
// rounding, at the store). Weights, bias and the weight gradient (and its split partial sums)
// are float32 in both; the math is the same float32 math.
//
// Offsets: tensor bases (image n of x, dy, y, dx; partial s) are 64-bit, since a tensor can
// pass 2^31 elements; offsets inside one image, and in w, are int: the host checks that an
// image of each tensor (its padded extent for x) and w fit in int32.

#pragma once

#include "common.cuh"
#include "bf16_storage.cuh"

// The FP32 tile (conv_implicit.cu).
#define CONV_BM 128
#define CONV_BN 128
#define CONV_BK 8
#define CONV_THREADS 256
// The warp tile of the FP32 multiply (sgemm.cu's): 8 warps, 2 along m by 4 along n; a warp's
// 32 lanes form 8 x 4, each with 2 x 2 sub-tiles of 4 x 4 accumulators.
#define CONV_WM 64
#define CONV_WN 32
// Shared rows are padded by 4 floats: rows stay float4-aligned and a warp's stores of a
// "k on lanes" operand (8 slice rows x 4 columns) fall in 32 different banks.
#define CONV_PAD 4
// One block per SM is all the register cap asks for (8 warps, 12.5% theoretical occupancy;
// about 150 registers): 64 accumulators, and the gathers' state kept in registers so that
// the main loop holds no division and no rebuilt 64-bit offset (at two blocks, 128
// registers, ptxas spilled it). The 8 x 8 outer product per thread gives each warp 64
// independent FFMAs per k to hide latency with; the SASS gate holds the main loop to
// >= 75% FFMA (gemm=1 in conv_implicit.cu). Whether two blocks with recomputed state would
// run faster is a question for a GPU.
#define CONV_MIN_BLOCKS 1

// A block tile: BM x BN outputs by THREADS threads, the reduction in slices of BK, and the
// loaders' layout (file header).
template <int BM_, int BN_, int BK_, int THREADS_>
struct ConvTile {
    enum {
        BM = BM_, BN = BN_, BK = BK_, THREADS = THREADS_,
        CPL = THREADS_ / BK_,             // tile columns between a thread's gathered elements
        LOADS = BM_ * BK_ / THREADS_      // elements of each operand a thread gathers per slice
    };
    static_assert(BM_ == BN_ && LOADS * CPL == BM_ && CPL * BK_ == THREADS_,
                  "conv tile: the loaders need BM == BN == LOADS * THREADS / BK");
};

typedef ConvTile<CONV_BM, CONV_BN, CONV_BK, CONV_THREADS> ConvFp32Tile;

// A coordinate no tap reaches: NOWHERE plus any offset the kernels add to it (a tap's, a
// window's, or NOWHERE again) stays negative without overflowing, since the host keeps padded
// sizes below 2^29; conv_inside() then says no.
#define CONV_NOWHERE (-(1 << 30))

// The parameter lists of the three kernels: CONV_*_PARAMS_OF(A) for activations of type A
// (the kernel bodies below), spelled out for each element type the kernels export as the
// object-like CONV_*_PARAMS (float: conv_implicit.cu, conv_implicit_tc.cu) and
// CONV_*_BF16IO_PARAMS (bf16_bits: the _bf16io kernels), because gpucnn/toolchain/parse.py
// expands a kernel's parameter list only when it is one object-like macro.
// tests/ops/test_conv_bf16io.py checks that each spelled-out list is the _OF one.
#define CONV_FPROP_PARAMS_OF(A)                                                         \
    const A* __restrict__ x, const float* __restrict__ w, const float* __restrict__     \
    bias, A* __restrict__ y, int N, int C, int H, int W, int F, int kh, int kw, int     \
    sh, int sw, int ph, int pw, int dh, int dw, int Ho, int Wo, int groups, int         \
    has_bias, int relu
#define CONV_FPROP_PARAMS                                                               \
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ \
    bias, float* __restrict__ y, int N, int C, int H, int W, int F, int kh, int kw, int \
    sh, int sw, int ph, int pw, int dh, int dw, int Ho, int Wo, int groups, int         \
    has_bias, int relu
#define CONV_FPROP_BF16IO_PARAMS                                                        \
    const bf16_bits* __restrict__ x, const float* __restrict__ w, const float*          \
    __restrict__ bias, bf16_bits* __restrict__ y, int N, int C, int H, int W, int F,    \
    int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw, int Ho, int Wo, int \
    groups, int has_bias, int relu
#define CONV_FPROP_ARGS                                                           \
    x, w, bias, y, N, C, H, W, F, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, groups, \
    has_bias, relu
#define CONV_DGRAD_PARAMS_OF(A)                                                          \
    const A* __restrict__ dy, const float* __restrict__ w, A* __restrict__ dx,           \
    int N, int C, int H, int W, int F, int kh, int kw, int sh, int sw, int Ho, int Wo,   \
    int groups, int ah, int Hr, int i0, int istep, int ni, int ho0, int ho_step, int aw, \
    int Wr, int j0, int jstep, int nj, int wo0, int wo_step
#define CONV_DGRAD_PARAMS                                                                \
    const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,   \
    int N, int C, int H, int W, int F, int kh, int kw, int sh, int sw, int Ho, int Wo,   \
    int groups, int ah, int Hr, int i0, int istep, int ni, int ho0, int ho_step, int aw, \
    int Wr, int j0, int jstep, int nj, int wo0, int wo_step
#define CONV_DGRAD_BF16IO_PARAMS                                                         \
    const bf16_bits* __restrict__ dy, const float* __restrict__ w, bf16_bits*            \
    __restrict__ dx, int N, int C, int H, int W, int F, int kh, int kw, int sh, int sw,  \
    int Ho, int Wo, int groups, int ah, int Hr, int i0, int istep, int ni, int ho0, int  \
    ho_step, int aw, int Wr, int j0, int jstep, int nj, int wo0, int wo_step
#define CONV_DGRAD_ARGS                                                              \
    dy, w, dx, N, C, H, W, F, kh, kw, sh, sw, Ho, Wo, groups, ah, Hr, i0, istep, ni, \
    ho0, ho_step, aw, Wr, j0, jstep, nj, wo0, wo_step
#define CONV_WGRAD_PARAMS_OF(A)                                                         \
    const A* __restrict__ dy, const A* __restrict__ x, float* __restrict__ out,         \
    int N, int C, int H, int W, int F, int kh, int kw, int sh, int sw, int ph, int pw,  \
    int dh, int dw, int Ho, int Wo, int groups, int q_per_split
#define CONV_WGRAD_PARAMS                                                               \
    const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ out, \
    int N, int C, int H, int W, int F, int kh, int kw, int sh, int sw, int ph, int pw,  \
    int dh, int dw, int Ho, int Wo, int groups, int q_per_split
#define CONV_WGRAD_BF16IO_PARAMS                                                        \
    const bf16_bits* __restrict__ dy, const bf16_bits* __restrict__ x, float*           \
    __restrict__ out, int N, int C, int H, int W, int F, int kh, int kw, int sh, int    \
    sw, int ph, int pw, int dh, int dw, int Ho, int Wo, int groups, int q_per_split
#define CONV_WGRAD_ARGS                                                        \
    dy, x, out, N, C, H, W, F, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, groups, \
    q_per_split

template <class Tile>
struct __align__(16) ConvSmem {
    float a[2][Tile::BK][Tile::BM + CONV_PAD];
    float b[2][Tile::BK][Tile::BN + CONV_PAD];
};

// Where a thread gathers, in each layout (file header); every Op holds one.
template <class Tile>
struct ConvLoader {
    enum { BK = Tile::BK, CPL = Tile::CPL, LOADS = Tile::LOADS };
    int kl, cl;   // k on lanes: slice row kl, tile columns cl + e * CPL
    int kr, cr;   // k on rows:  slice row kr, tile columns cr + e * CPL

    __device__ __forceinline__ void init_loader()
    {
        kl = threadIdx.x % BK;
        cl = threadIdx.x / BK;
        kr = threadIdx.x / CPL;
        cr = threadIdx.x % CPL;
    }
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

// X[tap, window]: the input element the tap reads for the window whose top-left tap is at
// xw (x + the window's offset) and (h0, w0); 0 in the padding. Addressing from a pointer per
// window leaves one 32-bit offset to add per element in the main loop.
template <class A>
__device__ __forceinline__ float conv_x_at(const A* __restrict__ xw, int h0, int w0,
                                           const ConvTap& tap, int H, int W)
{
    const int h = h0 + tap.dh_off;
    const int w = w0 + tap.dw_off;
    return (conv_inside(h, H) && conv_inside(w, W)) ? act_load(xw + tap.offset) : 0.0f;
}

// A thread's reduction index, decoded into three digits (hi, mid, lo) = its position in
// (filter or channel, tap row, tap column) or (image, output row, output column), and
// advanced by one slice (BK) per fetch: the step, decoded once, is added digit by digit
// with at most one carry each (d_mid < mid_n, d_lo < lo_n), so the main loop divides
// nothing; only init() divides, once per thread.
struct ConvDigits {
    int hi, mid, lo;
    int d_hi, d_mid, d_lo;
    int mid_n, lo_n;

    __device__ __forceinline__ void init(int index, int step, int mid_count, int lo_count)
    {
        mid_n = mid_count > 0 ? mid_count : 1;
        lo_n = lo_count > 0 ? lo_count : 1;
        const int plane = mid_n * lo_n;
        hi = index / plane;
        int r = index - hi * plane;
        mid = r / lo_n;
        lo = r - mid * lo_n;
        d_hi = step / plane;
        r = step - d_hi * plane;
        d_mid = r / lo_n;
        d_lo = r - d_mid * lo_n;
    }

    __device__ __forceinline__ void advance()
    {
        lo += d_lo;
        const int carry_lo = lo >= lo_n;
        lo -= carry_lo ? lo_n : 0;
        mid += d_mid + carry_lo;
        const int carry_mid = mid >= mid_n;
        mid -= carry_mid ? mid_n : 0;
        hi += d_hi + carry_mid;
    }
};

// ---- the main loop -----------------------------------------------------------------------

// Store this thread's gathered elements of one slice into shared memory, a[k][m] and b[k][n]
// (rows of LDA / LDB elements), each operand in its Op layout (file header), converted by
// `cvt` to the shared type (identity for FP32 and TF32; bfloat16 for BF16: rounded once here,
// not per fragment load).
struct ConvKeep {
    __device__ __forceinline__ float operator()(float v) const { return v; }
};

// One operand (s = a or b, r = ra or rb), in the layout K_ON_LANES.
template <bool K_ON_LANES, class Op, class T, int LD, class Cvt>
__device__ __forceinline__ void conv_store_operand(T (*s)[LD], const float (&r)[Op::LOADS],
                                                   const Op& op, Cvt cvt)
{
#pragma unroll
    for (int e = 0; e < Op::LOADS; ++e) {
        if (K_ON_LANES)
            s[op.kl][op.cl + e * Op::CPL] = cvt(r[e]);
        else
            s[op.kr][op.cr + e * Op::CPL] = cvt(r[e]);
    }
}

template <class Op, class T, int LDA, int LDB, class Cvt>
__device__ __forceinline__ void conv_store_slice(T (*a)[LDA], T (*b)[LDB],
                                                 const float (&ra)[Op::LOADS],
                                                 const float (&rb)[Op::LOADS], const Op& op,
                                                 Cvt cvt)
{
    conv_store_operand<Op::A_K_ON_LANES>(a, ra, op, cvt);
    conv_store_operand<Op::B_K_ON_LANES>(b, rb, op, cvt);
}

// The FP32 math of the kernel bodies below (CUDA cores): its tile, shared memory, main loop,
// and where each accumulator lies in the tile. The tensor-core kernels (conv_implicit_tc.cu)
// pass their own (tensor_core.cuh); a body's epilogue reads acc[i][j] as tile element
// (Math::row(i), Math::col(j)) whichever math filled it.
// The gathers, over the tile and the activations' element type A (file header).
template <class Tile, class A = float>
struct ConvFprop;
template <class Tile, class A = float>
struct ConvDgrad;
template <class Tile, class A = float>
struct ConvWgrad;

struct ConvFp32 {
    typedef ConvFp32Tile Tile;
    typedef ConvSmem<Tile> Smem;
    template <class A> using FpropOp = ConvFprop<Tile, A>;   // the gathers (below)
    template <class A> using DgradOp = ConvDgrad<Tile, A>;
    template <class A> using WgradOp = ConvWgrad<Tile, A>;
    enum { TM = 8, TN = 8, WARPS_M = CONV_BM / CONV_WM, LANES_N = CONV_WN / TN };
    static_assert(WARPS_M * (CONV_BN / CONV_WN) * 32 == CONV_THREADS, "warp tiling");

    // This thread's first accumulator row and column: its warp's tile, its lane within it.
    __device__ __forceinline__ static int row0()
    {
        return (threadIdx.x / 32 % WARPS_M) * CONV_WM + (threadIdx.x % 32 / LANES_N) * 4;
    }
    __device__ __forceinline__ static int col0()
    {
        return (threadIdx.x / 32 / WARPS_M) * CONV_WN + (threadIdx.x % 32 % LANES_N) * 4;
    }
    // 2 x 2 sub-tiles of 4 x 4, WM / 2 rows and WN / 2 columns apart.
    __device__ __forceinline__ static int row(int i)
    {
        return row0() + (i / 4) * (CONV_WM / 2) + i % 4;
    }
    __device__ __forceinline__ static int col(int j)
    {
        return col0() + (j / 4) * (CONV_WN / 2) + j % 4;
    }

    // acc += the block tile's product over `slices` reduction slices. op.fetch(ra, rb)
    // gathers this thread's LOADS elements of A and of B for the next slice into registers;
    // Op::A_K_ON_LANES / B_K_ON_LANES name each operand's layout (file header). Every thread
    // of the block calls this with the same `slices` (the barrier is unconditional).
    template <class Op>
    __device__ __forceinline__ static void run(Op& op, int slices, Smem& sm,
                                               float (&acc)[TM][TN])
    {
        const int wm = row0(), wn = col0();
        float ra[Tile::LOADS], rb[Tile::LOADS];
        for (int s = 0; s <= slices; ++s) {
            // 1. Gather slice s into registers (global loads in flight during step 2).
            if (s < slices)
                op.fetch(ra, rb);
            // 2. Multiply slice s - 1 (buffer (s - 1) & 1): per k, 8 A and 8 B values from
            //    four 128-bit loads (conflict-free, as in sgemm.cu), 64 FFMA.
            if (s > 0) {
                const int buf = (s - 1) & 1;
#pragma unroll
                for (int k = 0; k < CONV_BK; ++k) {
                    const float* a = &sm.a[buf][k][wm];
                    const float* b = &sm.b[buf][k][wn];
                    const float4 a0 = *reinterpret_cast<const float4*>(a);
                    const float4 a1 = *reinterpret_cast<const float4*>(a + CONV_WM / 2);
                    const float4 b0 = *reinterpret_cast<const float4*>(b);
                    const float4 b1 = *reinterpret_cast<const float4*>(b + CONV_WN / 2);
                    const float av[TM] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
                    const float bv[TN] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
                    for (int i = 0; i < TM; ++i)
#pragma unroll
                        for (int j = 0; j < TN; ++j)
                            acc[i][j] += av[i] * bv[j];
                }
            }
            // 3. Store slice s into the other buffer, last read (slice s - 2) before the
            //    barrier that ended the previous step.
            if (s < slices)
                conv_store_slice(sm.a[s & 1], sm.b[s & 1], ra, rb, op, ConvKeep());
            __syncthreads();
        }
    }
};

// ---- forward -----------------------------------------------------------------------------

// A = W (Fg x K rows of w: contiguous in k, so k on lanes); B = X (K x N * P: consecutive
// lanes take consecutive output positions, so k on rows). A thread's four output positions
// (its B columns) are fixed for the block: their windows are computed once; its filter rows
// are a pointer advanced by BK per slice and a bit each (inside Fg or not).
template <class Tile, class A>
struct ConvFprop : ConvLoader<Tile> {
    using ConvLoader<Tile>::LOADS;
    static const bool A_K_ON_LANES = true;
    static const bool B_K_ON_LANES = false;
    const float* __restrict__ wp;  // w[g * Fg + f0 + cl, ka]: the thread's first A element
    int w_step;                    // floats between its filter rows (CPL * K)
    unsigned rows;                 // bit e: filter row e exists (f < Fg)
    int ka, kb, K;                 // the taps of the next slice, for A (on lanes) and B (rows)
    ConvDigits tap;                // kb as (input channel, tap row, tap column)
    int dh, dw, H, W;
    const A* xw[LOADS];            // x + the offset of each of the thread's windows
    int h0[LOADS], w0[LOADS];      // ... and their top-left taps

    __device__ __forceinline__ void fetch(float (&ra)[LOADS], float (&rb)[LOADS])
    {
        fetch_w(ra);
        fetch_x(rb);
        advance();
    }
    // The parts of fetch (the tensor-core kernels may load the weights their own way:
    // tensor_core.cuh, TcFprop).
    __device__ __forceinline__ void fetch_w(float (&ra)[LOADS]) const
    {
        const bool ka_ok = ka < K;
#pragma unroll
        for (int e = 0; e < LOADS; ++e)
            ra[e] = (ka_ok && (rows >> e & 1u)) ? wp[e * w_step] : 0.0f;
    }
    __device__ __forceinline__ void fetch_x(float (&rb)[LOADS]) const
    {
        ConvTap t;
        t.dh_off = kb < K ? tap.mid * dh : CONV_NOWHERE;
        t.dw_off = tap.lo * dw;
        t.offset = (tap.hi * H + (kb < K ? t.dh_off : 0)) * W + t.dw_off;
#pragma unroll
        for (int e = 0; e < LOADS; ++e)
            rb[e] = conv_x_at(xw[e], h0[e], w0[e], t, H, W);
    }
    __device__ __forceinline__ void advance()
    {
        wp += Tile::BK;
        ka += Tile::BK;
        kb += Tile::BK;
        tap.advance();
    }
    // Called once the gathers are set up, with the group's filters (rows of K taps) and the
    // tile's first filter: nothing to do for the gathers above.
    __device__ __forceinline__ void init_weights(const float*, int, int, int) {}
};

// y[n, g * Fg + f, p] = (relu)(sum_k w[g * Fg + f, k] * X[k, (n, p)] + bias[g * Fg + f]).
// Grid (ceil(N * P / BN), ceil(Fg / BM), groups). `bias` is read only when has_bias.
template <class Math, class A>
__device__ __forceinline__ void conv_fprop(CONV_FPROP_PARAMS_OF(A))
{
    __shared__ typename Math::Smem sm;
    const int g = blockIdx.z;
    const int Cg = C / groups, Fg = F / groups;
    const int K = Cg * kh * kw;
    const int P = Ho * Wo;
    const int NP = N * P;
    typedef typename Math::Tile Tile;
    const int q0 = blockIdx.x * Tile::BN;  // first output position (n * P + p) of the tile
    const int f0 = blockIdx.y * Tile::BM;  // first filter of the tile, within the group

    typename Math::template FpropOp<A> op;   // ConvFprop<Tile, A>, or a tensor-core math's own
                                             // (TcFprop)
    op.init_loader();
    op.wp = w + (long long)g * Fg * K + (long long)(f0 + op.cl) * K + op.kl;
    op.w_step = Tile::CPL * K;
    op.rows = 0;
#pragma unroll
    for (int e = 0; e < Tile::LOADS; ++e)
        op.rows |= (f0 + op.cl + e * Tile::CPL < Fg ? 1u : 0u) << e;
    op.ka = op.kl;
    op.kb = op.kr;
    op.K = K;
    op.tap.init(op.kr, Tile::BK, kh, kw);
    op.dh = dh;
    op.dw = dw;
    op.H = H;
    op.W = W;
#pragma unroll
    for (int e = 0; e < Tile::LOADS; ++e) {
        const int q = q0 + op.cr + e * Tile::CPL;
        if (q < NP) {
            const int n = q / P;
            const int p = q - n * P;
            const int ho = p / Wo;
            const ConvWindow win = conv_window(n, ho, p - ho * Wo, g * Cg, C, H, W, sh, sw,
                                               ph, pw);
            op.xw[e] = x + win.offset;
            op.h0[e] = win.h0;
            op.w0[e] = win.w0;
        } else {
            op.xw[e] = x;
            op.h0[e] = op.w0[e] = CONV_NOWHERE;
        }
    }

    op.init_weights(w + (long long)g * Fg * K, f0, Fg, K);

    float acc[Math::TM][Math::TN] = {};
    Math::run(op, (K + Tile::BK - 1) / Tile::BK, sm, acc);

#pragma unroll
    for (int j = 0; j < Math::TN; ++j) {
        const int q = q0 + Math::col(j);
        if (q >= NP)
            continue;
        const int n = q / P;
        A* out = y + (long long)n * F * P + (long long)g * Fg * P + (q - n * P);
#pragma unroll
        for (int i = 0; i < Math::TM; ++i) {
            const int f = f0 + Math::row(i);
            if (f >= Fg)
                continue;
            float v = acc[i][j];
            if (has_bias)
                v += bias[g * Fg + f];
            if (relu && v < 0.0f)  // a NaN stays NaN
                v = 0.0f;
            act_store(out + f * P, v);   // rounded here, once, for bf16 y
        }
    }
}

// ---- backward-data -----------------------------------------------------------------------

// The taps of one phase along one axis: i = first + u * step for u < count, reading output
// row (or column) t + out0 - u * out_step for phase row t.
struct DgradAxis {
    int first, step, count, out0, out_step;
};

// A = W' (Cg x T: A[c, t] = w[g * Fg + f, c, i, j]) and B = DY (T x phase pixels), both
// with t on rows: one t per slice serves the thread's A and B elements, and consecutive
// lanes read consecutive pixels of dy. Reduction index t = (f * ni + u) * nj + v of a phase
// (file header): tap (i, j) = (i0 + u * istep, j0 + v * jstep) of filter f, reading output
// row th + dho and column tw + dwo for phase pixel (th, tw) (dho = NOWHERE past T: never
// inside). The thread's input channels are a pointer and a bit each (inside Cg or not).
template <class Tile, class A>
struct ConvDgrad : ConvLoader<Tile> {
    using ConvLoader<Tile>::LOADS;
    static const bool A_K_ON_LANES = false;
    static const bool B_K_ON_LANES = false;
    const float* __restrict__ w;
    int wc;                        // w[g * Fg, c0 + cr, 0, 0]: the thread's first channel, and
    int c_step;                    // the floats between its channels (CPL * kh * kw); w fits
                                   // int32 (the host checks), and an int offset added to the
                                   // parameter pointer is cheaper than a 64-bit pointer kept
    unsigned chans;                // bit e: channel e exists (c < Cg)
    int t, T, f_step, kw, P, Ho, Wo;   // f_step = Cg * kh * kw: one filter in w
    ConvDigits tap;                // t as (f, u, v)
    DgradAxis ax_h, ax_w;
    const A* dyp[LOADS];           // dy at each of the thread's pixels (th, tw) in plane 0
    int th[LOADS], tw[LOADS];      // ... and the pixels (NOWHERE past the phase's pixels)

    __device__ __forceinline__ void fetch(float (&ra)[LOADS], float (&rb)[LOADS])
    {
        fetch_w(ra);
        fetch_dy(rb);
        advance();
    }
    // The parts of fetch (the tensor-core kernels may load the weights their own way:
    // tensor_core.cuh, TcDgrad).
    __device__ __forceinline__ void fetch_w(float (&ra)[LOADS]) const
    {
        const bool ok = t < T;
        const int w_off = tap.hi * f_step + (ax_h.first + tap.mid * ax_h.step) * kw +
                          ax_w.first + tap.lo * ax_w.step;
        const int wt = wc + w_off;
#pragma unroll
        for (int e = 0; e < LOADS; ++e)
            ra[e] = (ok && (chans >> e & 1u)) ? w[wt + e * c_step] : 0.0f;
    }
    __device__ __forceinline__ void fetch_dy(float (&rb)[LOADS]) const
    {
        const bool ok = t < T;
        const int dho = ok ? ax_h.out0 - tap.mid * ax_h.out_step : CONV_NOWHERE;
        const int dwo = ax_w.out0 - tap.lo * ax_w.out_step;
        const int dy_off = tap.hi * P + (ok ? dho : 0) * Wo + dwo;
#pragma unroll
        for (int e = 0; e < LOADS; ++e) {
            const bool inside = conv_inside(th[e] + dho, Ho) && conv_inside(tw[e] + dwo, Wo);
            rb[e] = inside ? act_load(dyp[e] + dy_off) : 0.0f;
        }
    }
    __device__ __forceinline__ void advance()
    {
        t += Tile::BK;
        tap.advance();
    }
    // Called once the gathers are set up, with the group's filters, the tile's first
    // channel, Cg and the taps per filter: nothing to do for the gathers above.
    __device__ __forceinline__ void init_weights(const float*, int, int, int) {}
};

// dx[n, g * Cg + c, ah + th * sh, aw + tw * sw] = sum over the phase's t of W'[c, t] *
// DY[t, (n, th, tw)], for the N * Hr * Wr pixels of one phase (th < Hr, tw < Wr; the taps
// i0, istep, ni, ho0, ho_step and j0, ... of the file header). Every pixel of dx belongs to
// exactly one phase and is written by it (0 where no tap reaches it).
// Grid (ceil(N * Hr * Wr / BN), ceil(Cg / BM), groups).
template <class Math, class A>
__device__ __forceinline__ void conv_dgrad(CONV_DGRAD_PARAMS_OF(A))
{
    __shared__ typename Math::Smem sm;
    const int g = blockIdx.z;
    const int Cg = C / groups, Fg = F / groups;
    const int P = Ho * Wo;
    const int R = Hr * Wr;                // pixels of the phase per image
    const int NR = N * R;
    typedef typename Math::Tile Tile;
    const int q0 = blockIdx.x * Tile::BN;  // first phase pixel n * R + th * Wr + tw of the tile
    const int c0 = blockIdx.y * Tile::BM;  // first input channel of the tile, within the group

    typename Math::template DgradOp<A> op;   // ConvDgrad<Tile, A>, or a tensor-core math's own
                                             // (TcDgrad)
    op.init_loader();
    op.w = w;
    op.wc = (g * Fg * Cg + c0 + op.cr) * kh * kw;
    op.c_step = Tile::CPL * kh * kw;
    op.chans = 0;
#pragma unroll
    for (int e = 0; e < Tile::LOADS; ++e)
        op.chans |= (c0 + op.cr + e * Tile::CPL < Cg ? 1u : 0u) << e;
    op.t = op.kr;
    op.T = Fg * ni * nj;
    op.f_step = Cg * kh * kw;
    op.tap.init(op.kr, Tile::BK, ni, nj);
    op.kw = kw;
    op.P = P;
    op.Ho = Ho;
    op.Wo = Wo;
    op.ax_h = DgradAxis{i0, istep, ni, ho0, ho_step};
    op.ax_w = DgradAxis{j0, jstep, nj, wo0, wo_step};
#pragma unroll
    for (int e = 0; e < Tile::LOADS; ++e) {
        const int q = q0 + op.cr + e * Tile::CPL;
        if (q < NR) {
            const int n = q / R;
            const int r = q - n * R;
            op.th[e] = r / Wr;
            op.tw[e] = r - op.th[e] * Wr;
            op.dyp[e] = dy + ((long long)n * F * P + (long long)g * Fg * P + op.th[e] * Wo +
                              op.tw[e]);
        } else {
            op.th[e] = op.tw[e] = CONV_NOWHERE;
            op.dyp[e] = dy;
        }
    }

    op.init_weights(w + (long long)g * Fg * Cg * kh * kw, c0, Cg, kh * kw);

    float acc[Math::TM][Math::TN] = {};
    Math::run(op, (op.T + Tile::BK - 1) / Tile::BK, sm, acc);

#pragma unroll
    for (int j = 0; j < Math::TN; ++j) {
        const int q = q0 + Math::col(j);
        if (q >= NR)
            continue;
        const int n = q / R;
        const int r = q - n * R;
        const int th = r / Wr;
        const int h = ah + th * sh;
        const int wc = aw + (r - th * Wr) * sw;
        A* out = dx + (long long)n * C * H * W + ((g * Cg) * H + h) * W + wc;
#pragma unroll
        for (int i = 0; i < Math::TM; ++i) {
            const int c = c0 + Math::row(i);
            if (c < Cg)
                act_store(out + c * H * W, acc[i][j]);
        }
    }
}

// ---- backward-weights --------------------------------------------------------------------

// A = DY (Fg x q) and B = X^T (q x K), both with q on lanes: consecutive lanes read
// consecutive output positions of dy and of x's windows, and one q per slice serves both.
// A thread's four B columns (taps k) are fixed for the block: decoded once; its filter rows
// are a bit each (inside Fg or not). Its position q moves by BK per slice: the digits
// (image, output row, output column) and, from their changes, the pointers into dy and into
// x's window, so the main loop neither divides nor rebuilds 64-bit offsets.
template <class Tile, class A>
struct ConvWgrad : ConvLoader<Tile> {
    using ConvLoader<Tile>::LOADS;
    static const bool A_K_ON_LANES = true;
    static const bool B_K_ON_LANES = true;
    const A* dq;                   // dy[n, g * Fg + f0 + cl, ho, wo] of the current q
    const A* xw;                   // x[n, g * Cg, h0, w0]: the window's top-left tap
    int f_step;                    // floats between the thread's filter rows (CPL * P)
    unsigned rows;                 // bit e: filter row e exists (f < Fg)
    int q, q_end;                  // the output position of the next slice, and the split's end
    ConvDigits pos;                // q as (n, ho, wo)
    int h0, w0, sh, sw, H, W, Wo;
    long long x_image, dy_image;   // elements of one image of x, of dy
    ConvTap taps[LOADS];

    __device__ __forceinline__ void fetch(float (&ra)[LOADS], float (&rb)[LOADS])
    {
        fetch_dy(ra);
        fetch_x(rb);
        advance();
    }
    // The parts of fetch (the tensor-core kernels may load dy their own way: tensor_core.cuh,
    // TcWgrad). Past the split's end nothing is read: no row, and a window nowhere.
    __device__ __forceinline__ void fetch_dy(float (&ra)[LOADS]) const
    {
        const bool valid = q < q_end;
#pragma unroll
        for (int e = 0; e < LOADS; ++e)
            ra[e] = (valid && (rows >> e & 1u)) ? act_load(dq + e * f_step) : 0.0f;
    }
    __device__ __forceinline__ void fetch_x(float (&rb)[LOADS]) const
    {
        const int top = q < q_end ? h0 : CONV_NOWHERE;
#pragma unroll
        for (int e = 0; e < LOADS; ++e) {
            const int h = top + taps[e].dh_off;
            const int w = w0 + taps[e].dw_off;
            rb[e] = (conv_inside(h, H) && conv_inside(w, W)) ? act_load(xw + taps[e].offset)
                                                             : 0.0f;
        }
    }
    // Called once the gathers are set up, with dy at the group's first filter, the tile's
    // first filter, Fg, F, P and the split's first position and length: nothing to do for
    // the gathers above.
    __device__ __forceinline__ void init_dy(const A*, int, int, int, int, int, int) {}
    __device__ __forceinline__ void advance()
    {
        const int n = pos.hi, ho = pos.mid, wo = pos.lo;
        q += Tile::BK;
        pos.advance();
        const int dn = pos.hi - n, dho = pos.mid - ho, dwo = pos.lo - wo;
        h0 += dho * sh;
        w0 += dwo * sw;
        xw += dn * x_image + (dho * sh * W + dwo * sw);
        dq += dn * dy_image + (dho * Wo + dwo);
    }
};

// out[s * F * K + (g * Fg + f) * K + k] = sum over q in split s of dy[n, g * Fg + f, p] *
// X[k, q] (q = n * P + p; split s = blockIdx.z / groups covers [s * q_per_split, (s + 1) *
// q_per_split) of N * P; q_per_split is a multiple of CONV_BK). With one split, out is dw.
// Grid (ceil(K / BN), ceil(Fg / BM), groups * splits).
template <class Math, class A>
__device__ __forceinline__ void conv_wgrad(CONV_WGRAD_PARAMS_OF(A))
{
    __shared__ typename Math::Smem sm;
    const int g = blockIdx.z % groups;
    const int split = blockIdx.z / groups;
    const int Cg = C / groups, Fg = F / groups;
    const int K = Cg * kh * kw;
    const int P = Ho * Wo;
    const int NP = N * P;
    typedef typename Math::Tile Tile;
    const int k0 = blockIdx.x * Tile::BN;  // first tap of the tile
    const int f0 = blockIdx.y * Tile::BM;  // first filter of the tile, within the group

    typename Math::template WgradOp<A> op;   // ConvWgrad<Tile, A>, or a tensor-core math's own
                                             // (TcWgrad)
    op.init_loader();
    const int q_begin = split * q_per_split;
    op.f_step = Tile::CPL * P;
    op.rows = 0;
#pragma unroll
    for (int e = 0; e < Tile::LOADS; ++e)
        op.rows |= (f0 + op.cl + e * Tile::CPL < Fg ? 1u : 0u) << e;
    op.q = q_begin + op.kl;
    op.q_end = NP - q_begin < q_per_split ? NP : q_begin + q_per_split;
    op.pos.init(op.q, Tile::BK, Ho, Wo);
    const ConvWindow win = conv_window(op.pos.hi, op.pos.mid, op.pos.lo, g * Cg, C, H, W, sh,
                                       sw, ph, pw);
    op.xw = x + win.offset;
    op.h0 = win.h0;
    op.w0 = win.w0;
    op.dq = dy + ((long long)op.pos.hi * F * P + (long long)(g * Fg + f0 + op.cl) * P +
                  op.pos.mid * Wo + op.pos.lo);
    op.sh = sh;
    op.sw = sw;
    op.H = H;
    op.W = W;
    op.Wo = Wo;
    op.x_image = (long long)C * H * W;
    op.dy_image = (long long)F * P;
#pragma unroll
    for (int e = 0; e < Tile::LOADS; ++e)
        op.taps[e] = conv_tap(k0 + op.cl + e * Tile::CPL, K, kh, kw, dh, dw, H, W);

    op.init_dy(dy + (long long)g * Fg * P, f0, Fg, F, P, q_begin, q_per_split);

    float acc[Math::TM][Math::TN] = {};
    const int count = op.q_end > q_begin ? op.q_end - q_begin : 0;
    Math::run(op, (count + Tile::BK - 1) / Tile::BK, sm, acc);

    float* part = out + (long long)split * F * K;
#pragma unroll
    for (int i = 0; i < Math::TM; ++i) {
        const int f = f0 + Math::row(i);
        if (f >= Fg)
            continue;
#pragma unroll
        for (int j = 0; j < Math::TN; ++j) {
            const int k = k0 + Math::col(j);
            if (k < K)
                part[(g * Fg + f) * K + k] = acc[i][j];
        }
    }
}
