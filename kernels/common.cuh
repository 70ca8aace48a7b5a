// Shared by every kernel file (as Caffe's device_alternate.hpp): the grid-stride loop.
//
// Elementwise kernels are launched with a grid the host caps (gpucnn/ops/launch.py: large on
// a GPU, a few blocks on the emulator), so each thread walks the elements i, i + grid size,
// ... The index is an int: the host checks that n plus one grid stride fits in 32 bits.
#pragma once

#define GRID_STRIDE_LOOP(i, n) \
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)
