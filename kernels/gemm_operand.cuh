// One GEMM operand's staging from global to shared memory, in float4 chunks along its
// contiguous dimension: the FP32 SGEMM's (sgemm.cu) and the tensor-core SGEMM's (sgemm_tc.cu),
// so the two tiles share one load path (128-bit global loads where the operand allows them,
// bounds-checked scalar loads at ragged edges and for unaligned operands). The operand's
// element type E is float, or bf16_bits (bf16_storage.cuh: activations held in bfloat16, the
// sgemm_bf16_*_bf16io kernels of sgemm_tc.cu), which is read by scalar loads only (widened
// to float exactly; the vector flag is ignored), so the chunks hold the same float values.
#pragma once

#include "common.cuh"
#include "bf16_storage.cuh"

// The identity conversion: shared memory holds the operand as loaded (FP32, TF32).
struct GemmKeep {
    __device__ __forceinline__ float operator()(float v) const { return v; }
};

// Four consecutive shared elements, written as one store: 128 bits for float, 64 for bfloat16.
template <class T>
struct __align__(4 * sizeof(T)) GemmVec4 {
    T v[4];
};

// One operand's part of a K slice: TILE rows of the block tile (m for A, n for B) by BK,
// fetched as float4 chunks along the operand's contiguous dimension and stored into shared
// memory as S[k][row] (rows of LD elements). A thread fetches CHUNKS chunks STEP floats apart
// in memory (a compile-time distance, so one offset and immediate displacements address
// them all).
// KCONTIG: the operand is stored k-contiguous (A not transposed, B transposed): a chunk is
// 4 consecutive k of one row, transposed on the store into 4 shared rows. PER_LINE threads
// share a row; a thread's chunks are 4 * PER_LINE k apart (adjacent when PER_LINE is 1), so
// that the threads of a row store at k 4 apart at a time: with LD = TILE + 4 floats the two
// k-halves of a warp's stores fall 16 banks apart, and those scalar stores do not conflict.
// Otherwise a chunk is 4 consecutive rows at one k, and a thread's chunks lie TILE / CHUNKS
// rows apart, so that 8 neighbouring threads cover 32 consecutive rows (one 128-byte line in
// memory and a conflict-free 128-bit shared store).
// One chunk of up to four elements from q: elements 0 .. n - 1 lie inside the matrix (the
// rest are zeros); `vector`: the chunk is whole and one 128-bit load may read it.
__device__ __forceinline__ float4 gemm_chunk(const float* q, bool vector, int n)
{
    float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (vector)
        x = *reinterpret_cast<const float4*>(q);
    if (!vector && n > 0) x.x = q[0];
    if (!vector && n > 1) x.y = q[1];
    if (!vector && n > 2) x.z = q[2];
    if (!vector && n > 3) x.w = q[3];
    return x;
}

// bf16 elements: four bounds-checked scalar loads, whatever `vector` says.
__device__ __forceinline__ float4 gemm_chunk(const bf16_bits* q, bool, int n)
{
    float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (n > 0) x.x = act_load(q);
    if (n > 1) x.y = act_load(q + 1);
    if (n > 2) x.z = act_load(q + 2);
    if (n > 3) x.w = act_load(q + 3);
    return x;
}

template <int TILE, int BK, int LD, int THREADS, bool KCONTIG, class E = float>
struct GemmOperand {
    static constexpr int CHUNKS = TILE * BK / 4 / THREADS;
    static constexpr int PER_LINE = (KCONTIG ? BK : TILE) / (4 * CHUNKS);  // threads
    static constexpr int STEP = KCONTIG ? 4 * PER_LINE : TILE / CHUNKS;     // between chunks
    static_assert(CHUNKS >= 1 && CHUNKS * THREADS * 4 == TILE * BK, "tile / threads");
    static_assert(PER_LINE >= 1 && PER_LINE * 4 * CHUNKS == (KCONTIG ? BK : TILE),
                  "chunk layout");
    // Few registers on purpose: with 64 accumulators a thread has ~30 left for everything.
    const E* base;      // the current reduction matrix (the same for the whole block)
    int off;            // the thread's first element in the current slice, from base
    int lim;            // KCONTIG: chunk i has kleft - lim - STEP i valid elements (lim is
                        // huge for a row past the matrix); else: the chunks exist when
                        // kleft > lim
    int rows;           // !KCONTIG: rows left in the matrix from the thread's first one
                        // (chunk i has rows - i * STEP valid elements)
    int sts;            // shared offset (elements) of the thread's first element in S[k][row]
    float4 v[CHUNKS];   // the fetched values, in flight between fetch and store

    __device__ __forceinline__ void init(const E* matrix, int tid, int tile0, int extent,
                                         int ld)
    {
        base = matrix;
        if (KCONTIG) {
            const int row = tid / PER_LINE, kpos = (tid % PER_LINE) * 4;
            off = (tile0 + row) * ld + kpos;
            lim = (tile0 + row < extent) ? kpos : (1 << 30);
            rows = 0;
            sts = kpos * LD + row;
        } else {
            const int kpos = tid / PER_LINE, row = (tid % PER_LINE) * 4;
            off = kpos * ld + tile0 + row;
            lim = kpos;
            rows = extent - (tile0 + row);
            sts = kpos * LD + row;
        }
    }

    // Fetch the current slice; kleft = K - k0 of that slice (<= 0: nothing, zeros). A chunk
    // is one 128-bit load when it has `whole` valid elements (4, or 1 << 30 when the operand
    // does not allow vector loads), else up to four scalar loads (ragged edge, unaligned
    // operand). Predicated loads on the element count, not a test of the vector flag: a
    // loop-invariant test would make the compiler version the loop body per value.
    __device__ __forceinline__ void fetch(int kleft, int whole)
    {
#pragma unroll
        for (int i = 0; i < CHUNKS; ++i) {
            const E* q = base + (off + i * STEP);
            // Elements 0 .. n - 1 of the chunk lie inside the matrix.
            const int n = KCONTIG ? kleft - lim - STEP * i : (kleft > lim ? rows - i * STEP : 0);
            v[i] = gemm_chunk(q, n >= whole, n);
        }
    }

    // As fetch, for an operand whose chunks are all whole or all absent (16-byte aligned,
    // its leading dimension a multiple of 4, and K for KCONTIG, or the rows, a multiple of 4
    // too): 128-bit loads only (float operands).
    __device__ __forceinline__ void fetch_whole(int kleft)
    {
        static_assert(sizeof(E) == sizeof(float), "fetch_whole reads float4 chunks");
#pragma unroll
        for (int i = 0; i < CHUNKS; ++i) {
            const float* q = base + (off + i * STEP);
            const int n = KCONTIG ? kleft - lim - STEP * i : (kleft > lim ? rows - i * STEP : 0);
            v[i] = n > 0 ? *reinterpret_cast<const float4*>(q)
                         : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    }

    // Store the fetched slice into the buffer S (S[k * LD + row]), each element converted by
    // `cvt` to the shared type T (bfloat16 for the BF16 tensor-core kernels: rounded here,
    // once, as the gathers of conv_store_slice do).
    template <class T, class Cvt>
    __device__ __forceinline__ void store(T* S, Cvt cvt) const
    {
#pragma unroll
        for (int i = 0; i < CHUNKS; ++i) {
            if (KCONTIG) {   // transpose: 4 k of one row -> 4 shared rows
                T* s = S + sts + STEP * i * LD;
                s[0 * LD] = cvt(v[i].x);
                s[1 * LD] = cvt(v[i].y);
                s[2 * LD] = cvt(v[i].z);
                s[3 * LD] = cvt(v[i].w);
            } else {
                GemmVec4<T> r;
                r.v[0] = cvt(v[i].x);
                r.v[1] = cvt(v[i].y);
                r.v[2] = cvt(v[i].z);
                r.v[3] = cvt(v[i].w);
                *reinterpret_cast<GemmVec4<T>*>(S + sts + i * STEP) = r;
            }
        }
    }

    __device__ __forceinline__ void store(float* S) const { store(S, GemmKeep()); }
};
