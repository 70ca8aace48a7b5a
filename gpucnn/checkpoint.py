"""Checkpoints: named float/int arrays plus JSON metadata in one .npz file. Never pickle.

File layout: a standard NumPy .npz archive (a zip of .npy members, readable with
np.load(path, allow_pickle=False)) holding
  <name>.npy         one per array (any non-object dtype), and
  __metadata__.npy   uint8 array: UTF-8 JSON text
                     {"format": "gpucnn-checkpoint", "version": 1, "metadata": {...}}

The archive is written with zipfile + np.lib.format.write_array(allow_pickle=False) (the
same members np.savez writes, without np.savez's reserved keyword names such as "file"),
to a temporary file ``.<name>.<pid>.<random>.tmp`` in the target's directory, flushed and
fsync'ed, then moved over the target with os.replace and the directory fsync'ed: a crash at
any point leaves either the old checkpoint or the new one, never a mix. A process killed
mid-write leaves its temporary file behind; remove_stale_temp_files deletes those whose
writer is no longer running. The file gets the mode a plain open() would give it (0666 less
the umask), not mkstemp's 0600.

Loading checks, *before* reading any data: that every member is a .npy (no pickle, no other
file), that no header declares an object dtype (which would need unpickling), and that each
header's shape and dtype account exactly for the bytes the member holds, which the archive's
real size bounds (so a crafted header declaring 4 TiB is refused, never allocated). Then the
zip CRCs and the metadata envelope. Every problem is a CheckpointError naming the file and
the member.

Random state needs no generator snapshot: gpucnn derives every random draw from counters
(shuffle order from (seed, epoch), augmentation from (seed, epoch, batch), dropout masks from
(seed, call count)), and those counters are part of the metadata the trainer saves.
"""

from __future__ import annotations

import json
import math
import os
import re
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


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every
    thread) where /proc tells it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_prefix(path: Path) -> str:
    """The name prefix of this process's temporary files for checkpoint `path`."""
    return f".{path.name}.{os.getpid()}."


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files interrupted writes of checkpoint `path` left beside it
    (``.<name>.<pid>.*.tmp`` whose pid no longer runs, and the pid-less names earlier
    versions wrote). Call it holding the checkpoint's lock (gpucnn.runsafety): no other
    trainer then writes this checkpoint. Returns the paths removed."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(r"\." + re.escape(path.name) + r"\.(?:(\d+)\.)?[^/]*\.tmp\Z")
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or not entry.is_file(follow_symlinks=False):
            continue
        if m.group(1) is not None and process_alive(int(m.group(1))):
            continue  # a live writer's
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except FileNotFoundError:
            pass
    return removed


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
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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


# Deflate cannot shrink data by more than about 1032:1, so a member's stated uncompressed size
# beyond that ratio of its compressed bytes is a lie.
_DEFLATE_MAX_RATIO = 1032
_SIZE_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def _size(n: int) -> str:
    i = min(int(math.log(max(n, 1), 1024)), len(_SIZE_UNITS) - 1)
    return f"{n} bytes" if i == 0 else f"{n / 1024 ** i:.1f} {_SIZE_UNITS[i]}"


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path,
                  archive_size: int) -> np.dtype:
    """The dtype of .npy member `info`, after checking that its header's shape and dtype
    account exactly for the bytes it holds and that those fit in the archive."""
    name = info.filename
    where = f"{path}: member {name!r}"
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size:
            raise CheckpointError(f"{where}: stored member claims {info.file_size} bytes but "
                                  f"occupies {info.compress_size}")
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        if info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 1024:
            raise CheckpointError(f"{where}: claims {_size(info.file_size)} from "
                                  f"{_size(info.compress_size)} of compressed data, more "
                                  f"than deflate can hold (a crafted or damaged archive)")
    else:
        raise CheckpointError(f"{where}: unsupported zip compression {info.compress_type} "
                              f"(checkpoints are stored or deflated)")
    if info.compress_size > archive_size:
        raise CheckpointError(f"{where}: claims {_size(info.compress_size)} in an archive of "
                              f"{_size(archive_size)} (truncated or crafted)")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise CheckpointError(f"{where}: unsupported .npy version {version}")
        header = f.tell()
    if dtype.hasobject:
        return dtype  # refused by the caller, with the pickle explanation
    declared = math.prod(shape) * dtype.itemsize
    if declared != info.file_size - header:
        raise CheckpointError(f"{where}: header declares shape {tuple(shape)} {dtype} = "
                              f"{_size(declared)}, but the member holds "
                              f"{_size(max(info.file_size - header, 0))} of data "
                              f"(crafted or damaged); nothing was allocated")
    return dtype


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, metadata) from a checkpoint written by save_checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    try:
        archive_size = path.stat().st_size
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            for info in zf.infolist():
                member = info.filename
                if not member.endswith(".npy"):
                    raise CheckpointError(f"{path}: unexpected member {member!r} (a "
                                          f"checkpoint holds only .npy arrays)")
                if _check_member(zf, info, path, archive_size).hasobject:
                    raise CheckpointError(f"{path}: array {member[:-4]!r} has an object "
                                          f"dtype (pickled Python objects); refused")
            bad = zf.testzip()  # reads every member and checks its CRC
            if bad is not None:
                raise CheckpointError(f"{path}: damaged: CRC mismatch in member {bad!r}")
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
