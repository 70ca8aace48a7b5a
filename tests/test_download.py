"""Tests for gpucnn.data.download against a local HTTP server (no network needed)."""

import gzip
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from gpucnn.data import DataError, download, encode_idx, extract_cifar_bins, load_dataset
from gpucnn.data import datasets as datasets_mod
from gpucnn.data import mirrors as download_mod

IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CIFAR_BINS = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Server:
    """A tiny HTTP server on 127.0.0.1 (ephemeral port) serving an in-memory dict."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        files, requests = self.files, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                body = files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                # A path ending in "?short" promises more bytes than it sends.
                promised = len(body) + (1000 if self.path.endswith("?short") else 0)
                self.send_header("Content-Length", str(promised))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.timeout = 5
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    s = Server()
    try:
        yield s
    finally:
        s.close()


def idx_files(rng, n_train=12, n_test=5):
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        out[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(encode_idx(
            rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)))
        out[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(encode_idx(
            rng.integers(0, 10, size=n, dtype=np.uint8)))
    return out


def cifar_tarball(rng, extra=(), n=3):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name, data, kind=tarfile.REGTYPE, linkname=""):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = linkname
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("cifar-10-batches-bin/batches.meta.txt", b"airplane\n")
        for name in CIFAR_BINS:
            records = np.concatenate(
                [rng.integers(0, 10, size=(n, 1), dtype=np.uint8),
                 rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)], axis=1)
            add(f"cifar-10-batches-bin/{name}", records.tobytes())
        for item in extra:
            add(*item)
    return buf.getvalue()


def leftovers(directory):
    return sorted(p.name for p in Path(directory).iterdir()) if Path(directory).exists() else []


def test_download_idx_verifies_and_loads(server, tmp_path, rng, monkeypatch):
    files = idx_files(rng)
    for name, data in files.items():
        server.files["/mnist/" + name] = data
    digests = {name: sha256(data) for name, data in files.items()}
    dest = tmp_path / "data" / "mnist"
    out = download("mnist", dest, base_url=server.url + "mnist", digests=digests,
                   progress=True)
    assert out == dest and leftovers(dest) == sorted(IDX_NAMES)
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    n_requests = len(server.requests)
    download("mnist", dest, base_url=server.url + "mnist", digests=digests, progress=False)
    assert len(server.requests) == n_requests  # already present and verified: not fetched
    monkeypatch.delenv("GPUCNN_DATA", raising=False)
    ds = load_dataset("mnist", "train", data_dir=tmp_path / "data")
    assert ds.images.shape == (12, 1, 28, 28)


def test_download_md5_and_mirror_env(server, tmp_path, rng, monkeypatch):
    files = idx_files(rng)
    for name, data in files.items():
        server.files["/mirror/kmnist/" + name] = data
    md5s = {name: "md5:" + hashlib.md5(data).hexdigest() for name, data in files.items()}
    monkeypatch.setenv("GPUCNN_MIRROR", server.url + "mirror/{name}/")
    download("kmnist", tmp_path / "k", digests=md5s, progress=False)
    assert leftovers(tmp_path / "k") == sorted(IDX_NAMES)


def test_load_dataset_download_flag(server, tmp_path, rng, monkeypatch):
    files = idx_files(rng, n_train=9, n_test=4)
    for name, data in files.items():
        server.files["/" + name] = data
    monkeypatch.delenv("GPUCNN_DATA", raising=False)
    monkeypatch.setenv("GPUCNN_MIRROR", server.url)
    cache = tmp_path / "cache"
    monkeypatch.setattr(datasets_mod, "user_cache_root", lambda: cache)
    monkeypatch.setitem(download_mod.KNOWN_DIGESTS, "mnist",
                        {name: sha256(data) for name, data in files.items()})
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist", "test")
    ds = load_dataset("mnist", "test", download=True)
    assert len(ds) == 4 and (cache / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()


def test_digest_mismatch_deletes_file(server, tmp_path, rng):
    files = idx_files(rng)
    digests = {name: sha256(data) for name, data in files.items()}
    for name, data in files.items():
        server.files["/" + name] = data
    bad = bytearray(files["train-labels-idx1-ubyte.gz"])
    bad[-1] ^= 1
    server.files["/train-labels-idx1-ubyte.gz"] = bytes(bad)
    dest = tmp_path / "fm"
    with pytest.raises(DataError) as e:
        download("fashion-mnist", dest, base_url=server.url, digests=digests, progress=False)
    msg = str(e.value)
    assert "train-labels-idx1-ubyte.gz" in msg and "mismatch" in msg
    assert digests["train-labels-idx1-ubyte.gz"].split(":")[1] in msg
    assert hashlib.sha256(bytes(bad)).hexdigest() in msg
    assert "train-labels-idx1-ubyte.gz" not in leftovers(dest)
    assert not any(n.endswith(".part") for n in leftovers(dest))


def test_digest_mismatch_keeps_previous_good_file(server, tmp_path, rng):
    # A file that exists with the wrong content is re-fetched; a failed re-fetch leaves it.
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "train-images-idx3-ubyte.gz").write_bytes(b"old")
    server.files["/train-images-idx3-ubyte.gz"] = b"new but corrupt"
    with pytest.raises(DataError, match="mismatch"):
        download_mod.fetch(server.url + "train-images-idx3-ubyte.gz",
                           dest / "train-images-idx3-ubyte.gz", sha256(b"expected"),
                           progress=False)
    assert leftovers(dest) == ["train-images-idx3-ubyte.gz"]
    assert (dest / "train-images-idx3-ubyte.gz").read_bytes() == b"old"


def test_http_404(server, tmp_path, rng):
    digests = {name: sha256(b"x") for name in IDX_NAMES}
    dest = tmp_path / "nothing"
    with pytest.raises(DataError) as e:
        download("mnist", dest, base_url=server.url + "missing/", digests=digests,
                 progress=False, timeout=10)
    assert "404" in str(e.value) and "train-images-idx3-ubyte.gz" in str(e.value)
    assert server.url + "missing/" in str(e.value)
    assert leftovers(dest) == []


def test_connection_closed_early(server, tmp_path):
    server.files["/f.gz?short"] = b"only part of it"
    with pytest.raises(DataError, match="f.gz: download of .* (interrupted|incomplete)"):
        download_mod.fetch(server.url + "f.gz?short", tmp_path / "f.gz", sha256(b"x"),
                           progress=False, timeout=10)
    assert leftovers(tmp_path) == []


def test_unreachable_server(tmp_path):
    s = Server()
    url = s.url
    s.close()  # nothing listens on that port any more
    with pytest.raises(DataError, match="cannot download"):
        download_mod.fetch(url + "f.gz", tmp_path / "f.gz", sha256(b""), progress=False,
                           timeout=5)
    assert leftovers(tmp_path) == []


def test_no_digest_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(download_mod.KNOWN_DIGESTS, "mnist", {})
    with pytest.raises(DataError, match="no digest"):
        download("mnist", tmp_path / "d", base_url="http://127.0.0.1:9/")
    with pytest.raises(ValueError, match="ALGO:HEX"):
        download("mnist", tmp_path / "d", base_url="http://127.0.0.1:9/",
                 digests={n: "md5:1234" for n in IDX_NAMES})


def test_builtin_digest_table_is_well_formed():
    for name, table in download_mod.KNOWN_DIGESTS.items():
        assert set(table) == set(download_mod.DOWNLOAD_FILES[name])
        for f, spec in table.items():
            download_mod.parse_digest(spec, f)


def test_cifar_download_and_extract(server, tmp_path, rng, monkeypatch):
    blob = cifar_tarball(rng)
    server.files["/cifar-10-binary.tar.gz"] = blob
    dest = tmp_path / "cifar10"
    download("cifar10", dest, base_url=server.url,
             digests={"cifar-10-binary.tar.gz": sha256(blob)}, progress=False)
    assert leftovers(dest) == sorted(CIFAR_BINS)  # only the .bin files; archive removed
    monkeypatch.delenv("GPUCNN_DATA", raising=False)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.images.shape == (15, 3, 32, 32)


@pytest.mark.parametrize("evil", ["../evil.bin", "/tmp/gpucnn-evil-abs.bin",
                                  "cifar-10-batches-bin/../../evil.bin"])
def test_cifar_malicious_member_refused(server, tmp_path, rng, evil):
    blob = cifar_tarball(rng, extra=[(evil, b"pwned")])
    server.files["/cifar-10-binary.tar.gz"] = blob
    dest = tmp_path / "a" / "cifar10"
    with pytest.raises(DataError) as e:
        download("cifar10", dest, base_url=server.url,
                 digests={"cifar-10-binary.tar.gz": sha256(blob)}, progress=False)
    assert "unsafe member" in str(e.value) and evil in str(e.value)
    assert not any(n.endswith(".bin") for n in leftovers(dest))  # nothing extracted
    assert not (tmp_path / "a" / "evil.bin").exists() and not (tmp_path / "evil.bin").exists()
    assert not Path("/tmp/gpucnn-evil-abs.bin").exists()


def test_cifar_link_member_refused(tmp_path, rng):
    archive = tmp_path / "c.tar.gz"
    blob = cifar_tarball(rng)
    # Replace data_batch_1.bin by a symlink to a file outside.
    src = tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for m in src.getmembers():
            if m.name.endswith("data_batch_1.bin"):
                link = tarfile.TarInfo(m.name)
                link.type = tarfile.SYMTYPE
                link.linkname = "/etc/passwd"
                tar.addfile(link)
            else:
                tar.addfile(m, src.extractfile(m))
    archive.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="not a regular file"):
        extract_cifar_bins(archive, tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_cifar_damaged_archive(tmp_path):
    archive = tmp_path / "c.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00" + b"junk" * 50)
    with pytest.raises(DataError, match="c.tar.gz"):
        extract_cifar_bins(archive, tmp_path / "out")
