// Single-precision GEMM: a tiled shared-memory kernel with register blocking, used by every
// convolution and fully connected layer (launches in gpucnn/ops/gemm.py).
//
//   C[y, z] = sum_{r < nr(z)} op(A[y, z, r]) @ op(B[y, z, r])  (+ bias)  (+ beta * C)  (ReLU)
//
// op(A) is M x K, op(B) is K x N, C is M x N, all row-major with leading dimensions lda, ldb,
// ldc. trans_a = 0: A[m, k] = A[m * lda + k]; trans_a = 1: A[m, k] = A[k * lda + m] (and the
// same for B with (k, n)). So one kernel serves C = A @ B, A^T @ B, A @ B^T and A^T @ B^T.
//
// Batching: blockIdx.y and blockIdx.z select a matrix triple; the operands of block (y, z)
// start at  base + y * stride_y + z * stride_z.  The reduction index r adds r * stride_r to
// A and B: block z sums the products for r = 0 .. nr - 1, nr = min(red_per_z,
// red_total - z * red_per_z). That is a batched-reduce GEMM: the convolution's weight
// gradient sums dY_n @ cols_n^T over the images n of a chunk without materialising the sum
// (and can split the images over z into partial sums, added afterwards in a fixed order).
// Forward/data-gradient launches use red_per_z = red_total = 1 (a plain batched GEMM).
//
// Epilogue, per element: v = acc; bias_mode 1: v += bias[y * bias_stride_y + m] (one bias
// per row), bias_mode 2: v += bias[y * bias_stride_y + n] (one per column); if beta != 0:
// v += beta * C (C is not read when beta == 0, so it may hold garbage); if relu: v = max(v, 0)
// (a NaN stays NaN). Ragged M, N, K are handled by bounds-checked tile loads (zero fill) and
// bounds-checked stores. Summation order is fixed: the result is deterministic.
//
// Tiling: a block of SGEMM_THREADS threads computes a SGEMM_BM x SGEMM_BN tile of C, stepping
// through K in slices of SGEMM_BK held in shared memory (double buffered: the next slice is
// fetched into registers while the current one is multiplied, one barrier per slice). Each
// thread owns a SGEMM_TM x SGEMM_TN micro-tile of accumulators. gpucnn/ops/gemm.py reads these
// #defines (it computes the grid from them and checks they are consistent).

#include "common.cuh"

#define SGEMM_BM 64
#define SGEMM_BN 64
#define SGEMM_BK 16
#define SGEMM_TM 4
#define SGEMM_TN 4
#define SGEMM_THREADS 256
// Shared rows are padded (keeps a row a multiple of 4 floats, and spreads the transposed
// tile stores over more banks).
#define SGEMM_PAD 4

#define SGEMM_THREADS_N (SGEMM_BN / SGEMM_TN)               // threads along n: 16
#define SGEMM_A_LOADS (SGEMM_BM * SGEMM_BK / SGEMM_THREADS) // A elements per thread per slice
#define SGEMM_B_LOADS (SGEMM_BN * SGEMM_BK / SGEMM_THREADS) // B elements per thread per slice

// Position (row kk of the K slice, column mm of the tile) of the i-th element this thread
// loads. Consecutive threads take consecutive addresses of the operand in memory: along k
// when the operand is stored k-contiguous, along m (or n) when it is stored transposed.
__device__ __forceinline__ void sgemm_load_pos(int e, int contiguous_k, int tile, int* kk,
                                               int* mm)
{
    if (contiguous_k) {
        *kk = e % SGEMM_BK;
        *mm = e / SGEMM_BK;
    } else {
        *mm = e % tile;
        *kk = e / tile;
    }
}

// gpucnn: block=SGEMM_THREADS
extern "C" __global__ void sgemm(
    const float* __restrict__ A, const float* __restrict__ B, float* C,
    const float* __restrict__ bias,
    int M, int N, int K, int lda, int ldb, int ldc, int trans_a, int trans_b,
    int a_stride_y, int a_stride_z, int a_stride_r,
    int b_stride_y, int b_stride_z, int b_stride_r,
    int c_stride_y, int c_stride_z, int bias_stride_y,
    int red_per_z, int red_total, int bias_mode, int relu, float beta)
{
    __shared__ __align__(16) float As[2][SGEMM_BK][SGEMM_BM + SGEMM_PAD];
    __shared__ __align__(16) float Bs[2][SGEMM_BK][SGEMM_BN + SGEMM_PAD];

    const int tid = threadIdx.x;
    const int tx = tid % SGEMM_THREADS_N;   // micro-tile column
    const int ty = tid / SGEMM_THREADS_N;   // micro-tile row
    const int tiles_m = (M + SGEMM_BM - 1) / SGEMM_BM;
    const int m0 = (blockIdx.x % tiles_m) * SGEMM_BM;
    const int n0 = (blockIdx.x / tiles_m) * SGEMM_BN;
    const long long y = blockIdx.y;
    const long long z = blockIdx.z;

    const float* a_base = A + y * a_stride_y + z * a_stride_z;
    const float* b_base = B + y * b_stride_y + z * b_stride_z;
    int nr = red_total - (int)z * red_per_z;
    if (nr > red_per_z) nr = red_per_z;
    if (nr < 0) nr = 0;

    // A stored non-transposed is k-contiguous; B stored transposed is k-contiguous.
    const int a_kc = !trans_a;
    const int b_kc = trans_b;

    float acc[SGEMM_TM][SGEMM_TN];
#pragma unroll
    for (int i = 0; i < SGEMM_TM; ++i)
#pragma unroll
        for (int j = 0; j < SGEMM_TN; ++j)
            acc[i][j] = 0.0f;

    float ra[SGEMM_A_LOADS];
    float rb[SGEMM_B_LOADS];
    const int ktiles = (K + SGEMM_BK - 1) / SGEMM_BK;
    const int steps = nr * ktiles;  // the same for every thread of the block

    for (int step = 0; step <= steps; ++step) {
        // 1. Fetch slice `step` into registers (global loads in flight during step 2).
        if (step < steps) {
            const int r = step / ktiles;
            const int k0 = (step - r * ktiles) * SGEMM_BK;
            const float* a_ptr = a_base + (long long)r * a_stride_r;
            const float* b_ptr = b_base + (long long)r * b_stride_r;
#pragma unroll
            for (int i = 0; i < SGEMM_A_LOADS; ++i) {
                int kk, mm;
                sgemm_load_pos(tid + i * SGEMM_THREADS, a_kc, SGEMM_BM, &kk, &mm);
                const int gm = m0 + mm;
                const int gk = k0 + kk;
                float v = 0.0f;
                if (gm < M && gk < K)
                    v = a_kc ? a_ptr[gm * lda + gk] : a_ptr[gk * lda + gm];
                ra[i] = v;
            }
#pragma unroll
            for (int i = 0; i < SGEMM_B_LOADS; ++i) {
                int kk, nn;
                sgemm_load_pos(tid + i * SGEMM_THREADS, b_kc, SGEMM_BN, &kk, &nn);
                const int gn = n0 + nn;
                const int gk = k0 + kk;
                float v = 0.0f;
                if (gn < N && gk < K)
                    v = b_kc ? b_ptr[gn * ldb + gk] : b_ptr[gk * ldb + gn];
                rb[i] = v;
            }
        }
        // 2. Multiply slice step - 1 (in buffer (step - 1) & 1).
        if (step > 0) {
            const int buf = (step - 1) & 1;
#pragma unroll
            for (int k = 0; k < SGEMM_BK; ++k) {
                float a[SGEMM_TM];
                float b[SGEMM_TN];
#pragma unroll
                for (int i = 0; i < SGEMM_TM; ++i)
                    a[i] = As[buf][k][ty * SGEMM_TM + i];
#pragma unroll
                for (int j = 0; j < SGEMM_TN; ++j)
                    b[j] = Bs[buf][k][tx * SGEMM_TN + j];
#pragma unroll
                for (int i = 0; i < SGEMM_TM; ++i)
#pragma unroll
                    for (int j = 0; j < SGEMM_TN; ++j)
                        acc[i][j] += a[i] * b[j];
            }
        }
        // 3. Store slice `step` into the other buffer. Its previous contents (slice step - 2)
        //    were last read before the barrier that ended the previous step.
        if (step < steps) {
            const int buf = step & 1;
#pragma unroll
            for (int i = 0; i < SGEMM_A_LOADS; ++i) {
                int kk, mm;
                sgemm_load_pos(tid + i * SGEMM_THREADS, a_kc, SGEMM_BM, &kk, &mm);
                As[buf][kk][mm] = ra[i];
            }
#pragma unroll
            for (int i = 0; i < SGEMM_B_LOADS; ++i) {
                int kk, nn;
                sgemm_load_pos(tid + i * SGEMM_THREADS, b_kc, SGEMM_BN, &kk, &nn);
                Bs[buf][kk][nn] = rb[i];
            }
        }
        __syncthreads();
    }

    // Epilogue: bias, accumulate, ReLU; bounds-checked stores.
    float* c_base = C + y * c_stride_y + z * c_stride_z;
    const float* bias_base = bias + y * bias_stride_y;
#pragma unroll
    for (int i = 0; i < SGEMM_TM; ++i) {
        const int m = m0 + ty * SGEMM_TM + i;
        if (m >= M)
            continue;
        const float row_bias = (bias_mode == 1) ? bias_base[m] : 0.0f;
#pragma unroll
        for (int j = 0; j < SGEMM_TN; ++j) {
            const int n = n0 + tx * SGEMM_TN + j;
            if (n >= N)
                continue;
            float v = acc[i][j] + row_bias;
            if (bias_mode == 2)
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

// out[i] = sum_{s < S} parts[s * part_stride + i]  (+ beta * out[i] when beta != 0), summed
// in order s = 0, 1, ...: combines the partial weight gradients of a split reduction.
// gpucnn: block=256
extern "C" __global__ void sgemm_sum_partials(
    const float* parts, float* out, int n, int S, int part_stride, float beta)
{
    GRID_STRIDE_LOOP(i, n) {
        float s = 0.0f;
        const float* p = parts + i;
        for (int t = 0; t < S; ++t) {
            s += *p;
            p += part_stride;
        }
        if (beta != 0.0f)
            s += beta * out[i];
        out[i] = s;
    }
}
