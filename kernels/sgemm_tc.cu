// The SGEMM family on tensor cores (TF32, 3xTF32, BF16): the contract of sgemm.cu (batched
// and batched-reduce GEMMs, split-K parts, the bias / beta / ReLU epilogue, ragged edges;
// read its header for every argument) with the tensor-core tile (TC_*, 128 x 128 x 16) and main
// loop of tensor_core.cuh. The operands are staged as in sgemm.cu, by its loaders
// (gemm_operand.cuh): float4 chunks along each operand's contiguous dimension, one 128-bit
// global load per chunk when the launcher says the operand allows it (vec_a / vec_b: 16-byte
// aligned start, leading dimension and batch strides multiples of 4) and the chunk lies
// inside the matrix, else four bounds-checked scalar loads; a chunk of an m- or n-contiguous
// operand (A transposed, B not) is one 128-bit shared store (64-bit for BF16), a k-contiguous
// one is transposed into four scalar stores. Only who loads which element changes with the
// width: shared memory receives the same slice, so the products and their order do not.
// Kernel names sgemm_<precision>_XY, X = op(A), Y = op(B) as in sgemm.cu; launched by
// gpucnn/ops/gemm.py.
//
// bf16 activations (gpucnn/ops/storage.py): the fully connected layer's three GEMMs with their
// activation operands held in bfloat16 bits (bf16_bits), the BF16 kernels' bodies with other
// element types (A, B, C; the weights, the bias and the weight gradient stay float32):
//   sgemm_bf16_nt_bf16io  y  = x @ w^T    A bf16, B float, C bf16 (rounded once at the store)
//   sgemm_bf16_nn_bf16io  dx = dy @ w     A bf16, B float, C bf16
//   sgemm_bf16_tn_bf16io  dW = dy^T @ x   A bf16, B bf16,  C float
//   sgemm_bf16_nt_bf16a, sgemm_bf16_nn_bf16a: A bf16, B float, C float: the float32 partial
//     products of a split K (the split's epilogue then rounds once)
// A bf16 operand is read by scalar loads (gemm_operand.cuh) and widened exactly, so shared
// memory receives the bf16 values the float kernels would round the same operands to: on
// bf16-exact inputs each is the float kernel with only its store changed.

#include "sgemm_params.cuh"
#include "gemm_operand.cuh"
#include "tensor_core.cuh"

// The BF16 GEMMs fit two blocks per SM (~125 registers with NVRTC 12.9, 36 KiB of shared
// memory each): held to 128 registers, so that a compiler that allocates a few more (NVRTC
// 13.5: 130 for three of them) does not halve their occupancy.
#define TC_BF16_GEMM_MIN_BLOCKS 2

#if TC_ARCH_OK

// The slices of op(A) and op(B), for ConvTc<P>::run: one GemmOperand each, advanced by a
// slice per fetch and wrapped to the next reduction matrix after the last slice of one.
template <class P, bool TRANS_A, bool TRANS_B, class EA = float, class EB = float>
struct TcGemmOp {
    enum { LOADS = TcTile::LOADS, LD = TC_BM + P::PAD };   // LD: TcSmem's rows
    // A stored non-transposed is k-contiguous; B stored transposed is k-contiguous.
    GemmOperand<TC_BM, TC_BK, LD, TC_THREADS, !TRANS_A, EA> la;
    GemmOperand<TC_BN, TC_BK, LD, TC_THREADS, TRANS_B, EB> lb;
    int K, kleft;                 // kleft: K - k0 of the next slice (kz - k0 in the first matrix)
    int a_step, b_step, a_back, b_back;   // offsets to the next slice, back to the first one
    int a_r, b_r;                 // strides between reduction matrices
    int a_whole, b_whole;         // 4 where the operand allows 128-bit loads, else 1 << 30

    __device__ __forceinline__ void fetch()
    {
        la.fetch(kleft, a_whole);
        lb.fetch(kleft, b_whole);
        // Only a reducing launch (kz == K) fetches past the last slice of a matrix. (The
        // advance below is sgemm.cu's, written out: a helper shared by both changed ptxas'
        // main loops, up to 6 instructions more and 5 registers.)
        kleft -= TC_BK;
        const bool wrap = kleft <= 0;
        kleft = wrap ? K : kleft;
        la.off += wrap ? a_back : a_step;
        lb.off += wrap ? b_back : b_step;
        if (wrap) {
            la.base += a_r;
            lb.base += b_r;
        }
    }
};

// The loaders keep their chunks themselves (the gathers' ra / rb stay unused).
template <class P, bool TRANS_A, bool TRANS_B, class EA, class EB>
struct TcStaging<TcGemmOp<P, TRANS_A, TRANS_B, EA, EB>> {
    typedef TcGemmOp<P, TRANS_A, TRANS_B, EA, EB> Op;
    // One loop: the loaders choose between vector and scalar loads per chunk (predicated).
    __device__ __forceinline__ static bool vector(const Op&) { return false; }
    template <bool>
    __device__ __forceinline__ static void fetch(Op& op, float (&)[Op::LOADS],
                                                 float (&)[Op::LOADS])
    {
        op.fetch();
    }
    template <bool, class T, int LDA, int LDB, class Cvt>
    __device__ __forceinline__ static void store(const Op& op, T (*a)[LDA], T (*b)[LDB],
                                                 const float (&)[Op::LOADS],
                                                 const float (&)[Op::LOADS], Cvt cvt)
    {
        static_assert(LDA == Op::LD && LDB == Op::LD, "the loaders' rows are TcSmem's");
        op.la.store(&a[0][0], cvt);
        op.lb.store(&b[0][0], cvt);
    }
};

#endif  // TC_ARCH_OK

// One block tile of C[y, z] (sgemm.cu's semantics), with precision P and elements of A, B, C
// of types EA, EB, EC (float, or bf16_bits: read through act_load, C written through
// act_store, so the float kernels are plain loads and stores).
template <class P, bool TRANS_A, bool TRANS_B, class EA = float, class EB = float,
          class EC = float>
__device__ __forceinline__ void sgemm_tc_block(SGEMM_PARAMS_OF(EA, EB, EC))
{
#if TC_ARCH_OK
    __shared__ typename ConvTc<P>::Smem sm;
    const int tiles_m = (M + TC_BM - 1) / TC_BM;
    const int m0 = (blockIdx.x % tiles_m) * TC_BM;
    const int n0 = (blockIdx.x / tiles_m) * TC_BN;
    const long long y = blockIdx.y;
    const long long z = blockIdx.z;
    int nr = red_total - (int)z * red_per_z;
    if (nr > red_per_z) nr = red_per_z;
    if (nr < 0) nr = 0;

    TcGemmOp<P, TRANS_A, TRANS_B, EA, EB> op;
    op.la.init(A + y * a_stride_y + z * a_stride_z, threadIdx.x, m0, M, lda);
    op.lb.init(B + y * b_stride_y + z * b_stride_z, threadIdx.x, n0, N, ldb);
    // A split's last part may be shorter (k_last); a reducing launch has k_last == K.
    const int kz = (blockIdx.z == gridDim.z - 1) ? k_last : K;
    const int ktiles = (kz + TC_BK - 1) / TC_BK;
    op.K = K;
    op.kleft = kz;
    op.a_step = TRANS_A ? TC_BK * lda : TC_BK;
    op.b_step = TRANS_B ? TC_BK : TC_BK * ldb;
    op.a_back = -(ktiles - 1) * op.a_step;
    op.b_back = -(ktiles - 1) * op.b_step;
    op.a_r = a_stride_r;
    op.b_r = b_stride_r;
    op.a_whole = vec_a ? 4 : (1 << 30);
    op.b_whole = vec_b ? 4 : (1 << 30);

    typedef ConvTc<P> Math;
    float acc[Math::TM][Math::TN];
    Math::run(op, nr * ktiles, sm, acc);

    // sgemm.cu's epilogue, in its order: (acc + bias) + beta * C, then ReLU (NaN stays NaN).
    const float* bias_base = bias + y * bias_stride_y;
    EC* c_base = C + y * c_stride_y + z * c_stride_z;
#pragma unroll
    for (int i = 0; i < Math::TM; ++i) {
        const int m = m0 + Math::row(i);
        if (m >= M)
            continue;
#pragma unroll
        for (int j = 0; j < Math::TN; ++j) {
            const int n = n0 + Math::col(j);
            if (n >= N)
                continue;
            float v = acc[i][j];
            if (bias_mode == 1)
                v += bias_base[m];
            else if (bias_mode == 2)
                v += bias_base[n];
            EC* c = c_base + ((long long)m * ldc + n);
            if (beta != 0.0f)
                v += beta * act_load(c);
            if (relu && v < 0.0f)
                v = 0.0f;
            act_store(c, v);
        }
    }
#else   // below sm_80: never launched (tensor_core.cuh)
    __trap();
#endif
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    sgemm_tf32_nn(SGEMM_PARAMS)
{
    sgemm_tc_block<TcTf32, false, false>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    sgemm_tf32_nt(SGEMM_PARAMS)
{
    sgemm_tc_block<TcTf32, false, true>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    sgemm_tf32_tn(SGEMM_PARAMS)
{
    sgemm_tc_block<TcTf32, true, false>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    sgemm_tf32_tt(SGEMM_PARAMS)
{
    sgemm_tc_block<TcTf32, true, true>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    sgemm_3xtf32_nn(SGEMM_PARAMS)
{
    sgemm_tc_block<Tc3xTf32, false, false>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    sgemm_3xtf32_nt(SGEMM_PARAMS)
{
    sgemm_tc_block<Tc3xTf32, false, true>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    sgemm_3xtf32_tn(SGEMM_PARAMS)
{
    sgemm_tc_block<Tc3xTf32, true, false>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    sgemm_3xtf32_tt(SGEMM_PARAMS)
{
    sgemm_tc_block<Tc3xTf32, true, true>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=128 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_BF16_GEMM_MIN_BLOCKS)
    sgemm_bf16_nn(SGEMM_PARAMS)
{
    sgemm_tc_block<TcBf16, false, false>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=128 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_BF16_GEMM_MIN_BLOCKS)
    sgemm_bf16_nt(SGEMM_PARAMS)
{
    sgemm_tc_block<TcBf16, false, true>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=128 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_BF16_GEMM_MIN_BLOCKS)
    sgemm_bf16_tn(SGEMM_PARAMS)
{
    sgemm_tc_block<TcBf16, true, false>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=128 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_BF16_GEMM_MIN_BLOCKS)
    sgemm_bf16_tt(SGEMM_PARAMS)
{
    sgemm_tc_block<TcBf16, true, true>(SGEMM_ARGS);
}

// The fully connected layer's GEMMs on bf16 activations (the element types are in the header).
// gpucnn: block=TC_THREADS max_regs=128 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_BF16_GEMM_MIN_BLOCKS)
    sgemm_bf16_nt_bf16io(SGEMM_BF16_AC_PARAMS)
{
    sgemm_tc_block<TcBf16, false, true, bf16_bits, float, bf16_bits>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=128 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_BF16_GEMM_MIN_BLOCKS)
    sgemm_bf16_nn_bf16io(SGEMM_BF16_AC_PARAMS)
{
    sgemm_tc_block<TcBf16, false, false, bf16_bits, float, bf16_bits>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=128 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_BF16_GEMM_MIN_BLOCKS)
    sgemm_bf16_tn_bf16io(SGEMM_BF16_AB_PARAMS)
{
    sgemm_tc_block<TcBf16, true, false, bf16_bits, bf16_bits, float>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=128 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_BF16_GEMM_MIN_BLOCKS)
    sgemm_bf16_nt_bf16a(SGEMM_BF16_A_PARAMS)
{
    sgemm_tc_block<TcBf16, false, true, bf16_bits, float, float>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=128 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_BF16_GEMM_MIN_BLOCKS)
    sgemm_bf16_nn_bf16a(SGEMM_BF16_A_PARAMS)
{
    sgemm_tc_block<TcBf16, false, false, bf16_bits, float, float>(SGEMM_ARGS);
}
