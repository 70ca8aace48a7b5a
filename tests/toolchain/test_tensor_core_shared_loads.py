"""tensor_core.cuh's tc_load_shared, the .shared form of wmma::load_matrix_sync, under NVRTC
12 and 13. The emulator runs load_matrix_sync in its place (no PTX there), so what is checked
here is the PTX NVVM emits: for every fragment type tc_multiply reads, one kernel loads the
fragment with load_matrix_sync and one with tc_load_shared, each storing the fragment's four
32-bit registers to out[4 * lane + t]. Both must load with the same wmma.load instruction
(state space apart: generic vs .shared, with a 32-bit address) and store its i-th destination
register at offset 4 * i: the same fragment, register for register, so the same products."""
import re

import pytest

from gpucnn.toolchain import kernel_dir
from gpucnn.toolchain.compilers import get_nvrtc, nvrtc_by_major, nvrtc_options

MAJORS = (12, 13)  # cupy-cuda12x and cupy-cuda13x; the test extra installs both NVRTCs

# (kernel suffix, fragment type, stored element type, the PTX shape/layout/type part)
FRAGMENTS = (
    ("a_tf32", "matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major", "float",
     "a.sync.aligned.col.m16n16k8", "tf32"),
    ("b_tf32", "matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major", "float",
     "b.sync.aligned.row.m16n16k8", "tf32"),
    ("a_bf16", "matrix_a, 16, 16, 16, __nv_bfloat16, wmma::col_major", "__nv_bfloat16",
     "a.sync.aligned.col.m16n16k16", "bf16"),
    ("b_bf16", "matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major", "__nv_bfloat16",
     "b.sync.aligned.row.m16n16k16", "bf16"),
)

SOURCE_HEAD = r'''
#include "tensor_core.cuh"
namespace wmma = nvcuda::wmma;
template <class Frag, class T, bool API>
__device__ __forceinline__ void load_and_store(unsigned* out)
{
    // 16 x 16 elements with rows of 24 (a multiple of 16 bytes for both types), 32-byte aligned
    __shared__ __align__(32) T s[16 * 24];
    for (int i = threadIdx.x; i < 16 * 24; i += 32)
        s[i] = T(float(i));
    __syncthreads();
    Frag f;
    if (API)
        nvcuda::wmma::load_matrix_sync(f, s, 24);
    else
        tc_load_shared(f, s, 24);
    unsigned r[4];
    static_assert(sizeof(f.x) == sizeof r, "four registers");
    memcpy(r, &f.x[0], sizeof r);
#pragma unroll
    for (int t = 0; t < 4; ++t)
        out[4 * threadIdx.x + t] = r[t];
}
'''

KERNEL = '''
typedef nvcuda::wmma::fragment<nvcuda::wmma::{frag}> Frag_{name};
extern "C" __global__ void api_{name}(unsigned* out) {{ load_and_store<Frag_{name}, {elem}, true>(out); }}
extern "C" __global__ void ptx_{name}(unsigned* out) {{ load_and_store<Frag_{name}, {elem}, false>(out); }}
'''

_ENTRY_RE = re.compile(r"\.entry\s+(\w+)\(")
_LOAD_RE = re.compile(r"wmma\.load\.([\w.]+)\s+\{([^}]*)\},\s*\[([^\]]+)\]")
_STORE_RE = re.compile(r"st\.global\.(?:u32|b32)\s+\[%rd\d+(?:\+(\d+))?\],\s*(%r\d+);")


def _functions(ptx):
    """{entry name: its PTX text}."""
    parts = _ENTRY_RE.split(ptx)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _load_and_stores(body):
    """(the wmma.load's instruction suffix, its address operand, [byte offset of the store
    of destination register i, for each i])."""
    loads = _LOAD_RE.findall(body)
    assert len(loads) == 1, loads
    suffix, dests, addr = loads[0]
    regs = [d.strip() for d in dests.split(",")]
    stored = {reg: int(off or 0) for off, reg in _STORE_RE.findall(body)}
    return suffix, addr.strip(), [stored.get(r) for r in regs]


def _source():
    return SOURCE_HEAD + "".join(KERNEL.format(name=n, frag=f, elem=e)
                                 for n, f, e, _, _ in FRAGMENTS)


@pytest.fixture(scope="module", params=MAJORS, ids=lambda m: f"nvrtc{m}")
def ptx(request):
    path = nvrtc_by_major().get(request.param)
    if path is None:
        pytest.fail(f"NVRTC {request.param} was not found (the test extra installs it)",
                    pytrace=False)
    nv = get_nvrtc(path)
    text = _source()
    where = kernel_dir() / "tc_shared_load_check.cu"   # include paths: the kernels' folder
    opts = nvrtc_options("compute_90", where, major=nv.version()[0], text=text)
    opts = [o for o in opts if not o.startswith("--ptxas-options")]
    rc, rc_name, log, out = nv.compile(text, where.name, opts, ptx=True)
    assert rc == 0 and out, f"{rc_name}: {log[-2000:]}"
    return _functions(out)


@pytest.mark.parametrize("name,frag,elem,shape,kind", FRAGMENTS, ids=[f[0] for f in FRAGMENTS])
def test_shared_load_is_load_matrix_sync_in_the_shared_space(ptx, name, frag, elem, shape,
                                                             kind):
    api_suffix, api_addr, api_offsets = _load_and_stores(ptx[f"api_{name}"])
    own_suffix, own_addr, own_offsets = _load_and_stores(ptx[f"ptx_{name}"])
    # load_matrix_sync: generic (what made ptxas emit LD); tc_load_shared: the same
    # instruction in the .shared space, from a 32-bit register
    assert api_suffix == f"{shape}.{kind}", api_suffix
    assert own_suffix == f"{shape}.shared.{kind}", own_suffix
    assert api_addr.startswith("%rd") and own_addr.startswith("%r") and \
        not own_addr.startswith("%rd"), (api_addr, own_addr)
    # register i of the load lands in the fragment's word i, both ways
    assert api_offsets == [0, 4, 8, 12], api_offsets
    assert own_offsets == api_offsets, own_offsets
