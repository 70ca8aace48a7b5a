// Shared by every kernel file (as Caffe's device_alternate.hpp): the grid-stride loop and
// NCHW index helpers.
//
// Elementwise kernels are launched with a grid the host caps (gpucnn/ops/launch.py: large on
// a GPU, a few blocks on the emulator), so each thread walks the elements i, i + grid size,
// ... The index is an int: the host checks that n plus one grid stride fits in 32 bits.
#pragma once

#define GRID_STRIDE_LOOP(i, n) \
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

// Element `index` of a tensor of (N * C) planes of rows x cols: its plane (n * C + c), row
// and column. Plane offsets are 64-bit: a tensor can pass 2^31 elements (AlexNet pool1 at a
// large batch) while the one being written, whose size bounds `index`, does not.
struct PlanePos {
    int plane, row, col;
};

__device__ __forceinline__ PlanePos plane_pos(int index, int rows, int cols)
{
    PlanePos p;
    p.col = index % cols;
    p.row = (index / cols) % rows;
    p.plane = index / (cols * rows);
    return p;
}

__device__ __forceinline__ long long plane_offset(int plane, int rows, int cols)
{
    return (long long)plane * rows * cols;
}
