// Tensor-core math for the implicit-GEMM kernel bodies of conv_implicit.cuh: the main loop of
// the TF32, 3xTF32 and BF16 kernels (conv_implicit_tc.cu, sgemm_tc.cu), written with CUDA's
// WMMA API (nvcuda::wmma; the emulator provides it, gpucnn/backends/emu/cuda_emu.h).
//
// Precisions (gpucnn/ops/precision.py holds their plain references and the host's choice):
//   TcTf32    operands rounded to TF32 (__float_to_tf32: cvt.rna, 10 mantissa bits) once,
//             as they are stored into shared memory; one product per k step, FP32
//             accumulation;
//   Tc3xTf32  each operand split into big = tf32(x) and small = tf32(x - big); the product is
//             accumulated as small*big + big*small + big*big (the small terms first, so the
//             big product does not swamp them; small*small, ~2^-22 relative, is dropped):
//             FP32-level accuracy from three TF32 products (CUTLASS's 3xTF32);
//   TcBf16    operands rounded to bfloat16 (round to nearest even, 7 mantissa bits) once,
//             as they are stored into shared memory; FP32 accumulation.
// Operands stay in global memory as the caller holds them (FP32, or bf16 activations for the
// _bf16io convolutions: converted to float as gathered, conv_implicit.cuh) in every precision:
// the gathers and the epilogues are the FP32 kernels' own (conv_implicit.cuh), only the
// multiply differs, and the staging where
// an operand is contiguous: the forward weights and a 1 x 1 filter's backward-data weights
// are loaded as float4 chunks when aligned (TcFprop, TcDgrad; TcStaging says how a slice
// reaches shared memory), as the SGEMM's operands are (sgemm_tc.cu, gemm_operand.cuh).
//
// Tile: the FP32 kernels' 128 x 128 block tile and warp tiles (8 warps, 2 along m by 4 along
// n, 64 x 32 each), with slices of TC_BK = 16. A warp holds its 64 x 32 part as 4 x 2
// accumulator fragments of 16 x 16, so each k step loads 4 A and 2 B fragments for 8 mma
// (24 with 3xTF32): the larger the warp tile, the more tensor-core work per gathered and per
// shared-loaded element (the 64 x 64 tile this replaced had 2 fragments per warp; its main
// loop was ~6% HMMA). Layout: the gathered slices are stored as in the FP32 loop, a[k][m] and
// b[k][n] (rows padded so that WMMA's rules hold: ldm a multiple of 16 bytes, fragment pointers
// 32-byte aligned), which WMMA reads as a column-major A and a row-major B. After the loop
// each warp moves its fragments through its own part of shared memory (the operand buffers,
// no longer read), half of its tile at a time, into the FP32 layout of accumulators
// (ConvFp32::row / col), so the bodies' epilogues are shared. Fragment element order is
// unspecified by CUDA: only element-wise operations touch fragment elements here.
#pragma once

#include "conv_implicit.cuh"
#include "gemm_operand.cuh"

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

// One block per SM, as for the FP32 tile (conv_implicit.cuh): 64 accumulators per thread
// (8 fragments) plus the operand fragments (twice, split, for 3xTF32) and the gathers' state.
#define TC_MIN_BLOCKS 1

// The tensor-core tile (gpucnn/ops/conv/implicit.py and ops/gemm.py read these): the FP32
// kernels' block and warp tiles with a longer slice (two TF32 k steps, one BF16 one).
#define TC_BM 128
#define TC_BN 128
#define TC_BK 16
#define TC_THREADS 256

#if TC_BM != CONV_BM || TC_BN != CONV_BN || TC_THREADS != CONV_THREADS
#error "tensor_core.cuh: the accumulators take the FP32 layout, so the block tiles must match"
#endif

typedef ConvTile<TC_BM, TC_BN, TC_BK, TC_THREADS> TcTile;

// Fragments of 16 x 16 per warp tile (CONV_WM x CONV_WN), along m and along n.
#define TC_FM (CONV_WM / 16)
#define TC_FN (CONV_WN / 16)

// How a slice travels from op to shared memory: the convolution gathers fetch into registers
// (ra, rb) and are stored in their layouts by conv_store_slice; an Op with loaders of its own
// (sgemm_tc.cu's TcGemmOp, TcFprop below: float4 chunks, gemm_operand.cuh) specialises this.
// VEC: which of the main loop's two versions runs (ConvTc::run), vector(op) says, once per
// launch; an Op with one way of loading returns false, and the VEC version is never built.
template <class Op>
struct TcStaging {
    __device__ __forceinline__ static bool vector(const Op&) { return false; }
    template <bool VEC>
    __device__ __forceinline__ static void fetch(Op& op, float (&ra)[Op::LOADS],
                                                 float (&rb)[Op::LOADS])
    {
        op.fetch(ra, rb);
    }
    template <bool VEC, class T, int LDA, int LDB, class Cvt>
    __device__ __forceinline__ static void store(const Op& op, T (*a)[LDA], T (*b)[LDB],
                                                 const float (&ra)[Op::LOADS],
                                                 const float (&rb)[Op::LOADS], Cvt cvt)
    {
        conv_store_slice(a, b, ra, rb, op, cvt);
    }
};

#if TC_ARCH_OK

// The precisions: what shared memory holds (Stored, and the functor converting a gathered
// float to it), the fragment element type, the k of one mma step, the row padding (16 bytes
// of elements) and the number of products per step.
struct TcTf32 {
    typedef float Stored;
    typedef nvcuda::wmma::precision::tf32 Frag;
    enum { K = 8, PAD = 4, TERMS = 1 };
    // The operand as the tensor core should see it: rounded (cvt.rna; unconverted FP32 would
    // be truncated by the hardware instead), once, as it is stored into shared memory: each
    // element is then converted by the one thread that stores it, not by every fragment load
    // that reads it (a slice's element is read by 2 or 4 warps; rounding per fragment cost a
    // thread 48 conversions per slice, here 16). The rounded value is a TF32 one, which the
    // fragment holds unchanged: the same operand either way.
    __device__ __forceinline__ float operator()(float v) const
    {
        return nvcuda::wmma::__float_to_tf32(v);
    }
    template <class Frag>
    __device__ __forceinline__ static void prepare(Frag&, Frag&) {}   // rounded when stored
};

struct Tc3xTf32 {
    typedef float Stored;
    typedef nvcuda::wmma::precision::tf32 Frag;
    enum { K = 8, PAD = 4, TERMS = 3 };
    // Stored as FP32: split per fragment, where both parts are needed.
    __device__ __forceinline__ float operator()(float v) const { return v; }
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
        typename P::Stored a[2][TC_BK][TC_BM + P::PAD];
        typename P::Stored b[2][TC_BK][TC_BN + P::PAD];
    } ab;
    // The accumulators after the main loop: each warp's half warp tile in turn.
    float c[TC_THREADS / 32][CONV_WM / 2][CONV_WN + CONV_PAD];
};

// wmma::load_matrix_sync(f, p, ldm) for a p in shared memory, as WMMA's own PTX instruction
// in its .shared form (wmma.load.{a,b}.sync.aligned.<layout>.<shape>.shared.<type>) with a
// 32-bit shared address. Why: load_matrix_sync takes a generic pointer and NVVM keeps it
// generic (the PTX says wmma.load without a state space, though after inlining the pointer
// is an index into the kernel's own __shared__ TcSmem; __builtin_assume(__isShared(p)) did
// not change it either, NVRTC 12.9 and 13.5), so ptxas emitted generic LD with 64-bit
// address arithmetic: 48 per TF32 slice. The .shared form is the same load (mma.h's load_matrix_sync
// is that instruction, generic, writing the fragment's registers in the same order: see
// __mma_tf32_m16n16k8_ld_a in crt/mma.hpp), so the fragments, and every product, are the
// same. Only the layouts and types tc_multiply reads are here (A column-major, B row-major;
// TF32 m16n16k8, BF16 m16n16k16); WMMA's rules still hold: ldm in elements, a multiple of
// 16 bytes, p 32-byte aligned. volatile and "memory": the compiler sees the asm's inputs
// only (an address), so without them it could merge the loads of slices s and s + 2 (the
// same buffer) or move them across the barrier and the stores of the next slice. The
// emulator has no PTX: load_matrix_sync there. (ptxas turns the BF16 loads into LDSM.)
#ifndef __GPUCNN_EMU__
namespace tc_detail {
using namespace nvcuda;
template <class Frag> struct SharedLoad;   // the PTX instruction of one fragment type
#define TC_SHARED_LOAD(USE, LAYOUT, SHAPE, TYPE, ELEM, PTX)                                 \
    template <>                                                                            \
    struct SharedLoad<wmma::fragment<wmma::USE, 16, 16, SHAPE, TYPE, wmma::LAYOUT>> {      \
        typedef ELEM Elem;                                                                 \
        __device__ __forceinline__ static void load(unsigned (&r)[4], const Elem* p,        \
                                                    unsigned ldm)                          \
        {                                                                                  \
            const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(p));      \
            asm volatile(PTX " {%0, %1, %2, %3}, [%4], %5;"                                \
                         : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                  \
                         : "r"(addr), "r"(ldm)                                             \
                         : "memory");                                                      \
        }                                                                                  \
    };
TC_SHARED_LOAD(matrix_a, col_major, 8, wmma::precision::tf32, float,
               "wmma.load.a.sync.aligned.col.m16n16k8.shared.tf32")
TC_SHARED_LOAD(matrix_b, row_major, 8, wmma::precision::tf32, float,
               "wmma.load.b.sync.aligned.row.m16n16k8.shared.tf32")
TC_SHARED_LOAD(matrix_a, col_major, 16, __nv_bfloat16, __nv_bfloat16,
               "wmma.load.a.sync.aligned.col.m16n16k16.shared.bf16")
TC_SHARED_LOAD(matrix_b, row_major, 16, __nv_bfloat16, __nv_bfloat16,
               "wmma.load.b.sync.aligned.row.m16n16k16.shared.bf16")
#undef TC_SHARED_LOAD
}  // namespace tc_detail
#endif

template <class Frag, class T>
__device__ __forceinline__ void tc_load_shared(Frag& f, const T* p, unsigned ldm)
{
#ifdef __GPUCNN_EMU__
    nvcuda::wmma::load_matrix_sync(f, p, ldm);
#else
    // Four 32-bit registers per lane for every fragment here (4 TF32, 8 BF16 elements),
    // as the fragment holds them (crt/mma.hpp reads a fragment as int[] the same way).
    static_assert(sizeof(f.x) == 4 * sizeof(unsigned), "a fragment of four registers");
    unsigned r[4];
    tc_detail::SharedLoad<Frag>::load(r, p, ldm);
    memcpy(&f.x[0], r, sizeof r);
#endif
}

template <class P>
using TcAcc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, P::K, float>;

// c += the warp's products of one shared slice: a = &a[0][first row of the warp tile]
// (column-major A, rows of LD), b = &b[0][its first column] (row-major B).
template <class P>
__device__ __forceinline__ void tc_multiply(TcAcc<P> (&c)[TC_FM][TC_FN],
                                            const typename P::Stored* a,
                                            const typename P::Stored* b)
{
    using namespace nvcuda;
    constexpr int LD = TC_BM + P::PAD;
    static_assert(TC_BM == TC_BN, "one row length for a and b");
    // 3xTF32 keeps its two k steps apart (not unrolled): together, their fragments, each
    // held twice, pushed ptxas past 255 registers (NVRTC 13.5, fprop: 8 bytes spilled).
    // (A constant, not the expression: nvcc does not expand macros in a pragma.)
    constexpr int UNROLL = P::TERMS == 3 ? 1 : TC_BK / P::K;
#pragma unroll(UNROLL)
    for (int k = 0; k < TC_BK; k += P::K) {
        // The B fragments first, then one A fragment at a time: fewer fragments live at
        // once (3xTF32 holds each twice), the same loads and products.
        wmma::fragment<wmma::matrix_b, 16, 16, P::K, typename P::Frag, wmma::row_major>
            fb[TC_FN], fb_s[TC_FN];
#pragma unroll
        for (int j = 0; j < TC_FN; ++j) {
            tc_load_shared(fb[j], b + k * LD + 16 * j, LD);
            P::prepare(fb[j], fb_s[j]);
        }
#pragma unroll
        for (int i = 0; i < TC_FM; ++i) {
            wmma::fragment<wmma::matrix_a, 16, 16, P::K, typename P::Frag, wmma::col_major> fa,
                fa_s;
            tc_load_shared(fa, a + k * LD + 16 * i, LD);
            P::prepare(fa, fa_s);
#pragma unroll
            for (int j = 0; j < TC_FN; ++j) {
                if (P::TERMS == 3) {
                    wmma::mma_sync(c[i][j], fa_s, fb[j], c[i][j]);
                    wmma::mma_sync(c[i][j], fa, fb_s[j], c[i][j]);
                }
                wmma::mma_sync(c[i][j], fa, fb[j], c[i][j]);
            }
        }
    }
}

// The forward convolution's gathers with 128-bit weight loads: w is K-contiguous (rows of
// K taps per filter), an operand GemmOperand stages as the SGEMM's k-contiguous A, in float4
// chunks, when every chunk is 16-byte aligned (K a multiple of 4, w aligned). That is decided
// once per launch and ConvTc::run holds a main loop for each case (a test per slice would
// keep both loads in one loop: ptxas neither hoists nor versions it); otherwise ConvFprop's
// own gather, unchanged. The input gathers (x) are ConvFprop's either way. Only who loads
// which weight changes: shared memory receives the same slice.
template <class P, class A = float>
struct TcFprop : ConvFprop<TcTile, A> {
    using ConvFprop<TcTile, A>::LOADS;
    GemmOperand<TC_BM, TC_BK, TC_BM + P::PAD, TC_THREADS, true> wv;
    int kleft;   // K - k0 of the next slice
    bool vec;

    __device__ __forceinline__ void init_weights(const float* wg, int f0, int Fg, int K)
    {
        wv.init(wg, threadIdx.x, f0, Fg, K);
        kleft = K;
        vec = K % 4 == 0 && (reinterpret_cast<unsigned long long>(wg) & 15) == 0;
    }
    // TcWeightStaging's hooks: a slice moves the weights TC_BK taps on; B is the input
    __device__ __forceinline__ int weight_step() const { return TC_BK; }
    __device__ __forceinline__ void fetch_b(float (&rb)[LOADS]) { this->fetch_x(rb); }
};

// How TcFprop and TcDgrad stage a slice: their weights through GemmOperand on the vector
// path (whole chunks only: rows past the filters or channels read none), else the gather of
// the FP32 kernel; their other operand by its own gather (Op::fetch_b) either way.
template <class Op, class P>
struct TcWeightStaging {
    __device__ __forceinline__ static bool vector(const Op& op) { return op.vec; }
    template <bool VEC>
    __device__ __forceinline__ static void fetch(Op& op, float (&ra)[Op::LOADS],
                                                 float (&rb)[Op::LOADS])
    {
        if (VEC) {
            op.wv.fetch_whole(op.kleft);
            op.kleft -= TC_BK;
            op.wv.off += op.weight_step();
        } else {
            op.fetch_w(ra);
        }
        op.fetch_b(rb);
        op.advance();
    }
    template <bool VEC, class T, int LDA, int LDB, class Cvt>
    __device__ __forceinline__ static void store(const Op& op, T (*a)[LDA], T (*b)[LDB],
                                                 const float (&ra)[Op::LOADS],
                                                 const float (&rb)[Op::LOADS], Cvt cvt)
    {
        static_assert(LDA == TC_BM + P::PAD, "the weight loader's rows are TcSmem's");
        if (VEC)
            op.wv.store(&a[0][0], cvt);
        else
            conv_store_operand<Op::A_K_ON_LANES>(a, ra, op, cvt);
        conv_store_operand<Op::B_K_ON_LANES>(b, rb, op, cvt);
    }
};

template <class P, class A>
struct TcStaging<TcFprop<P, A>> : TcWeightStaging<TcFprop<P, A>, P> {};

// The backward-data gathers with 128-bit weight loads for a 1 x 1 filter: W'[c, t] is then
// w[g * Fg + t, c], rows of Cg consecutive channels, an operand GemmOperand stages as the
// SGEMM's m-contiguous A (float4 chunks of 4 channels, one 128-bit shared store each) when
// Cg is a multiple of 4 and w is aligned; a main loop per case as TcFprop's. Other filters
// spread a filter's channels kh * kw apart: ConvDgrad's own gather, unchanged. The dy
// gathers are ConvDgrad's either way.
template <class P, class A = float>
struct TcDgrad : ConvDgrad<TcTile, A> {
    using ConvDgrad<TcTile, A>::LOADS;
    GemmOperand<TC_BM, TC_BK, TC_BM + P::PAD, TC_THREADS, false> wv;
    int kleft;   // T - t0 of the next slice
    int wv_ld;   // floats between the rows of W'^T (filters): Cg
    bool vec;

    __device__ __forceinline__ void init_weights(const float* wg, int c0, int Cg, int taps)
    {
        wv.init(wg, threadIdx.x, c0, Cg, Cg);
        kleft = this->T;
        wv_ld = Cg;
        vec = taps == 1 && Cg % 4 == 0 && (reinterpret_cast<unsigned long long>(wg) & 15) == 0;
    }
    // TcWeightStaging's hooks: a slice moves the weights TC_BK filters on; B is dy
    __device__ __forceinline__ int weight_step() const { return TC_BK * wv_ld; }
    __device__ __forceinline__ void fetch_b(float (&rb)[LOADS]) { this->fetch_dy(rb); }
};

template <class P, class A>
struct TcStaging<TcDgrad<P, A>> : TcWeightStaging<TcDgrad<P, A>, P> {};

// The backward-weights gathers with 128-bit loads of dy: DY[f, q] = dy[n, g * Fg + f, p] is
// q-contiguous within an image. When P is a multiple of TC_BK (and so are the split's start
// and length, and dy is aligned) every slice lies in one image and is whole or past the
// split's end, and DY's slice is a plain k-contiguous matrix of rows P floats apart, which
// GemmOperand stages as the SGEMM's A, from a base moved by a slice per fetch and on to the
// next image at the plane's end; a main loop per case as TcFprop's. Otherwise ConvWgrad's
// gather, unchanged. The x gathers are ConvWgrad's either way.
template <class P>
struct TcWgrad : ConvWgrad<TcTile> {
    GemmOperand<TC_BM, TC_BK, TC_BM + P::PAD, TC_THREADS, true> dv;
    int kleft;        // q_end - q of the next slice
    int p0, plane;    // the next slice's first position in its image, and P
    int image_skip;   // floats from the end of a plane of dy to the next image's: (F - 1) * P
    bool vec;

    __device__ __forceinline__ void init_dy(const float* dyg, int f0, int Fg, int F, int P_,
                                            int q_begin, int q_per_split)
    {
        vec = P_ % TC_BK == 0 && q_per_split % TC_BK == 0 && q_begin % TC_BK == 0 &&
              (reinterpret_cast<unsigned long long>(dyg) & 15) == 0;
        const int n0 = q_begin / P_;
        p0 = q_begin - n0 * P_;
        plane = P_;
        image_skip = (F - 1) * P_;
        kleft = q_end - q_begin;
        dv.init(dyg + ((long long)n0 * F * P_ + p0), threadIdx.x, f0, Fg, P_);
    }
};

template <class P>
struct TcStaging<TcWgrad<P>> {
    typedef TcWgrad<P> Op;
    __device__ __forceinline__ static bool vector(const Op& op) { return op.vec; }
    template <bool VEC>
    __device__ __forceinline__ static void fetch(Op& op, float (&ra)[Op::LOADS],
                                                 float (&rb)[Op::LOADS])
    {
        if (VEC) {   // whole chunks only (a filter row past Fg, a slice past q_end: none)
            op.dv.fetch_whole(op.kleft);
            op.kleft -= TC_BK;
            op.dv.base += TC_BK;
            op.p0 += TC_BK;
            if (op.p0 == op.plane) {   // on to the next image
                op.p0 = 0;
                op.dv.base += op.image_skip;
            }
        } else {
            op.fetch_dy(ra);
        }
        op.fetch_x(rb);
        op.advance();
    }
    template <bool VEC, class T, int LDA, int LDB, class Cvt>
    __device__ __forceinline__ static void store(const Op& op, T (*a)[LDA], T (*b)[LDB],
                                                 const float (&ra)[Op::LOADS],
                                                 const float (&rb)[Op::LOADS], Cvt cvt)
    {
        static_assert(LDA == TC_BM + P::PAD, "the dy loader's rows are TcSmem's");
        if (VEC)
            op.dv.store(&a[0][0], cvt);
        else
            conv_store_operand<Op::A_K_ON_LANES>(a, ra, op, cvt);
        conv_store_operand<Op::B_K_ON_LANES>(b, rb, op, cvt);
    }
};

// The backward-weights gathers of activations of type A: TcWgrad's 128-bit dy loads read
// float32 dy (4 floats per load); bf16 dy (the _bf16io kernel) takes ConvWgrad's scalar
// gather, one 16-bit load per element (a bf16 vector path, 8 per load, is not written).
template <class P, class A>
struct TcWgradOf {
    typedef ConvWgrad<TcTile, A> Op;
};
template <class P>
struct TcWgradOf<P, float> {
    typedef TcWgrad<P> Op;
};

// acc = the block tile's product over `slices` slices of op's gathers (as ConvFp32::run),
// acc[i][j] = tile element (row(i), col(j)): ConvFp32's layout.
template <class P>
struct ConvTc {
    typedef TcTile Tile;
    typedef TcSmem<P> Smem;
    template <class A> using FpropOp = TcFprop<P, A>;
    template <class A> using DgradOp = TcDgrad<P, A>;
    template <class A> using WgradOp = typename TcWgradOf<P, A>::Op;
    enum { TM = ConvFp32::TM, TN = ConvFp32::TN };
    __device__ __forceinline__ static int row(int i) { return ConvFp32::row(i); }
    __device__ __forceinline__ static int col(int j) { return ConvFp32::col(j); }

    // c += the products of the slices, staged by TcStaging<Op> (its VEC version).
    template <bool VEC, class Op>
    __device__ __forceinline__ static void loop(Op& op, int slices, Smem& sm,
                                                TcAcc<P> (&c)[TC_FM][TC_FN], int wm, int wn)
    {
        float ra[Tile::LOADS], rb[Tile::LOADS];
        for (int s = 0; s <= slices; ++s) {
            // As ConvFp32::run: gather slice s, multiply slice s - 1, store slice s.
            if (s < slices)
                TcStaging<Op>::template fetch<VEC>(op, ra, rb);
            if (s > 0)
                tc_multiply<P>(c, &sm.ab.a[(s - 1) & 1][0][wm], &sm.ab.b[(s - 1) & 1][0][wn]);
            if (s < slices)
                TcStaging<Op>::template store<VEC>(op, sm.ab.a[s & 1], sm.ab.b[s & 1], ra, rb,
                                                   P());
            __syncthreads();
        }
    }

    template <class Op>
    __device__ __forceinline__ static void run(Op& op, int slices, Smem& sm,
                                               float (&acc)[TM][TN])
    {
        using namespace nvcuda;
        const int warp = threadIdx.x / 32;
        const int wm = (warp % ConvFp32::WARPS_M) * CONV_WM;   // the warp tile's corner
        const int wn = (warp / ConvFp32::WARPS_M) * CONV_WN;
        TcAcc<P> c[TC_FM][TC_FN];
#pragma unroll
        for (int i = 0; i < TC_FM; ++i)
#pragma unroll
            for (int j = 0; j < TC_FN; ++j)
                wmma::fill_fragment(c[i][j], 0.0f);
        if (TcStaging<Op>::vector(op))   // uniform: one loop or the other for the block
            loop<true>(op, slices, sm, c, wm, wn);
        else
            loop<false>(op, slices, sm, c, wm, wn);
        // The barrier above ended every read of the operand buffers: c may overwrite them.
        // Half h of the warp tile holds fragment rows h * TC_FM / 2 ... and, in ConvFp32's
        // layout, this thread's accumulator rows h * TM / 2 ... (row(i) steps by CONV_WM / 2
        // at i = TM / 2); only this warp reads what it wrote, so __syncwarp suffices.
        static_assert(TM == 8 && TC_FM % 2 == 0, "two halves of four accumulator rows");
        float(*scratch)[CONV_WN + CONV_PAD] = sm.c[warp];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int i = 0; i < TC_FM / 2; ++i)
#pragma unroll
                for (int j = 0; j < TC_FN; ++j)
                    wmma::store_matrix_sync(&scratch[16 * i][16 * j], c[h * TC_FM / 2 + i][j],
                                            CONV_WN + CONV_PAD, wmma::mem_row_major);
            __syncwarp();
#pragma unroll
            for (int i = 0; i < TM / 2; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j)
                    acc[h * TM / 2 + i][j] =
                        scratch[row(h * TM / 2 + i) - wm - h * CONV_WM / 2][col(j) - wn];
            __syncwarp();
        }
    }
};

#else  // below sm_80: the same names, a trap if ever launched

struct TcTf32 {};
struct Tc3xTf32 {};
struct TcBf16 {};

template <class P>
struct ConvTc {
    typedef TcTile Tile;
    typedef ConvSmem<Tile> Smem;
    template <class A> using FpropOp = ConvFprop<Tile, A>;
    template <class A> using DgradOp = ConvDgrad<Tile, A>;
    template <class A> using WgradOp = ConvWgrad<Tile, A>;
    enum { TM = ConvFp32::TM, TN = ConvFp32::TN };
    __device__ __forceinline__ static int row(int i) { return i; }
    __device__ __forceinline__ static int col(int j) { return j; }
    template <class Op>
    __device__ __forceinline__ static void run(Op&, int, Smem&, float (&)[TM][TN])
    {
        __trap();
    }
};

#endif  // TC_ARCH_OK
