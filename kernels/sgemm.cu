// Single-precision GEMM (v2): block tiles staged in shared memory, 8x8 accumulators per
// thread, warp tiling, 128-bit shared and global loads; used by every convolution and fully
// connected layer (launches in gpucnn/ops/gemm.py).
//
//   C[y, z] = sum_{r < nr(z)} op(A[y, z, r]) @ op(B[y, z, r])  (+ bias)  (+ beta * C)  (ReLU)
//
// op(A) is M x K, op(B) is K x N, C is M x N, all row-major with leading dimensions lda, ldb,
// ldc. trans_a = 0: A[m, k] = A[m * lda + k]; trans_a = 1: A[m, k] = A[k * lda + m] (and the
// same for B with (k, n)). The transposes are template parameters, not run-time branches:
// each of the four combinations is its own kernel (sgemm_nn, sgemm_tn, sgemm_nt, sgemm_tt,
// and the same four with the small tile, sgemm_small_*), so the main loop of each holds only
// the loads of its own layout (v1 tested trans_a / trans_b inside its loop, which held the
// address code of all four layouts: 256 FFMA in 638 instructions). The launcher picks the
// kernel by name.
//
// Batching: blockIdx.y and blockIdx.z select a matrix triple; the operands of block (y, z)
// start at  base + y * stride_y + z * stride_z.  The reduction index r adds r * stride_r to
// A and B: block z sums the products for r = 0 .. nr - 1, nr = min(red_per_z,
// red_total - z * red_per_z). That is a batched-reduce GEMM: the convolution's weight
// gradient sums dY_n @ cols_n^T over the images n of a chunk without materialising the sum
// (and can split the images over z into partial sums, added afterwards in a fixed order).
// Forward/data-gradient launches use red_per_z = red_total = 1 (a plain batched GEMM).
//
// Split-K (gpucnn/ops/gemm.py: gemm_plan): a GEMM with too few output tiles to fill the GPU
// splits its K into gridDim.z parts: block z reads its operands from z * K (through
// a_stride_z, b_stride_z) and writes partial C[z] (c_stride_z) with no epilogue, and
// sgemm_splitk_epilogue adds the parts in order and applies the epilogue once. The parts are
// K long except the last, which is k_last long (K need not divide evenly); every other launch
// passes k_last = K (a batched-reduce launch with red_per_z > 1 must: its blocks wrap to
// the next reduction matrix after K).
//
// Epilogue, per element: v = acc; bias_mode 1: v += bias[y * bias_stride_y + m] (one bias
// per row), bias_mode 2: v += bias[y * bias_stride_y + n] (one per column); if beta != 0:
// v += beta * C (C is not read when beta == 0, so it may hold garbage); if relu: v = max(v, 0)
// (a NaN stays NaN). Ragged M, N, K are handled by bounds-checked tile loads (zero fill) and
// bounds-checked stores. Summation order is fixed: the result is deterministic.
//
// Structure (the steps of Simon Boehm's SGEMM worklog and CUTLASS's SIMT GEMM, written
// for this engine's batched/epilogue contract):
// * Block tile BM x BN, K in slices of SGEMM_BK held in shared memory, double buffered: slice
//   s + 1 is fetched into registers while slice s is multiplied, then stored to the other
//   buffer; one barrier per slice. The slice loop is the kernel's only loop (the BK steps
//   inside it are unrolled), and its step has no division: the operand offsets advance by a
//   constant and wrap to the next reduction matrix r with one compare.
// * Warp tiling: a warp owns a SGEMM_WM x SGEMM_WN part of the block tile; its 32 lanes form
//   8 x 4 and each owns 8 x 8 accumulators as 2 x 2 sub-tiles of 4 x 4 placed SGEMM_WM / 2
//   rows and SGEMM_WN / 2 columns apart. Per k a thread reads its 8 A and 8 B values as four
//   128-bit LDS; within a quarter warp (the unit of a 128-bit shared access) the lanes touch
//   at most 4 distinct, contiguous float4, so the reads are free of bank conflicts.
// * Global loads are float4 chunks along each operand's contiguous dimension: 128-bit LDG
//   when the launcher says the operand allows it (vec_a / vec_b: 16-byte aligned start,
//   leading dimension and batch strides multiples of 4) and the chunk lies inside the
//   matrix; otherwise (ragged edges, unaligned operands) four bounds-checked scalar loads.
//   k-contiguous operands (A not transposed, B transposed) are transposed on the store into
//   shared memory; the padding (SGEMM_PAD) puts the two k-halves of a warp's stores 16 banks
//   apart, so those scalar stores do not conflict either, and keeps rows float4-aligned.
//
// gpucnn/ops/gemm.py reads the #defines below (grids, the tile choice) and checks them.

#include "common.cuh"
#include "sgemm_params.cuh"
#include "gemm_operand.cuh"

// The large tile (the default; SGEMM_BM etc. name it).
#define SGEMM_BM 128
#define SGEMM_BN 128
#define SGEMM_THREADS 256
// The small tile, for problems that give the large one too few blocks to fill a GPU.
#define SGEMM_SMALL_BM 64
#define SGEMM_SMALL_BN 64
#define SGEMM_SMALL_THREADS 64
// Shared by both tiles.
#define SGEMM_BK 8
#define SGEMM_TM 8
#define SGEMM_TN 8
#define SGEMM_WM 64
#define SGEMM_WN 32
#define SGEMM_PAD 4
// Register caps through __launch_bounds__: 65536 / (256 * 2) = 128 for the large tile, two
// blocks (16 warps, 25% theoretical occupancy) per SM, which 64 accumulators per thread and
// the independent FFMAs of an 8 x 8 outer product keep busy; the small tile, whose threads
// stage twice the global data per FFMA, gets 65536 / (64 * 6) = 170 (168 allocatable):
// at 128 ptxas spilled it, and small problems rarely have the blocks to fill an SM anyway.
#define SGEMM_MIN_BLOCKS 2
#define SGEMM_SMALL_MIN_BLOCKS 6


// One operand's staging (gemm_operand.cuh: float4 chunks along its contiguous dimension,
// shared with the tensor-core SGEMM of sgemm_tc.cu), with this file's slice and padding.
template <int TILE, int THREADS, bool KCONTIG>
using SgemmOperand = GemmOperand<TILE, SGEMM_BK, TILE + SGEMM_PAD, THREADS, KCONTIG>;

// acc += the outer products of one shared slice: per k, 8 A and 8 B values from four
// 128-bit loads (a: the thread's first A value at k = 0, rows LDA floats apart, its second
// sub-tile SGEMM_WM / 2 further; b likewise).
template <int LDA, int LDB>
__device__ __forceinline__ void sgemm_multiply(float (&acc)[SGEMM_TM][SGEMM_TN], const float* a,
                                               const float* b)
{
#pragma unroll
    for (int k = 0; k < SGEMM_BK; ++k) {
        const float4 a0 = *reinterpret_cast<const float4*>(a + k * LDA);
        const float4 a1 = *reinterpret_cast<const float4*>(a + k * LDA + SGEMM_WM / 2);
        const float4 b0 = *reinterpret_cast<const float4*>(b + k * LDB);
        const float4 b1 = *reinterpret_cast<const float4*>(b + k * LDB + SGEMM_WN / 2);
        const float av[SGEMM_TM] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        const float bv[SGEMM_TN] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
        for (int i = 0; i < SGEMM_TM; ++i)
#pragma unroll
            for (int j = 0; j < SGEMM_TN; ++j)
                acc[i][j] += av[i] * bv[j];
    }
}

// The whole kernel, for one block tile and one transpose combination.
template <int BM, int BN, bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm_block(SGEMM_PARAMS)
{
    constexpr int THREADS = (BM / SGEMM_TM) * (BN / SGEMM_TN);
    constexpr int WARPS_M = BM / SGEMM_WM;
    constexpr int LANES_N = SGEMM_WN / SGEMM_TN;   // 4 lanes along n, 8 along m
    static_assert(THREADS == (BM / SGEMM_WM) * (BN / SGEMM_WN) * 32, "warp tiling");
    static_assert(SGEMM_TM == 8 && SGEMM_TN == 8, "2 x 2 sub-tiles of 4 x 4 per thread");

    __shared__ __align__(16) float As[2][SGEMM_BK][BM + SGEMM_PAD];
    __shared__ __align__(16) float Bs[2][SGEMM_BK][BN + SGEMM_PAD];

    const int tid = threadIdx.x;
    const int tiles_m = (M + BM - 1) / BM;
    const int m0 = (blockIdx.x % tiles_m) * BM;
    const int n0 = (blockIdx.x / tiles_m) * BN;
    const long long y = blockIdx.y;
    const long long z = blockIdx.z;

    // This thread's accumulators: rows wm + s * WM/2 + i, columns wn + t * WN/2 + j
    // (s, t in {0, 1}; i, j in 0..3) of the block tile.
    const int warp = tid / 32, lane = tid % 32;
    const int wm = (warp % WARPS_M) * SGEMM_WM + (lane / LANES_N) * 4;
    const int wn = (warp / WARPS_M) * SGEMM_WN + (lane % LANES_N) * 4;

    int nr = red_total - (int)z * red_per_z;
    if (nr > red_per_z) nr = red_per_z;
    if (nr < 0) nr = 0;
    // This block's reduction length: a split's last part may be shorter. Only the set-up
    // reads it; the wrap below keeps K (equal to it whenever a block wraps, see the top).
    const int kz = (blockIdx.z == gridDim.z - 1) ? k_last : K;
    const int ktiles = (kz + SGEMM_BK - 1) / SGEMM_BK;
    const int steps = nr * ktiles;  // the same for every thread of the block

    // A stored non-transposed is k-contiguous; B stored transposed is k-contiguous.
    SgemmOperand<BM, THREADS, !TRANS_A> la;
    SgemmOperand<BN, THREADS, TRANS_B> lb;
    la.init(A + y * a_stride_y + z * a_stride_z, tid, m0, M, lda);
    lb.init(B + y * b_stride_y + z * b_stride_z, tid, n0, N, ldb);
    // Pointer increments per slice: along k by SGEMM_BK elements or SGEMM_BK rows; after
    // the last slice of a reduction matrix, on to the first slice of the next one. Both are
    // int: they are bounded by an operand's extent and stride, which the host checks.
    const int a_step = TRANS_A ? SGEMM_BK * lda : SGEMM_BK;
    const int b_step = TRANS_B ? SGEMM_BK : SGEMM_BK * ldb;
    const int a_back = -(ktiles - 1) * a_step, b_back = -(ktiles - 1) * b_step;
    int kleft = kz;   // kz - k0 of the current slice
    const int a_whole = vec_a ? 4 : (1 << 30), b_whole = vec_b ? 4 : (1 << 30);

    float acc[SGEMM_TM][SGEMM_TN];
#pragma unroll
    for (int i = 0; i < SGEMM_TM; ++i)
#pragma unroll
        for (int j = 0; j < SGEMM_TN; ++j)
            acc[i][j] = 0.0f;

    la.fetch(steps > 0 ? kleft : 0, a_whole);
    lb.fetch(steps > 0 ? kleft : 0, b_whole);
    la.store(&As[0][0][0]);
    lb.store(&Bs[0][0][0]);
    __syncthreads();

    for (int step = 0; step < steps; ++step) {
        // Advance to slice step + 1 (wrapping to the next reduction matrix). The last step
        // fetches nothing (kl = 0) instead of branching around the fetches.
        kleft -= SGEMM_BK;
        const bool wrap = kleft <= 0;
        kleft = wrap ? K : kleft;
        la.off += wrap ? a_back : a_step;
        lb.off += wrap ? b_back : b_step;
        if (wrap) {
            la.base += a_stride_r;
            lb.base += b_stride_r;
        }
        const int kl = (step + 1 < steps) ? kleft : 0;
        const int buf = step & 1;

        // Fetch slice step + 1 into registers, multiply slice `step` (buffer buf) while it
        // travels, store it into the other buffer: that buffer is free, its slice (step - 1)
        // was last read before the barrier that ended the previous step.
        la.fetch(kl, a_whole);
        lb.fetch(kl, b_whole);
        sgemm_multiply<BM + SGEMM_PAD, BN + SGEMM_PAD>(acc, &As[buf][0][wm], &Bs[buf][0][wn]);
        la.store(&As[buf ^ 1][0][0]);
        lb.store(&Bs[buf ^ 1][0][0]);
        __syncthreads();
    }

    // Epilogue. The bias is added to the accumulators first, one load per row or column
    // (loading it next to every store kept 16 bias values and their addresses live beside
    // the 64 accumulators and made the compiler spill); then beta * C, ReLU and
    // bounds-checked stores.
    const int mt = m0 + wm, nt = n0 + wn;   // this thread's first row and column
    const float* bias_base = bias + y * bias_stride_y;
    if (bias_mode == 1) {
#pragma unroll
        for (int i = 0; i < SGEMM_TM; ++i) {
            const int m = mt + (i / 4) * (SGEMM_WM / 2) + i % 4;
            const float bv = (m < M) ? bias_base[m] : 0.0f;
#pragma unroll
            for (int j = 0; j < SGEMM_TN; ++j)
                acc[i][j] += bv;
        }
    } else if (bias_mode == 2) {
#pragma unroll
        for (int j = 0; j < SGEMM_TN; ++j) {
            const int n = nt + (j / 4) * (SGEMM_WN / 2) + j % 4;
            const float bv = (n < N) ? bias_base[n] : 0.0f;
#pragma unroll
            for (int i = 0; i < SGEMM_TM; ++i)
                acc[i][j] += bv;
        }
    }
    float* c_base = C + y * c_stride_y + z * c_stride_z;
#pragma unroll
    for (int i = 0; i < SGEMM_TM; ++i) {
        const int m = mt + (i / 4) * (SGEMM_WM / 2) + i % 4;
        if (m >= M)
            continue;
#pragma unroll
        for (int j = 0; j < SGEMM_TN; ++j) {
            const int n = nt + (j / 4) * (SGEMM_WN / 2) + j % 4;
            if (n >= N)
                continue;
            float* c = c_base + ((long long)m * ldc + n);
            float v = acc[i][j];
            if (beta != 0.0f)
                v += beta * *c;
            if (relu && v < 0.0f)
                v = 0.0f;
            *c = v;
        }
    }
}

// The exported kernels: one per tile and transpose combination (names: sgemm[_small]_XY,
// X = op(A), Y = op(B), n = as stored, t = transposed). gemm=1 puts each under the SASS
// gate (gpucnn/toolchain/sass.py): its main loop must be >= 75% FFMA with 128-bit LDS only.

// gpucnn: block=SGEMM_THREADS max_regs=128 min_occupancy=25% gemm=1
extern "C" __global__ void __launch_bounds__(SGEMM_THREADS, SGEMM_MIN_BLOCKS)
    sgemm_nn(SGEMM_PARAMS) { sgemm_block<SGEMM_BM, SGEMM_BN, false, false>(SGEMM_ARGS); }

// gpucnn: block=SGEMM_THREADS max_regs=128 min_occupancy=25% gemm=1
extern "C" __global__ void __launch_bounds__(SGEMM_THREADS, SGEMM_MIN_BLOCKS)
    sgemm_tn(SGEMM_PARAMS) { sgemm_block<SGEMM_BM, SGEMM_BN, true, false>(SGEMM_ARGS); }

// gpucnn: block=SGEMM_THREADS max_regs=128 min_occupancy=25% gemm=1
extern "C" __global__ void __launch_bounds__(SGEMM_THREADS, SGEMM_MIN_BLOCKS)
    sgemm_nt(SGEMM_PARAMS) { sgemm_block<SGEMM_BM, SGEMM_BN, false, true>(SGEMM_ARGS); }

// gpucnn: block=SGEMM_THREADS max_regs=128 min_occupancy=25% gemm=1
extern "C" __global__ void __launch_bounds__(SGEMM_THREADS, SGEMM_MIN_BLOCKS)
    sgemm_tt(SGEMM_PARAMS) { sgemm_block<SGEMM_BM, SGEMM_BN, true, true>(SGEMM_ARGS); }

// gpucnn: block=SGEMM_SMALL_THREADS max_regs=168 min_occupancy=18% gemm=1
extern "C" __global__ void __launch_bounds__(SGEMM_SMALL_THREADS, SGEMM_SMALL_MIN_BLOCKS)
    sgemm_small_nn(SGEMM_PARAMS)
{
    sgemm_block<SGEMM_SMALL_BM, SGEMM_SMALL_BN, false, false>(SGEMM_ARGS);
}

// gpucnn: block=SGEMM_SMALL_THREADS max_regs=168 min_occupancy=18% gemm=1
extern "C" __global__ void __launch_bounds__(SGEMM_SMALL_THREADS, SGEMM_SMALL_MIN_BLOCKS)
    sgemm_small_tn(SGEMM_PARAMS)
{
    sgemm_block<SGEMM_SMALL_BM, SGEMM_SMALL_BN, true, false>(SGEMM_ARGS);
}

// gpucnn: block=SGEMM_SMALL_THREADS max_regs=168 min_occupancy=18% gemm=1
extern "C" __global__ void __launch_bounds__(SGEMM_SMALL_THREADS, SGEMM_SMALL_MIN_BLOCKS)
    sgemm_small_nt(SGEMM_PARAMS)
{
    sgemm_block<SGEMM_SMALL_BM, SGEMM_SMALL_BN, false, true>(SGEMM_ARGS);
}

// gpucnn: block=SGEMM_SMALL_THREADS max_regs=168 min_occupancy=18% gemm=1
extern "C" __global__ void __launch_bounds__(SGEMM_SMALL_THREADS, SGEMM_SMALL_MIN_BLOCKS)
    sgemm_small_tt(SGEMM_PARAMS)
{
    sgemm_block<SGEMM_SMALL_BM, SGEMM_SMALL_BN, true, true>(SGEMM_ARGS);
}

// ---- Adding partial results in a fixed order ------------------------------------------------
//
// out[i] = sum_{s < S} parts[s * part_stride + i], added as ((0 + p_0) + p_1) + ... + p_{S-1}:
// the order (and so the bits) of the one-thread-per-output loop this replaces, which the
// conv weight-gradient splits and the emulator's step digests were recorded with. That sum
// is a chain, so the parallelism is in the loads, which are what costs on a GPU: a block
// takes a tile of SGEMM_SUM_THREADS / lanes consecutive outputs and its `lanes` threads per
// output (1, 2, 4 or 8: the host picks more for more parts) load a pass of lanes *
// SGEMM_SUM_LOADS parts into shared memory together (one 128-byte line per warp and part);
// then one thread per output adds the pass's values in part order. Without the staging a
// thread would wait on its S loads (a few in flight at a time), and few outputs (a small
// conv layer's weights) would mean a few busy SMs waiting on long chains.
//
// The epilogue follows the sum, once, in sgemm_block's order: + bias (bias_mode 1: one per
// row, bias[i / row_len]; 2: one per column, bias[i % row_len]), + beta * out[i] when
// beta != 0 (out is not read otherwise), ReLU (a NaN stays NaN).
#define SGEMM_SUM_THREADS 256
#define SGEMM_SUM_LOADS 4   // loads per thread and pass, all in flight together

__device__ __forceinline__ void sgemm_ordered_sum(const float* parts, float* out,
                                                  const float* bias, int n, int S,
                                                  int part_stride, int lanes, int row_len,
                                                  int bias_mode, int relu, float beta)
{
    __shared__ float stage[SGEMM_SUM_THREADS * SGEMM_SUM_LOADS];  // [part of the pass][col]
    const int width = SGEMM_SUM_THREADS / lanes;  // outputs per tile
    const int pass = lanes * SGEMM_SUM_LOADS;     // parts per pass
    const int col = threadIdx.x % width, lane = threadIdx.x / width;
    // Block-stride over tiles (the host caps the grid); the barriers are reached by the
    // whole block: the loop bounds are uniform.
    for (int first = blockIdx.x * width; first < n; first += gridDim.x * width) {
        const int i = first + col;
        float sum = 0.0f;
        for (int s0 = 0; s0 < S; s0 += pass) {
#pragma unroll
            for (int j = 0; j < SGEMM_SUM_LOADS; ++j) {
                const int t = lane + j * lanes;   // the pass's part this load brings
                if (i < n && s0 + t < S)
                    stage[t * width + col] = parts[(s0 + t) * part_stride + i];
            }
            __syncthreads();
            if (lane == 0) {
                const int count = (S - s0 < pass) ? S - s0 : pass;
                for (int t = 0; t < count; ++t)
                    sum += stage[t * width + col];
            }
            __syncthreads();   // the next pass overwrites the stage
        }
        if (lane == 0 && i < n) {
            if (bias_mode == 1)
                sum += bias[i / row_len];
            else if (bias_mode == 2)
                sum += bias[i % row_len];
            if (beta != 0.0f)
                sum += beta * out[i];
            if (relu && sum < 0.0f)
                sum = 0.0f;
            out[i] = sum;
        }
    }
}

// out (+)= the ordered sum of S partial results: the splits of the convolutions' weight
// gradients (beta 1 accumulates a chunk of images onto the previous ones).
// gpucnn: block=SGEMM_SUM_THREADS
extern "C" __global__ void __launch_bounds__(SGEMM_SUM_THREADS)
    sgemm_sum_partials(const float* parts, float* out, int n, int S, int part_stride,
                       float beta, int lanes)
{
    // No bias: the pointer is never read (bias_mode 0).
    sgemm_ordered_sum(parts, out, parts, n, S, part_stride, lanes, 1, 0, 0, beta);
}

// C = epilogue(the ordered sum of a split-K GEMM's S partial products), C an M x N row-major
// matrix with ldc = N = row_len (n = M * N).
// gpucnn: block=SGEMM_SUM_THREADS
extern "C" __global__ void __launch_bounds__(SGEMM_SUM_THREADS)
    sgemm_splitk_epilogue(const float* parts, float* C, const float* __restrict__ bias, int n,
                          int S, int part_stride, int lanes, int row_len, int bias_mode,
                          int relu, float beta)
{
    sgemm_ordered_sum(parts, C, bias, n, S, part_stride, lanes, row_len, bias_mode, relu,
                      beta);
}
