// cuda_emu.h -- the CUDA subset our kernels may use, for g++ on x86-64 (gpucnn emulator).
//
// Force-included (-include) before each UNMODIFIED .cu file, which is compiled with -nostdinc:
// like NVRTC, no host header is reachable, so INFINITY / NAN / math.h macros are undefined and a
// kernel that uses them fails to build here too. Nothing in this header includes anything.
//
// Execution model: every CUDA thread is a fiber; the runtime (emu_runtime.cpp) sets the
// per-OS-thread variables threadIdx/blockIdx/... before switching to a fiber. __shared__ is
// thread_local storage (each OS thread runs one block at a time). Barriers and warp operations
// are calls into the runtime that yield to the block scheduler.
#ifndef GPUCNN_CUDA_EMU_H
#define GPUCNN_CUDA_EMU_H

#define __CUDACC__ 1
#define __CUDACC_RTC__ 1
#define __CUDA_ARCH__ 800
#define __GPUCNN_EMU__ 1
#define __NVCC__ 1

#define __global__
#define __device__
#define __host__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__
#define __managed__
#define __shared__ thread_local
// __restrict__ is understood by g++ natively.

#define __EMU_API extern "C" __attribute__((visibility("hidden")))
#define __EMU_INL static inline __attribute__((always_inline))

typedef __SIZE_TYPE__ size_t;
typedef __PTRDIFF_TYPE__ ptrdiff_t;

struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct __attribute__((aligned(8))) float2 { float x, y; };
struct float3 { float x, y, z; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct int3 { int x, y, z; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned int x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned int x, y, z, w; };
struct __attribute__((aligned(16))) double2 { double x, y; };
__EMU_INL float2 make_float2(float x, float y) { return float2{x, y}; }
__EMU_INL float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
__EMU_INL float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
__EMU_INL int2 make_int2(int x, int y) { return int2{x, y}; }
__EMU_INL int3 make_int3(int x, int y, int z) { return int3{x, y, z}; }
__EMU_INL int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
__EMU_INL uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

// Per-OS-thread "current CUDA thread" state, written by the scheduler at each switch. One
// thread-local struct, so a kernel pays for one thread-local address lookup, not four.
struct __emu_ctx_t { uint3 threadIdx, blockIdx, blockDim, gridDim; unsigned int laneid; };
extern __thread __emu_ctx_t __emu_ctx __attribute__((visibility("hidden")));
#define threadIdx (__emu_ctx.threadIdx)
#define blockIdx (__emu_ctx.blockIdx)
#define blockDim (__emu_ctx.blockDim)
#define gridDim (__emu_ctx.gridDim)
#define __emu_laneid (__emu_ctx.laneid)
constexpr int warpSize = 32;

// ---- runtime entry points (emu_runtime.cpp) ----
__EMU_API int __emu_syncthreads(const char* file, int line, int op, int pred);
__EMU_API unsigned long long __emu_warp_op(const char* file, int line, int op, unsigned mask,
                                           unsigned long long value, int src_lane);
__EMU_API unsigned int __emu_activemask(void);
__EMU_API void __emu_trap(const char* file, int line);
__EMU_API void __emu_fail(const char* file, int line, const char* what) __attribute__((noreturn));
__EMU_API unsigned long long __emu_launch_seed(void);

// op codes shared with the runtime
#define __EMU_BAR_SYNC 0
#define __EMU_BAR_COUNT 1
#define __EMU_BAR_AND 2
#define __EMU_BAR_OR 3
#define __EMU_WARP_SYNC 0
#define __EMU_WARP_SHFL 1
#define __EMU_WARP_BALLOT 2
#define __EMU_WARP_ANY 3
#define __EMU_WARP_ALL 4
// warp-collective ops (every lane of the warp, same source line; see __emu_wmma_collective)
#define __EMU_WARP_WMMA_LOAD 5
#define __EMU_WARP_WMMA_STORE 6
#define __EMU_WARP_WMMA_MMA 7

// The barrier is identified by its source location (file, line), so a copy made by the
// compiler still counts as the same barrier. The fence keeps memory accesses on their side.
#define __syncthreads() __emu_syncthreads_v(__FILE__, __LINE__)
__EMU_INL void __emu_syncthreads_v(const char* f, int l) {
    __emu_syncthreads(f, l, __EMU_BAR_SYNC, 1);
    __asm__ __volatile__("" ::: "memory");
}
#define __syncthreads_count(p) __emu_syncthreads_r(__FILE__, __LINE__, __EMU_BAR_COUNT, (p))
#define __syncthreads_and(p) __emu_syncthreads_r(__FILE__, __LINE__, __EMU_BAR_AND, (p))
#define __syncthreads_or(p) __emu_syncthreads_r(__FILE__, __LINE__, __EMU_BAR_OR, (p))
__EMU_INL int __emu_syncthreads_r(const char* f, int l, int op, int p) {
    int r = __emu_syncthreads(f, l, op, p != 0);
    __asm__ __volatile__("" ::: "memory");
    return r;
}
#define __syncwarp(...) __emu_syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)
__EMU_INL void __emu_syncwarp(const char* f, int l, unsigned mask = 0xffffffffu) {
    __emu_warp_op(f, l, __EMU_WARP_SYNC, mask, 0, 0);
    __asm__ __volatile__("" ::: "memory");
}

__EMU_INL void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
__EMU_INL void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
__EMU_INL void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
#define __trap() __emu_trap(__FILE__, __LINE__)
__EMU_INL unsigned int __activemask() { return __emu_activemask(); }

// ---- warp shuffles / votes ----
template <class T> __EMU_INL unsigned long long __emu_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    unsigned long long b = 0; __builtin_memcpy(&b, &v, sizeof(T)); return b;
}
template <class T> __EMU_INL T __emu_unbits(unsigned long long b) {
    T v; __builtin_memcpy(&v, &b, sizeof(T)); return v;
}
#define __EMU_SHFL(kind, mask, var, arg, width) \
    __emu_shfl_##kind(__FILE__, __LINE__, mask, var, arg, width)
template <class T> __EMU_INL T __emu_shfl_idx(const char* f, int l, unsigned mask, T var, int src, int width) {
    unsigned lane = __emu_laneid;
    int seg = (int)(lane & ~(unsigned)(width - 1));
    int s = seg + (src & (width - 1));
    return __emu_unbits<T>(__emu_warp_op(f, l, __EMU_WARP_SHFL, mask, __emu_bits(var), s));
}
template <class T> __EMU_INL T __emu_shfl_up(const char* f, int l, unsigned mask, T var, unsigned d, int width) {
    int lane = (int)__emu_laneid;
    int s = ((lane & (width - 1)) < (int)d) ? lane : lane - (int)d;
    return __emu_unbits<T>(__emu_warp_op(f, l, __EMU_WARP_SHFL, mask, __emu_bits(var), s));
}
template <class T> __EMU_INL T __emu_shfl_down(const char* f, int l, unsigned mask, T var, unsigned d, int width) {
    int lane = (int)__emu_laneid;
    int s = ((lane & (width - 1)) + (int)d >= width) ? lane : lane + (int)d;
    return __emu_unbits<T>(__emu_warp_op(f, l, __EMU_WARP_SHFL, mask, __emu_bits(var), s));
}
template <class T> __EMU_INL T __emu_shfl_xor(const char* f, int l, unsigned mask, T var, int m, int width) {
    int lane = (int)__emu_laneid;
    int s = lane ^ m;
    int seg = lane & ~(width - 1);
    if (s >= seg + width) s = lane;
    return __emu_unbits<T>(__emu_warp_op(f, l, __EMU_WARP_SHFL, mask, __emu_bits(var), s));
}
#define __shfl_sync(mask, var, src, ...) __emu_shfl_idx(__FILE__, __LINE__, mask, var, src, ##__VA_ARGS__)
#define __shfl_up_sync(mask, var, d, ...) __emu_shfl_up(__FILE__, __LINE__, mask, var, d, ##__VA_ARGS__)
#define __shfl_down_sync(mask, var, d, ...) __emu_shfl_down(__FILE__, __LINE__, mask, var, d, ##__VA_ARGS__)
#define __shfl_xor_sync(mask, var, m, ...) __emu_shfl_xor(__FILE__, __LINE__, mask, var, m, ##__VA_ARGS__)
// default width = 32 (a macro can't have default arguments; overloads supply it)
template <class T> __EMU_INL T __emu_shfl_idx(const char* f, int l, unsigned mask, T var, int src) { return __emu_shfl_idx(f, l, mask, var, src, 32); }
template <class T> __EMU_INL T __emu_shfl_up(const char* f, int l, unsigned mask, T var, unsigned d) { return __emu_shfl_up(f, l, mask, var, d, 32); }
template <class T> __EMU_INL T __emu_shfl_down(const char* f, int l, unsigned mask, T var, unsigned d) { return __emu_shfl_down(f, l, mask, var, d, 32); }
template <class T> __EMU_INL T __emu_shfl_xor(const char* f, int l, unsigned mask, T var, int m) { return __emu_shfl_xor(f, l, mask, var, m, 32); }
#define __ballot_sync(mask, p) ((unsigned)__emu_warp_op(__FILE__, __LINE__, __EMU_WARP_BALLOT, mask, (p) != 0, 0))
#define __any_sync(mask, p) ((int)__emu_warp_op(__FILE__, __LINE__, __EMU_WARP_ANY, mask, (p) != 0, 0))
#define __all_sync(mask, p) ((int)__emu_warp_op(__FILE__, __LINE__, __EMU_WARP_ALL, mask, (p) != 0, 0))

__EMU_INL float __int_as_float_emu(int i) { float f; __builtin_memcpy(&f, &i, 4); return f; }
__EMU_INL int __float_as_int_emu(float f) { int i; __builtin_memcpy(&i, &f, 4); return i; }
// ---- atomics (real atomics: blocks run on several OS threads) ----
#define __EMU_ATOMIC_INT(T) \
    __EMU_INL T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); } \
    __EMU_INL T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); } \
    __EMU_INL T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); } \
    __EMU_INL T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); } \
    __EMU_INL T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); } \
    __EMU_INL T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); } \
    __EMU_INL T atomicCAS(T* a, T cmp, T v) { __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); return cmp; } \
    __EMU_INL T atomicMax(T* a, T v) { T o = __atomic_load_n(a, __ATOMIC_RELAXED); \
        while (o < v && !__atomic_compare_exchange_n(a, &o, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} return o; } \
    __EMU_INL T atomicMin(T* a, T v) { T o = __atomic_load_n(a, __ATOMIC_RELAXED); \
        while (o > v && !__atomic_compare_exchange_n(a, &o, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} return o; }
__EMU_ATOMIC_INT(int)
__EMU_ATOMIC_INT(unsigned int)
__EMU_ATOMIC_INT(unsigned long long)
__EMU_ATOMIC_INT(long long)
#undef __EMU_ATOMIC_INT
template <class F, class I> __EMU_INL F __emu_atomic_fadd(F* a, F v) {
    I* p = (I*)a;
    I o = __atomic_load_n(p, __ATOMIC_RELAXED), n;
    F of, nf;
    do { __builtin_memcpy(&of, &o, sizeof(F)); nf = of + v; __builtin_memcpy(&n, &nf, sizeof(F)); }
    while (!__atomic_compare_exchange_n(p, &o, n, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return of;
}
__EMU_INL float atomicAdd(float* a, float v) { return __emu_atomic_fadd<float, unsigned int>(a, v); }
__EMU_INL double atomicAdd(double* a, double v) { return __emu_atomic_fadd<double, unsigned long long>(a, v); }
__EMU_INL float atomicExch(float* a, float v) { return __int_as_float_emu(__atomic_exchange_n((int*)a, __float_as_int_emu(v), __ATOMIC_RELAXED)); }
__EMU_INL unsigned int atomicInc(unsigned int* a, unsigned int lim) {
    unsigned o = __atomic_load_n(a, __ATOMIC_RELAXED), n;
    do { n = (o >= lim) ? 0 : o + 1; } while (!__atomic_compare_exchange_n(a, &o, n, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return o;
}

// ---- loads ----
template <class T> __EMU_INL T __ldg(const T* p) { return *p; }
template <class T> __EMU_INL T __ldcg(const T* p) { return *p; }
template <class T> __EMU_INL T __ldca(const T* p) { return *p; }
template <class T> __EMU_INL T __ldcs(const T* p) { return *p; }
template <class T> __EMU_INL void __stcg(T* p, T v) { *p = v; }
template <class T> __EMU_INL void __stcs(T* p, T v) { *p = v; }

// ---- math: libm (C linkage, as glibc declares them) plus CUDA-only intrinsics ----
extern "C" {
float expf(float) noexcept; float exp2f(float) noexcept; float expm1f(float) noexcept;
float logf(float) noexcept; float log2f(float) noexcept; float log10f(float) noexcept; float log1pf(float) noexcept;
float sqrtf(float) noexcept; float cbrtf(float) noexcept; float powf(float, float) noexcept;
float sinf(float) noexcept; float cosf(float) noexcept; float tanf(float) noexcept;
float asinf(float) noexcept; float acosf(float) noexcept; float atanf(float) noexcept; float atan2f(float, float) noexcept;
float sinhf(float) noexcept; float coshf(float) noexcept; float tanhf(float) noexcept;
float erff(float) noexcept; float erfcf(float) noexcept; float lgammaf(float) noexcept; float tgammaf(float) noexcept;
float fabsf(float) noexcept; float fmaxf(float, float) noexcept; float fminf(float, float) noexcept;
float fmaf(float, float, float) noexcept; float floorf(float) noexcept; float ceilf(float) noexcept;
float truncf(float) noexcept; float roundf(float) noexcept; float rintf(float) noexcept; float nearbyintf(float) noexcept;
float fmodf(float, float) noexcept; float copysignf(float, float) noexcept; float hypotf(float, float) noexcept;
float ldexpf(float, int) noexcept; float remainderf(float, float) noexcept; long lroundf(float) noexcept;
double exp(double) noexcept; double log(double) noexcept; double sqrt(double) noexcept; double pow(double, double) noexcept;
double fabs(double) noexcept; double fmax(double, double) noexcept; double fmin(double, double) noexcept;
double fma(double, double, double) noexcept; double floor(double) noexcept; double ceil(double) noexcept;
double tanh(double) noexcept; double log1p(double) noexcept; double expm1(double) noexcept; double erf(double) noexcept;
double sin(double) noexcept; double cos(double) noexcept; double round(double) noexcept; double trunc(double) noexcept;
double exp2(double) noexcept; double log2(double) noexcept; double copysign(double, double) noexcept;
int printf(const char*, ...);
}
// Float overloads CUDA provides in the global namespace (exp(float) etc. are float in CUDA).
__EMU_INL float exp(float x) { return expf(x); }
__EMU_INL float log(float x) { return logf(x); }
__EMU_INL float sqrt(float x) { return sqrtf(x); }
__EMU_INL float pow(float x, float y) { return powf(x, y); }
__EMU_INL float fabs(float x) { return fabsf(x); }
__EMU_INL float fmax(float a, float b) { return fmaxf(a, b); }
__EMU_INL float fmin(float a, float b) { return fminf(a, b); }
__EMU_INL float tanh(float x) { return tanhf(x); }
__EMU_INL float floor(float x) { return floorf(x); }
__EMU_INL float ceil(float x) { return ceilf(x); }
__EMU_INL float rsqrtf(float x) { return 1.0f / sqrtf(x); }
__EMU_INL double rsqrt(double x) { return 1.0 / sqrt(x); }
__EMU_INL float __expf(float x) { return expf(x); }
__EMU_INL float __exp10f(float x) { return powf(10.0f, x); }
__EMU_INL float __logf(float x) { return logf(x); }
__EMU_INL float __log2f(float x) { return log2f(x); }
__EMU_INL float __log10f(float x) { return log10f(x); }
__EMU_INL float __powf(float x, float y) { return powf(x, y); }
__EMU_INL float __sinf(float x) { return sinf(x); }
__EMU_INL float __cosf(float x) { return cosf(x); }
__EMU_INL float __tanf(float x) { return tanf(x); }
__EMU_INL float __fdividef(float a, float b) { return a / b; }
__EMU_INL float fdividef(float a, float b) { return a / b; }
__EMU_INL float __frcp_rn(float x) { return 1.0f / x; }
__EMU_INL float __fsqrt_rn(float x) { return sqrtf(x); }
__EMU_INL float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
__EMU_INL float __fadd_rn(float a, float b) { return a + b; }
__EMU_INL float __fsub_rn(float a, float b) { return a - b; }
__EMU_INL float __fmul_rn(float a, float b) { return a * b; }
__EMU_INL float __fdiv_rn(float a, float b) { return a / b; }
__EMU_INL float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
__EMU_INL float __saturatef(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
__EMU_INL float exp10f(float x) { return powf(10.0f, x); }
__EMU_INL bool isnan(float x) { return __builtin_isnan(x); }
__EMU_INL bool isnan(double x) { return __builtin_isnan(x); }
__EMU_INL bool isinf(float x) { return __builtin_isinf(x); }
__EMU_INL bool isinf(double x) { return __builtin_isinf(x); }
__EMU_INL bool isfinite(float x) { return __builtin_isfinite(x); }
__EMU_INL bool isfinite(double x) { return __builtin_isfinite(x); }
__EMU_INL bool signbit(float x) { return __builtin_signbit(x); }
__EMU_INL int __isnanf(float x) { return __builtin_isnan(x); }
__EMU_INL int __isinff(float x) { return __builtin_isinf(x); }

__EMU_INL int min(int a, int b) { return a < b ? a : b; }
__EMU_INL int max(int a, int b) { return a > b ? a : b; }
__EMU_INL unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
__EMU_INL unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
__EMU_INL long long min(long long a, long long b) { return a < b ? a : b; }
__EMU_INL long long max(long long a, long long b) { return a > b ? a : b; }
__EMU_INL unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
__EMU_INL unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
// mixed signed/unsigned and float/double overloads, as CUDA's math_functions provide
__EMU_INL unsigned int min(int a, unsigned int b) { return min((unsigned int)a, b); }
__EMU_INL unsigned int min(unsigned int a, int b) { return min(a, (unsigned int)b); }
__EMU_INL unsigned int max(int a, unsigned int b) { return max((unsigned int)a, b); }
__EMU_INL unsigned int max(unsigned int a, int b) { return max(a, (unsigned int)b); }
__EMU_INL unsigned long long min(long long a, unsigned long long b) { return min((unsigned long long)a, b); }
__EMU_INL unsigned long long min(unsigned long long a, long long b) { return min(a, (unsigned long long)b); }
__EMU_INL unsigned long long max(long long a, unsigned long long b) { return max((unsigned long long)a, b); }
__EMU_INL unsigned long long max(unsigned long long a, long long b) { return max(a, (unsigned long long)b); }
__EMU_INL float min(float a, float b) { return fminf(a, b); }
__EMU_INL float max(float a, float b) { return fmaxf(a, b); }
__EMU_INL double min(double a, double b) { return fmin(a, b); }
__EMU_INL double max(double a, double b) { return fmax(a, b); }
__EMU_INL double min(float a, double b) { return fmin((double)a, b); }
__EMU_INL double min(double a, float b) { return fmin(a, (double)b); }
__EMU_INL double max(float a, double b) { return fmax((double)a, b); }
__EMU_INL double max(double a, float b) { return fmax(a, (double)b); }
__EMU_INL int abs(int a) { return a < 0 ? -a : a; }
__EMU_INL long long llabs(long long a) { return a < 0 ? -a : a; }

// ---- bit casts and conversions ----
__EMU_INL float __int_as_float(int i) { float f; __builtin_memcpy(&f, &i, 4); return f; }
__EMU_INL int __float_as_int(float f) { int i; __builtin_memcpy(&i, &f, 4); return i; }
__EMU_INL float __uint_as_float(unsigned int i) { float f; __builtin_memcpy(&f, &i, 4); return f; }
__EMU_INL unsigned int __float_as_uint(float f) { unsigned int i; __builtin_memcpy(&i, &f, 4); return i; }
__EMU_INL double __longlong_as_double(long long i) { double f; __builtin_memcpy(&f, &i, 8); return f; }
__EMU_INL long long __double_as_longlong(double f) { long long i; __builtin_memcpy(&i, &f, 8); return i; }
__EMU_INL int __float2int_rz(float x) { return (int)x; }
__EMU_INL int __float2int_rd(float x) { return (int)floorf(x); }
__EMU_INL int __float2int_ru(float x) { return (int)ceilf(x); }
__EMU_INL int __float2int_rn(float x) { return (int)rintf(x); }
__EMU_INL unsigned int __float2uint_rz(float x) { return (unsigned int)x; }
__EMU_INL float __int2float_rn(int x) { return (float)x; }
__EMU_INL float __uint2float_rn(unsigned int x) { return (float)x; }
__EMU_INL int __popc(unsigned int x) { return __builtin_popcount(x); }
__EMU_INL int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
__EMU_INL int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
__EMU_INL int __ffs(int x) { return __builtin_ffs(x); }
__EMU_INL unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
    return (x >> 16) | (x << 16);
}
__EMU_INL int __mul24(int a, int b) { return a * b; }
__EMU_INL unsigned int __umul24(unsigned int a, unsigned int b) { return a * b; }
__EMU_INL unsigned int __umulhi(unsigned int a, unsigned int b) { return (unsigned int)(((unsigned long long)a * b) >> 32); }
__EMU_INL int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }

// ---- bfloat16 (cuda_bf16.h subset): the bits in a uint16, conversions as CUDA's ----
struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f);   // round to nearest even, as __float2bfloat16
    operator float() const { return __uint_as_float((unsigned)__x << 16); }
};
__EMU_INL __nv_bfloat16 __float2bfloat16_rn(float f) {
    unsigned u = __float_as_uint(f);
    __nv_bfloat16 r;
    // NaN -> 0x7FFF (CUDA's canonical bf16 NaN); else ties to even: add half a unit minus one
    // plus the kept part's lowest bit (gpucnn.ops.precision.round_bf16 is the reference)
    r.__x = (u & 0x7fffffffu) > 0x7f800000u ? (unsigned short)0x7fff
                                            : (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return r;
}
__EMU_INL __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
__EMU_INL float __bfloat162float(__nv_bfloat16 b) { return (float)b; }
inline __nv_bfloat16::__nv_bfloat16(float f) : __x(__float2bfloat16_rn(f).__x) {}

// ---- nvcuda::wmma (mma.h subset): tf32 m16n16k8 and bf16 m16n16k16, float accumulators ----
// Semantics (tests/test_emu_wmma.py pins them down; a kernel source includes <mma.h> and
// <cuda_bf16.h> only #ifndef __GPUCNN_EMU__, since nothing is reachable here, see the top):
// * load_matrix_sync / store_matrix_sync / mma_sync are warp-collective: every lane of a full
//   warp must call the same one at the same source line (a lane missing, exited or elsewhere is
//   a deadlock error naming the call); the first lane of the warp to resume does the operation
//   for all 32, once.
// * which (row, column) a lane's x[i] holds is a permutation drawn from the launch seed and the
//   fragment type: deliberately not CUDA's (unspecified) layout nor any natural order, so a
//   kernel that depends on it gets a wrong answer. Same fragment type, same launch: same map,
//   so element-wise work across fragments of one type is right.
// * mma_sync reads A and B as a tensor core does: tf32 elements with their low 13 bits dropped
//   (so one not converted by __float_to_tf32 is truncated), bf16 exactly; then
//   D[i][j] = fma(A[i][K-1], B[K-1][j], ... fma(A[i][0], B[0][j], C[i][j])): k in order, one
//   FP32 rounding per step (the products of tf32 / bf16 values are exact in FP32). CUDA leaves
//   the order unspecified; gpucnn.ops.precision and tests/test_emu_wmma.py hold the references.
// * NVIDIA's rules are enforced: the pointer 256-bit (32-byte) aligned; ldm a multiple of 16
//   bytes (4 floats, 8 bf16); pointer, ldm and layout the same in every lane.
namespace nvcuda { namespace wmma {
struct matrix_a; struct matrix_b; struct accumulator;
struct row_major; struct col_major;
enum layout_t { mem_row_major, mem_col_major };
namespace precision { struct tf32; }

__EMU_INL float __float_to_tf32(float in) {   // cvt.rna.tf32.f32 (= precision.round_tf32)
    unsigned u = __float_as_uint(in);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __uint_as_float((u & ~0x1fffu) | 0x400000u);
    if ((u & 0x7f800000u) == 0x7f800000u) return in;
    return __uint_as_float((u + 0x1000u) & ~0x1fffu);   // ties away from zero; may carry to inf
}
__EMU_INL float __emu_tf32_read(float v) {               // = precision.truncate_tf32
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __uint_as_float((u & ~0x1fffu) | 0x400000u);
    return __uint_as_float(u & ~0x1fffu);
}
__EMU_INL float __emu_ab_read(float v) { return __emu_tf32_read(v); }
__EMU_INL float __emu_ab_read(__nv_bfloat16 v) { return (float)v; }

template <class T> struct __emu_storage { typedef T type; enum { id = 0 }; };   // float
template <> struct __emu_storage<precision::tf32> { typedef float type; enum { id = 1 }; };
template <> struct __emu_storage<__nv_bfloat16> { typedef __nv_bfloat16 type; enum { id = 2 }; };
template <class L> struct __emu_layout { enum { id = -1 }; };
template <> struct __emu_layout<row_major> { enum { id = mem_row_major }; };
template <> struct __emu_layout<col_major> { enum { id = mem_col_major }; };
// rows x cols of the matrix a fragment holds
template <class Use, int M, int N, int K> struct __emu_dims;
template <int M, int N, int K> struct __emu_dims<matrix_a, M, N, K> { enum { use = 0, rows = M, cols = K }; };
template <int M, int N, int K> struct __emu_dims<matrix_b, M, N, K> { enum { use = 1, rows = K, cols = N }; };
template <int M, int N, int K> struct __emu_dims<accumulator, M, N, K> { enum { use = 2, rows = M, cols = N }; };
template <class Use, int M, int N, int K, class T, class L> struct __emu_supported {
    enum { id = __emu_storage<T>::id, lay = __emu_layout<L>::id, acc = __emu_dims<Use, M, N, K>::use == 2 };
    enum { shape = M == 16 && N == 16 && (K == 8 || K == 16) };
    enum { value = shape && (acc ? id == 0 && lay == -1
                                 : lay >= 0 && (id == 1 ? K == 8 : id == 2 && K == 16)) };
};

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
    static_assert(__emu_supported<Use, M, N, K, T, Layout>::value,
                  "the emulator's wmma has tf32 m16n16k8 and __nv_bfloat16 m16n16k16 (A/B with "
                  "row_major or col_major) and float accumulators of those shapes");
public:
    typedef __emu_dims<Use, M, N, K> dims;
    typedef T element_type;
    typedef typename __emu_storage<T>::type storage_element_type;
    enum { num_elements = dims::rows * dims::cols / 32, num_storage_elements = num_elements };
    storage_element_type x[num_elements];
};

template <class Use, int M, int N, int K, class T, class L, class V>
__EMU_INL void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& v) {
    typedef typename fragment<Use, M, N, K, T, L>::storage_element_type S;
    for (int i = 0; i < f.num_elements; i++) f.x[i] = S(v);
}

// The fragment map: position (lane * num_elements + i) holds matrix element perm[...]
// (row * cols + col), a Fisher-Yates shuffle from the launch seed and the fragment type.
template <class Frag> __EMU_INL void __emu_fragment_map(unsigned short* perm) {
    typedef typename Frag::dims D;
    const int n = D::rows * D::cols;
    unsigned long long s = __emu_launch_seed() ^ 0x7ea5ec0de5eedull ^
        ((unsigned long long)(D::use * 64 + __emu_storage<typename Frag::element_type>::id * 8 + D::cols) << 32);
    for (int i = 0; i < n; i++) perm[i] = (unsigned short)i;
    for (int i = n - 1; i > 0; i--) {
        unsigned long long z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        int j = (int)((z ^ (z >> 31)) % (unsigned long long)(i + 1));
        unsigned short t = perm[i]; perm[i] = perm[j]; perm[j] = t;
    }
}

// One lane's arguments to a collective op; the acting lane reads all 32 lanes' through the
// table the runtime hands back (their fibers wait inside __emu_warp_op, stacks intact).
struct __emu_wmma_args { void* frag[4]; const void* mem; unsigned ldm; int layout; };

__EMU_INL void __emu_wmma_fail(const char* f, int l, const char* op, const char* fmt, unsigned long long a,
                               unsigned long long b) {
    char msg[400], what[320];
    __builtin_snprintf(what, sizeof what, fmt, a, b);
    __builtin_snprintf(msg, sizeof msg, "%s: %s", op, what);
    __emu_fail(f, l, msg);
}

// Rendezvous of the warp at (f, l); the first lane to resume runs act(lanes) for all 32 and
// clears the table, which tells the lanes resuming after it that the work is done.
template <class Act> __EMU_INL void __emu_wmma_collective(const char* f, int l, int op, const char* name,
                                                          __emu_wmma_args* mine, Act act) {
    unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
    unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    if ((tid | 31u) >= nthreads)
        __emu_wmma_fail(f, l, name, "needs a full warp of 32 threads; the block has %llu threads "
                        "(thread %llu is in a partial warp)", nthreads, tid);
    unsigned long long* tab = (unsigned long long*)__emu_warp_op(f, l, op, 0xffffffffu,
                                                                 (unsigned long long)mine, 0);
    if (!tab[__emu_laneid]) return;
    __emu_wmma_args* lanes[32];
    for (int k = 0; k < 32; k++) lanes[k] = (__emu_wmma_args*)tab[k];
    act(lanes);
    for (int k = 0; k < 32; k++) tab[k] = 0;
    __asm__ __volatile__("" ::: "memory");
}

// NVIDIA's rules for the memory operand (CUDA C++ Programming Guide, "Warp Matrix Functions"):
// a 256-bit aligned pointer, ldm a multiple of 16 bytes, the same pointer / ldm / layout in
// every lane.
template <class S> __EMU_INL void __emu_wmma_check_mem(const char* f, int l, const char* name,
                                                       __emu_wmma_args** lanes) {
    const __emu_wmma_args* a = lanes[0];
    for (int k = 1; k < 32; k++)
        if (lanes[k]->mem != a->mem || lanes[k]->ldm != a->ldm || lanes[k]->layout != a->layout)
            __emu_wmma_fail(f, l, name, "lane %llu passed a different pointer, ldm or layout than lane %llu "
                            "(they must be the same in every lane)", k, 0);
    if ((unsigned long long)a->mem % 32)
        __emu_wmma_fail(f, l, name, "pointer 0x%llx is not 256-bit (32-byte) aligned (%llu bytes past)",
                        (unsigned long long)a->mem, (unsigned long long)a->mem % 32);
    if (a->ldm * sizeof(S) % 16)
        __emu_wmma_fail(f, l, name, "ldm=%llu is not a multiple of 16 bytes (%llu elements of this type)",
                        a->ldm, 16 / sizeof(S));
}

// Memory <-> fragments of the whole warp; to_mem says which way.
template <class Frag, class S> __EMU_INL void __emu_wmma_move(__emu_wmma_args** lanes, bool to_mem) {
    typedef typename Frag::dims D;
    unsigned short perm[D::rows * D::cols];
    __emu_fragment_map<Frag>(perm);
    S* mem = (S*)lanes[0]->mem;
    unsigned ldm = lanes[0]->ldm;
    bool rowm = lanes[0]->layout == mem_row_major;
    for (int k = 0; k < 32; k++) {
        Frag* fr = (Frag*)lanes[k]->frag[0];
        for (int i = 0; i < Frag::num_elements; i++) {
            int pos = perm[k * Frag::num_elements + i], r = pos / D::cols, c = pos % D::cols;
            S* p = mem + (rowm ? (unsigned long long)r * ldm + c : (unsigned long long)c * ldm + r);
            if (to_mem) *p = fr->x[i];
            else fr->x[i] = *p;
        }
    }
}

template <class Use, int M, int N, int K, class T, class L, class S>
__EMU_INL void __emu_load(fragment<Use, M, N, K, T, L>& a, const S* p, unsigned ldm, int layout, const char* f,
                          int l) {
    typedef fragment<Use, M, N, K, T, L> Frag;
    static_assert(sizeof(S) == sizeof(typename Frag::storage_element_type), "pointer type of the fragment's");
    __emu_wmma_args mine = {{&a, 0, 0, 0}, p, ldm, layout};
    const char* name = "wmma::load_matrix_sync()";
    __emu_wmma_collective(f, l, __EMU_WARP_WMMA_LOAD, name, &mine, [&](__emu_wmma_args** lanes) {
        __emu_wmma_check_mem<S>(f, l, name, lanes);
        __emu_wmma_move<Frag, typename Frag::storage_element_type>(lanes, false);
    });
}
// A and B: the layout is the fragment's
template <class Use, int M, int N, int K, class T, class L>
__EMU_INL void load_matrix_sync(fragment<Use, M, N, K, T, L>& a,
                                const typename fragment<Use, M, N, K, T, L>::storage_element_type* p,
                                unsigned ldm, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    static_assert(__emu_layout<L>::id >= 0, "an accumulator's load_matrix_sync takes a layout_t");
    __emu_load(a, p, ldm, __emu_layout<L>::id, f, l);
}
template <int M, int N, int K>
__EMU_INL void load_matrix_sync(fragment<accumulator, M, N, K, float>& a, const float* p, unsigned ldm,
                                layout_t layout, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    __emu_load(a, p, ldm, layout, f, l);
}
template <int M, int N, int K>
__EMU_INL void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& a, unsigned ldm,
                                 layout_t layout, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    typedef fragment<accumulator, M, N, K, float> Frag;
    __emu_wmma_args mine = {{(void*)&a, 0, 0, 0}, p, ldm, layout};
    const char* name = "wmma::store_matrix_sync()";
    __emu_wmma_collective(f, l, __EMU_WARP_WMMA_STORE, name, &mine, [&](__emu_wmma_args** lanes) {
        __emu_wmma_check_mem<float>(f, l, name, lanes);
        __emu_wmma_move<Frag, float>(lanes, true);
    });
}

// The warp's fragments frag[which] gathered into a rows x cols matrix: A and B as the tensor
// core reads them (operand), an accumulator as it is.
template <class Frag, bool operand> __EMU_INL void __emu_gather(__emu_wmma_args** lanes, int which, float* m) {
    unsigned short perm[Frag::dims::rows * Frag::dims::cols];
    __emu_fragment_map<Frag>(perm);
    for (int k = 0; k < 32; k++)
        for (int i = 0; i < Frag::num_elements; i++) {
            auto v = ((const Frag*)lanes[k]->frag[which])->x[i];
            m[perm[k * Frag::num_elements + i]] = operand ? __emu_ab_read(v) : (float)v;
        }
}

template <int M, int N, int K, class T, class LA, class LB>
__EMU_INL void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                        const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c,
                        const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    typedef fragment<accumulator, M, N, K, float> Acc;
    __emu_wmma_args mine = {{&d, (void*)&a, (void*)&b, (void*)&c}, 0, 0, 0};
    __emu_wmma_collective(f, l, __EMU_WARP_WMMA_MMA, "wmma::mma_sync()", &mine, [&](__emu_wmma_args** lanes) {
        float A[M * K], B[K * N], C[M * N];
        __emu_gather<fragment<matrix_a, M, N, K, T, LA>, true>(lanes, 1, A);
        __emu_gather<fragment<matrix_b, M, N, K, T, LB>, true>(lanes, 2, B);
        __emu_gather<Acc, false>(lanes, 3, C);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float acc = C[i * N + j];
                for (int k = 0; k < K; k++) acc = __builtin_fmaf(A[i * K + k], B[k * N + j], acc);
                C[i * N + j] = acc;   // row i of C is not read again
            }
        unsigned short perm[M * N];
        __emu_fragment_map<Acc>(perm);
        for (int k = 0; k < 32; k++)
            for (int i = 0; i < Acc::num_elements; i++)
                ((Acc*)lanes[k]->frag[0])->x[i] = C[perm[k * Acc::num_elements + i]];
    });
}
} }  // namespace nvcuda::wmma
#undef __EMU_INL
#endif
