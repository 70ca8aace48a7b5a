// Small nvcuda::wmma kernels for tests/test_emu_wmma.py: the emulator's tensor-core fragments
// (gpucnn/backends/emu/cuda_emu.h), good uses and planted misuses. Also compiled by NVRTC
// for sm_80 (the emulator force-includes its own wmma, and has no headers to include).
#ifndef __GPUCNN_EMU__
#include <mma.h>
#include <cuda_bf16.h>
#endif
using namespace nvcuda;

// bits of `flags`
#define WM_CONVERT 1     // tf32: round A and B with __float_to_tf32 after loading
#define WM_A_COL 2       // A stored column-major
#define WM_B_COL 4       // B stored column-major
#define WM_CD_COL 8      // C and D stored column-major

// Each warp (global index g) computes rows 16g..16g+15 of D = alpha * (A.B + C), A being
// (16 * warps) x K, B K x 16; the loop over K takes KS columns of A at a time.
template <class T, int KS, class LA, class LB, class S>
__device__ void tile(const S* A, const S* B, const float* C, float* D, int K, int lda, int ldb, int ldc,
                     int ldd, int flags, float alpha)
{
    int g = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    bool a_col = flags & WM_A_COL, b_col = flags & WM_B_COL;
    wmma::layout_t cd = (flags & WM_CD_COL) ? wmma::mem_col_major : wmma::mem_row_major;
    long long c_off = (flags & WM_CD_COL) ? 16 * g : 16LL * g * ldc;
    long long d_off = (flags & WM_CD_COL) ? 16 * g : 16LL * g * ldd;
    wmma::fragment<wmma::matrix_a, 16, 16, KS, T, LA> a;
    wmma::fragment<wmma::matrix_b, 16, 16, KS, T, LB> b;
    wmma::fragment<wmma::accumulator, 16, 16, KS, float> acc;
    wmma::load_matrix_sync(acc, C + c_off, ldc, cd);
    for (int k = 0; k < K; k += KS) {
        wmma::load_matrix_sync(a, A + (a_col ? k * (long long)lda + 16 * g : 16LL * g * lda + k), lda);
        wmma::load_matrix_sync(b, B + (b_col ? (long long)k : (long long)k * ldb), ldb);
        if (flags & WM_CONVERT) {
            // the element-wise loop CUDA's documentation prescribes for tf32 (order-independent)
            for (int i = 0; i < a.num_elements; i++) a.x[i] = wmma::__float_to_tf32(a.x[i]);
            for (int i = 0; i < b.num_elements; i++) b.x[i] = wmma::__float_to_tf32(b.x[i]);
        }
        wmma::mma_sync(acc, a, b, acc);
    }
    for (int i = 0; i < acc.num_elements; i++) acc.x[i] *= alpha;   // element-wise: any order works
    wmma::store_matrix_sync(D + d_off, acc, ldd, cd);
}

// The four A/B layouts as template arguments, from the flags.
template <class T, int KS, class S>
__device__ void tile_any(const S* A, const S* B, const float* C, float* D, int K, int lda, int ldb, int ldc,
                         int ldd, int flags, float alpha)
{
    if (!(flags & WM_A_COL) && !(flags & WM_B_COL))
        tile<T, KS, wmma::row_major, wmma::row_major>(A, B, C, D, K, lda, ldb, ldc, ldd, flags, alpha);
    else if (!(flags & WM_A_COL))
        tile<T, KS, wmma::row_major, wmma::col_major>(A, B, C, D, K, lda, ldb, ldc, ldd, flags, alpha);
    else if (!(flags & WM_B_COL))
        tile<T, KS, wmma::col_major, wmma::row_major>(A, B, C, D, K, lda, ldb, ldc, ldd, flags, alpha);
    else
        tile<T, KS, wmma::col_major, wmma::col_major>(A, B, C, D, K, lda, ldb, ldc, ldd, flags, alpha);
}

extern "C" __global__ void wmma_tf32(const float* A, const float* B, const float* C, float* D, int K, int lda,
                                     int ldb, int ldc, int ldd, int flags, float alpha)
{
    tile_any<wmma::precision::tf32, 8>(A, B, C, D, K, lda, ldb, ldc, ldd, flags, alpha);
}

// bf16 operands as their bits (uint16 arrays on the host; NumPy has no bfloat16)
extern "C" __global__ void wmma_bf16(const unsigned short* A, const unsigned short* B, const float* C,
                                     float* D, int K, int lda, int ldb, int ldc, int ldd, int flags,
                                     float alpha)
{
    tile_any<__nv_bfloat16, 16>(reinterpret_cast<const __nv_bfloat16*>(A),
                                reinterpret_cast<const __nv_bfloat16*>(B), C, D, K, lda, ldb, ldc, ldd,
                                flags, alpha);
}

// bf16 conversions in kernel code: out[i] = bits of __float2bfloat16(x[i]), back[i] = its float
extern "C" __global__ void bf16_convert(const float* x, unsigned short* out, float* back, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __nv_bfloat16 h = __float2bfloat16(x[i]);
    out[i] = *reinterpret_cast<unsigned short*>(&h);
    back[i] = __bfloat162float(__float2bfloat16_rn(x[i]));
}

extern "C" __global__ void tf32_convert(const float* x, float* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = wmma::__float_to_tf32(x[i]);
}

// ---------------------------------------------------------------- planted misuses
// The fragments of a one-warp 16x16x8 tf32 product, A (16x8) and B (8x16) loaded row-major,
// the accumulator zeroed: what the misuse kernels below start from.
struct Tf32Tile {
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> b;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
    __device__ Tf32Tile(const float* A, const float* B)
    {
        wmma::fill_fragment(acc, 0.0f);
        wmma::load_matrix_sync(a, A, 8);
        wmma::load_matrix_sync(b, B, 16);
    }
};

// mode 0: lane 7 skips the mma and goes on to the store; mode 1: lane 7 returns before it
extern "C" __global__ void wmma_lane_skips(const float* A, const float* B, float* D, int mode)
{
    Tf32Tile t(A, B);
    if (mode == 1 && threadIdx.x == 7) return;
    if (threadIdx.x != 7) wmma::mma_sync(t.acc, t.a, t.b, t.acc);   // WMMA_SKIPPED_MMA
    wmma::store_matrix_sync(D, t.acc, 16, wmma::mem_row_major);
}

// mode 0: A one float past an aligned address; mode 1: ldm = 6 floats (24 bytes);
// mode 2: each lane passes its own pointer; mode 3: bf16 ldm = 20 elements (40 bytes)
extern "C" __global__ void wmma_bad_operand(const float* A, const unsigned short* H, float* D, int mode)
{
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> h;
    if (mode == 0) wmma::load_matrix_sync(a, A + 1, 8);                      // WMMA_MISALIGNED
    if (mode == 1) wmma::load_matrix_sync(a, A, 6);                          // WMMA_BAD_LDM
    if (mode == 2) wmma::load_matrix_sync(a, A + 8 * (threadIdx.x & 1), 8);  // WMMA_PER_LANE
    if (mode == 3) wmma::load_matrix_sync(h, reinterpret_cast<const __nv_bfloat16*>(H), 20);  // WMMA_BF16_LDM
    D[threadIdx.x] = a.x[0];
}

// Writes lane l's element i of D = A.B to D[8 l + i]: correct only if the fragment held the
// tile row-major, lanes in order -- an order CUDA does not promise (and the emulator avoids).
extern "C" __global__ void wmma_natural_order(const float* A, const float* B, float* D)
{
    Tf32Tile t(A, B);
    wmma::mma_sync(t.acc, t.a, t.b, t.acc);
    for (int i = 0; i < t.acc.num_elements; i++)
        D[threadIdx.x * t.acc.num_elements + i] = t.acc.x[i];
}
