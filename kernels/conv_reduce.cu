// Bias-gradient reductions for convolution and fully connected layers (launches:
// gpucnn/ops/conv/im2col.py, gpucnn/ops/linear.py). Both are deterministic: fixed per-thread summation order
// and a fixed shared-memory tree, no atomics.

#include "common.cuh"
#include "bf16_storage.cuh"

// Threads per block of bias_grad_nchw: gpucnn/ops/conv/im2col.py launches exactly this many (the tree
// below needs a power of two and sizes its shared array by it).
#define REDUCE_THREADS 256

// db[c] = sum over n < N, p < P of dy[n][c][p]   (dy is N x C x P, P = Ho * Wo).
// One block per channel (block-stride over channels): each thread sums a strided subset of
// the N * P values, then the block adds the partial sums in a shared-memory tree. Written
// once over dy's element type A: float, or bf16_bits (bias_grad_nchw_bf16io: bf16 dy, read
// through act_load; the sums and db stay float32).
template <class A>
__device__ __forceinline__ void bias_grad_nchw_body(const A* dy, float* db, int N, int C, int P)
{
    __shared__ float partial[REDUCE_THREADS];
    const int tid = threadIdx.x;
    const int count = N * P;
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        float sum = 0.0f;
        for (int index = tid; index < count; index += REDUCE_THREADS) {
            const int n = index / P;
            const int p = index - n * P;
            sum += act_load(dy + (((long long)n * C + c) * P + p));
        }
        partial[tid] = sum;
        __syncthreads();
        for (int half = REDUCE_THREADS / 2; half > 0; half >>= 1) {
            if (tid < half)
                partial[tid] += partial[tid + half];
            __syncthreads();
        }
        if (tid == 0)
            db[c] = partial[0];
        __syncthreads();  // partial[] is reused by this block's next channel
    }
}

// gpucnn: block=REDUCE_THREADS
extern "C" __global__ void bias_grad_nchw(const float* dy, float* db, int N, int C, int P)
{
    bias_grad_nchw_body(dy, db, N, C, P);
}

// gpucnn: block=REDUCE_THREADS
extern "C" __global__ void bias_grad_nchw_bf16io(const bf16_bits* dy, float* db, int N, int C,
                                                  int P)
{
    bias_grad_nchw_body(dy, db, N, C, P);
}

// db[c] = sum over r < rows of dy[r][c]  (dy is rows x cols: a linear layer's bias gradient).
// One thread per column (grid-stride), summing its rows in order: consecutive threads read
// consecutive columns, so every load is coalesced. Written once over dy's element type A:
// float, or bf16_bits (bias_grad_rows_bf16io: the sums and db stay float32).
template <class A>
__device__ __forceinline__ void bias_grad_rows_body(const A* dy, float* db, int rows, int cols)
{
    GRID_STRIDE_LOOP(c, cols) {
        float sum = 0.0f;
        const A* p = dy + c;
        for (int r = 0; r < rows; ++r) {
            sum += act_load(p);
            p += cols;
        }
        db[c] = sum;
    }
}

// gpucnn: block=256
extern "C" __global__ void bias_grad_rows(const float* dy, float* db, int rows, int cols)
{
    bias_grad_rows_body(dy, db, rows, cols);
}

// gpucnn: block=256
extern "C" __global__ void bias_grad_rows_bf16io(const bf16_bits* dy, float* db, int rows,
                                                 int cols)
{
    bias_grad_rows_body(dy, db, rows, cols);
}
