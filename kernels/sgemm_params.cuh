#pragma once

// The parameter list of every sgemm kernel (one list, so the FP32 kernels of sgemm.cu and the
// tensor-core ones of sgemm_tc.cu cannot disagree: gpucnn/ops/gemm.py passes the same
// arguments to both; gpucnn/toolchain/parse.py expands it when it reads their signatures).
// The semantics of every argument are at the top of sgemm.cu.
//
// SGEMM_PARAMS_OF(EA, EB, EC): the list for elements of A, B and C of types EA, EB, EC
// (float, or bf16_bits for activations held in bfloat16: sgemm_tc.cu's _bf16io / _bf16a
// kernels), the template the tensor-core block is written over. It is spelled out for each
// combination a kernel exports as an object-like macro, because gpucnn/toolchain/parse.py
// expands a kernel's parameter list only when it is one object-like macro:
// SGEMM_PARAMS (float, float, float), SGEMM_BF16_AC_PARAMS (bf16, float, bf16),
// SGEMM_BF16_A_PARAMS (bf16, float, float), SGEMM_BF16_AB_PARAMS (bf16, bf16, float).
// tests/ops/test_linear_bf16io.py checks that each spelled-out list is the _OF one.
#define SGEMM_PARAMS_OF(EA, EB, EC)                                                       \
    const EA* __restrict__ A, const EB* __restrict__ B, EC* C,                            \
        const float* __restrict__ bias, int M, int N, int K, int k_last, int lda, int ldb, \
        int ldc, int vec_a, int vec_b, int a_stride_y, int a_stride_z, int a_stride_r,     \
        int b_stride_y, int b_stride_z, int b_stride_r, int c_stride_y, int c_stride_z,    \
        int bias_stride_y, int red_per_z, int red_total, int bias_mode, int relu, float beta
#define SGEMM_PARAMS                                                                      \
    const float* __restrict__ A, const float* __restrict__ B, float* C,                   \
        const float* __restrict__ bias, int M, int N, int K, int k_last, int lda, int ldb, \
        int ldc, int vec_a, int vec_b, int a_stride_y, int a_stride_z, int a_stride_r,     \
        int b_stride_y, int b_stride_z, int b_stride_r, int c_stride_y, int c_stride_z,    \
        int bias_stride_y, int red_per_z, int red_total, int bias_mode, int relu, float beta
#define SGEMM_BF16_AC_PARAMS                                                              \
    const bf16_bits* __restrict__ A, const float* __restrict__ B, bf16_bits* C,           \
        const float* __restrict__ bias, int M, int N, int K, int k_last, int lda, int ldb, \
        int ldc, int vec_a, int vec_b, int a_stride_y, int a_stride_z, int a_stride_r,     \
        int b_stride_y, int b_stride_z, int b_stride_r, int c_stride_y, int c_stride_z,    \
        int bias_stride_y, int red_per_z, int red_total, int bias_mode, int relu, float beta
#define SGEMM_BF16_A_PARAMS                                                               \
    const bf16_bits* __restrict__ A, const float* __restrict__ B, float* C,               \
        const float* __restrict__ bias, int M, int N, int K, int k_last, int lda, int ldb, \
        int ldc, int vec_a, int vec_b, int a_stride_y, int a_stride_z, int a_stride_r,     \
        int b_stride_y, int b_stride_z, int b_stride_r, int c_stride_y, int c_stride_z,    \
        int bias_stride_y, int red_per_z, int red_total, int bias_mode, int relu, float beta
#define SGEMM_BF16_AB_PARAMS                                                              \
    const bf16_bits* __restrict__ A, const bf16_bits* __restrict__ B, float* C,           \
        const float* __restrict__ bias, int M, int N, int K, int k_last, int lda, int ldb, \
        int ldc, int vec_a, int vec_b, int a_stride_y, int a_stride_z, int a_stride_r,     \
        int b_stride_y, int b_stride_z, int b_stride_r, int c_stride_y, int c_stride_z,    \
        int bias_stride_y, int red_per_z, int red_total, int bias_mode, int relu, float beta
#define SGEMM_ARGS                                                                          \
    A, B, C, bias, M, N, K, k_last, lda, ldb, ldc, vec_a, vec_b, a_stride_y, a_stride_z,    \
        a_stride_r, b_stride_y, b_stride_z, b_stride_r, c_stride_y, c_stride_z,             \
        bias_stride_y, red_per_z, red_total, bias_mode, relu, beta
