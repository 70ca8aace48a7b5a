// Conversions between float32 tensors and bf16 ones (uint16 bits, bf16_storage.cuh): where a
// network held in bf16 meets float32 — its input, its logits, and the layers without bf16
// kernels (gpucnn/ops/cast.py; gpucnn/nn/module.py's Sequential places them).

#include "common.cuh"
#include "bf16_storage.cuh"

// y = x rounded to bfloat16 (nearest, ties to even; NaN -> 0x7FFF).
// gpucnn: block=256 max_regs=64
extern "C" __global__ void cast_to_bf16(const float* x, bf16_bits* y, int n)
{
    GRID_STRIDE_LOOP(i, n) {
        act_store(&y[i], x[i]);
    }
}

// y = the float32 value of bf16 x (exact).
// gpucnn: block=256 max_regs=64
extern "C" __global__ void cast_from_bf16(const bf16_bits* x, float* y, int n)
{
    GRID_STRIDE_LOOP(i, n) {
        y[i] = act_load(&x[i]);
    }
}
