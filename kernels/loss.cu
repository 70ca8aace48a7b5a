// Softmax cross-entropy over logits (N, K) float32 with int32 labels (N,).
//
// Forward, two launches (gpucnn/ops/loss.py):
//   softmax_xent_forward  one block per row (block-stride over rows): the row's probabilities
//                         and its loss log(sum exp(z - max)) - (z[label] - max);
//   softmax_xent_mean     one block: the mean of the row losses.
// Both reduce with a fixed-shape tree in shared memory, so the loss is deterministic (no
// atomics in the loss). A label outside [0, K) cannot raise on the device: its row's loss, and
// so the mean, is NaN, its row of the gradient is NaN, and the kernel records it in
// label_error (see xent_flag_label), which the host reads where it synchronises anyway
// (Backend.raise_device_errors) instead of once per step.

#include "common.cuh"

#define XENT_THREADS 128  // blockDim.x of both reduction kernels (their annotations say so)

__device__ __forceinline__ float xent_nan()
{
    return __int_as_float(0x7fc00000);
}

// Every thread of the block passes its value; every thread gets the block's maximum.
// All threads must call it (it contains barriers); buf holds XENT_THREADS floats.
__device__ __forceinline__ float xent_block_max(float* buf, float value)
{
    int tid = threadIdx.x;
    buf[tid] = value;
    __syncthreads();
    for (int half = XENT_THREADS / 2; half > 0; half /= 2) {
        if (tid < half) {
            buf[tid] = fmaxf(buf[tid], buf[tid + half]);
        }
        __syncthreads();
    }
    float result = buf[0];
    __syncthreads();  // buf may be reused as soon as this returns
    return result;
}

// As xent_block_max, for the sum.
__device__ __forceinline__ float xent_block_sum(float* buf, float value)
{
    int tid = threadIdx.x;
    buf[tid] = value;
    __syncthreads();
    for (int half = XENT_THREADS / 2; half > 0; half /= 2) {
        if (tid < half) {
            buf[tid] = buf[tid] + buf[tid + half];
        }
        __syncthreads();
    }
    float result = buf[0];
    __syncthreads();
    return result;
}

// label_error = {flag, smallest bad label, largest bad label, K}: set when `label` lies outside
// [0, K). The host allocates it as {0, INT_MAX, INT_MIN, 0} and clears it after reporting.
// Only rows with a bad label touch it, so a correct step costs nothing.
__device__ __forceinline__ void xent_flag_label(int* label_error, int label, int K)
{
    label_error[0] = 1;
    atomicMin(&label_error[1], label);
    atomicMax(&label_error[2], label);
    label_error[3] = K;
}

// probs[r, :] = softmax(logits[r, :]); row_loss[r] = -log(probs[r, labels[r]]), computed
// from the max-subtracted logits so large logits neither overflow nor lose the loss.
// gpucnn: block=XENT_THREADS max_regs=64
extern "C" __global__ void softmax_xent_forward(
    const float* logits, const int* labels, float* probs, float* row_loss, int* label_error,
    int N, int K)
{
    __shared__ float buf[XENT_THREADS];
    int tid = threadIdx.x;
    for (int row = blockIdx.x; row < N; row += gridDim.x) {
        const float* z = logits + (long long)row * K;  // N * K may pass 2^31
        float* p = probs + (long long)row * K;

        float row_max = __int_as_float(0xff800000);  // -inf
        for (int k = tid; k < K; k += XENT_THREADS) {
            row_max = fmaxf(row_max, z[k]);
        }
        row_max = xent_block_max(buf, row_max);

        // Each thread keeps exp(z - max) in the entries it owns, then divides them.
        float sum = 0.0f;
        for (int k = tid; k < K; k += XENT_THREADS) {
            float e = expf(z[k] - row_max);
            p[k] = e;
            sum += e;
        }
        sum = xent_block_sum(buf, sum);
        for (int k = tid; k < K; k += XENT_THREADS) {
            p[k] = p[k] / sum;
        }

        if (tid == 0) {
            int label = labels[row];
            bool ok = label >= 0 && label < K;
            row_loss[row] = ok ? logf(sum) - (z[label] - row_max) : xent_nan();
            if (!ok) {
                xent_flag_label(label_error, label, K);
            }
        }
    }
}

// loss[0] = mean of row_loss[0..N). Launch with exactly one block.
// gpucnn: block=XENT_THREADS max_regs=64
extern "C" __global__ void softmax_xent_mean(const float* row_loss, float* loss, int N)
{
    __shared__ float buf[XENT_THREADS];
    float sum = 0.0f;
    for (int r = threadIdx.x; r < N; r += XENT_THREADS) {
        sum += row_loss[r];
    }
    sum = xent_block_sum(buf, sum);
    if (threadIdx.x == 0) {
        loss[0] = sum / (float)N;
    }
}

// dlogits[r, k] = (probs[r, k] - (k == labels[r])) / N: the gradient of the mean loss.
// gpucnn: block=256 max_regs=64
extern "C" __global__ void softmax_xent_backward(
    const float* probs, const int* labels, float* dlogits, int* label_error, int N, int K)
{
    int total = N * K;
    GRID_STRIDE_LOOP(i, total) {
        int row = i / K;
        int k = i % K;
        int label = labels[row];
        float onehot = (k == label) ? 1.0f : 0.0f;
        bool ok = label >= 0 && label < K;
        dlogits[i] = ok ? (probs[i] - onehot) / (float)N : xent_nan();
        if (!ok && k == 0) {  // once per row
            xent_flag_label(label_error, label, K);
        }
    }
}
