"""Checkpoints: named float/int arrays plus JSON metadata in one .npz file. Never pickle.

File layout: a standard NumPy .npz archive (a zip of .npy members, readable with
np.load(path, allow_pickle=False)) holding
  <name>.npy         one per array (any non-object dtype), and
  __metadata__.npy   uint8 array: UTF-8 JSON text
                     {"format": "gpucnn-checkpoint", "version": 1, "metadata": {...}}

The archive is written with zipfile + np.lib.format.write_array(allow_pickle=False) (the
same members np.savez writes, without np.savez's reserved keyword names such as "file"),
to a temporary file in the target's directory, flushed and fsync'ed, then moved over the
target with os.replace and the directory fsync'ed: a crash at any point leaves either the
old checkpoint or the new one, never a mix.

Loading checks the zip (CRCs included), refuses any member that is not a .npy or whose
header declares an object dtype (which would need unpickling) *before* reading data, and
validates the metadata envelope. Every problem is a CheckpointError naming the file.

Random state needs no generator snapshot: gpucnn derives every random draw from counters
(shuffle order from (seed, epoch), augmentation from (seed, epoch, batch), dropout masks from
(seed, call count)), and those counters are part of the metadata the trainer saves.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "gpucnn-checkpoint"
VERSION = 1
METADATA_KEY = "__metadata__"


class CheckpointError(ValueError):
    """A checkpoint cannot be written, read, or does not fit the model."""


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                    metadata: dict[str, Any]) -> Path:
    """Write `arrays` and JSON `metadata` to `path` (exactly that name) atomically."""
    path = Path(path)
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: metadata must be a dict, got {type(metadata).__name__}")
    try:
        text = json.dumps({"format": FORMAT, "version": VERSION, "metadata": metadata},
                          default=_json_default, allow_nan=True, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: metadata is not JSON-serialisable: {e}") from None
    prepared = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key or key == METADATA_KEY or "\x00" in key:
            raise CheckpointError(f"{path}: invalid array name {key!r}")
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise CheckpointError(f"{path}: array {key!r} has an object dtype; only plain "
                                  f"numeric arrays can be saved (no pickle)")
        prepared[key] = arr
    prepared[METADATA_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for key, arr in prepared.items():
                    with zf.open(key + ".npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    return path


def _read_member_dtype(zf: zipfile.ZipFile, member: str, path: Path) -> np.dtype:
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise CheckpointError(f"{path}: member {member!r}: unsupported .npy version "
                                  f"{version}")
    return dtype


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, metadata) from a checkpoint written by save_checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()  # reads every member and checks its CRC
            if bad is not None:
                raise CheckpointError(f"{path}: damaged: CRC mismatch in member {bad!r}")
            names = zf.namelist()
            for member in names:
                if not member.endswith(".npy"):
                    raise CheckpointError(f"{path}: unexpected member {member!r} (a "
                                          f"checkpoint holds only .npy arrays)")
                dtype = _read_member_dtype(zf, member, path)
                if dtype.hasobject:
                    raise CheckpointError(f"{path}: array {member[:-4]!r} has an object "
                                          f"dtype (pickled Python objects); refused")
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as e:
        raise CheckpointError(f"{path}: not a checkpoint: not a valid zip/.npz archive "
                              f"(truncated or damaged?): {e}") from None
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint: {type(e).__name__}: {e}") from None
    if METADATA_KEY + ".npy" not in names:
        raise CheckpointError(f"{path}: not a gpucnn checkpoint: no {METADATA_KEY} entry "
                              f"(a foreign .npz?)")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                arrays[key] = npz[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise CheckpointError(f"{path}: damaged checkpoint: {type(e).__name__}: {e}") from None
    raw = arrays.pop(METADATA_KEY)
    metadata = _decode_metadata(raw, path)
    return arrays, metadata


def _decode_metadata(raw: np.ndarray, path: Path) -> dict[str, Any]:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path}: {METADATA_KEY} must be a 1-D uint8 array of JSON "
                              f"text, got dtype {raw.dtype} shape {raw.shape}")
    try:
        envelope = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: {METADATA_KEY} is not valid JSON text: {e}") from None
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        found = envelope.get("format") if isinstance(envelope, dict) else type(envelope).__name__
        raise CheckpointError(f"{path}: metadata format is {found!r}, expected {FORMAT!r}")
    version = envelope.get("version")
    if version != VERSION:
        newer = isinstance(version, int) and version > VERSION
        raise CheckpointError(f"{path}: checkpoint format version {version!r}; this gpucnn "
                              f"reads version {VERSION}"
                              + (" (written by a newer gpucnn)" if newer else ""))
    metadata = envelope.get("metadata")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: metadata envelope has no 'metadata' object")
    return metadata


def _jsonable(value):
    return json.loads(json.dumps(value, default=_json_default))


def check_compatible(metadata: dict[str, Any], model_config: dict[str, Any],
                     key: str = "model_config") -> None:
    """Raise CheckpointError unless metadata[key] equals `model_config` (compared as
    JSON, so tuples equal lists). The message names every differing key with both values.
    Convention: save the model's config under metadata["model_config"]."""
    if key not in metadata:
        raise CheckpointError(f"checkpoint metadata has no {key!r} to check the model against")
    saved = metadata[key]
    current = _jsonable(model_config)
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint metadata {key!r} is not an object")
    problems = []
    for k in sorted(set(saved) | set(current)):
        if k not in current:
            problems.append(f"{k}: checkpoint has {saved[k]!r}, model has no such key")
        elif k not in saved:
            problems.append(f"{k}: model has {current[k]!r}, checkpoint has no such key")
        elif saved[k] != current[k]:
            problems.append(f"{k}: checkpoint {saved[k]!r} != model {current[k]!r}")
    if problems:
        raise CheckpointError("checkpoint does not fit the model: differing "
                              f"{'key' if len(problems) == 1 else 'keys'}: "
                              + "; ".join(problems))
