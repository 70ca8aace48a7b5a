// Kernels used to measure the emulator's speed.
#define TILE 64
#define TS 4
// C[M,N] = A[M,K] @ B[K,N]; 64x64 tile per block of 16x16 threads, 4x4 outputs per thread.
extern "C" __global__ void sgemm_tiled(const float* __restrict__ A, const float* __restrict__ B,
                                       float* __restrict__ C, int M, int N, int K)
{
    __shared__ float As[TILE][TILE + 1];
    __shared__ float Bs[TILE][TILE + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int row0 = blockIdx.y * TILE, col0 = blockIdx.x * TILE;
    float acc[TS][TS];
    for (int i = 0; i < TS; i++)
        for (int j = 0; j < TS; j++) acc[i][j] = 0.0f;
    int tid = ty * 16 + tx;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        for (int e = tid; e < TILE * TILE; e += 256) {
            int r = e / TILE, c = e % TILE;
            int gr = row0 + r, gc = k0 + c;
            As[r][c] = (gr < M && gc < K) ? A[gr * K + gc] : 0.0f;
            gr = k0 + r; gc = col0 + c;
            Bs[r][c] = (gr < K && gc < N) ? B[gr * N + gc] : 0.0f;
        }
        __syncthreads();
        for (int k = 0; k < TILE; k++) {
            float a[TS], b[TS];
            for (int i = 0; i < TS; i++) a[i] = As[ty * TS + i][k];
            for (int j = 0; j < TS; j++) b[j] = Bs[k][tx * TS + j];
            for (int i = 0; i < TS; i++)
                for (int j = 0; j < TS; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
    for (int i = 0; i < TS; i++)
        for (int j = 0; j < TS; j++) {
            int r = row0 + ty * TS + i, c = col0 + tx * TS + j;
            if (r < M && c < N) C[r * N + c] = acc[i][j];
        }
}

extern "C" __global__ void saxpy(float a, const float* __restrict__ x, float* __restrict__ y, int n)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = fmaf(a, x[i], y[i]);
}

// One thread per element, no grid-stride loop (the fiber-switch-bound worst case).
extern "C" __global__ void scale_1per(const float* __restrict__ x, float* __restrict__ y, float s, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = s * x[i];
}
