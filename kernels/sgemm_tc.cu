// The SGEMM family on tensor cores (TF32, 3xTF32, BF16): the contract of sgemm.cu (batched
// and batched-reduce GEMMs, split-K parts, the bias / beta / ReLU epilogue, ragged edges;
// read its header for every argument) with the 64 x 64 x 16 tile and the tensor-core main
// loop of tensor_core.cuh. A plain matrix is the simplest gather of that loop: TcGemmOp
// fetches a slice of op(A) and op(B) with k on the lanes where the operand is k-contiguous
// (so consecutive lanes read consecutive addresses) and on the rows where it is not.
// Operands are read with scalar loads whatever their alignment (vec_a / vec_b are ignored).
// Kernel names sgemm_<precision>_XY, X = op(A), Y = op(B) as in sgemm.cu; launched by
// gpucnn/ops/gemm.py.

#include "sgemm_params.cuh"
#include "tensor_core.cuh"

template <bool TRANS_A, bool TRANS_B>
struct TcGemmOp {
    static const bool A_K_ON_LANES = !TRANS_A;   // A stored m-major is k-contiguous
    static const bool B_K_ON_LANES = TRANS_B;    // B stored transposed is k-contiguous
    const float* a;   // the block's first reduction matrix of A, of B
    const float* b;
    long long a_r, b_r;   // strides between reduction matrices
    int M, N, kz, lda, ldb, m0, n0, ktiles, lane, row;

    // Slice s: reduction matrix s / ktiles, its k from (s % ktiles) * CONV_BK; zeros past
    // the matrix edges and past kz.
    __device__ __forceinline__ void fetch(int s, float (&ra)[CONV_LOADS],
                                          float (&rb)[CONV_LOADS]) const
    {
        const int r = s / ktiles;
        const int k0 = (s - r * ktiles) * CONV_BK;
        const float* A = a + r * a_r;
        const float* B = b + r * b_r;
#pragma unroll
        for (int e = 0; e < CONV_LOADS; ++e) {
            const int m = m0 + (A_K_ON_LANES ? row + e * CONV_ROWS : lane + e * CONV_LANES);
            const int k = k0 + (A_K_ON_LANES ? lane : row);
            ra[e] = (m < M && k < kz) ? A[TRANS_A ? k * lda + m : m * lda + k] : 0.0f;
        }
#pragma unroll
        for (int e = 0; e < CONV_LOADS; ++e) {
            const int n = n0 + (B_K_ON_LANES ? row + e * CONV_ROWS : lane + e * CONV_LANES);
            const int k = k0 + (B_K_ON_LANES ? lane : row);
            rb[e] = (n < N && k < kz) ? B[TRANS_B ? n * ldb + k : k * ldb + n] : 0.0f;
        }
    }
};

// One block tile of C[y, z] (sgemm.cu's semantics), with precision P.
template <class P, bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm_tc_block(SGEMM_PARAMS)
{
    __shared__ typename ConvTc<P>::Smem sm;
    const int tiles_m = (M + CONV_BM - 1) / CONV_BM;
    const int m0 = (blockIdx.x % tiles_m) * CONV_BM;
    const int n0 = (blockIdx.x / tiles_m) * CONV_BN;
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
    op.ktiles = (op.kz + CONV_BK - 1) / CONV_BK;
    op.lane = threadIdx.x % CONV_LANES;
    op.row = threadIdx.x / CONV_LANES;

    float acc[CONV_TM][CONV_TN];
    ConvTc<P>::run(op, nr * op.ktiles, sm, acc);

    // sgemm.cu's epilogue, in its order: (acc + bias) + beta * C, then ReLU (NaN stays NaN).
    const int mt = m0 + (threadIdx.x / (CONV_BN / CONV_TN)) * CONV_TM;
    const int nt = n0 + (threadIdx.x % (CONV_BN / CONV_TN)) * CONV_TN;
    const float* bias_base = bias + y * bias_stride_y;
    float* c_base = C + y * c_stride_y + z * c_stride_z;
#pragma unroll
    for (int i = 0; i < CONV_TM; ++i) {
        const int m = mt + i;
        if (m >= M)
            continue;
#pragma unroll
        for (int j = 0; j < CONV_TN; ++j) {
            const int n = nt + j;
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

// gpucnn: block=CONV_THREADS max_regs=80 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(CONV_THREADS, TC_MIN_BLOCKS)
    sgemm_tf32_nn(SGEMM_PARAMS)
{
    sgemm_tc_block<TcTf32, false, false>(SGEMM_ARGS);
}

// gpucnn: block=CONV_THREADS max_regs=80 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(CONV_THREADS, TC_MIN_BLOCKS)
    sgemm_tf32_nt(SGEMM_PARAMS)
{
    sgemm_tc_block<TcTf32, false, true>(SGEMM_ARGS);
}

// gpucnn: block=CONV_THREADS max_regs=80 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(CONV_THREADS, TC_MIN_BLOCKS)
    sgemm_tf32_tn(SGEMM_PARAMS)
{
    sgemm_tc_block<TcTf32, true, false>(SGEMM_ARGS);
}

// gpucnn: block=CONV_THREADS max_regs=80 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(CONV_THREADS, TC_MIN_BLOCKS)
    sgemm_tf32_tt(SGEMM_PARAMS)
{
    sgemm_tc_block<TcTf32, true, true>(SGEMM_ARGS);
}

// gpucnn: block=CONV_THREADS max_regs=128 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(CONV_THREADS, TC3X_MIN_BLOCKS)
    sgemm_3xtf32_nn(SGEMM_PARAMS)
{
    sgemm_tc_block<Tc3xTf32, false, false>(SGEMM_ARGS);
}

// gpucnn: block=CONV_THREADS max_regs=128 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(CONV_THREADS, TC3X_MIN_BLOCKS)
    sgemm_3xtf32_nt(SGEMM_PARAMS)
{
    sgemm_tc_block<Tc3xTf32, false, true>(SGEMM_ARGS);
}

// gpucnn: block=CONV_THREADS max_regs=128 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(CONV_THREADS, TC3X_MIN_BLOCKS)
    sgemm_3xtf32_tn(SGEMM_PARAMS)
{
    sgemm_tc_block<Tc3xTf32, true, false>(SGEMM_ARGS);
}

// gpucnn: block=CONV_THREADS max_regs=128 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(CONV_THREADS, TC3X_MIN_BLOCKS)
    sgemm_3xtf32_tt(SGEMM_PARAMS)
{
    sgemm_tc_block<Tc3xTf32, true, true>(SGEMM_ARGS);
}

// gpucnn: block=CONV_THREADS max_regs=80 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(CONV_THREADS, TC_MIN_BLOCKS)
    sgemm_bf16_nn(SGEMM_PARAMS)
{
    sgemm_tc_block<TcBf16, false, false>(SGEMM_ARGS);
}

// gpucnn: block=CONV_THREADS max_regs=80 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(CONV_THREADS, TC_MIN_BLOCKS)
    sgemm_bf16_nt(SGEMM_PARAMS)
{
    sgemm_tc_block<TcBf16, false, true>(SGEMM_ARGS);
}

// gpucnn: block=CONV_THREADS max_regs=80 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(CONV_THREADS, TC_MIN_BLOCKS)
    sgemm_bf16_tn(SGEMM_PARAMS)
{
    sgemm_tc_block<TcBf16, true, false>(SGEMM_ARGS);
}

// gpucnn: block=CONV_THREADS max_regs=80 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(CONV_THREADS, TC_MIN_BLOCKS)
    sgemm_bf16_tt(SGEMM_PARAMS)
{
    sgemm_tc_block<TcBf16, true, true>(SGEMM_ARGS);
}
