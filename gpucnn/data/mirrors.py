"""Download the datasets from their public mirrors, verified, atomically.

Every file is streamed into a temporary file in the destination directory while its
digest is computed; only when the digest matches is it renamed into place (os.replace),
so an interrupted or corrupted download never leaves a file that looks complete.

Digests are written "algorithm:hexdigest" (e.g. "md5:...", "sha256:..."). The built-in
table holds the MD5 checksums the dataset authors / the standard loaders publish (see the
comments on each entry); a caller can pass its own `digests` (e.g. SHA-256 values it
trusts), which take precedence file by file.

The base URL of a dataset can be overridden with `base_url=` or the environment variable
$GPUCNN_MIRROR (the argument wins). Either may contain "{name}", replaced by the dataset
name, so one mirror can serve every dataset from sub-folders; without it the files are
fetched from the URL directly. Only urllib is used.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from .cifar import ALL_FILES as CIFAR_FILES
from .errors import DataError

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"

MIRRORS = {
    # PyTorch's S3 copy of Yann LeCun's MNIST files (the original site is often offline).
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    # Zalando Research's Fashion-MNIST bucket (an S3 website endpoint: http only; the
    # files are verified by digest).
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    # ROIS-CODH, the KMNIST authors.
    "kmnist": "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
    # Alex Krizhevsky's CIFAR page, binary version.
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
}

DOWNLOAD_FILES = {
    "mnist": IDX_FILES,
    "fashion-mnist": IDX_FILES,
    "kmnist": IDX_FILES,
    "cifar10": (CIFAR_ARCHIVE,),
}

# MD5 is what the publishers give; no SHA-256 is published by them, and none is made up
# here. Sources:
#   mnist, kmnist: the checksums in torchvision's MNIST / KMNIST dataset classes (the
#     standard loaders' resource tables; also the KMNIST authors' README).
#   fashion-mnist: the "MD5 checksum" column of the table in Zalando Research's
#     fashion-mnist README (the same values torchvision uses). NB the Debian package
#     dataset-fashion-mnist re-compresses the files, so its .gz files have other digests.
#   cifar10: the md5sum listed next to "CIFAR-10 binary version" on
#     https://www.cs.toronto.edu/~kriz/cifar.html
KNOWN_DIGESTS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
    },
    "kmnist": {
        "train-images-idx3-ubyte.gz": "md5:bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "md5:e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "md5:5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "md5:7320c461ea6c1c855c0b718fb2a4b134",
    },
    "cifar10": {
        CIFAR_ARCHIVE: "md5:c32a1d4ab5d03f1284b67883e8d87530",
    },
}

_CHUNK = 1 << 20
_ALGORITHMS = ("md5", "sha1", "sha256", "sha512")


def parse_digest(spec: str, what: str) -> tuple[str, str]:
    algo, sep, hexdigest = str(spec).partition(":")
    algo = algo.lower()
    hexdigest = hexdigest.strip().lower()
    if not sep or algo not in _ALGORITHMS or not hexdigest or \
            any(c not in "0123456789abcdef" for c in hexdigest) or \
            len(hexdigest) != hashlib.new(algo).digest_size * 2:
        raise ValueError(f"digest for {what} must be 'ALGO:HEX' with ALGO one of "
                         f"{', '.join(_ALGORITHMS)}, got {spec!r}")
    return algo, hexdigest


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file (streamed)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_base_url(name: str, base_url: str | None = None) -> str:
    """The base URL used for `name`: the argument, else $GPUCNN_MIRROR, else the official
    mirror. "{name}" in it is replaced by the dataset name; a trailing "/" is ensured."""
    if name not in MIRRORS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(MIRRORS)}")
    url = base_url or os.environ.get("GPUCNN_MIRROR") or MIRRORS[name]
    url = url.replace("{name}", name)
    return url if url.endswith("/") else url + "/"


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fetch(url: str, dest: str | os.PathLike, digest: str, progress: bool = True,
          timeout: float = 60.0) -> Path:
    """Download `url` to `dest` atomically, checking `digest` ("algo:hex").

    On any failure (HTTP error, short read, digest mismatch) the temporary file is
    deleted, `dest` is left as it was, and a DataError naming the file and URL is raised.
    """
    dest = Path(dest)
    algo, expected = parse_digest(digest, dest.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            h = hashlib.new(algo)
            received = 0
            request = urllib.request.Request(url, headers={"User-Agent": "gpucnn-downloader"})
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except urllib.error.HTTPError as e:
                raise DataError(f"{dest.name}: download failed: HTTP {e.code} {e.reason} "
                                f"for {url}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", e)
                raise DataError(f"{dest.name}: cannot download {url}: {reason}") from None
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                from tqdm.auto import tqdm
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=dest.name, disable=not progress, leave=False) as bar:
                    while True:
                        try:
                            chunk = response.read(_CHUNK)
                        except (OSError, http.client.HTTPException) as e:
                            raise DataError(f"{dest.name}: download of {url} interrupted "
                                            f"after {received} bytes: {e}") from None
                        if not chunk:
                            break
                        out.write(chunk)
                        h.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            if total is not None and received != total:
                raise DataError(f"{dest.name}: download of {url} incomplete: got {received} "
                                f"of {total} bytes")
            got = h.hexdigest()
            if got != expected:
                raise DataError(f"{dest.name}: {algo} digest mismatch for {url}: expected "
                                f"{expected}, got {got}; the download was deleted")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    return dest


def _have_valid(path: Path, digest: str) -> bool:
    if not path.is_file():
        return False
    algo, expected = parse_digest(digest, path.name)
    return file_digest(path, algo) == expected


def _safe_member_name(name: str) -> bool:
    if not name or "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return False
    parts = PurePosixPath(name).parts
    return ".." not in parts and not PurePosixPath(name).is_absolute()


def extract_cifar_bins(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> list[Path]:
    """Extract only the six CIFAR-10 .bin batch files from the binary tarball into
    `dest_dir` (flattened: dest_dir/data_batch_1.bin, ...).

    The archive is checked before anything is written: any member with an absolute path,
    a "..", or a backslash in its name makes the whole archive refused, and the wanted
    .bin members must be regular files (no links or devices) and occur once. The member
    path is never used to build the output path. Each file is written atomically.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            wanted = {}
            for m in members:
                if not _safe_member_name(m.name):
                    raise DataError(f"{archive}: refusing to extract: unsafe member name "
                                    f"{m.name!r} (absolute path or '..')")
                base = posixpath.basename(m.name)
                if base in CIFAR_FILES:
                    if not m.isreg():
                        raise DataError(f"{archive}: refusing to extract: member {m.name!r} "
                                        f"is not a regular file")
                    if base in wanted:
                        raise DataError(f"{archive}: refusing to extract: {base} occurs "
                                        f"twice ({wanted[base].name!r}, {m.name!r})")
                    wanted[base] = m
            missing = [f for f in CIFAR_FILES if f not in wanted]
            if missing:
                raise DataError(f"{archive}: not the CIFAR-10 binary archive: missing "
                                f"{', '.join(missing)}")
            dest_dir.mkdir(parents=True, exist_ok=True)
            written = []
            for base in CIFAR_FILES:
                src = tar.extractfile(wanted[base])
                fd, tmp_name = tempfile.mkstemp(prefix=f".{base}.", suffix=".part",
                                                dir=dest_dir)
                try:
                    with os.fdopen(fd, "wb") as out, src:
                        for chunk in iter(lambda: src.read(_CHUNK), b""):
                            out.write(chunk)
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(tmp_name, dest_dir / base)
                except BaseException:
                    Path(tmp_name).unlink(missing_ok=True)
                    raise
                written.append(dest_dir / base)
            _fsync_dir(dest_dir)
            return written
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{archive}: damaged or not a tar archive: {e}") from None


def download(name: str, dest_dir: str | os.PathLike, base_url: str | None = None,
             digests: dict[str, str] | None = None, progress: bool = True,
             timeout: float = 60.0, keep_archive: bool = False) -> Path:
    """Fetch dataset `name` into `dest_dir` and return `dest_dir`.

    mnist / fashion-mnist / kmnist: the four IDX .gz files. cifar10: the binary tarball,
    whose six .bin files are extracted safely (the archive is then deleted unless
    keep_archive). Files already present with the right digest are not fetched again.
    `digests` maps file name -> "algo:hex" and overrides the built-in table; a file with
    no digest anywhere is refused (nothing is downloaded unverified).
    """
    name = name.lower()
    base = resolve_base_url(name, base_url)
    dest_dir = Path(dest_dir)
    table = dict(KNOWN_DIGESTS.get(name, {}))
    table.update(digests or {})
    files = DOWNLOAD_FILES[name]
    for f in files:  # validate every digest before fetching anything
        if f not in table:
            raise DataError(f"{f}: no digest known for this file; pass digests={{{f!r}: "
                            f"'sha256:...'}} to download it")
        parse_digest(table[f], f)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if name == "cifar10":
        if all((dest_dir / f).is_file() for f in CIFAR_FILES):
            return dest_dir
        archive = dest_dir / CIFAR_ARCHIVE
        if not _have_valid(archive, table[CIFAR_ARCHIVE]):
            fetch(urllib.parse.urljoin(base, CIFAR_ARCHIVE), archive, table[CIFAR_ARCHIVE],
                  progress, timeout)
        extract_cifar_bins(archive, dest_dir)
        if not keep_archive:
            archive.unlink(missing_ok=True)
        return dest_dir
    for f in files:
        target = dest_dir / f
        if _have_valid(target, table[f]):
            continue
        fetch(urllib.parse.urljoin(base, f), target, table[f], progress, timeout)
    return dest_dir
