// The FP32 implicit-GEMM convolution kernels (CUDA cores): forward (+ bias, ReLU),
// backward-data and backward-weights. Their gathers, tile and bodies are in conv_implicit.cuh
// (read its header for the algorithm); the tensor-core precisions are conv_implicit_tc.cu.

#include "conv_implicit.cuh"

// gpucnn: block=CONV_THREADS max_regs=255 gemm=1
extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV_MIN_BLOCKS)
    conv_implicit_fprop(CONV_FPROP_PARAMS)
{
    conv_fprop<ConvFp32>(CONV_FPROP_ARGS);
}

// gpucnn: block=CONV_THREADS max_regs=255 gemm=1
extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV_MIN_BLOCKS)
    conv_implicit_dgrad(CONV_DGRAD_PARAMS)
{
    conv_dgrad<ConvFp32>(CONV_DGRAD_ARGS);
}

// gpucnn: block=CONV_THREADS max_regs=255 gemm=1
extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV_MIN_BLOCKS)
    conv_implicit_wgrad(CONV_WGRAD_PARAMS)
{
    conv_wgrad<ConvFp32>(CONV_WGRAD_ARGS);
}
