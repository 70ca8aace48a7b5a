// Activations held in bfloat16 (precision bf16: gpucnn/ops/storage.py says which tensors).
// NumPy and CuPy have no bfloat16 dtype, so such a tensor is a uint16 array of the bits, and
// a kernel sees it as bf16_bits*. The conversions work on the bits, without cuda_bf16.h, so
// that any kernel file can hold a bf16 variant without CUDA's headers (only the tensor-core
// modules need those). float -> bf16 rounds to nearest, ties to even, and turns every NaN
// into 0x7FFF: CUDA's __float2bfloat16_rn, and gpucnn.ops.precision.round_bf16.
//
// A kernel body written once as a template over its tensors' element type reads and writes
// them through act_load / act_store, which are plain loads and stores for float.
#pragma once

typedef unsigned short bf16_bits;

__device__ __forceinline__ float bf16_bits_to_float(bf16_bits b)
{
    return __uint_as_float((unsigned int)b << 16);
}

__device__ __forceinline__ bf16_bits float_to_bf16_bits(float f)
{
    const unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_bits)0x7fff;
    return (bf16_bits)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ float act_load(const float* p) { return *p; }
__device__ __forceinline__ float act_load(const bf16_bits* p) { return bf16_bits_to_float(*p); }
__device__ __forceinline__ void act_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void act_store(bf16_bits* p, float v) { *p = float_to_bf16_bits(v); }
