// The SGEMM family on tensor cores (TF32, 3xTF32, BF16): the contract of sgemm.cu (batched
// and batched-reduce GEMMs, split-K parts, the bias / beta / ReLU epilogue, ragged edges;
// read its header for every argument) with the tensor-core tile (TC_*, 128 x 128 x 16) and main
// loop of tensor_core.cuh. A plain matrix is the simplest gather of that loop: TcGemmOp
// fetches a slice of op(A) and op(B) with k on the lanes where the operand is k-contiguous
// (so consecutive lanes read consecutive addresses) and on the rows where it is not.
// Operands are read with scalar loads whatever their alignment (vec_a / vec_b are ignored).
// Kernel names sgemm_<precision>_XY, X = op(A), Y = op(B) as in sgemm.cu; launched by
// gpucnn/ops/gemm.py.

#include "sgemm_params.cuh"
#include "tensor_core.cuh"

template <bool TRANS_A, bool TRANS_B>
struct TcGemmOp : ConvLoader<TcTile> {
    static const bool A_K_ON_LANES = !TRANS_A;   // A stored m-major is k-contiguous
    static const bool B_K_ON_LANES = TRANS_B;    // B stored transposed is k-contiguous
    const float* a;   // the current reduction matrix of A, of B
    const float* b;
    long long a_r, b_r;   // strides between reduction matrices
    int M, N, kz, lda, ldb, m0, n0, k0;   // k0: the first k of the next slice

    // The next slice: k from k0 in the current reduction matrix, then on to the next one
    // after its last slice; zeros past the matrix edges and past kz.
    __device__ __forceinline__ void fetch(float (&ra)[LOADS], float (&rb)[LOADS])
    {
#pragma unroll
        for (int e = 0; e < LOADS; ++e) {
            const int m = m0 + (A_K_ON_LANES ? cl : cr) + e * CPL;
            const int k = k0 + (A_K_ON_LANES ? kl : kr);
            ra[e] = (m < M && k < kz) ? a[TRANS_A ? k * lda + m : m * lda + k] : 0.0f;
        }
#pragma unroll
        for (int e = 0; e < LOADS; ++e) {
            const int n = n0 + (B_K_ON_LANES ? cl : cr) + e * CPL;
            const int k = k0 + (B_K_ON_LANES ? kl : kr);
            rb[e] = (n < N && k < kz) ? b[TRANS_B ? n * ldb + k : k * ldb + n] : 0.0f;
        }
        k0 += TC_BK;
        if (k0 >= kz) {   // only a reducing launch (kz == K) fetches past its last slice
            k0 = 0;
            a += a_r;
            b += b_r;
        }
    }
};

// One block tile of C[y, z] (sgemm.cu's semantics), with precision P.
template <class P, bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm_tc_block(SGEMM_PARAMS)
{
    __shared__ typename ConvTc<P>::Smem sm;
    const int tiles_m = (M + TC_BM - 1) / TC_BM;
    const int m0 = (blockIdx.x % tiles_m) * TC_BM;
    const int n0 = (blockIdx.x / tiles_m) * TC_BN;
    const long long y = blockIdx.y;
    const long long z = blockIdx.z;
    int nr = red_total - (int)z * red_per_z;
    if (nr > red_per_z) nr = red_per_z;
    if (nr < 0) nr = 0;

    TcGemmOp<TRANS_A, TRANS_B> op;
    op.a = A + y * a_stride_y + z * a_stride_z;
    op.b = B + y * b_stride_y + z * b_stride_z;
    op.a_r = a_stride_r;
    op.b_r = b_stride_r;
    op.M = M;
    op.N = N;
    // A split's last part may be shorter (k_last); a reducing launch has k_last == K.
    op.kz = (blockIdx.z == gridDim.z - 1) ? k_last : K;
    op.lda = lda;
    op.ldb = ldb;
    op.m0 = m0;
    op.n0 = n0;
    op.k0 = 0;
    op.init_loader();

    typedef ConvTc<P> Math;
    float acc[Math::TM][Math::TN];
    Math::run(op, nr * ((op.kz + TC_BK - 1) / TC_BK), sm, acc);

    // sgemm.cu's epilogue, in its order: (acc + bias) + beta * C, then ReLU (NaN stays NaN).
    const float* bias_base = bias + y * bias_stride_y;
    float* c_base = C + y * c_stride_y + z * c_stride_z;
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
            float* c = c_base + ((long long)m * ldc + n);
            if (beta != 0.0f)
                v += beta * *c;
            if (relu && v < 0.0f)
                v = 0.0f;
            *c = v;
        }
    }
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

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    sgemm_bf16_nn(SGEMM_PARAMS)
{
    sgemm_tc_block<TcBf16, false, false>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    sgemm_bf16_nt(SGEMM_PARAMS)
{
    sgemm_tc_block<TcBf16, false, true>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    sgemm_bf16_tn(SGEMM_PARAMS)
{
    sgemm_tc_block<TcBf16, true, false>(SGEMM_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    sgemm_bf16_tt(SGEMM_PARAMS)
{
    sgemm_tc_block<TcBf16, true, true>(SGEMM_ARGS);
}
