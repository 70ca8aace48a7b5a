"""Tests for gpucnn.checkpoint: .npz + JSON metadata, atomic writes, refusal of pickles."""

import io
import json
import os
import re
import struct
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gpucnn import checkpoint as ckpt
from gpucnn.checkpoint import (CheckpointError, check_compatible, load_checkpoint,
                               open_checkpoint, save_checkpoint)

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
        "conv1/b": np.array([3e38, -0.0, 1e-38, 1e-45], np.float32),
        "fc/w64": rng.standard_normal((5, 7)),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32)),
        "strided": rng.standard_normal((6, 6)).astype(np.float32)[::2, 1::2],
        "big_endian": rng.standard_normal(4).astype(">f8"),  # saved little-endian
        "step": np.array(1234, np.int64),
        "empty": np.zeros((0, 3), np.float32),
        "file": np.arange(3, dtype=np.int32),           # names np.savez would choke on
        "allow_pickle": np.arange(2, dtype=np.int64),
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
        assert got[k].dtype == a.dtype.newbyteorder("<") and got[k].shape == a.shape, k
        assert got[k].flags.c_contiguous, k
        np.testing.assert_array_equal(got[k], a, strict=False)
        assert got[k].tobytes() == np.ascontiguousarray(a, got[k].dtype).tobytes(), k
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
    assert "object dtype" in str(e.value) and "'w.npy'" in str(e.value)
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
    # only what the reader accepts is written: no other dtype, no NaN in the metadata
    for odd in (np.ones(2, bool), np.ones(2, np.uint8), np.ones(2, np.complex64),
                np.ones(2, np.float16), np.zeros(2, "datetime64[s]")):
        with pytest.raises(CheckpointError, match=re.escape(f"'w' has dtype {odd.dtype}")):
            save_checkpoint(tmp_path / "a.npz", {"w": odd}, {})
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "a.npz", {}, {"loss": float("nan")})
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


# ---- hostile archives (issue 22): each refused with the file, the member and the rule --------
OLD = Path(__file__).parent / "data" / "checkpoint_0.1.0_lenet5.npz"


def npy_bytes(array):
    f = io.BytesIO()
    np.lib.format.write_array(f, array, allow_pickle=False)
    return f.getvalue()


def write_members(path, members, compression=zipfile.ZIP_STORED):
    """An archive of raw (name, bytes) members, as a crafted file holds them (no
    save_checkpoint check; zipfile warns of a duplicate name and writes it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w", compression) as zf:
            for name, data in members:
                zf.writestr(name, data)
    return path


def crafted(path, **arrays):
    """A checkpoint of ``arrays`` (any dtype, written raw) with valid metadata."""
    return write_members(path, [(k + ".npy", npy_bytes(v)) for k, v in arrays.items()]
                         + [("__metadata__.npy", npy_bytes(envelope({"a": 1})))])


def patch_directory(path, name, offset, fmt, value):
    """Set a field of ``name``'s central-directory entry (zipfile reads flags and sizes
    from there)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while data[at + 46:at + 46 + len(name)] != name.encode():
        at = data.find(b"PK\x01\x02", at + 4)
    struct.pack_into(fmt, data, at + offset, value)
    path.write_bytes(bytes(data))


def refused(path, *parts, **kw):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, **kw)
    msg = str(e.value)
    assert str(path) in msg and all(p in msg for p in parts), msg
    return msg


def test_encrypted_duplicate_and_unsupported_members_are_refused(tmp_path):
    enc = crafted(tmp_path / "enc.npz", w=np.ones(3, np.float32))
    patch_directory(enc, "w.npy", 8, "<H", 0x1)
    refused(enc, "member 'w.npy': encrypted (zip flag bit 0)")
    dup = write_members(tmp_path / "dup.npz", [("w.npy", npy_bytes(np.zeros(2))),
                                               ("w.npy", npy_bytes(np.ones(2))),
                                               ("__metadata__.npy", npy_bytes(envelope()))])
    refused(dup, "member 'w.npy' appears twice")
    bz = write_members(tmp_path / "bz.npz", [("w.npy", npy_bytes(np.ones(2)))],
                       zipfile.ZIP_BZIP2)
    refused(bz, "member 'w.npy': unsupported zip compression 12")
    many = write_members(tmp_path / "many.npz", [(f"{i}.npy", b"") for i in range(4097)])
    refused(many, "lists 4097 members")


def test_a_member_flagged_strongly_encrypted_is_refused_unread(tmp_path):
    # Found by tests/test_fuzz.py: bit 6 alone passed the directory check and zipfile refuses
    # it only when the member is read, so `gpucnn verify` (which leaves the optimizer state
    # unread) accepted a checkpoint whose optimizer member said it was encrypted.
    enc = crafted(tmp_path / "enc.npz", w=np.ones(3, np.float32), v=np.ones(3, np.float32))
    patch_directory(enc, "v.npy", 8, "<H", 0x40)
    with pytest.raises(CheckpointError, match=r"member 'v.npy': encrypted \(zip flag bit 6\)"):
        open_checkpoint(enc)  # the directory alone: no array is read yet


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, "datetime64[s]", np.float16,
                                   ">f4", np.uint8, [("a", "<f4")]])
def test_arrays_of_dtypes_gpucnn_never_writes_are_refused(tmp_path, dtype):
    path = crafted(tmp_path / "c.npz", w=np.zeros(3, dtype))
    refused(path, "member 'w.npy'", "refused")


def test_a_damaged_npy_header_is_caught_by_the_crc_before_it_is_parsed(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"w": np.zeros(4, np.float32)}, {})
    data = bytearray(path.read_bytes())
    at = data.find(b"'descr': '<f4'")
    data[at + 10] = ord("(")  # a header NumPy's parser would tokenize and choke on
    path.write_bytes(bytes(data))
    refused(path, "member 'w.npy': damaged", "CRC")


def test_values_are_checked_after_conversion(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"w": np.array([1.0, 1e39])}, {})
    assert load_checkpoint(path)[0]["w"][1] == 1e39  # finite where it is float64
    refused(path, "array 'w' holds NaN or inf (as float32)", dtype=np.float32)
    save_checkpoint(path, {"w": np.array([1.0, np.nan], np.float32)}, {})
    refused(path, "array 'w' holds NaN or inf")
    save_checkpoint(path, {"w": np.arange(3, dtype=np.int32)}, {})
    refused(path, "member 'w.npy': dtype '<i4' refused (allowed here: <f4, <f8", dtype=np.float32)


BOMB = 64 << 20  # bytes of zeros: 64 KiB deflated


def deflate_bomb(path, name, header, size=BOMB, metadata=True):
    """A deflated member of ``header`` + ``size`` zero bytes, streamed (the test's own memory
    stays small), and valid metadata."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as f:
            f.write(header)
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
        if metadata:
            zf.writestr("__metadata__.npy", npy_bytes(envelope({"a": 1})))
    return path


def peak_memory(fn):
    """(the exception ``fn`` raised, the peak of the memory traced while it ran)."""
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as e:
            fn()
        return str(e.value), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_deflate_bomb_costs_bounded_memory(tmp_path):
    header = npy_bytes(np.zeros(BOMB // 4, np.float32))[:128]
    path = deflate_bomb(tmp_path / "bomb.npz", "w.npy", header)
    assert path.stat().st_size < BOMB // 256
    msg, peak = peak_memory(lambda: load_checkpoint(path))
    assert "member 'w.npy': 64.0 MiB, more than the 16.3 MiB allowed for it" in msg
    assert peak < 4 << 20, peak
    # where the model says what to expect, that is the bound
    def expected():
        with open_checkpoint(path) as ck:
            ck.arrays({"w": (10,)}, dtype=np.float32)
    msg, peak = peak_memory(expected)
    assert "member 'w.npy': 64.0 MiB, more than the 4.1 KiB allowed for it" in msg
    assert peak < 4 << 20, peak
    # a directory understating the size: never more than it says is inflated
    patch_directory(path, "w.npy", 24, "<I", 4096)
    msg, peak = peak_memory(lambda: load_checkpoint(path))
    assert "member 'w.npy': damaged" in msg and peak < 4 << 20, peak


def test_a_deflate_bomb_in_the_metadata_is_refused_unread(tmp_path):
    path = deflate_bomb(tmp_path / "bomb.npz", "__metadata__.npy",
                        npy_bytes(np.zeros(BOMB, np.uint8))[:128], metadata=False)
    msg, peak = peak_memory(lambda: load_checkpoint(path))
    assert "member '__metadata__.npy': 64.0 MiB, more than the 16.0 MiB allowed" in msg
    assert peak < 4 << 20, peak


@pytest.mark.parametrize("text, rule", [
    (b'{"format": "gpucnn-checkpoint", "version": 1, "metadata": ' + b"[" * 5000
     + b"]" * 5000 + b"}", "JSON nested 5001 levels deep"),
    (b'{"format": "gpucnn-checkpoint", "version": 1, "metadata": {"n": ' + b"7" * 5000
     + b"}}", "a number of 5000 characters"),
    (b'{"format": "gpucnn-checkpoint", "version": 1, "metadata": {"lr": NaN}}', "NaN"),
    (b'{"format": "gpucnn-checkpoint", "version": 1, "version": 1, "metadata": {}}',
     "the key 'version' twice"),
])
def test_hostile_metadata_json_is_refused(tmp_path, text, rule):
    path = write_members(tmp_path / "m.npz", [("__metadata__.npy",
                                               npy_bytes(np.frombuffer(text, np.uint8)))])
    refused(path, "__metadata__", rule)


# ---- the loaders that use the arrays: verify and --resume ------------------------------------
def rewrite(path, meta_changes=None, **arrays):
    """The 0.1.0 LeNet-5 checkpoint with its metadata and arrays changed, written raw."""
    got, meta = load_checkpoint(OLD)
    got.update(arrays)
    meta.update(meta_changes or {})
    members = [(k + ".npy", npy_bytes(v)) for k, v in got.items()]
    text = json.dumps({"format": "gpucnn-checkpoint", "version": 1, "metadata": meta})
    members.append(("__metadata__.npy", npy_bytes(np.frombuffer(text.encode(), np.uint8))))
    return write_members(path, members)


def restore(path):
    """--resume's restore of ``path`` into the run the 0.1.0 checkpoint was written by."""
    from gpucnn.backends import get_backend
    from gpucnn.models import build_model
    from gpucnn.optim import SGD
    from gpucnn.train import TrainConfig
    from gpucnn.train_checkpoint import RunCheckpoint
    B = get_backend("numpy")
    cfg = TrainConfig(model="lenet5", dataset="fashion-mnist", epochs=1, batch_size=64,
                      lr=0.05, momentum=0.9, limit=256, backend="numpy", progress=False)
    model = build_model("lenet5", backend=B)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, backend=B)
    return RunCheckpoint(cfg, model, opt, B).restore(path, 256)


def _model(**kwargs):
    return {"model": {"name": "lenet5", "kwargs": kwargs, "input_shape": [1, 28, 28]}}


def test_verify_refuses_a_model_it_cannot_build_before_allocating(tmp_path):
    from gpucnn.verify.source import load_model_source
    path = rewrite(tmp_path / "c.npz", _model(num_classes=10 ** 9))
    msg, peak = peak_memory(lambda: load_model_source(path))
    assert "'model.kwargs.num_classes' is 1000000000: it must be an int in [1, 100000]" in msg
    assert peak < 8 << 20, peak  # the model would be 336 GB
    rewrite(path, _model(num_classes=7))  # buildable, but not what the arrays hold
    msg, peak = peak_memory(lambda: load_model_source(path))
    assert ("does not fit its model lenet5: array 'model/11.weight' has shape (10, 84), "
            "expected (7, 84)") in msg
    assert load_model_source(rewrite(path)).params["11.weight"].dtype == np.float32


@pytest.mark.parametrize("weight, rule", [
    (np.full((6, 1, 5, 5), 1e39), "array 'model/0.weight' holds NaN or inf (as float32)"),
    (np.zeros((6, 1, 5, 5), np.complex64), "dtype '<c8' refused"),
    (np.zeros((6, 1, 5, 5), bool), "dtype '|b1' refused"),
    (np.zeros((6, 1, 5, 5), np.int32), "dtype '<i4' refused"),
    (np.zeros((6, 1, 3, 3), np.float32), "array 'model/0.weight' has shape (6, 1, 3, 3)"),
])
def test_verify_and_resume_refuse_weights_they_cannot_use(tmp_path, weight, rule):
    from gpucnn.verify.source import load_model_source
    path = rewrite(tmp_path / "c.npz", **{"model/0.weight": weight})
    for load in (load_model_source, restore):
        with pytest.raises(CheckpointError) as e:
            load(path)
        assert str(path) in str(e.value) and rule in str(e.value)


def test_resume_refuses_a_missing_optimizer_state_and_a_preset_that_cannot_run(tmp_path,
                                                                               monkeypatch):
    monkeypatch.delenv("GPUCNN_CONV_ALGO", raising=False)
    assert restore(OLD)[0].epoch == 1  # 0.1.0 (schema 1) still resumes
    path = tmp_path / "c.npz"
    got, meta = load_checkpoint(OLD)
    del got["optim/velocity.9"]
    save_checkpoint(path, got, meta)
    with pytest.raises(CheckpointError, match=r"does not fit this run's model and optimizer: "
                                              r"arrays missing \['optim/velocity.9'\]"):
        restore(path)
    conv1 = "forward N64 C1 28x28 F6 k5x5 s1x1 p2,2,2,2 d1x1 g1"
    for chosen, rule in (({conv1: "winograd_f4"}, f"conv_algos: 'winograd_f4' cannot run the "
                                                  f"layer '{conv1}': it needs stride 1"),
                         ({"forward N64 C1": "wide"}, "is not a layer-shape key"),
                         ({conv1: "cudnn"}, "not a cpu convolution algorithm")):
        rewrite(path, {"schema_version": 3, "written_by": "gpucnn 0.2.0", "config_changes": [],
                       "conv_algos": {"setting": "auto", "kind": "cpu", "chosen": chosen}})
        with pytest.raises(CheckpointError) as e:
            restore(path)
        assert str(e.value).startswith(f"{path}: ") and rule in str(e.value)
