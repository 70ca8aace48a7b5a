// Small kernels for tests/test_emu_runtime.py (good kernels).
extern "C" __global__ void vec_add(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ out, int n)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        out[i] = a[i] + b[i];
}

// One partial sum per block; blockDim.x must be 256.
extern "C" __global__ void __launch_bounds__(256) block_sum(const float* x, float* partial, int n)
{
    __shared__ float s[256];
    float acc = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        acc += x[i];
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    return v;
}

extern "C" __global__ void warp_reduce(const float* x, float* partial, int n)
{
    __shared__ float ws[32];
    float acc = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        acc += x[i];
    acc = warp_sum(acc);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) ws[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        float v = lane < nw ? ws[lane] : 0.0f;
        v += __shfl_xor_sync(0xffffffffu, v, 16);
        v += __shfl_xor_sync(0xffffffffu, v, 8);
        v += __shfl_xor_sync(0xffffffffu, v, 4);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v = __shfl_sync(0xffffffffu, v, 0);
        if (lane == 0) partial[blockIdx.x] = v;
    }
}

// Reverses each block-sized chunk through dynamic shared memory.
extern "C" __global__ void dyn_reverse(const float* x, float* y, int n)
{
    extern __shared__ float buf[];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    int j = blockIdx.x * blockDim.x + (blockDim.x - 1 - threadIdx.x);
    if (j < n) y[j] = buf[threadIdx.x];
}

extern "C" __global__ void count_positive(const float* x, int* counter, unsigned int* ucounter,
                                          float* fsum, int n)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        if (x[i] > 0.0f) {
            atomicAdd(counter, 1);
            atomicAdd(ucounter, 1u);
        }
        atomicAdd(fsum, 1.0f);
    }
}

// float4 loads/stores over the first n4*4 elements, scalar tail (array length need not be a
// multiple of 4: the emulator then 16-byte aligns its guarded copy).
extern "C" __global__ void scale_vec4(const float* __restrict__ x, float* __restrict__ y, float s, int n)
{
    int n4 = n / 4;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    float4* y4 = reinterpret_cast<float4*>(y);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += blockDim.x * gridDim.x) {
        float4 v = x4[i];
        y4[i] = make_float4(v.x * s, v.y * s, v.z * s, v.w * s);
    }
    for (int i = n4 * 4 + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = x[i] * s;
}

// y = x * s: with -ftz=true on a GPU (CuPy's default) a subnormal x or result becomes 0.
extern "C" __global__ void scale_floats(const float* x, float* y, float s, int n)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = x[i] * s;
}
