// Elementwise activations: ReLU and (inverted) dropout, float32, any shape (flat index).
// Grid-stride loops; the launches are in gpucnn/ops/activation.py.

#include "common.cuh"

// y = max(x, 0); a NaN input stays NaN (as in PyTorch and np.maximum).
// gpucnn: block=256 max_regs=64
extern "C" __global__ void relu_forward(const float* x, float* y, int n)
{
    GRID_STRIDE_LOOP(i, n) {
        float v = x[i];
        y[i] = (v < 0.0f) ? 0.0f : v;
    }
}

// dx = dy where the ReLU's output y > 0, else 0.
// gpucnn: block=256 max_regs=64
extern "C" __global__ void relu_backward(const float* dy, const float* y, float* dx, int n)
{
    GRID_STRIDE_LOOP(i, n) {
        dx[i] = (y[i] > 0.0f) ? dy[i] : 0.0f;
    }
}

// The counter-based hash of dropout_hash in gpucnn/ops/activation.py, bit for bit: a 32-bit
// hash of (seed, index) with the 'lowbias32' finaliser. Unsigned arithmetic wraps mod 2^32 as
// NumPy's uint32 does.
__device__ __forceinline__ unsigned int dropout_hash32(unsigned int seed, unsigned int index)
{
    unsigned int x = index * 0x9E3779B1u + seed * 0x85EBCA77u;
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

// Element i is kept iff (hash(seed, i) >> 8) >= threshold (activation.py's dropout_threshold:
// round(p * 2^24)); mask = keep_scale (1 / (1 - p), rounded to float32 on the host) or 0;
// y = x * mask. The seed is read on the device, seed = state[0] + 0x9E3779B9 * state[1] (a
// layer's base seed and call count: nn.Dropout's formula), so a captured graph draws a new mask
// every replay (dropout_advance counts the calls).
// gpucnn: block=256 max_regs=64
extern "C" __global__ void dropout_forward(
    const float* x, float* y, float* mask, int n,
    const unsigned int* state, unsigned int threshold, float keep_scale)
{
    const unsigned int seed = state[0] + 0x9E3779B9u * state[1];
    GRID_STRIDE_LOOP(i, n) {
        unsigned int h = dropout_hash32(seed, (unsigned int)i);
        float m = ((h >> 8) >= threshold) ? keep_scale : 0.0f;
        mask[i] = m;
        y[i] = x[i] * m;
    }
}

// state[1] += 1: the layer's next call (one thread, after its dropout_forward).
// gpucnn: block=32 max_regs=64
extern "C" __global__ void dropout_advance(unsigned int* state)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) state[1] += 1u;
}

// dx = dy * mask.
// gpucnn: block=256 max_regs=64
extern "C" __global__ void dropout_backward(const float* dy, const float* mask, float* dx, int n)
{
    GRID_STRIDE_LOOP(i, n) {
        dx[i] = dy[i] * mask[i];
    }
}
