"""gpucnn/cpu/native.py: building a C++ source for this machine, the cache and its errors."""
import pytest

from gpucnn.cpu import native

SRC = 'extern "C" int answer(void) { return 42; }\n'


def _source(tmp_path, text=SRC, name="probe.cpp"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_builds_once_and_reuses_the_cached_library(tmp_path, monkeypatch, native_compiler):
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(tmp_path / "cache"))
    lib = native.load(_source(tmp_path))
    assert lib.answer() == 42
    built = list((tmp_path / "cache" / "native").glob("probe-*.so"))
    assert len(built) == 1 and built[0].with_name(built[0].name + ".sum").exists()
    stamp = built[0].stat().st_mtime_ns
    assert native.load(_source(tmp_path)).answer() == 42
    assert built[0].stat().st_mtime_ns == stamp  # not rebuilt


def test_a_compile_error_names_the_source(tmp_path, monkeypatch, native_compiler):
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(native.NativeUnavailable, match=r"bad\.cpp"):
        native.load(_source(tmp_path, "this is not C++\n", "bad.cpp"))
    assert not [p for p in (tmp_path / "cache" / "native").glob("*") if p.suffix == ".tmp"]


def test_a_missing_compiler_says_how_to_choose_one(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPUCNN_CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(native.NativeUnavailable, match="no C.. compiler.*GPUCNN_CXX"):
        native.load(_source(tmp_path))


def test_a_cache_path_under_a_file_builds_in_a_temporary_directory(tmp_path, monkeypatch,
                                                                    native_compiler):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(blocker))
    with pytest.warns(RuntimeWarning, match="not writable"):
        lib = native.load(_source(tmp_path, SRC.replace("42", "43"), "probe2.cpp"))
    assert lib.answer() == 43


def test_an_unreadable_source_is_a_native_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(native.NativeUnavailable, match=r"missing\.cpp"):
        native.load(tmp_path / "missing.cpp")
