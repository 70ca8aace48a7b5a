"""gpucnn.toolchain.parse: the one parser of .cu text (signatures, #defines,
__launch_bounds__, the ``// gpucnn:`` annotations)."""
import numpy as np
import pytest

from gpucnn.toolchain import check_launch_args
from gpucnn.toolchain.parse import (DEFAULT_BLOCK, global_functions, int_defines,
                                    object_macros, parse_kernel_decls, parse_kernels,
                                    parse_launch_bounds, strip_comments)


def test_strip_comments_keeps_offsets_and_extern_c():
    src = 'extern "C" /* a\nb */ int x; // tail\nchar* s = "__global__";\n'
    out = strip_comments(src)
    assert len(out) == len(src) and out.count("\n") == src.count("\n")
    assert out.startswith('extern "C"') and "__global__" not in out and "tail" not in out


def test_int_defines():
    src = ("#define A 64\n  #  define B (128)  // comment\n#define C 7u\n#define D (A * 2)\n"
           "/* #define E 1 */\n#define F 3 /* note */\n#define G(x) 4\n")
    assert int_defines(src) == {"A": 64, "B": 128, "C": 7, "F": 3}


def test_global_functions():
    src = '''#define DECLARE __global__ void not_a_kernel(int)
    __launch_bounds__(64) __global__ void bounds_first(int n) { }
    extern "C" {
    __global__ void __launch_bounds__(32, 4) inside(float* x);
    }
    static __global__ void __attribute__((used)) attr(int n) { }
    '''
    fs = {f.name: f for f in global_functions(src)}
    assert list(fs) == ["bounds_first", "inside", "attr"]
    assert fs["bounds_first"].launch_bounds == "64" and fs["bounds_first"].is_definition
    assert fs["inside"].extern_c and not fs["inside"].is_definition
    assert fs["inside"].max_threads_expr == "32" and fs["inside"].params == "float* x"
    assert not fs["attr"].extern_c and fs["attr"].params == "int n"


def test_parse_launch_bounds():
    src = """#define BS 128
    extern "C" __global__ void __launch_bounds__(BS) a(int n) { }
    extern "C" __global__ void __launch_bounds__(256, 2) b(int n) { }
    extern "C" __global__ void c(int n) { }"""
    assert parse_launch_bounds(src) == {"a": 128, "b": 256}


def test_parse_kernels_signatures():
    ks = parse_kernels('''
        // extern "C" __global__ void commented_out(int a) {}
        extern "C" __global__ void __launch_bounds__(256, 2)
        k1(const float* __restrict__ a, float *b, int n, unsigned int m, long long q,
           unsigned char* bytes, size_t s, double d) { }
        __global__ void declared_only(int a);
    ''')
    assert list(ks) == ["k1"]
    ps = ks["k1"]
    assert [p.name for p in ps] == ["a", "b", "n", "m", "q", "bytes", "s", "d"]
    assert ps[0].is_pointer and ps[0].is_const and ps[0].dtype == np.float32
    assert ps[5].dtype == np.uint8 and not ps[2].is_pointer and ps[2].dtype == np.int32
    assert ps[6].dtype == np.uint64 and ps[7].dtype == np.float64 and ps[4].dtype == np.int64
    a = np.zeros(3, np.float32)
    vals = check_launch_args("k1", ps, [a, a, np.int32(1), np.uint32(2), np.int64(3),
                                        np.zeros(2, np.uint8), np.uint64(4), np.float64(5)])
    assert vals[0] is a
    with pytest.raises(TypeError, match=r"argument 3 \(unsigned int m\)"):
        check_launch_args("k1", ps, [a, a, np.int32(1), np.int32(2), np.int64(3),
                                     np.zeros(2, np.uint8), np.uint64(4), np.float64(5)])


# ---- annotations -------------------------------------------------------------------------

ANNOTATED = r'''
#define THREADS 128
// gpucnn: defaults max_regs=64

// Scales x.
// gpucnn: block=THREADS
extern "C" __global__ void scale(float* x, float a, int n) { }

extern "C" __global__ void __launch_bounds__(512) wide(float* x) { }

extern "C"
__global__ void tile(float* x)  // gpucnn: block=16x16 dyn_smem=4K min_occupancy=50%
{ }

template <typename T>
__global__ void generic(T* x) { }

extern "C" {
__global__ void inside(float* x) { }
}
// gpucnn: kernel=inside block=64 max_regs=40
/* __global__ void commented_out(float* x) { } */
'''


def test_parse_kernel_decls():
    decls, problems = parse_kernel_decls(ANNOTATED, "a.cu")
    assert problems == []
    assert set(decls) == {"scale", "wide", "tile", "generic", "inside"}
    s = decls["scale"]
    assert (s.block, s.max_regs, s.extern_c, s.line) == (128, 64, True, 7)
    w = decls["wide"]
    assert (w.block, w.launch_bounds, w.max_regs) == (512, 512, 64)
    t = decls["tile"]
    assert (t.block, t.block_dims, t.dyn_smem, t.min_occupancy) == (256, (16, 16, 1), 4096, 0.5)
    assert decls["generic"].extern_c is False and decls["generic"].block == DEFAULT_BLOCK
    i = decls["inside"]
    assert (i.extern_c, i.block, i.max_regs) == (True, 64, 40)


def test_orphan_annotation_is_a_problem():
    _decls, problems = parse_kernel_decls(
        '// gpucnn: block=64\nint helper = 1;\nextern "C" __global__ void k(float* x) { }\n',
        "e.cu")
    assert len(problems) == 1 and "not next to a kernel" in problems[0]


def test_annotated_block_is_told_apart_from_a_default():
    decls, _ = parse_kernel_decls(
        '// gpucnn: block=128\nextern "C" __global__ void a(int n) { }\n'
        'extern "C" __global__ void __launch_bounds__(512) b(int n) { }\n'
        'extern "C" __global__ void c(int n) { }\n', "f.cu")
    assert [(d.block, d.block_annotated) for d in decls.values()] == [
        (128, True), (512, False), (DEFAULT_BLOCK, False)]


def test_parameter_types():
    (params,) = parse_kernels('extern "C" __global__ void k(float4* v, void* any, '
                              'const unsigned short* h, int arr[], float** pp) { }').values()
    assert [p.dtype for p in params] == [np.float32, None, np.uint16, np.int32, None]
    assert params[2].ctype == "const unsigned short*" and params[3].ctype == "int*"
    with pytest.raises(ValueError, match="cannot be passed from Python"):
        parse_kernels("struct S { int a; };\n__global__ void k(S s) { }")
    with pytest.raises(ValueError, match="defined twice"):
        parse_kernels("__global__ void k() { }\n__global__ void k() { }")


# ---- shared parameter lists and the GEMM annotation keys (kernels/sgemm.cu uses both) -------

SHARED_PARAMS = r'''
#define TILE 64
#define KPARAMS const float* __restrict__ a, /* the input */ \
    float* out, int n
#define F(x) (x)
template <int T> __device__ void body(KPARAMS) { }
// gpucnn: block=TILE gemm=1
extern "C" __global__ void __launch_bounds__(TILE) k_small(KPARAMS) { body<TILE>(a, out, n); }
// gpucnn: block=128 min_ffma=80%
extern "C" __global__ void k_large(KPARAMS) { body<128>(a, out, n); }
// gpucnn: gemm=report
extern "C" __global__ void k_shown(float* x) { }
extern "C" __global__ void k_void(void) { }
'''


def test_object_macros():
    m = object_macros(SHARED_PARAMS)
    assert m["TILE"] == "64" and "F" not in m              # function-like macros skipped
    assert m["KPARAMS"] == "const float* __restrict__ a, float* out, int n"


def test_kernels_sharing_a_parameter_macro():
    ks = parse_kernels(SHARED_PARAMS)
    assert set(ks) == {"k_small", "k_large", "k_shown", "k_void"}   # body is not __global__
    assert [p.name for p in ks["k_small"]] == ["a", "out", "n"] == [p.name for p in ks["k_large"]]
    assert ks["k_small"][0].is_const and ks["k_void"] == []
    assert parse_launch_bounds(SHARED_PARAMS) == {"k_small": 64}


def test_gemm_annotation_keys():
    decls, problems = parse_kernel_decls(SHARED_PARAMS, "g.cu")
    assert problems == []
    s, big, shown, plain = (decls[k] for k in ("k_small", "k_large", "k_shown", "k_void"))
    assert (s.block, s.gemm, s.gemm_gated, s.min_ffma) == (64, "gate", True, None)
    assert (big.gemm, big.min_ffma) == ("gate", 0.8)          # min_ffma implies gemm=1
    assert (shown.gemm, shown.gemm_like, shown.gemm_gated) == ("report", True, False)
    assert (plain.gemm, plain.gemm_like) == ("", False)
    _d, problems = parse_kernel_decls('// gpucnn: gemm=maybe min_ffma=120%\n'
                                      'extern "C" __global__ void k(int n) { }\n', "b.cu")
    assert len(problems) == 2 and all("bad value" in p for p in problems), problems
