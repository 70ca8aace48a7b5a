// Deliberately broken kernels: each must be caught by the emulator's checks.

// Writes one element past the end (i <= n).
extern "C" __global__ void oob_write(float* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = 1.0f;
}

// Reads one element past the end.
extern "C" __global__ void oob_read(const float* x, float* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i + 1];
}

// Writes one element before the start.
extern "C" __global__ void oob_underflow(float* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i - 1] = 2.0f;
}

// block_sum with the __syncthreads() inside the tree loop removed: a race.
extern "C" __global__ void racy_sum(const float* x, float* partial, int n)
{
    __shared__ float s[256];
    float acc = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        acc += x[i];
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

// __syncthreads() reached by only half of the block.
extern "C" __global__ void divergent_barrier(float* out)
{
    if (threadIdx.x < 16) {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

// Threads wait at two different barriers.
extern "C" __global__ void two_barriers(float* out)
{
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

// Spins forever on a flag nobody sets.
extern "C" __global__ void spin_forever(volatile int* flag)
{
    while (flag[0] == 0) {
    }
}

// Reads shared memory that was never written (poisoned with NaN when checks are on).
extern "C" __global__ void uninit_shared(float* out)
{
    __shared__ float s[64];
    if (threadIdx.x < 32) s[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}

extern "C" __global__ void null_write(float* out, unsigned long long addr)
{
    if (threadIdx.x == 5) *(float*)addr = 1.0f;
    out[threadIdx.x] = 0.0f;
}

extern "C" __global__ void takes_scalars(float* out, int a, unsigned int b, float c, long long d,
                                         double e, size_t f)
{
    out[0] = (float)a + (float)b + c + (float)d + (float)e + (float)f;
}

// Divides by a zero integer (SIGFPE on the CPU).
extern "C" __global__ void int_div_zero(int* out, int d)
{
    out[threadIdx.x] = 100 / (d + (int)threadIdx.x - 3);
}

// A 256 KiB local array: more stack than a fiber has.
extern "C" __global__ void big_stack(float* out, int n)
{
    volatile float local[65536];
    for (int i = 0; i < n; i++) local[i] = (float)i;
    out[threadIdx.x] = local[n - 1];
}

// Writes past the dynamic shared memory the launch provided.
extern "C" __global__ void dyn_overflow(float* out, int extra)
{
    extern __shared__ float dbuf[];
    dbuf[threadIdx.x + extra] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = dbuf[threadIdx.x];
}

// Only block 3 writes out of bounds (the other worker thread is busy with other blocks).
extern "C" __global__ void oob_in_one_block(float* out, int n)
{
    for (int k = 0; k < 2000; k++) out[threadIdx.x] += 1.0f;
    if (blockIdx.x == 3 && threadIdx.x == 7) out[n + 5] = 1.0f;
}

// Shuffle with a lane that is sitting at __syncthreads(): deadlock.
extern "C" __global__ void shfl_vs_barrier(float* out)
{
    float v = (float)threadIdx.x;
    if (threadIdx.x == 3) {
        __syncthreads();
    } else {
        v += __shfl_down_sync(0xffffffffu, v, 1);
        __syncthreads();
    }
    out[threadIdx.x] = v;
}

// float4 store covering one element past the end when n is not a multiple of 4.
extern "C" __global__ void vec4_overrun(float* y, int n)
{
    int i = threadIdx.x;
    if (i * 4 < n) reinterpret_cast<float4*>(y)[i] = make_float4(1.0f, 2.0f, 3.0f, 4.0f);
}

extern "C" __global__ void calls_trap(float* out)
{
    if (threadIdx.x == 2) __trap();
    out[threadIdx.x] = 1.0f;
}
