// Direct convolution on the CPU (stride 1, dilation 1, one group), float32; the "direct"
// algorithm of gpucnn/ops/conv/direct.py, which builds this file with the host compiler
// (-O3 -march=native) and tests it against reference.py (tests/ops/test_conv_direct.py).
//
// Two layouts of the padded input planes (Hp x Wp), chosen per layer by direct.py; in both,
// the vector at output position (ho, wo) reads tap k = (c, i, j) at x + off[k] + p, with
// off[k] = c*ds + i*dr + j*cs and p = ho*dr + wo*cs, so every tap is ONE vector load:
//  - "wide" (one image at a time, cs = 1, dr = Wp): a vector is V consecutive positions
//    p = ho*Wp + wo of one plane, each plane stored with a zero tail of at least V floats.
//    The Wp - Wo positions past each output row are junk: computed, then dropped.
//  - "lanes" (V images at a time, image-minor, cs = V, dr = Wp*V): a vector is one position
//    of V images. No junk, and aligned loads; the images are transposed in and out.
// The loop nests keep a block of accumulators in registers across the whole reduction,
// which is what the GEMM route cannot do for layers this thin (LeNet: K = 25..150,
// F = 6..16).
//
// One call is single-threaded; direct.py splits the batch over its threads. It owns the constants
// both sides use, GPUCNN_DIRECT_ABI and GPUCNN_DIRECT_FB_MAX: -D, in the library's cache key.
#include <cstddef>
#include <cstring>
#include <utility>
#if !defined(GPUCNN_DIRECT_ABI) || !defined(GPUCNN_DIRECT_FB_MAX)
#error "build through gpucnn/ops/conv/direct.py: it defines GPUCNN_DIRECT_ABI and _FB_MAX"
#endif

#if defined(__AVX512F__)
#define LANES 16         // floats per vector
constexpr int ACC = 24;  // accumulator registers per block (of 32)
#elif defined(__AVX__)
#define LANES 8
constexpr int ACC = 12;  // of 16
#else
#define LANES 4  // SSE
constexpr int ACC = 12;
#endif
constexpr int V = LANES;

typedef float vf __attribute__((vector_size(V * 4), aligned(4)));  // unaligned loads

static inline vf load(const float* p) { return *reinterpret_cast<const vf*>(p); }
static inline float hsum(vf v) {
    float s = 0.f;
    for (int l = 0; l < V; ++l) s += v[l];
    return s;
}

// ---- forward: y[f, p] = b[f] + sum_k w[f, k] * xp[off[k] + p] ----------------------------
// FB output channels x PB vectors of positions per block.
template <int FB, int PB>
static void fwd_block(const float* x, const long* off, long K, const float* w, long K_w,
                      const float* bias, long p0, float* out, long Lr) {
    vf acc[FB][PB];
    for (int f = 0; f < FB; ++f)
        for (int q = 0; q < PB; ++q) acc[f][q] = vf{} + (bias ? bias[f] : 0.f);
    const float* xb = x + p0;
    for (long k = 0; k < K; ++k) {
        const float* xk = xb + off[k];
        vf xv[PB];
        for (int q = 0; q < PB; ++q) xv[q] = load(xk + q * V);
        for (int f = 0; f < FB; ++f) {
            const float wv = w[f * K_w + k];  // a scalar operand broadcasts (no add)
            for (int q = 0; q < PB; ++q) acc[f][q] += wv * xv[q];
        }
    }
    for (int f = 0; f < FB; ++f)
        for (int q = 0; q < PB; ++q)
            std::memcpy(out + f * Lr + p0 + q * V, &acc[f][q], sizeof(vf));
}

// The positions a kernel computes: n rows of len floats (whole vectors), stride apart; wide:
// one row of Lr positions, lanes: Ho rows of Wo positions.
struct Rows {
    long n, stride, len;
};

template <int FB>
static void fwd_channels(const float* x, const long* off, long K, const float* w,
                         const float* bias, Rows rows, long Ls, float* out) {
    constexpr int PB = ACC / FB < 1 ? 1 : (ACC / FB > 4 ? 4 : ACC / FB);
    for (long r = 0; r < rows.n; ++r) {
        long p = r * rows.stride;
        const long end = p + rows.len;
        for (; p + PB * V <= end; p += PB * V)
            fwd_block<FB, PB>(x, off, K, w, K, bias, p, out, Ls);
        for (; p < end; p += V) fwd_block<FB, 1>(x, off, K, w, K, bias, p, out, Ls);
    }
}

typedef void (*fwd_fn)(const float*, const long*, long, const float*, const float*, Rows, long,
                       float*);
constexpr int FB_MAX = GPUCNN_DIRECT_FB_MAX;  // FWD[fb] = fwd_channels<fb>, fb = 1..FB_MAX
template <class> struct FwdTable;
template <int... I> struct FwdTable<std::integer_sequence<int, I...>> {
    static constexpr fwd_fn fn[] = {nullptr, fwd_channels<I + 1>...};
};
static constexpr const fwd_fn* FWD = FwdTable<std::make_integer_sequence<int, FB_MAX>>::fn;

static inline unsigned bits(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
static inline float from_bits(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
// ReLU keeping NaN, as a bitwise select (a data-dependent branch here mispredicts on about
// every other element: the pool below ran 5x slower with branches).
static inline float relu_bits(float t) {
    return from_bits(bits(t) & -static_cast<unsigned>((t > 0.f) | (t != t)));
}

// y[f] = act(scratch[f]) with its junk positions dropped.
static void store_plane(const float* s, long Wp, long Ho, long Wo, int relu, float* y) {
    for (long h = 0; h < Ho; ++h) {
        const float* sr = s + h * Wp;
        float* yr = y + h * Wo;
        if (!relu) {
            std::memcpy(yr, sr, Wo * sizeof(float));
            continue;
        }
        for (long v = 0; v < Wo; ++v) yr[v] = relu_bits(sr[v]);
    }
}

// The max-pool of relu(scratch[f]) over plain windows (pk = {kh, kw, sh, sw, Ho, Wo} of the
// pool): ops/pool/reference.py's fold, taps in row-major order, a tap taking over when it is
// greater or NaN; the switch is the conv-output index h * Wo + w.
// Any plain window, a chunk of windows at a time for each tap in turn: the tap's values are
// gathered into a row (strided loads do not vectorize) and the selects run on whole vectors
// (one window at a time, the tiny tap loops and the select chain cost ~13 cycles a tap).
static void pool_any(const float* s, long Wp, long Wo, const long* pk, float* y, int* sw) {
    const long kh = pk[0], kw = pk[1], sh = pk[2], sv = pk[3], Hq = pk[4], Wq = pk[5];
    constexpr long CH = 256;
    for (long q0 = 0, i = 0, j = 0; q0 < Hq * Wq; q0 += CH) {
        const long nq = Hq * Wq - q0 < CH ? Hq * Wq - q0 : CH;
        long at[CH];       // each window's first tap in the wide plane
        unsigned idx[CH];  // ... and in the conv output plane (the switch)
        for (long q = 0; q < nq; ++q) {
            at[q] = i * sh * Wp + j * sv;
            idx[q] = static_cast<unsigned>(i * sh * Wo + j * sv);
            if (++j == Wq) j = 0, ++i;
        }
        float best[CH], tap[CH];
        unsigned arg[CH];
        for (long a = 0; a < kh; ++a)
            for (long b = 0; b < kw; ++b) {
                const float* r = s + a * Wp + b;
                const unsigned di = static_cast<unsigned>(a * Wo + b);
                const bool first = a == 0 && b == 0;
                for (long q = 0; q < nq; ++q) tap[q] = r[at[q]];
                for (long q = 0; q < nq; ++q) {
                    const float t = relu_bits(tap[q]);
                    const bool take = first | (t > best[q]) | (t != t);
                    best[q] = take ? t : best[q];
                    arg[q] = take ? idx[q] + di : arg[q];
                }
            }
        for (long q = 0; q < nq; ++q) {
            y[q0 + q] = best[q];
            sw[q0 + q] = static_cast<int>(arg[q]);
        }
    }
}

typedef int vi __attribute__((vector_size(V * 4)));

template <int... I>
struct Lanes {
    static constexpr vi even = {(2 * I)...};
    static constexpr vi odd = {(2 * I + 1)...};
    static constexpr vi iota = {I...};
};
#if LANES == 16
using L = Lanes<0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15>;
#elif LANES == 8
using L = Lanes<0, 1, 2, 3, 4, 5, 6, 7>;
#else
using L = Lanes<0, 1, 2, 3>;
#endif

static inline vf relu_v(vf t) {
    const vi keep = (t > 0.f) | (t != t);
    return reinterpret_cast<vf>(reinterpret_cast<vi>(t) & keep);
}

// The 2x2 stride-2 pool (LeNet's, the common one) V windows at a time: the even and odd
// columns of two rows, deinterleaved by shuffles, folded in the order (0,0) (0,1) (1,0) (1,1).
// Reads up to 2V floats past a row's last window (the caller's scratch has that tail).
static void pool_2x2(const float* s, long Wp, long Wo, long Hq, long Wq, float* y, int* sw) {
    for (long i = 0; i < Hq; ++i) {
        const float* r0 = s + 2 * i * Wp;
        for (long j = 0; j < Wq; j += V) {
            vf tap[4];
            for (int a = 0; a < 2; ++a) {
                const vf lo = load(r0 + a * Wp + 2 * j), hi = load(r0 + a * Wp + 2 * j + V);
                tap[2 * a] = __builtin_shuffle(lo, hi, L::even);
                tap[2 * a + 1] = __builtin_shuffle(lo, hi, L::odd);
            }
            const vi base = static_cast<int>(2 * i * Wo + 2 * j) + 2 * L::iota;
            vf best = relu_v(tap[0]);
            vi arg = base;
            for (int t = 1; t < 4; ++t) {
                const vf v = relu_v(tap[t]);
                const vi take = (v > best) | (v != v);
                best = reinterpret_cast<vf>((reinterpret_cast<vi>(v) & take) |
                                            (reinterpret_cast<vi>(best) & ~take));
                arg = ((base + static_cast<int>((t / 2) * Wo + t % 2)) & take) | (arg & ~take);
            }
            const long nj = Wq - j < V ? Wq - j : V;
            std::memcpy(y + i * Wq + j, &best, nj * sizeof(float));
            std::memcpy(sw + i * Wq + j, &arg, nj * sizeof(int));
        }
    }
}

static void store_pooled(const float* s, long Wp, long Wo, const long* pk, float* y, int* sw) {
    if (pk[0] == 2 && pk[1] == 2 && pk[2] == 2 && pk[3] == 2)
        return pool_2x2(s, Wp, Wo, pk[4], pk[5], y, sw);
    pool_any(s, Wp, Wo, pk, y, sw);
}

// The lanes layout's stores: lane l of the vector at (h, w) (s + h * dr + w * V) is image l's
// element (h, w); images n apart in y (n of them).
static void store_lanes(const float* s, long dr, long Ho, long Wo, int relu, float* y,
                        long n, long ystride) {
    for (long h = 0; h < Ho; ++h)
        for (long w = 0; w < Wo; ++w) {
            vf v = load(s + h * dr + w * V);
            if (relu) v = relu_v(v);
            for (long l = 0; l < n; ++l) y[l * ystride + h * Wo + w] = v[l];
        }
}

static void pool_lanes(const float* s, long dr, long Wo, const long* pk, float* y, int* sw,
                       long n, long ystride) {
    const long kh = pk[0], kw = pk[1], sh = pk[2], sv = pk[3], Hq = pk[4], Wq = pk[5];
    for (long i = 0; i < Hq; ++i)
        for (long j = 0; j < Wq; ++j) {
            vf best{};
            vi arg{};
            for (long a = 0; a < kh; ++a)
                for (long b = 0; b < kw; ++b) {
                    const long h = i * sh + a, w = j * sv + b;
                    const vf v = relu_v(load(s + h * dr + w * V));
                    const vi take = (a == 0 && b == 0) ? ~vi{} : ((v > best) | (v != v));
                    best = reinterpret_cast<vf>((reinterpret_cast<vi>(v) & take) |
                                                (reinterpret_cast<vi>(best) & ~take));
                    arg = ((vi{} + static_cast<int>(h * Wo + w)) & take) | (arg & ~take);
                }
            for (long l = 0; l < n; ++l) {
                y[l * ystride + i * Wq + j] = best[l];
                sw[l * ystride + i * Wq + j] = arg[l];
            }
        }
}

// ---- the images' planes -----------------------------------------------------------------
// Where a kernel reads its operand: element (r, c) of channel ch of image i of a block at
// (i / gn) * gs + i % gn + d0 + ch * ds + r * dr + c * cs, for r < rows, c < cols (gn = 1:
// wide, one image per group of gs floats; gn = V: lanes, image i % V in lane i % V).
// Everything else in a group (padding, junk, tails) is zero: the buffers are zeroed once by
// the caller and only these elements are written (a group filled with fewer than gn images
// is zeroed first, its unused lanes too).
struct Planes {
    long ch, rows, cols, ds, dr, cs, d0, gs, gn;
};
// Where the values come from: images of ch x rows x cols (NCHW, contiguous), or, with sw set,
// the backward of a ReLU + max-pool over them: the gradient x of the pooled output yq
// (plane_q values a plane) added at each switch sw where yq > 0, in window order (as
// ops/pool/reference.py's np.add.at: overlapping windows accumulate), zero elsewhere
// (switches are checked by the caller).
struct Source {
    const float* x;
    const int* sw;
    const float* yq;
    long plane_q;
};

// Images [a, e) of src into the block dst (image a at dst; a is a multiple of p.gn).
static void fill(const Planes& p, const Source& src, long a, long e, float* dst) {
    if ((e - a) % p.gn) std::memset(dst + (e - a) / p.gn * p.gs, 0, p.gs * sizeof(float));
    for (long img = a; img < e; ++img)
        for (long c = 0; c < p.ch; ++c) {
            const long i = img - a;
            float* d = dst + (i / p.gn) * p.gs + i % p.gn + p.d0 + c * p.ds;
            const long pl = img * p.ch + c;
            if (!src.sw) {
                const float* x = src.x + pl * p.rows * p.cols;
                for (long r = 0; r < p.rows; ++r) {
                    if (p.cs == 1) {
                        std::memcpy(d + r * p.dr, x + r * p.cols, p.cols * sizeof(float));
                        continue;
                    }
                    for (long k = 0; k < p.cols; ++k) d[r * p.dr + k * p.cs] = x[r * p.cols + k];
                }
                continue;
            }
            for (long r = 0; r < p.rows; ++r) {
                if (p.cs == 1) {
                    std::memset(d + r * p.dr, 0, p.cols * sizeof(float));
                    continue;
                }
                for (long k = 0; k < p.cols; ++k) d[r * p.dr + k * p.cs] = 0.f;
            }
            const long q = pl * src.plane_q;
            for (long k = 0; k < src.plane_q; ++k) {
                const int at = src.sw[q + k];
                if (src.yq[q + k] > 0.f)
                    d[(at / p.cols) * p.dr + (at % p.cols) * p.cs] += src.x[q + k];
            }
        }
}

// fill() on its own: images [a, e) of src into dst (image a at dst), e.g. a pooled gradient
// into a dense NCHW array (ds = rows * cols, dr = cols, cs = 1, d0 = 0, gs = ch * ds, gn = 1).
extern "C" void conv_direct_fill(const Planes* p, const Source* src, long a, long e,
                                 float* dst) {
    fill(*p, *src, a, e, dst);
}

static void offsets(const Planes& p, long kh, long kw, long* off) {
    for (long c = 0, k = 0; c < p.ch; ++c)
        for (long i = 0; i < kh; ++i)
            for (long j = 0; j < kw; ++j) off[k++] = c * p.ds + i * p.dr + j * p.cs;
}

// ---- forward --------------------------------------------------------------------------------
// rows: the positions computed (wide: Lr of them, a multiple of V with Lr - L < V, L the last
// useful position + 1); Ls: scratch floats per output channel. pool: null, or the pool's
// {kh, kw, sh, sw, Ho, Wo} (plain windows): then y and sw are the pooled output and switches
// of relu(conv) (relu is then ignored), else y is the conv output.
struct Forward {
    Planes in;
    Source src;
    long kh, kw, F, Ho, Wo;
    Rows rows;
    long Ls;
    const float* w;
    const float* bias;
    int relu;
    const long* pool;
    float* y;
    int* sw;
};

// Images [a, e) (a a multiple of in.gn). Per thread: xp, one group's planes (in.gs floats,
// zeroed once); scratch, FB_MAX * Ls + 2 * V floats; off, in.ch * kh * kw longs.
extern "C" void conv_direct_forward(const Forward* c, long a, long e, float* xp,
                                    float* scratch, long* off) {
    const long K = c->in.ch * c->kh * c->kw, F = c->F, Ls = c->Ls, gn = c->in.gn;
    offsets(c->in, c->kh, c->kw, off);
    const long plane = c->pool ? c->pool[4] * c->pool[5] : c->Ho * c->Wo;
    // Blocks of output channels as even as FB_MAX allows (F = 6: one block of 6, not 4 + 2).
    const long nb = (F + FB_MAX - 1) / FB_MAX;
    for (long g0 = a; g0 < e; g0 += gn) {
        const long n = e - g0 < gn ? e - g0 : gn;
        fill(c->in, c->src, g0, g0 + n, xp);
        for (long b = 0, f0 = 0; b < nb; ++b) {
            const long fb = (F - f0) / (nb - b);
            FWD[fb](xp, off, K, c->w + f0 * K, c->bias ? c->bias + f0 : nullptr, c->rows, Ls,
                    scratch);
            for (long f = 0; f < fb; ++f) {
                const long o = (g0 * F + f0 + f) * plane;
                const float* s = scratch + f * Ls;
                if (gn > 1 && c->pool)
                    pool_lanes(s, c->in.dr, c->Wo, c->pool, c->y + o, c->sw + o, n, F * plane);
                else if (gn > 1)
                    store_lanes(s, c->in.dr, c->Ho, c->Wo, c->relu, c->y + o, n, F * plane);
                else if (c->pool)
                    store_pooled(s, c->in.dr, c->Wo, c->pool, c->y + o, c->sw + o);
                else
                    store_plane(s, c->in.dr, c->Ho, c->Wo, c->relu, c->y + o);
            }
            f0 += fb;
        }
    }
}

// ---- weight gradient: dw[f, k] += sum_group sum_p dy[group, f, p] . xp[group, off[k] + p] -
// dy in the same layout as the output positions (wide: plane stride Sd, zero at every junk
// position and past the last useful one; lanes: junk never read). In the wide layout x at a
// junk position is a real input value (of the row's end or the next row), so KEEP masks it
// to zero there: 0 * inf would otherwise put a NaN into taps the reference keeps finite.
// FB channels x TB taps of accumulators per block.
typedef int vi_u __attribute__((vector_size(V * 4), aligned(4)));

template <int FB, int TB, bool KEEP>
static void dw_block(const float* xp, long n, long CS, const long* off, const float* dy,
                     long FSd, long Sd, Rows rows, const int* keep, float* dw, long K) {
    vf acc[FB][TB];
    for (int f = 0; f < FB; ++f)
        for (int t = 0; t < TB; ++t) acc[f][t] = vf{};
    for (long img = 0; img < n; ++img) {
        const float* x = xp + img * CS;
        const float* d = dy + img * FSd;
        for (long r = 0; r < rows.n; ++r)
            for (long p = r * rows.stride, end = p + rows.len; p < end; p += V) {
                vf dv[FB];
                for (int f = 0; f < FB; ++f) dv[f] = load(d + f * Sd + p);
                vi m{};
                if (KEEP) m = *reinterpret_cast<const vi_u*>(keep + p);
                for (int t = 0; t < TB; ++t) {
                    vf xv = load(x + off[t] + p);
                    if (KEEP) xv = reinterpret_cast<vf>(reinterpret_cast<vi>(xv) & m);
                    // one load per tap: kept in a register, not refolded into each FMA (an
                    // unaligned vector load costs two when it crosses a cache line)
                    asm("" : "+v"(xv));
                    for (int f = 0; f < FB; ++f) acc[f][t] += dv[f] * xv;
                }
            }
    }
    for (int f = 0; f < FB; ++f)
        for (int t = 0; t < TB; ++t) dw[f * K + t] += hsum(acc[f][t]);
}

constexpr int DW_FB = 4;
constexpr int DW_TB = V == 16 ? 5 : 2;  // 4 x TB accumulators + 4 dy + 1 x registers

template <int FB, bool KEEP>
static void dw_channels(const float* xp, long n, long CS, const long* off, long K,
                        const float* dy, long FSd, long Sd, Rows rows, const int* keep,
                        float* dw) {
    long k = 0;
    for (; k + DW_TB <= K; k += DW_TB)
        dw_block<FB, DW_TB, KEEP>(xp, n, CS, off + k, dy, FSd, Sd, rows, keep, dw + k, K);
    for (; k < K; ++k)
        dw_block<FB, 1, KEEP>(xp, n, CS, off + k, dy, FSd, Sd, rows, keep, dw + k, K);
}

typedef void (*dw_fn)(const float*, long, long, const long*, long, const float*, long, long,
                      Rows, const int*, float*);
static const dw_fn DW[2][DW_FB + 1] = {
    {nullptr, dw_channels<1, false>, dw_channels<2, false>, dw_channels<3, false>,
     dw_channels<4, false>},
    {nullptr, dw_channels<1, true>, dw_channels<2, true>, dw_channels<3, true>,
     dw_channels<4, true>}};

struct WeightGrad {
    Planes in;    // x, as the forward reads it
    Source src;   // of x
    Planes dy;    // dy at the output positions (same dr and cs as in, d0 = 0)
    Source dsrc;  // of dy
    long kh, kw, F;
    Rows rows;
    const int* keep;  // wide: rows.len ints, ~0 at useful positions, 0 at junk; lanes: null
};

// dw (F x C*kh*kw) and db (F) += the weight and bias gradients of images [a, e), blk images
// (a multiple of in.gn) at a time. Per thread: xp (blk / gn groups of in.gs floats) and dyw
// (of dy.gs floats), zeroed once; off.
extern "C" void conv_direct_dw(const WeightGrad* c, long a, long e, long blk, float* xp,
                               float* dyw, long* off, float* dw, float* db) {
    const long K = c->in.ch * c->kh * c->kw, F = c->F, gn = c->in.gn, Sd = c->dy.ds;
    offsets(c->in, c->kh, c->kw, off);
    for (long s = a; s < e; s += blk) {
        const long t = e - s < blk ? e - s : blk, groups = (t + gn - 1) / gn;
        fill(c->in, c->src, s, s + t, xp);
        fill(c->dy, c->dsrc, s, s + t, dyw);
        for (long i = 0; i < groups; ++i)
            for (long f = 0; f < F; ++f) {  // junk positions are zero or not read
                vf acc{};
                const float* d = dyw + i * c->dy.gs + f * Sd;
                for (long r = 0; r < c->rows.n; ++r)
                    for (long p = r * c->rows.stride, end = p + c->rows.len; p < end; p += V)
                        acc += load(d + p);
                db[f] += hsum(acc);
            }
        for (long f0 = 0; f0 < F; f0 += DW_FB) {
            const long fb = F - f0 < DW_FB ? F - f0 : DW_FB;
            DW[c->keep != nullptr][fb](xp, groups, c->in.gs, off, K, dyw + f0 * Sd, c->dy.gs,
                                       Sd, c->rows, c->keep, dw + f0 * K);
        }
    }
}

extern "C" int conv_direct_lanes(void) { return V; }

// What direct.py checks at load: the -D constants as built, the layout of each struct it mirrors.
struct Fact { const char* name; long long value; };
#define FACT(x) {#x, (long long)(x)}
#define SIZE(S) {"sizeof " #S, (long long)sizeof(S)}
#define FIELD(S, f) {#S "." #f, (long long)offsetof(S, f)}
extern "C" const Fact* conv_direct_facts(void) {
    static const Fact facts[] = {
        FACT(GPUCNN_DIRECT_ABI), FACT(GPUCNN_DIRECT_FB_MAX), SIZE(Planes), FIELD(Planes, ch),
        FIELD(Planes, rows), FIELD(Planes, cols), FIELD(Planes, ds), FIELD(Planes, dr),
        FIELD(Planes, cs), FIELD(Planes, d0), FIELD(Planes, gs), FIELD(Planes, gn), SIZE(Source),
        FIELD(Source, x), FIELD(Source, sw), FIELD(Source, yq), FIELD(Source, plane_q), SIZE(Rows),
        FIELD(Rows, n), FIELD(Rows, stride), FIELD(Rows, len), SIZE(Forward), FIELD(Forward, in),
        FIELD(Forward, src), FIELD(Forward, kh), FIELD(Forward, kw), FIELD(Forward, F),
        FIELD(Forward, Ho), FIELD(Forward, Wo), FIELD(Forward, rows), FIELD(Forward, Ls),
        FIELD(Forward, w), FIELD(Forward, bias), FIELD(Forward, relu), FIELD(Forward, pool),
        FIELD(Forward, y), FIELD(Forward, sw), SIZE(WeightGrad), FIELD(WeightGrad, in),
        FIELD(WeightGrad, src), FIELD(WeightGrad, dy), FIELD(WeightGrad, dsrc),
        FIELD(WeightGrad, kh), FIELD(WeightGrad, kw), FIELD(WeightGrad, F), FIELD(WeightGrad, rows),
        FIELD(WeightGrad, keep), {nullptr, 0}};
    return facts;
}
