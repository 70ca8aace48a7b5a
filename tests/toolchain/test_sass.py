"""gpucnn.toolchain.sass: the static performance gate read from the sm_90 SASS.

CI fails when a GEMM-like kernel (annotated ``gemm=1``) has a main loop below 75% FFMA or
reading shared memory with loads narrower than 128 bits, or spills (the compile gates). The
real kernels/sgemm.cu is put through the gate, and so is a planted naive GEMM (one output
per thread, scalar shared loads), which must fail it. A missing NVRTC or nvdisasm FAILS
these tests (the test extra installs both).
"""
import json

import pytest

from gpucnn.toolchain import kernel_dir
from gpucnn.toolchain.compilers import ToolchainUnavailable
from gpucnn.toolchain.gates import collect, gate_failures
from gpucnn.toolchain.parse import parse_kernel_decls
from gpucnn.toolchain.report import main, render_table
from gpucnn.toolchain.sass import (DEFAULT_MIN_FFMA, SASS_TARGET, access_bits, analyze_source,
                                   hottest_loop, loops, parse_sass, sass_problems)

from .helpers import write


# ---- reading a listing (synthetic text: no tools needed) ---------------------------------------

LISTING = """\
//--------------------- .text.k                  --------------------------
        .section        .text.k,"ax",@progbits
k:
.text.k:
        /*0000*/                   S2R R0, SR_TID.X ;
.L_x_0:
        /*0010*/                   LDS.128 R4, [R0] ;
        /*0020*/                   FFMA R1, R4, R5, R1 ;
.L_x_1:
        /*0030*/                   LDS R8, [R0+0x4] ;
        /*0040*/                   FFMA R1, R8, R8, R1 ;
        /*0050*/                   FFMA R2, R8, R8, R2 ;
        /*0060*/               @P0 BRA `(.L_x_1) ;
        /*0070*/                   LDG.E.128.CONSTANT R4, desc[UR4][R2.64] ;
        /*0080*/              @!P1 BRA `(.L_x_0) ;
.L_x_2:
        /*0090*/                   IADD3 R3, R3, 0x1, RZ ;
        /*00a0*/                   FFMA R1, R1, R1, R1 ;
        /*00b0*/                   STS.64 [R0], R2 ;
        /*00c0*/                   BRA 0x90 ;
        /*00d0*/                   EXIT ;
//--------------------- .text.flat               --------------------------
        .section        .text.flat,"ax",@progbits
        /*0000*/                   FFMA R1, R1, R1, R1 ;
        /*0010*/                   EXIT ;
"""


def test_parse_sass_and_loops():
    funcs = parse_sass(LISTING)
    assert set(funcs) == {"k", "flat"}
    k = funcs["k"]
    assert [i.opcode for i in k[:3]] == ["S2R", "LDS.128", "FFMA"]
    assert k[6].opcode == "BRA" and k[6].target == 0x30          # label resolved
    assert k[12].target == 0x90                                   # hex target (cuobjdump)
    # (first, last) instruction indices: the inner loop, the outer loop, the trailing one
    assert sorted(loops(k)) == [(1, 8), (3, 6), (9, 12)]
    assert loops(funcs["flat"]) == []


def test_hottest_loop_is_the_innermost_with_most_ffma():
    k = parse_sass(LISTING)["k"]
    st = hottest_loop("k", k)
    # innermost loops: 0x30..0x60 (2 FFMA of 4) and 0x90..0xc0 (1 FFMA of 4); the outer
    # loop 0x10..0x80 contains the first and is not a candidate
    assert (st.start, st.end, st.instructions, st.ffma) == (0x30, 0x60, 4, 2)
    assert st.ffma_share == 0.5 and st.lds_bits == [32] and st.ldg_bits == []
    assert hottest_loop("flat", parse_sass(LISTING)["flat"]) is None


TWO_LOOPS = """\
//--------------------- .text.k2                 --------------------------
        .section        .text.k2,"ax",@progbits
        /*0000*/                   S2R R0, SR_TID.X ;
.L_x_0:
        /*0010*/                   LDS.128 R4, [R0] ;
        /*0020*/                   FFMA R1, R4, R5, R1 ;
        /*0030*/                   FFMA R2, R4, R5, R2 ;
        /*0040*/               @P0 BRA `(.L_x_0) ;
        /*0050*/                   EXIT ;
.L_x_1:
        /*0060*/                   LDS R8, [R0] ;
        /*0070*/                   LDG.E R9, desc[UR4][R2.64] ;
        /*0080*/                   IADD3 R3, R3, 0x1, RZ ;
        /*0090*/                   FFMA R1, R8, R9, R1 ;
        /*00a0*/                   FFMA R2, R8, R9, R2 ;
        /*00b0*/               @P1 BRA `(.L_x_1) ;
        /*00c0*/                   EXIT ;
"""


def test_a_main_loop_per_case_is_reported_and_gated_each():
    """Two innermost loops with the same math (a kernel with one main loop per load path):
    the longer is the main loop, the other is kept beside it and gated like it."""
    st = hottest_loop("k2", parse_sass(TWO_LOOPS)["k2"])
    assert (st.start, st.instructions, st.ffma) == (0x60, 6, 2)
    assert [(o.start, o.instructions, o.lds_bits) for o in st.others] == [(0x10, 4, [128])]
    body = 'extern "C" __global__ void k2(float* x) { }\n'
    probs = sass_problems(st, _decl("// gpucnn: block=64 min_ffma=40%\n" + body, "k2"))
    # the main loop (2 of 6 FFMA, 32-bit LDS) fails both rules; the other (2 of 4, LDS.128)
    # passes them: nothing is said of it
    assert len(probs) == 2 and not any("0x10" in p for p in probs)
    probs = sass_problems(st, _decl("// gpucnn: block=64 min_ffma=60%\n" + body, "k2"))
    assert any("50% < 60%" in p and "(the main loop at 0x10)" in p for p in probs)


def test_access_bits():
    assert [access_bits(o) for o in ("LDS", "LDS.128", "LDS.U16", "LDG.E.128.CONSTANT",
                                     "LDG.E.CONSTANT", "LDG.E.64", "STS.U8")] == \
        [32, 128, 16, 128, 32, 64, 8]


def _decl(src, name):
    decls, problems = parse_kernel_decls(src, "t.cu")
    assert not problems, problems
    return decls[name]


def test_gate_rule_follows_the_annotation():
    body = 'extern "C" __global__ void k(float* x) { }\n'
    st = hottest_loop("k", parse_sass(LISTING)["k"])    # 50% FFMA, scalar LDS
    gated = _decl("// gpucnn: block=64 gemm=1\n" + body, "k")
    probs = sass_problems(st, gated)
    assert len(probs) == 2 and "50% < 75%" in probs[0] and "32-bit" in probs[1]
    assert _decl("// gpucnn: block=64\n" + body, "k").gemm == ""
    assert sass_problems(st, _decl("// gpucnn: block=64\n" + body, "k")) == []
    assert sass_problems(st, _decl("// gpucnn: gemm=report\n" + body, "k")) == []
    lenient = _decl("// gpucnn: min_ffma=40%\n" + body, "k")      # implies gemm=1
    assert lenient.gemm_gated and [p for p in sass_problems(st, lenient) if "FFMA" in p] == []
    assert sass_problems(None, gated) == ["SASS: no loop found (a GEMM-like kernel must "
                                          "have a main loop)"]
    assert DEFAULT_MIN_FFMA == 0.75


# ---- the real SGEMM ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sgemm_records(nvrtc, nvdisasm):
    records, results = collect([kernel_dir() / "sgemm.cu"], targets=(SASS_TARGET,),
                               nvrtc=nvrtc.path)
    return records, results[0]


def test_sgemm_passes_the_sass_gate(sgemm_records):
    records, result = sgemm_records
    fails = gate_failures(records)
    assert not fails, "\n".join(fails) + "\n\n" + render_table(records)
    gemm = [r for r in records if r.kernel.startswith("sgemm_") and r.gemm]
    assert {r.kernel for r in gemm} == {f"sgemm{t}_{x}{y}" for t in ("", "_small")
                                        for x in "nt" for y in "nt"}
    for r in gemm:
        assert r.gemm == "gate" and r.ffma_share >= DEFAULT_MIN_FFMA, r.as_dict()
        assert r.loop_ffma == 512           # the unrolled 8 x 8 x BK=8 slice, once
        assert r.lds_bits == [128] and 128 in r.ldg_bits, r.as_dict()
        assert r.spills == 0 and r.occupancy >= 0.18, r.as_dict()
    partials = next(r for r in records if r.kernel == "sgemm_sum_partials")
    assert partials.gemm == "" and partials.loop_instructions is None


def test_report_shows_the_sass_columns(sgemm_records):
    records, _ = sgemm_records
    text = render_table(records)
    head = text.splitlines()[0].split()
    assert head[-7:] == ["loop", "ffma", "hmma", "lds", "ldg", "sts", "gate"]
    row = next(line for line in text.splitlines() if line.startswith("sgemm:sgemm_nn "))
    assert " 512 (" in row and " 128 " in row
    d = next(r for r in records if r.kernel == "sgemm_nn").as_dict()
    assert {"registers", "occupancy", "spill_stores", "ok"} <= set(d)       # unchanged keys
    assert {"loop_instructions", "loop_ffma", "ffma_share", "lds_bits", "ldg_bits",
            "sts_bits", "gemm", "loop_hmma", "hmma_share", "hmma_kinds"} <= set(d)
    json.dumps(d)


# ---- a planted bad kernel ----------------------------------------------------------------------

NAIVE = """\
// A first-lesson tiled GEMM: one output per thread, the tile read from shared memory one
// float at a time (B's column walk cannot become a 128-bit load).
// gpucnn: block=16x16 {annotation}
extern "C" __global__ void naive_gemm(const float* A, const float* B, float* C,
                                      int M, int N, int K)
{{
    __shared__ float As[16][17];
    __shared__ float Bs[16][17];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * 16 + ty, col = blockIdx.x * 16 + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += 16) {{
        As[ty][tx] = (row < M && k0 + tx < K) ? A[row * K + k0 + tx] : 0.0f;
        Bs[ty][tx] = (col < N && k0 + ty < K) ? B[(k0 + ty) * N + col] : 0.0f;
        __syncthreads();
#pragma unroll
        for (int k = 0; k < 16; ++k)
            acc += As[ty][k] * Bs[k][tx];
        __syncthreads();
    }}
    if (row < M && col < N)
        C[row * N + col] = acc;
}}
"""


def _gate(tmp_path, name, annotation, nvrtc):
    path = write(tmp_path, name, NAIVE.format(annotation=annotation))
    records, _ = collect([path], targets=(SASS_TARGET,), nvrtc=nvrtc.path)
    return next(r for r in records if r.kernel == "naive_gemm"), records


def test_planted_naive_gemm_fails_the_gate(tmp_path, nvrtc, nvdisasm):
    rec, records = _gate(tmp_path, "naive.cu", "gemm=1", nvrtc)
    fails = gate_failures(records)
    assert rec.loop_ffma == 16 and rec.ffma_share < 0.5, rec.as_dict()
    assert 32 in rec.lds_bits
    assert any("FFMA" in f and "min_ffma" in f for f in fails), fails
    assert any("reads shared memory 32" in f for f in fails), fails
    assert main([str(tmp_path / "naive.cu"), "--targets", SASS_TARGET]) == 1


def test_unannotated_and_report_only_kernels_are_not_gated(tmp_path, nvrtc, nvdisasm):
    rec, records = _gate(tmp_path, "plain.cu", "", nvrtc)
    assert not gate_failures(records) and rec.loop_instructions is None   # not analysed
    rec, records = _gate(tmp_path, "shown.cu", "gemm=report", nvrtc)
    assert not gate_failures(records) and rec.loop_ffma == 16             # shown only
    rec, records = _gate(tmp_path, "lenient.cu", "min_ffma=1%", nvrtc)    # LDS still gated
    fails = gate_failures(records)
    assert len(fails) == 1 and "shared memory 32" in fails[0], fails


def test_missing_disassembler_is_a_note_not_a_pass(tmp_path, nvrtc, monkeypatch):
    monkeypatch.setenv("GPUCNN_NVDISASM", str(tmp_path / "no-such-nvdisasm"))
    rec, records = _gate(tmp_path, "naive.cu", "gemm=1", nvrtc)
    assert rec.loop_instructions is None
    assert any("SASS gate not run" in n for n in rec.notes), rec.notes
    with pytest.raises(ToolchainUnavailable):
        analyze_source(tmp_path / "naive.cu", nvrtc=nvrtc)
