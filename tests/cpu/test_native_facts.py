"""gpucnn/cpu/native.py: constants handed to a build as -D, and a library's facts table (its
constants and struct layouts) compared with the ctypes mirrors of its Python caller."""
import ctypes

import pytest

from gpucnn.cpu import native

SRC = r"""
#include <cstddef>
struct Pair { int in; double b; char c[3]; };
struct Fact { const char* name; long long value; };
extern "C" const Fact* probe_facts(void) {
    static const Fact facts[] = {
        {"VERSION", VERSION}, {"sizeof Pair", sizeof(Pair)}, {"Pair.in", offsetof(Pair, in)},
        {"Pair.b", offsetof(Pair, b)}, {"Pair.c", offsetof(Pair, c)}, {nullptr, 0}};
    return facts;
}
"""


class Pair(ctypes.Structure):
    _fields_ = [("in_", ctypes.c_int), ("b", ctypes.c_double), ("c", ctypes.c_char * 3)]


class PairWithAFloat(ctypes.Structure):  # b declared float on the Python side only
    _fields_ = [("in_", ctypes.c_int), ("b", ctypes.c_float), ("c", ctypes.c_char * 3)]


@pytest.fixture
def probe(tmp_path, monkeypatch, native_compiler):
    """load(defines) of the probe source, built in a cache of its own (a missing compiler
    fails, as the README promises: native_compiler)."""
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "probe.cpp"
    src.write_text(SRC)

    def load(**defines):
        try:
            return native.load(src, defines)
        except native.NativeUnavailable as e:
            pytest.fail(f"the probe source did not build: {e}", pytrace=False)
    return load


def test_a_matching_mirror_agrees_with_the_library(probe):
    reported = native.facts(probe(VERSION=3), "probe_facts")
    assert reported["VERSION"] == 3
    assert native.compare_facts(reported, {"VERSION": 3, **native.layout({"Pair": Pair})}) == []


def test_a_mirror_that_differs_is_named_field_by_field(probe):
    reported = native.facts(probe(VERSION=3), "probe_facts")
    wrong = native.compare_facts(reported, {"VERSION": 3,
                                            **native.layout({"Pair": PairWithAFloat})})
    assert "Pair.b: the library has 8, Python 4" in wrong
    assert "Pair.c: the library has 16, Python 8" in wrong
    assert "sizeof Pair: the library has 24, Python 12" in wrong
    assert not [w for w in wrong if w.startswith(("Pair.in", "VERSION"))]


def test_a_constant_built_differently_is_named(probe):
    reported = native.facts(probe(VERSION=4), "probe_facts")
    expected = {"VERSION": 3, **native.layout({"Pair": Pair})}
    assert native.compare_facts(reported, expected) == ["VERSION: the library has 4, Python 3"]


def test_a_fact_only_one_side_knows_is_named():
    assert native.compare_facts({"A": 1, "C": 3}, {"B": 2, "C": 3}) == [
        "A: the library has 1, Python does not know it",
        "B: Python expects 2, the library does not say"]


def test_defines_reach_the_compiler_and_the_cache_key(probe, tmp_path):
    three, four = probe(VERSION=3), probe(VERSION=4)
    assert native.facts(three, "probe_facts")["VERSION"] == 3
    assert native.facts(four, "probe_facts")["VERSION"] == 4
    assert len(list((tmp_path / "cache" / "native").glob("probe-*.so"))) == 2
    assert native.define_flags({"B": 2, "A": 1}) == ("-DA=1", "-DB=2")


def test_a_library_without_the_table_is_native_unavailable(probe):
    with pytest.raises(native.NativeUnavailable, match="exports no facts table no_such_table"):
        native.facts(probe(VERSION=3), "no_such_table")
