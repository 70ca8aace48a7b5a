// The NCHW index helpers of kernels/common.cuh, checked past 2^31 elements without 8 GB
// tensors: the kernel writes the offsets it computes for the (plane, rows, cols) it is given.
#include "../../kernels/common.cuh"

extern "C" __global__ void plane_offsets(const int* planes, long long* out, int rows, int cols,
                                         int n)
{
    GRID_STRIDE_LOOP(i, n) {
        out[i] = plane_offset(planes[i], rows, cols);
    }
}

extern "C" __global__ void plane_positions(int* out, int rows, int cols, int n)
{
    GRID_STRIDE_LOOP(i, n) {
        PlanePos p = plane_pos(i * 97, rows, cols);
        out[3 * i] = p.plane;
        out[3 * i + 1] = p.row;
        out[3 * i + 2] = p.col;
    }
}
