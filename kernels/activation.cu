// Elementwise activations: ReLU and (inverted) dropout, any shape (flat index). Grid-stride
// loops; the launches are in gpucnn/ops/activation.py.
//
// Each body is written once, as a template over the activation tensors' element type: float,
// or bf16_bits (kernels/bf16_storage.cuh: bfloat16 held as its bits). The extern "C" wrappers
// are <name> (float32 tensors) and <name>_bf16io (bf16 tensors in and out). The math is
// float32 either way: a load widens to float, the one store rounds (to nearest, ties to even;
// every NaN becomes 0x7FFF). ReLU copies or zeroes its input, so its bf16 variants round
// nothing but NaNs; dropout's product x * mask is rounded once to float32 and then to bf16,
// exactly as the float kernel's y rounded by round_bf16 on the host. Dropout's mask stays
// float32 in both variants: its keep scale 1 / (1 - p) is generally not a bf16 value.

#include "common.cuh"
#include "bf16_storage.cuh"

// y = max(x, 0); a NaN input stays NaN (as in PyTorch and np.maximum).
template <typename T>
__device__ __forceinline__ void relu_forward_body(const T* x, T* y, int n)
{
    GRID_STRIDE_LOOP(i, n) {
        float v = act_load(x + i);
        act_store(y + i, (v < 0.0f) ? 0.0f : v);
    }
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void relu_forward(const float* x, float* y, int n)
{
    relu_forward_body(x, y, n);
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void relu_forward_bf16io(const bf16_bits* x, bf16_bits* y, int n)
{
    relu_forward_body(x, y, n);
}

// dx = dy where the ReLU's output y > 0, else 0.
template <typename T>
__device__ __forceinline__ void relu_backward_body(const T* dy, const T* y, T* dx, int n)
{
    GRID_STRIDE_LOOP(i, n) {
        act_store(dx + i, (act_load(y + i) > 0.0f) ? act_load(dy + i) : 0.0f);
    }
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void relu_backward(const float* dy, const float* y, float* dx, int n)
{
    relu_backward_body(dy, y, dx, n);
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void relu_backward_bf16io(const bf16_bits* dy, const bf16_bits* y,
                                                bf16_bits* dx, int n)
{
    relu_backward_body(dy, y, dx, n);
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
template <typename T>
__device__ __forceinline__ void dropout_forward_body(
    const T* x, T* y, float* mask, int n,
    const unsigned int* state, unsigned int threshold, float keep_scale)
{
    const unsigned int seed = state[0] + 0x9E3779B9u * state[1];
    GRID_STRIDE_LOOP(i, n) {
        unsigned int h = dropout_hash32(seed, (unsigned int)i);
        float m = ((h >> 8) >= threshold) ? keep_scale : 0.0f;
        mask[i] = m;
        float v = act_load(x + i) * m;
        act_store(y + i, v);
    }
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void dropout_forward(
    const float* x, float* y, float* mask, int n,
    const unsigned int* state, unsigned int threshold, float keep_scale)
{
    dropout_forward_body(x, y, mask, n, state, threshold, keep_scale);
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void dropout_forward_bf16io(
    const bf16_bits* x, bf16_bits* y, float* mask, int n,
    const unsigned int* state, unsigned int threshold, float keep_scale)
{
    dropout_forward_body(x, y, mask, n, state, threshold, keep_scale);
}

// state[1] += 1: the layer's next call (one thread, after its dropout_forward).
// gpucnn: block=32 max_regs=64
extern "C" __global__ void dropout_advance(unsigned int* state)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) state[1] += 1u;
}

// dx = dy * mask (the float32 mask of the forward pass).
template <typename T>
__device__ __forceinline__ void dropout_backward_body(const T* dy, const float* mask, T* dx,
                                                      int n)
{
    GRID_STRIDE_LOOP(i, n) {
        float v = act_load(dy + i) * mask[i];
        act_store(dx + i, v);
    }
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void dropout_backward(const float* dy, const float* mask, float* dx, int n)
{
    dropout_backward_body(dy, mask, dx, n);
}

// gpucnn: block=256 max_regs=64
extern "C" __global__ void dropout_backward_bf16io(const bf16_bits* dy, const float* mask,
                                                   bf16_bits* dx, int n)
{
    dropout_backward_body(dy, mask, dx, n);
}
