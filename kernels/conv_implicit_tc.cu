// The implicit-GEMM convolution kernels on tensor cores: forward (+ bias, ReLU),
// backward-data and backward-weights in TF32, 3xTF32 and BF16. The bodies, gathers and
// epilogues are the FP32 kernels' (conv_implicit.cuh); the main loop is tensor_core.cuh's.
// Launched by gpucnn/ops/conv/implicit.py with the FP32 kernels' grids and arguments: the
// kernel name carries the precision (conv_implicit_<op>_<precision>).

#include "tensor_core.cuh"

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    conv_implicit_fprop_tf32(CONV_FPROP_PARAMS)
{
    conv_fprop<ConvTc<TcTf32>>(CONV_FPROP_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    conv_implicit_fprop_3xtf32(CONV_FPROP_PARAMS)
{
    conv_fprop<ConvTc<Tc3xTf32>>(CONV_FPROP_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    conv_implicit_fprop_bf16(CONV_FPROP_PARAMS)
{
    conv_fprop<ConvTc<TcBf16>>(CONV_FPROP_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    conv_implicit_dgrad_tf32(CONV_DGRAD_PARAMS)
{
    conv_dgrad<ConvTc<TcTf32>>(CONV_DGRAD_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    conv_implicit_dgrad_3xtf32(CONV_DGRAD_PARAMS)
{
    conv_dgrad<ConvTc<Tc3xTf32>>(CONV_DGRAD_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    conv_implicit_dgrad_bf16(CONV_DGRAD_PARAMS)
{
    conv_dgrad<ConvTc<TcBf16>>(CONV_DGRAD_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    conv_implicit_wgrad_tf32(CONV_WGRAD_PARAMS)
{
    conv_wgrad<ConvTc<TcTf32>>(CONV_WGRAD_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=tf32
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    conv_implicit_wgrad_3xtf32(CONV_WGRAD_PARAMS)
{
    conv_wgrad<ConvTc<Tc3xTf32>>(CONV_WGRAD_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    conv_implicit_wgrad_bf16(CONV_WGRAD_PARAMS)
{
    conv_wgrad<ConvTc<TcBf16>>(CONV_WGRAD_ARGS);
}

// The same kernels with bf16 activations (x, y, dy, dx: uint16 arrays of bfloat16 bits,
// kernels/bf16_storage.cuh); w, bias and dW float32. Same tile, grid, arguments and main loop
// as the _bf16 ones above (the gathers convert each element to float as they load it, the
// epilogues round once as they store); only their 128-bit loads of dy (wgrad) are not used.

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    conv_implicit_fprop_bf16_bf16io(CONV_FPROP_BF16IO_PARAMS)
{
    conv_fprop<ConvTc<TcBf16>>(CONV_FPROP_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    conv_implicit_dgrad_bf16_bf16io(CONV_DGRAD_BF16IO_PARAMS)
{
    conv_dgrad<ConvTc<TcBf16>>(CONV_DGRAD_ARGS);
}

// gpucnn: block=TC_THREADS max_regs=255 gemm=report tc=bf16
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    conv_implicit_wgrad_bf16_bf16io(CONV_WGRAD_BF16IO_PARAMS)
{
    conv_wgrad<ConvTc<TcBf16>>(CONV_WGRAD_ARGS);
}
