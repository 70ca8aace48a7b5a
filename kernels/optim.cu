// Optimiser steps, in place, elementwise over flat float32 tensors (PyTorch's formulas, see
// gpucnn/ops/optim.py). Grid-stride loops.

#include "common.cuh"

// SGD (PyTorch's torch.optim.SGD): momentum with dampening 0, optional Nesterov, L2 decay:
//   d = grad + weight_decay * param
//   if momentum != 0:  velocity = momentum * velocity + d
//                      d = nesterov ? d + momentum * velocity : velocity
//   param -= lr * d
// With momentum 0 (plain SGD) velocity is neither read nor written, as in the NumPy reference.
// The learning rate is read on the device (float32[1], written by the host when it changes),
// so a captured step follows a schedule without a new capture.
// gpucnn: block=256 max_regs=64
extern "C" __global__ void sgd_update(
    float* param, const float* grad, float* velocity, int n,
    const float* lr_dev, float momentum, float weight_decay, int nesterov)
{
    const float lr = lr_dev[0];
    GRID_STRIDE_LOOP(i, n) {
        float d = grad[i] + weight_decay * param[i];
        if (momentum != 0.0f) {
            float v = momentum * velocity[i] + d;
            velocity[i] = v;
            d = nesterov ? d + momentum * v : v;
        }
        param[i] -= lr * d;
    }
}

// Adam's step t on the device: step[0] += 1, then its bias corrections in float64, exactly as
// gpucnn/ops/optim.py's adam_bias_corrections computes them on the host (so a captured graph
// needs no host value per step): scalars = {lr / (1 - beta1^t), sqrt(1 - beta2^t)}, rounded to
// float32 once; lr is read on the device (float64[1], written by the host when it changes).
// One thread; launched once per optimiser step, before the updates.
// gpucnn: block=32 max_regs=64
extern "C" __global__ void adam_prepare(int* step, float* scalars, const double* lr_dev,
                                        double beta1, double beta2)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        const double lr = lr_dev[0];
        const int t = step[0] + 1;
        step[0] = t;
        scalars[0] = (float)(lr / (1.0 - pow(beta1, (double)t)));
        scalars[1] = (float)sqrt(1.0 - pow(beta2, (double)t));
    }
}

// Adam with L2 weight decay added to the gradient. scalars = {step_size, bias2_sqrt}, on the
// device (adam_prepare), and one_minus_beta1/2 from the host (1 - 0.999f in float32 would be
// off by 1.3e-5 relative).
//   g = grad + weight_decay * param
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   param -= step_size * m / (sqrt(v) / bias2_sqrt + eps)
// gpucnn: block=256 max_regs=64
extern "C" __global__ void adam_update(
    float* param, const float* grad, float* m, float* v, int n, const float* scalars,
    float beta1, float one_minus_beta1, float beta2, float one_minus_beta2, float eps,
    float weight_decay)
{
    const float step_size = scalars[0];
    const float bias2_sqrt = scalars[1];
    GRID_STRIDE_LOOP(i, n) {
        float g = grad[i] + weight_decay * param[i];
        float mi = beta1 * m[i] + one_minus_beta1 * g;
        float vi = beta2 * v[i] + one_minus_beta2 * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] -= step_size * mi / (sqrtf(vi) / bias2_sqrt + eps);
    }
}
