// Training batches built on the device from the dataset's uint8 pixels, uploaded once: each
// output element is one pixel of image index[b], looked up in a table of its normalised value.
// The launches are in gpucnn/ops/data.py.
//
// Why a table and not (float)pixel * scale - shift: that expression is what the host's
// normalize() computes in two roundings, but nvcc (fmad on by default) and g++ for the
// emulator (-ffp-contract=fast) may fuse it into one fma, which rounds differently (g++ with
// the emulator's flags does: 117 of Fashion-MNIST's 256 pixel values would change). The table
// holds, per channel, normalize() of all 256 pixel values, computed by normalize() itself on
// the host (then column 256: the padding of a crop). A lookup does no arithmetic, so the
// batch is the host path's bit for bit on every compiler.
//
// An index outside [0, images) yields a NaN image (never a read outside the pixels): the
// trainer's loss check then stops the run.

#include "common.cuh"

#define PIXEL_TABLE_COLUMNS 257  // 256 pixel values, then the padding value
#define PIXEL_PADDING 256

__device__ __forceinline__ bool valid_image(int image, int images)
{
    return (unsigned int)image < (unsigned int)images;
}

__device__ __forceinline__ float quiet_nan()
{
    return __int_as_float(0x7fc00000);
}

// out (batch, C, H, W) = table[c, pixels[index[b], c, h, w]]; n = batch * C * H * W,
// image = C * H * W, plane = H * W.
// gpucnn: block=256 max_regs=64
extern "C" __global__ void gather_normalize(
    const unsigned char* pixels, const int* index, const float* table, float* out,
    int n, int images, int image, int plane)
{
    GRID_STRIDE_LOOP(i, n) {
        int b = i / image;
        int within = i - b * image;
        int src = index[b];
        out[i] = valid_image(src, images)
            ? table[(within / plane) * PIXEL_TABLE_COLUMNS
                    + pixels[plane_offset(src, 1, image) + within]]
            : quiet_nan();
    }
}

// The random crop and horizontal flip of gpucnn/data/loader.py (random_crop_flip), gathered:
// crops (batch, 3) holds (dy, dx, flip) of image b, drawn on the host. Output pixel (r, c) of
// image b comes from row dy + r - pad and column (flip ? dx + cols - 1 - c : dx + c) - pad of
// the unpadded image (crop_flip_window); outside it is the padding, table column 256.
// gpucnn: block=256 max_regs=64
extern "C" __global__ void gather_crop_flip(
    const unsigned char* pixels, const int* index, const int* crops, const float* table,
    float* out, int n, int images, int channels, int rows, int cols, int pad)
{
    GRID_STRIDE_LOOP(i, n) {
        PlanePos p = plane_pos(i, rows, cols);
        int b = p.plane / channels;
        int c = p.plane - b * channels;
        int src = index[b];
        const int* crop = crops + 3 * b;
        int r = crop[0] + p.row - pad;
        int col = (crop[2] ? crop[1] + (cols - 1 - p.col) : crop[1] + p.col) - pad;
        float v = quiet_nan();
        if (valid_image(src, images)) {
            int value = PIXEL_PADDING;
            if (r >= 0 && r < rows && col >= 0 && col < cols) {
                long long plane = (long long)src * channels + c;
                value = pixels[plane * rows * cols + r * cols + col];
            }
            v = table[c * PIXEL_TABLE_COLUMNS + value];
        }
        out[i] = v;
    }
}
