"""Tests for gpucnn.checkpoint: .npz + JSON metadata, atomic writes, refusal of pickles."""

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gpucnn import checkpoint as ckpt
from gpucnn.checkpoint import (CheckpointError, check_compatible, load_checkpoint,
                               save_checkpoint)

def _side_effect(path):
    # Would run if the pickled object below were ever unpickled.
    Path(path).write_text("unpickled!")
    return "executed"


class Booby:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_side_effect, (self.marker,))


def sample_arrays(rng):
    return {
        "conv1/w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "conv1/b": np.array([np.nan, np.inf, -0.0, 1e-38], np.float32),
        "fc/w64": rng.standard_normal((5, 7)),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32)),
        "strided": rng.standard_normal((6, 6)).astype(np.float32)[::2, 1::2],
        "step": np.array(1234, np.int64),
        "mask": rng.random(9) < 0.5,
        "bytes": rng.integers(0, 256, 17, dtype=np.uint8),
        "empty": np.zeros((0, 3), np.float32),
        "file": np.arange(3, dtype=np.int32),           # names np.savez would choke on
        "allow_pickle": np.arange(2, dtype=np.int16),
    }


def envelope(metadata=None, fmt="gpucnn-checkpoint", version=1):
    text = json.dumps({"format": fmt, "version": version, "metadata": metadata or {}})
    return np.frombuffer(text.encode(), np.uint8)


def test_round_trip(tmp_path, rng):
    arrays = sample_arrays(rng)
    gen = np.random.default_rng(2024)
    gen.standard_normal(11)
    metadata = {"epoch": 3, "lr": 0.01, "model_config": {"layers": [8, 16], "name": "lenet"},
                "rng": gen.bit_generator.state, "history": [0.5, 0.25], "note": "ünïcode"}
    path = tmp_path / "sub" / "model.ckpt"
    assert save_checkpoint(path, arrays, metadata) == path
    assert sorted(os.listdir(path.parent)) == ["model.ckpt"]  # exact name, no temp left
    got, meta = load_checkpoint(path)
    assert set(got) == set(arrays)
    for k, a in arrays.items():
        assert got[k].dtype == a.dtype and got[k].shape == a.shape, k
        assert got[k].tobytes() == np.ascontiguousarray(a).tobytes(), k  # bit-identical
    assert meta == json.loads(json.dumps(metadata))
    assert meta["rng"] == gen.bit_generator.state
    # The restored RNG continues exactly where the saved one was.
    restored = np.random.default_rng()
    restored.bit_generator.state = meta["rng"]
    np.testing.assert_array_equal(restored.random(5), gen.random(5))
    # It is a plain .npz that NumPy reads without pickle.
    with np.load(path, allow_pickle=False) as npz:
        assert "__metadata__" in npz.files and npz["__metadata__"].dtype == np.uint8


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.npz")


def test_truncated_file(tmp_path, rng):
    path = tmp_path / "c.npz"
    save_checkpoint(path, sample_arrays(rng), {"a": 1})
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 100):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="c.npz"):
            load_checkpoint(path)


def test_damaged_member(tmp_path, rng):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"w": np.zeros(1000, np.float32)}, {})
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF  # inside w's data: the zip CRC catches it
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="c.npz"):
        load_checkpoint(path)


def test_random_bytes(tmp_path, rng):
    path = tmp_path / "noise.npz"
    path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="noise.npz.*not a valid zip"):
        load_checkpoint(path)
    npy = tmp_path / "plain.npy"
    np.save(npy, np.arange(4))
    with pytest.raises(CheckpointError, match="not a valid zip"):
        load_checkpoint(npy)


def test_foreign_npz_without_metadata(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, w=np.ones(3))
    with pytest.raises(CheckpointError, match="no __metadata__"):
        load_checkpoint(path)


def test_pickled_object_array_refused_without_executing(tmp_path):
    marker = tmp_path / "marker.txt"
    evil = np.empty(1, dtype=object)
    evil[0] = Booby(str(marker))
    path = tmp_path / "evil.npz"
    np.savez(path, w=evil, __metadata__=envelope())  # numpy pickles the object array
    assert not marker.exists()
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "object dtype" in str(e.value) and "'w'" in str(e.value)
    assert not marker.exists()


def test_extra_non_npy_member_refused(tmp_path):
    path = tmp_path / "x.npz"
    save_checkpoint(path, {"w": np.ones(2)}, {})
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("payload.pkl", b"\x80\x04N.")
    with pytest.raises(CheckpointError, match="unexpected member 'payload.pkl'"):
        load_checkpoint(path)


@pytest.mark.parametrize("meta, pattern", [
    (np.frombuffer(b"{not json", np.uint8), "not valid JSON"),
    (np.frombuffer(b"\xff\xfe", np.uint8), "not valid JSON"),
    (envelope(fmt="other-tool"), "format is 'other-tool'"),
    (envelope(version=2), "version 2.*newer"),
    (np.frombuffer(b'{"format": "gpucnn-checkpoint", "version": 1}', np.uint8), "no 'metadata'"),
    (np.frombuffer(b"[1, 2]", np.uint8), "format"),
    (np.zeros(3, np.float32), "uint8"),
])
def test_bad_metadata(tmp_path, meta, pattern):
    path = tmp_path / "m.npz"
    np.savez(path, w=np.ones(2), __metadata__=meta)
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path)


def test_save_refuses_bad_input(tmp_path):
    obj = np.array([{"a": 1}], dtype=object)
    with pytest.raises(CheckpointError, match="object dtype"):
        save_checkpoint(tmp_path / "a.npz", {"w": obj}, {})
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "a.npz", {}, {"f": object()})
    with pytest.raises(CheckpointError, match="invalid array name"):
        save_checkpoint(tmp_path / "a.npz", {"__metadata__": np.ones(1)}, {})
    assert os.listdir(tmp_path) == []
    # NumPy scalars in metadata are converted.
    save_checkpoint(tmp_path / "b.npz", {}, {"loss": np.float32(0.5), "step": np.int64(3)})
    assert load_checkpoint(tmp_path / "b.npz")[1] == {"loss": 0.5, "step": 3}


def test_check_compatible():
    meta = {"model_config": {"arch": "lenet", "channels": [6, 16], "classes": 10}}
    check_compatible(meta, {"arch": "lenet", "channels": (6, 16), "classes": 10})
    with pytest.raises(CheckpointError) as e:
        check_compatible(meta, {"arch": "lenet", "channels": [6, 32], "dropout": 0.5})
    msg = str(e.value)
    assert "channels" in msg and "[6, 16]" in msg and "[6, 32]" in msg
    assert "classes" in msg and "dropout" in msg and "arch" not in msg
    with pytest.raises(CheckpointError, match="no 'model_config'"):
        check_compatible({}, {"arch": "x"})


def test_atomic_replace_failure_keeps_old(tmp_path, rng, monkeypatch):
    path = tmp_path / "ckpt.npz"
    old = {"w": rng.standard_normal(50).astype(np.float32)}
    save_checkpoint(path, old, {"epoch": 1})
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, {"w": np.zeros(50, np.float32)}, {"epoch": 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temp file left behind
    assert path.read_bytes() == before
    arrays, meta = load_checkpoint(path)
    assert meta == {"epoch": 1} and np.array_equal(arrays["w"], old["w"])


def test_atomic_crash_mid_write_keeps_old(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.ones(4)}, {"epoch": 1})
    real_write = np.lib.format.write_array
    calls = []

    def flaky(fp, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed while writing the second array
        return real_write(fp, array, *args, **kwargs)

    monkeypatch.setattr(ckpt.np.lib.format, "write_array", flaky)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"a": np.zeros(4), "b": np.zeros(4)}, {"epoch": 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    assert load_checkpoint(path)[1] == {"epoch": 1}


def test_member_whose_header_overstates_its_data_is_refused(tmp_path):
    """The declared shape must account exactly for the member's bytes, checked before any
    array is allocated; a deflated member may not claim more than deflate can hold."""
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"w": np.zeros(10, np.float32)}, {})
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (11,)})
    members["w.npy"] = header.getvalue() + b"\0" * 40  # 11 floats declared, 10 present
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.raises(CheckpointError, match=r"member 'w.npy': header declares shape \(11,\) "
                                              r"float32 = 44 bytes, but the member holds 40"):
        load_checkpoint(path)
    members["w.npy"] = header.getvalue() + b"\0" * 44
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    assert load_checkpoint(path)[0]["w"].shape == (11,)  # deflated and honest: fine


def test_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        save_checkpoint(tmp_path / "a.npz", {"w": np.ones(2)}, {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.npz").stat().st_mode & 0o777 == 0o664  # not mkstemp's 0600


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    path = tmp_path / "ck.npz"
    path.write_bytes(b"the checkpoint")
    dead = tmp_path / f".ck.npz.{2 ** 22 + 7}.x1y2.tmp"   # pid above pid_max: not running
    old_style = tmp_path / ".ck.npz.k3j4h5g6.tmp"          # no pid: written before pids
    live = tmp_path / f".ck.npz.{os.getpid()}.q9w8.tmp"   # this process: a live writer
    other = tmp_path / f".other.npz.{2 ** 22 + 7}.x.tmp"   # another checkpoint's
    for p in (dead, old_style, live, other):
        p.write_bytes(b"partial")
    removed = ckpt.remove_stale_temp_files(path)
    assert sorted(removed) == sorted([dead, old_style])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ck.npz", live.name, other.name])
    assert ckpt.process_alive(os.getpid()) and not ckpt.process_alive(2 ** 22 + 7)
