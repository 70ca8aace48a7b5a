// Tensor-core math for the 64 x 64 x 16 implicit-GEMM tile of conv_implicit.cuh: the main
// loop of the TF32, 3xTF32 and BF16 kernels (conv_implicit_tc.cu, sgemm_tc.cu), written with
// CUDA's WMMA API (nvcuda::wmma; the emulator provides it, gpucnn/backends/emu/cuda_emu.h).
//
// Precisions (gpucnn/ops/precision.py holds their plain references and the host's choice):
//   TcTf32    operands rounded to TF32 (__float_to_tf32: cvt.rna, 10 mantissa bits), one
//             product per k step, FP32 accumulation;
//   Tc3xTf32  each operand split into big = tf32(x) and small = tf32(x - big); the product is
//             accumulated as small*big + big*small + big*big (the small terms first, so the
//             big product does not swamp them; small*small, ~2^-22 relative, is dropped):
//             FP32-level accuracy from three TF32 products (CUTLASS's 3xTF32);
//   TcBf16    operands rounded to bfloat16 (round to nearest even, 7 mantissa bits) once,
//             as they are stored into shared memory; FP32 accumulation.
// Operands stay FP32 in global memory in every precision: the loads, the gathers and the
// epilogues are the FP32 kernels' own (conv_implicit.cuh), only the multiply differs.
//
// Layout: the gathered slices are stored as in the FP32 loop, a[k][m] and b[k][n] (rows
// padded so that WMMA's rules hold: ldm a multiple of 16 bytes, fragment pointers 32-byte
// aligned), which WMMA reads as a column-major A and a row-major B. The 8 warps of a block
// own 16 x 32 parts of the 64 x 64 tile (4 along m, 2 along n): two 16 x 16 accumulator
// fragments each. After the loop the fragments go to shared memory (the operand buffers,
// no longer read) and every thread takes back its 4 x 4 accumulators in the FP32 loop's
// layout, so that the kernels' epilogues stay the FP32 ones. Fragment element order is
// unspecified by CUDA: only element-wise operations touch fragment elements here.
#pragma once

#include "conv_implicit.cuh"

#ifndef __GPUCNN_EMU__
#include <cuda_bf16.h>
#include <mma.h>
#endif

// Tensor-core TF32 and BF16 need sm_80. The compile gate also builds sm_75, where these
// kernels compile to a trap: the host never launches them below compute capability 8.0
// (their precisions fall back to fp32 there, gpucnn/ops/precision.py).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define TC_ARCH_OK 0
#else
#define TC_ARCH_OK 1
#endif

// Blocks per SM the register caps aim for: the FP32 kernels' three (80 registers) for TF32 and
// BF16; two for 3xTF32 (128), whose split fragments at 80 made ptxas spill (sm_90 fprop).
#define TC_MIN_BLOCKS CONV_MIN_BLOCKS
#define TC3X_MIN_BLOCKS 2

#define TC_WARPS_M 4   // warps along m: 16 rows each
#define TC_FN 2        // 16 x 16 accumulator fragments per warp along n

#if TC_WARPS_M * 16 != CONV_BM || (CONV_THREADS / 32 / TC_WARPS_M) * 16 * TC_FN != CONV_BN
#error "tensor_core.cuh: the warps' 16 x (16 * TC_FN) parts must cover the CONV_BM x CONV_BN tile"
#endif

#if TC_ARCH_OK

// The precisions: what shared memory holds (Stored, and the functor converting a gathered
// float to it), the fragment element type, the k of one mma step, the row padding (16 bytes
// of elements) and the number of products per step.
struct TcTf32 {
    typedef float Stored;
    typedef nvcuda::wmma::precision::tf32 Frag;
    enum { K = 8, PAD = 4, TERMS = 1 };
    // Stored as FP32: the rounding to TF32 is done per fragment, where 3xTF32 needs both parts.
    __device__ __forceinline__ float operator()(float v) const { return v; }
    // The operand as the tensor core should see it: rounded (cvt.rna); unconverted FP32
    // would be truncated by the hardware instead.
    template <class Frag>
    __device__ __forceinline__ static void prepare(Frag& big, Frag&)
    {
#pragma unroll
        for (int t = 0; t < big.num_elements; ++t)
            big.x[t] = nvcuda::wmma::__float_to_tf32(big.x[t]);
    }
};

struct Tc3xTf32 : TcTf32 {
    enum { TERMS = 3 };
    // big = the rounded operand, small = the rounded remainder.
    template <class Frag>
    __device__ __forceinline__ static void prepare(Frag& big, Frag& small)
    {
#pragma unroll
        for (int t = 0; t < big.num_elements; ++t) {
            const float v = big.x[t];
            const float hi = nvcuda::wmma::__float_to_tf32(v);
            big.x[t] = hi;
            small.x[t] = nvcuda::wmma::__float_to_tf32(v - hi);
        }
    }
};

struct TcBf16 {
    typedef __nv_bfloat16 Stored;
    typedef __nv_bfloat16 Frag;
    enum { K = 16, PAD = 8, TERMS = 1 };
    __device__ __forceinline__ __nv_bfloat16 operator()(float v) const
    {
        return __float2bfloat16_rn(v);
    }
    template <class Frag>
    __device__ __forceinline__ static void prepare(Frag&, Frag&) {}   // rounded when stored
};

template <class P>
union __align__(32) TcSmem {
    struct {
        typename P::Stored a[2][CONV_BK][CONV_BM + P::PAD];
        typename P::Stored b[2][CONV_BK][CONV_BN + P::PAD];
    } ab;
    float c[CONV_BM][CONV_BN + CONV_PAD];   // the accumulators, after the main loop
};

template <class P>
using TcAcc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, P::K, float>;

// c[j] += the warp's 16 x 16 products of one shared slice: a = &a[0][wm] (column-major A,
// rows of LD), b = &b[0][wn] (row-major B).
template <class P>
__device__ __forceinline__ void tc_multiply(TcAcc<P> (&c)[TC_FN], const typename P::Stored* a,
                                            const typename P::Stored* b)
{
    using namespace nvcuda;
    constexpr int LD = CONV_BM + P::PAD;
    static_assert(CONV_BM == CONV_BN, "one row length for a and b");
#pragma unroll
    for (int k = 0; k < CONV_BK; k += P::K) {
        wmma::fragment<wmma::matrix_a, 16, 16, P::K, typename P::Frag, wmma::col_major> fa, fa_s;
        wmma::fragment<wmma::matrix_b, 16, 16, P::K, typename P::Frag, wmma::row_major> fb, fb_s;
        wmma::load_matrix_sync(fa, a + k * LD, LD);
        P::prepare(fa, fa_s);
#pragma unroll
        for (int j = 0; j < TC_FN; ++j) {
            wmma::load_matrix_sync(fb, b + k * LD + 16 * j, LD);
            P::prepare(fb, fb_s);
            if (P::TERMS == 3) {
                wmma::mma_sync(c[j], fa_s, fb, c[j]);
                wmma::mma_sync(c[j], fa, fb_s, c[j]);
            }
            wmma::mma_sync(c[j], fa, fb, c[j]);
        }
    }
}

// conv_mainloop's contract with tensor cores: acc = the block tile's product over `slices`
// slices of op's gathers, acc[i][j] = tile element (ty * TM + i, tx * TN + j).
template <class P, class Op>
__device__ __forceinline__ void tc_mainloop(const Op& op, int slices, TcSmem<P>& sm,
                                            float (&acc)[CONV_TM][CONV_TN])
{
    using namespace nvcuda;
    const int lane = threadIdx.x % CONV_LANES;
    const int row = threadIdx.x / CONV_LANES;
    const int warp = threadIdx.x / 32;
    const int wm = (warp % TC_WARPS_M) * 16;
    const int wn = (warp / TC_WARPS_M) * 16 * TC_FN;
    TcAcc<P> c[TC_FN];
#pragma unroll
    for (int j = 0; j < TC_FN; ++j)
        wmma::fill_fragment(c[j], 0.0f);
    float ra[CONV_LOADS], rb[CONV_LOADS];
    for (int s = 0; s <= slices; ++s) {
        // As conv_mainloop: gather slice s, multiply slice s - 1, store slice s.
        if (s < slices)
            op.fetch(s, ra, rb);
        if (s > 0)
            tc_multiply<P>(c, &sm.ab.a[(s - 1) & 1][0][wm], &sm.ab.b[(s - 1) & 1][0][wn]);
        if (s < slices)
            conv_store_slice<Op>(sm.ab.a[s & 1], sm.ab.b[s & 1], ra, rb, lane, row, P());
        __syncthreads();
    }
    // The barrier above ended every read of the operand buffers: c may overwrite them.
#pragma unroll
    for (int j = 0; j < TC_FN; ++j)
        wmma::store_matrix_sync(&sm.c[wm][wn + 16 * j], c[j], CONV_BN + CONV_PAD,
                                wmma::mem_row_major);
    __syncthreads();
    const int tx = threadIdx.x % (CONV_BN / CONV_TN);
    const int ty = threadIdx.x / (CONV_BN / CONV_TN);
#pragma unroll
    for (int i = 0; i < CONV_TM; ++i)
#pragma unroll
        for (int j = 0; j < CONV_TN; ++j)
            acc[i][j] = sm.c[ty * CONV_TM + i][tx * CONV_TN + j];
}

template <class P>
struct ConvTc {
    typedef TcSmem<P> Smem;
    template <class Op>
    __device__ __forceinline__ static void run(const Op& op, int slices, Smem& sm,
                                               float (&acc)[CONV_TM][CONV_TN])
    {
        tc_mainloop<P>(op, slices, sm, acc);
    }
};

#else  // below sm_80: the same names, a trap if ever launched

struct TcTf32 {};
struct Tc3xTf32 {};
struct TcBf16 {};

template <class P>
struct ConvTc {
    typedef ConvSmem Smem;
    template <class Op>
    __device__ __forceinline__ static void run(const Op&, int, Smem&,
                                               float (&)[CONV_TM][CONV_TN])
    {
        __trap();
    }
};

#endif  // TC_ARCH_OK
