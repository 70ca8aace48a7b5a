"""Checkpoints: named float/int arrays plus JSON metadata in one .npz file. Never pickle.

File layout: a standard NumPy .npz archive (a zip of .npy members, readable with
np.load(path, allow_pickle=False)) holding
  <name>.npy         one per array (little-endian float32, float64, int32 or int64, C order),
  __metadata__.npy   uint8 array: UTF-8 JSON text
                     {"format": "gpucnn-checkpoint", "version": 1, "metadata": {...}}

The archive is written with zipfile + np.lib.format.write_array(allow_pickle=False) (the
same members np.savez writes, without np.savez's reserved keyword names such as "file"),
through gpucnn.outputs.write_atomic (every output's writer): to a temporary file
``.<name>.<pid>.<random>.tmp`` in the target's directory, flushed and
fsync'ed, then moved over the target with os.replace and the directory fsync'ed: a crash at
any point leaves either the old checkpoint or the new one, never a mix. A process killed
mid-write leaves its temporary file behind; remove_stale_temp_files deletes those whose
writer is no longer running. The file gets the mode a plain open() would give it (0666 less
the umask), not mkstemp's 0600.

Reading (:class:`CheckpointReader`) applies the rules of :mod:`gpucnn.filerules`, never
NumPy's loader: the zip directory first (member count, unique .npy names, no encryption,
stored or deflated, sizes deflate and the file can account for), then each member read whole
within a bound (its expected size where the caller knows the model, else the archive's
budget), its CRC checked, and only then its .npy header parsed by our strict parser and its
values checked. The metadata is read first, so a caller validates it and derives the arrays
it expects before any array is read. Every problem is a CheckpointError naming the file, the
member or field, and the rule.

Random state needs no generator snapshot: gpucnn derives every random draw from counters
(shuffle order from (seed, epoch), augmentation from (seed, epoch, batch), dropout masks from
(seed, call count)), and those counters are part of the metadata the trainer saves.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from . import filerules
from .outputs import process_alive, remove_stale_temp_files, write_atomic  # noqa: F401

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


def save_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                    metadata: dict[str, Any]) -> Path:
    """Write `arrays` and JSON `metadata` to `path` atomically (through a symlink: to its
    target, the link stays)."""
    path = Path(path)
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: metadata must be a dict, got {type(metadata).__name__}")
    try:
        text = json.dumps({"format": FORMAT, "version": VERSION, "metadata": metadata},
                          default=_json_default, allow_nan=False, sort_keys=True)
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
        # What the reader accepts, and nothing else: little-endian, C order.
        little = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if little.str not in filerules.ARRAY_DTYPES:
            raise CheckpointError(f"{path}: array {key!r} has dtype {arr.dtype}; checkpoints "
                                  f"hold float32, float64, int32 or int64 arrays")
        prepared[key] = arr.astype(little, order="C", copy=False)
    prepared[METADATA_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, arr in prepared.items():
                with zf.open(key + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arr, allow_pickle=False)
    return write_atomic(path, write)


# Deflate cannot shrink data by more than about 1032:1, so a member's stated uncompressed size
# beyond that ratio of its compressed bytes is a lie.
_DEFLATE_MAX_RATIO = 1032
_READ_CHUNK = 1 << 20
# A central directory entry is 46 bytes, its name, its extra fields (zip64: 28 bytes) and a
# comment: 1 KiB each is more than any writer uses.
_MAX_DIRECTORY_BYTES = filerules.ZIP_MAX_MEMBERS * 1024
_size = filerules.size_text
# What zipfile raises on a hostile archive (a damaged directory, header or stream).
_ZIP_FAILURES = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, OSError,
                 ValueError, KeyError, NotImplementedError, RuntimeError, struct.error,
                 OverflowError)


def _check_end_record(f, size, path):
    """The archive's entry count and central-directory size, from its end record, within the
    limits, before zipfile reads the whole directory into objects."""
    tail_len = min(size, 22 + 65535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return  # no end record: zipfile says so
    entries, directory = struct.unpack("<HI", tail[at + 10:at + 16])
    if (entries == 0xFFFF or directory == 0xFFFFFFFF) and at >= 20 \
            and tail[at - 20:at - 16] == b"PK\x06\x07":
        f.seek(min(struct.unpack("<Q", tail[at - 12:at - 4])[0], size))
        record = f.read(56)
        if len(record) == 56 and record[:4] == b"PK\x06\x06":
            entries, directory = struct.unpack("<QQ", record[32:48])
    if entries > filerules.ZIP_MAX_MEMBERS or directory > _MAX_DIRECTORY_BYTES:
        raise CheckpointError(f"{path}: the zip directory lists {entries} members in "
                              f"{_size(directory)} (at most {filerules.ZIP_MAX_MEMBERS} "
                              f"members); not a checkpoint gpucnn wrote")


def _check_info(info, path, archive_size):
    """The zip rules of one member, from the directory: a .npy name, not encrypted, stored
    or deflated, sizes that the archive and deflate can account for."""
    name = info.filename
    where = f"{path}: member {name!r}"
    if not name.endswith(".npy"):
        raise CheckpointError(f"{path}: unexpected member {name!r} (a checkpoint holds only "
                              f".npy arrays)")
    if len(name.encode("utf-8", "surrogatepass")) > filerules.ZIP_MAX_NAME_BYTES \
            or name == ".npy" or "\x00" in name:
        raise CheckpointError(f"{where}: not a valid array name (empty, NUL, or longer than "
                              f"{filerules.ZIP_MAX_NAME_BYTES} bytes)")
    # bit 6 (strong encryption) alone too: zipfile refuses it only when the member is
    # opened, so a reader that skips the member (verify: the optimizer state) would accept it
    if info.flag_bits & 0x41:
        bit = 0 if info.flag_bits & 0x1 else 6
        raise CheckpointError(f"{where}: encrypted (zip flag bit {bit}); gpucnn never writes "
                              f"encrypted members")
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


class CheckpointReader:
    """A checkpoint opened for reading: on construction its zip directory is checked (member
    count, unique .npy names, no encryption, stored or deflated, sizes) and its metadata read
    (CRC, .npy header, bounded JSON, envelope); no array is read until :meth:`arrays`, so a
    caller validates the metadata and says what arrays it expects first.

    ``max_bytes``: what all members may inflate to (default
    :func:`gpucnn.filerules.generic_uncompressed_limit` of the file's size); :meth:`arrays`
    with ``expected`` bounds each member by its expected size too. Use as a context manager
    or call :meth:`close`."""

    def __init__(self, path, max_bytes=None):
        self.path = path = Path(path)
        self._zip = None
        if not path.exists():
            raise CheckpointError(f"{path}: no such checkpoint file")
        if not path.is_file():
            raise CheckpointError(f"{path}: not a regular file")
        try:
            self._file = open(path, "rb")
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no such checkpoint file") from None
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
        try:
            self._open(max_bytes)
        except BaseException:
            self.close()
            raise

    def _open(self, max_bytes):
        path = self.path
        size = os.fstat(self._file.fileno()).st_size
        self._budget = (filerules.generic_uncompressed_limit(size) if max_bytes is None
                        else max_bytes)
        try:
            _check_end_record(self._file, size, path)
            self._zip = zipfile.ZipFile(self._file)
            infos = self._zip.infolist()
        except CheckpointError:
            raise
        except _ZIP_FAILURES as e:
            raise CheckpointError(f"{path}: not a checkpoint: not a valid zip/.npz archive "
                                  f"(truncated or damaged?): {e}") from None
        self._members = {}
        for info in infos:
            _check_info(info, path, size)
            key = info.filename[:-4]
            if key in self._members:
                raise CheckpointError(f"{path}: member {info.filename!r} appears twice (which "
                                      f"copy is meant?); refused")
            self._members[key] = info
        meta_info = self._members.pop(METADATA_KEY, None)
        if meta_info is None:
            raise CheckpointError(f"{path}: not a gpucnn checkpoint: no {METADATA_KEY} entry "
                                  f"(a foreign .npz?)")
        raw = self._array(meta_info, filerules.JSON_MAX_BYTES + filerules.NPY_MAX_HEADER_BYTES,
                          filerules.METADATA_DTYPES + filerules.ARRAY_DTYPES)
        self.metadata = _decode_metadata(raw, path)

    @property
    def names(self):
        """The array names the archive holds (the metadata member aside)."""
        return list(self._members)

    def _read(self, info, limit):
        """The bytes of member ``info``, read whole within ``limit`` and the archive's budget
        (never more than it declares: a deflate bomb costs what its size claims, which was
        bounded first), its CRC checked before anything of it is parsed."""
        where = f"{self.path}: member {info.filename!r}"
        n = info.file_size
        if n > limit:
            raise CheckpointError(f"{where}: {_size(n)}, more than the {_size(limit)} allowed "
                                  f"for it; nothing was read")
        if n > self._budget:
            raise CheckpointError(f"{where}: the members inflate to more than this archive's "
                                  f"bound ({_size(self._budget)} left, it claims {_size(n)}); "
                                  f"nothing more was read")
        self._budget -= n
        buf = bytearray(n)
        got = 0
        try:
            with self._zip.open(info) as f:
                while got < n:
                    chunk = f.read(min(_READ_CHUNK, n - got))
                    if not chunk:
                        break
                    buf[got:got + len(chunk)] = chunk
                    got += len(chunk)
        except _ZIP_FAILURES as e:
            raise CheckpointError(f"{where}: damaged: {type(e).__name__}: {e}") from None
        if got != n:
            raise CheckpointError(f"{where}: damaged: {got} of its {n} bytes could be read")
        if zlib.crc32(buf) != info.CRC:
            raise CheckpointError(f"{where}: damaged: CRC mismatch")
        return buf

    def _array(self, info, limit, allowed):
        return filerules.npy_array(self._read(info, limit), f"{self.path}: member "
                                   f"{info.filename!r}", CheckpointError, allowed)

    def arrays(self, expected=None, dtype=None, skip_others=False, fits="the model"):
        """{name: array} of the archive. ``expected``: {name: shape} the caller's model
        implies; the names must match (others are refused, or left unread with
        ``skip_others``) and each member is bounded by its expected size before it is read.
        ``dtype``: the dtype the values are used in; every array must be of its kind, is
        converted, and is refused unless finite after the conversion (without ``dtype``:
        finite as stored). ``fits``: what implies ``expected``, for the messages."""
        path = self.path
        members = self._members
        if expected is not None:
            expected = {k: tuple(v) for k, v in expected.items()}
            missing = sorted(set(expected) - set(members))
            unexpected = [] if skip_others else sorted(set(members) - set(expected))
            if missing or unexpected:
                raise CheckpointError(f"{path}: does not fit {fits}: arrays missing "
                                      f"{_few(missing)}, unexpected {_few(unexpected)}; "
                                      f"nothing was read")
            members = {k: members[k] for k in expected}
        allowed = filerules.ARRAY_DTYPES if dtype is None else tuple(
            d for d in filerules.ARRAY_DTYPES if np.dtype(d).kind == np.dtype(dtype).kind)
        out = {}
        for key, info in members.items():
            if expected is None:
                limit = self._budget
            else:  # at most 8 bytes an element (float64), and a header
                limit = math.prod(expected[key]) * 8 + filerules.NPY_MAX_HEADER_BYTES
            arr = self._array(info, limit, allowed)
            if expected is not None and arr.shape != expected[key]:
                raise CheckpointError(f"{path}: does not fit {fits}: array {key!r} has shape "
                                      f"{arr.shape}, expected {expected[key]}; nothing was "
                                      f"loaded")
            out[key] = filerules.checked_values(arr, f"{path}: array {key!r}",
                                                CheckpointError, dtype)
        return out

    def close(self):
        if self._zip is not None:
            self._zip.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _few(names, n=6):
    more = f", ... {len(names) - n} more" if len(names) > n else ""
    return "[" + ", ".join(map(repr, names[:n])) + more + "]"


def open_checkpoint(path: str | os.PathLike, max_bytes: int | None = None) -> CheckpointReader:
    """The :class:`CheckpointReader` of ``path``: directory checked, metadata read, no array
    read yet."""
    return CheckpointReader(path, max_bytes)


def load_checkpoint(path: str | os.PathLike, dtype=None
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, metadata) from a checkpoint written by save_checkpoint, every rule of
    :mod:`gpucnn.filerules` applied. ``dtype``: convert the arrays to it (the dtype their
    values are used in) and refuse any not finite after the conversion."""
    with open_checkpoint(path) as ck:
        return ck.arrays(dtype=dtype), ck.metadata


def _decode_metadata(raw: np.ndarray, path: Path) -> dict[str, Any]:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path}: {METADATA_KEY} must be a 1-D uint8 array of JSON "
                              f"text, got dtype {raw.dtype} shape {raw.shape}")
    envelope = filerules.parse_json(raw.tobytes(), f"{path}: {METADATA_KEY}", CheckpointError)
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
