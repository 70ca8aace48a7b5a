"""The tensor-core kernels (kernels/sgemm_tc.cu, conv_implicit_tc.cu) under the compile gates:
their sm_90 SASS main loops multiply on tensor cores of their declared kind (tc=tf32: HMMA
.TF32; tc=bf16: HMMA .BF16), with no spill, under NVRTC with CUDA's WMMA headers."""
import pytest

from gpucnn.ops.conv.implicit import implicit_tile
from gpucnn.toolchain import kernel_decls, kernel_dir
from gpucnn.toolchain.gates import collect, gate_failures
from gpucnn.toolchain.sass import sass_problems

TC_SOURCES = ("sgemm_tc.cu", "conv_implicit_tc.cu")


@pytest.fixture(scope="module")
def tc_records():
    return collect(sources=[kernel_dir() / s for s in TC_SOURCES], targets=("sm_90",))[0]


def test_every_tensor_core_kernel_runs_hmma_of_its_kind(tc_records):
    decls = kernel_decls()
    tc = {r.kernel: r for r in tc_records if r.kernel != "*"}
    # 17 GEMMs: 12 on float32 operands, the linear layer's 3 on bf16 activations (_bf16io)
    # and 2 for the float32 parts of their split K (_bf16a); 12 convolutions: 9 with float32
    # activations, 3 with bf16 ones (_bf16io)
    assert len(tc) == 29 and all(decls[k].tc for k in tc)
    assert sum(k.endswith("_bf16io") and decls[k].tc == "bf16" for k in tc) == 6
    assert sum(k.endswith("_bf16a") and decls[k].tc == "bf16" for k in tc) == 2
    assert not gate_failures(tc_records), gate_failures(tc_records)
    for name, r in tc.items():
        kind = decls[name].tc.upper()
        assert r.loop_hmma and r.hmma_kinds == [kind], (name, r.loop_hmma, r.hmma_kinds)
        assert r.spills == 0 and r.hmma_share > 0
    # 3xTF32 issues three products per k step where TF32 issues one. The TF32 loop spans a
    # whole slice (TC_BK / 8 k steps, unrolled); the 3xTF32 loop may be a single k step
    # (tensor_core.cuh keeps its steps apart), so compare per k step.
    steps = implicit_tile("tf32")["BK"] // 8
    for name, r in tc.items():
        if "3xtf32" in name:
            per_step = tc[name.replace("3xtf32", "tf32")].loop_hmma // steps
            assert per_step and r.loop_hmma % (3 * per_step) == 0, (name, r.loop_hmma, per_step)


def test_gate_refuses_a_kernel_of_the_wrong_kind(tc_records):
    """A planted mismatch: the TF32 kernel's loop judged as if it were declared bf16, and a
    loop without HMMA judged as a tensor-core kernel."""
    decls = kernel_decls()
    r = next(r for r in tc_records if r.kernel == "sgemm_tf32_nn")
    from gpucnn.toolchain.sass import LoopStats
    stats = LoopStats(kernel=r.kernel, start=0, end=1, instructions=r.loop_instructions,
                      ffma=r.loop_ffma, hmma=r.loop_hmma, hmma_kinds=r.hmma_kinds, lds_bits=[],
                      ldg_bits=[], sts_bits=[], counts={})
    wrong = type(decls["sgemm_tf32_nn"])(name="x", tc="bf16", gemm="report")
    assert any("expected BF16" in p for p in sass_problems(stats, wrong))
    none = LoopStats(kernel="y", start=0, end=1, instructions=10, ffma=8, hmma=0, hmma_kinds=[],
                     lds_bits=[], ldg_bits=[], sts_bits=[], counts={})
    assert any("no HMMA" in p for p in sass_problems(none, decls["sgemm_tf32_nn"]))
    generic = LoopStats(kernel=r.kernel, start=0, end=1, instructions=r.loop_instructions,
                        ffma=r.loop_ffma, hmma=r.loop_hmma, hmma_kinds=r.hmma_kinds,
                        lds_bits=[], ldg_bits=[], sts_bits=[], counts={"LD": 48})
    assert any("48 generic LD" in p for p in sass_problems(generic, decls["sgemm_tf32_nn"]))
