"""IDX reading, validation, file resolution and the MNIST split (nnmnist/data.py)."""
import gzip
import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from nnmnist.data import mnist as data, fetch
from nnmnist.errors import UserError

REPO = Path(__file__).resolve().parents[2]
REAL_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
NAMES = dict(TrainFile="train-images.idx3-ubyte", TrainLabelFile="train-labels.idx1-ubyte",
             TestFile="t10k-images.idx3-ubyte", TestLabelFile="t10k-labels.idx1-ubyte")


@pytest.fixture(autouse=True)
def no_network(monkeypatch, loopback_only):
    """Nothing here may fetch: offline switch on, and any non-loopback connect fails loudly."""
    monkeypatch.setenv("NNMNIST_OFFLINE", "1")


# ---------------------------------------------------------------- helpers: our own IDX writer

def idx_images(pixels):
    """IDX3 bytes for a uint8 array (n, rows, cols), written independently of the reader."""
    n, rows, cols = pixels.shape
    return struct.pack(">IIII", 2051, n, rows, cols) + pixels.astype(np.uint8).tobytes()


def idx_labels(labels):
    return struct.pack(">II", 2049, len(labels)) + np.asarray(labels, np.uint8).tobytes()


def images(n, rows=2, cols=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, rows, cols), dtype=np.uint8)


def labels(n, count=10, seed=0):
    return np.random.default_rng(seed + 1).integers(0, count, n, dtype=np.uint8)


def write(path, payload, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def cfg(data_dir, **over):
    return SimpleNamespace(**{**NAMES, "LabelCount": 10, "DataDir": str(data_dir), **over})


def write_set(folder, n_train=5003, n_test=7, rows=2, cols=3, gz=False, style="."):
    """A small MNIST-shaped data set; returns the arrays written."""
    arrays = dict(trn_img=images(n_train, rows, cols), trn_lab=labels(n_train),
                  tst_img=images(n_test, rows, cols, seed=5), tst_lab=labels(n_test, seed=5))
    sfx = ".gz" if gz else ""
    write(folder / f"train-images{style}idx3-ubyte{sfx}", idx_images(arrays["trn_img"]), gz)
    write(folder / f"train-labels{style}idx1-ubyte{sfx}", idx_labels(arrays["trn_lab"]), gz)
    write(folder / f"t10k-images{style}idx3-ubyte{sfx}", idx_images(arrays["tst_img"]), gz)
    write(folder / f"t10k-labels{style}idx1-ubyte{sfx}", idx_labels(arrays["tst_lab"]), gz)
    return arrays


def raises_user_error(match, fn, *args, **kwargs):
    with pytest.raises(UserError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# ---------------------------------------------------------------- reading

@pytest.mark.parametrize("gz", [False, True])
def test_read_images_and_labels(tmp_path, gz):
    pix, lab = images(4, 3, 5), labels(4)
    x = data.read_idx_images(write(tmp_path / "i", idx_images(pix), gz))
    y = data.read_idx_labels(write(tmp_path / "l", idx_labels(lab), gz))
    assert x.dtype == np.uint8 and x.shape == (4, 15) and x.flags.writeable
    assert y.dtype == np.uint8 and y.shape == (4,)
    np.testing.assert_array_equal(x, pix.reshape(4, 15))
    np.testing.assert_array_equal(y, lab)


def test_gzip_detected_by_magic_not_name(tmp_path):
    path = write(tmp_path / "train-images.idx3-ubyte", idx_images(images(2)), gz=True)
    assert data.read_idx_images(path).shape == (2, 6)


def test_label_file_given_as_images(tmp_path):
    path = write(tmp_path / "lab", idx_labels(labels(3)))
    msg = raises_user_error("looks like a label file", data.read_idx_images, path)
    assert str(path) in msg


def test_image_file_given_as_labels(tmp_path):
    path = write(tmp_path / "img", idx_images(images(3)))
    raises_user_error("looks like an image file", data.read_idx_labels, path)


def test_not_an_idx_file(tmp_path):
    path = write(tmp_path / "x", b"PK\x03\x04 some zip file")
    raises_user_error("not an IDX file", data.read_idx_images, path)


def test_wrong_element_type(tmp_path):
    payload = struct.pack(">IIII", 0x00000D03, 1, 1, 1) + b"\0\0\0\0"  # 0x0D = float
    raises_user_error("element type 0x0d", data.read_idx_images, write(tmp_path / "f", payload))


@pytest.mark.parametrize("gz", [False, True])
def test_truncated(tmp_path, gz):
    path = write(tmp_path / "t", idx_images(images(3))[:-1], gz)
    raises_user_error(r"3 x 2 x 3 = 18 data bytes but there are 17; the file is truncated",
                      data.read_idx_images, path)


def test_padded(tmp_path):
    path = write(tmp_path / "p", idx_labels(labels(3)) + b"\0")
    raises_user_error("padded", data.read_idx_labels, path)


def test_truncated_header(tmp_path):
    path = write(tmp_path / "h", struct.pack(">II", 2051, 1))
    raises_user_error("truncated IDX header", data.read_idx_images, path)


def test_empty_file(tmp_path):
    raises_user_error("file is empty", data.read_idx_images, write(tmp_path / "e", b""))


def test_gz_name_but_not_gzip(tmp_path):
    path = write(tmp_path / "train-images.idx3-ubyte.gz", idx_images(images(2)))
    raises_user_error("named .gz but is not gzip", data.read_idx_images, path)


def test_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_images(images(50)))
    path = write(tmp_path / "c.gz", good[: len(good) // 2])
    raises_user_error("corrupt gzip stream", data.read_idx_images, path)


def test_missing_file_is_user_error(tmp_path):
    raises_user_error("cannot read", data.read_idx_labels, tmp_path / "nope")


# ---------------------------------------------------------------- load_mnist: split and checks

def test_load_split_and_scaling(tmp_path):
    arr = write_set(tmp_path)
    s = data.load_mnist(cfg(tmp_path))
    assert s.n_in == 6
    for x, n in ((s.trn_x, 3), (s.dev_x, 5000), (s.tst_x, 7)):
        assert x.dtype == np.float32 and x.shape == (n, 6) and x.flags.c_contiguous
    for y, n in ((s.trn_y, 3), (s.dev_y, 5000), (s.tst_y, 7)):
        assert y.dtype == np.int64 and y.shape == (n,)
    flat = arr["trn_img"].reshape(-1, 6)
    np.testing.assert_array_equal(s.dev_x, flat[:5000].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(s.trn_x, flat[5000:].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(s.dev_y, arr["trn_lab"][:5000])
    np.testing.assert_array_equal(s.trn_y, arr["trn_lab"][5000:])
    np.testing.assert_array_equal(s.tst_y, arr["tst_lab"])


def test_count_mismatch(tmp_path):
    write_set(tmp_path)
    write(tmp_path / NAMES["TestLabelFile"], idx_labels(labels(6)))
    msg = raises_user_error("has 6 labels but .* has 7 images", data.load_mnist, cfg(tmp_path))
    assert NAMES["TestLabelFile"] in msg and NAMES["TestFile"] in msg


def test_label_not_below_label_count(tmp_path):
    write_set(tmp_path)
    write(tmp_path / NAMES["TrainLabelFile"], idx_labels(labels(5003, count=9)))
    write(tmp_path / NAMES["TestLabelFile"], idx_labels([0, 1, 2, 9, 3, 9, 4]))
    msg = raises_user_error(r"label 9 at index 3 is not below LabelCount 9 \(2 such labels\)",
                            data.load_mnist, cfg(tmp_path, LabelCount=9))
    assert NAMES["TestLabelFile"] in msg
    data.load_mnist(cfg(tmp_path, LabelCount=10))  # the same files are fine with 10 classes


def test_image_size_differs_between_train_and_test(tmp_path):
    write_set(tmp_path)
    write(tmp_path / NAMES["TestFile"], idx_images(images(7, 3, 3)))
    raises_user_error("images have 9 pixels but the training images", data.load_mnist,
                      cfg(tmp_path))


def test_too_few_training_images(tmp_path):
    write_set(tmp_path, n_train=5000)
    raises_user_error("has 5000 images; more than 5000 are needed", data.load_mnist,
                      cfg(tmp_path))


def test_missing_files_list_where_looked(tmp_path):
    conf = tmp_path / "configs"
    msg = raises_user_error("not found", data.load_mnist, cfg(tmp_path / "d"), config_dir=conf)
    assert str(tmp_path / "d") in msg and str(conf) in msg
    assert "nnmnist fetch" in msg and "NNMNIST_OFFLINE" in msg


def test_missing_nonstandard_name_never_fetches(tmp_path, monkeypatch):
    monkeypatch.delenv("NNMNIST_OFFLINE")
    monkeypatch.setattr(fetch, "fetch_mnist", lambda *a, **k: pytest.fail("fetch attempted"))
    raises_user_error("check the file names", data.load_mnist,
                      cfg(tmp_path, TrainFile="my-own-images.bin"))


def test_allow_fetch_false_never_fetches(tmp_path, monkeypatch):
    monkeypatch.delenv("NNMNIST_OFFLINE")
    monkeypatch.setattr(fetch, "fetch_mnist", lambda *a, **k: pytest.fail("fetch attempted"))
    raises_user_error("fetching is off for this run", data.load_mnist, cfg(tmp_path),
                      allow_fetch=False)


def test_missing_standard_files_are_fetched(tmp_path, monkeypatch):
    monkeypatch.delenv("NNMNIST_OFFLINE")
    src = tmp_path / "elsewhere"
    write_set(src, style="-")
    calls, lines = [], []

    def fake_fetch(dest, names, log):
        calls.append((Path(dest), list(names)))
        for n in names:
            (Path(dest) / n).write_bytes((src / n).read_bytes())
    monkeypatch.setattr(fetch, "fetch_mnist", fake_fetch)
    dest = tmp_path / "data"
    dest.mkdir()
    write(dest / NAMES["TrainFile"], (src / "train-images-idx3-ubyte").read_bytes())
    s = data.load_mnist(cfg(dest), log=lines.append)
    assert calls == [(dest, ["train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                             "t10k-labels-idx1-ubyte"])]
    assert any("downloading" in line for line in lines)
    assert s.tst_x.shape == (7, 6)


# ---------------------------------------------------------------- resolving names

def test_name_variants_order():
    assert data.name_variants("train-images.idx3-ubyte") == [
        "train-images.idx3-ubyte", "train-images.idx3-ubyte.gz",
        "train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"]
    assert data.name_variants("t10k-labels-idx1-ubyte.gz") == [
        "t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte",
        "t10k-labels.idx1-ubyte.gz", "t10k-labels.idx1-ubyte"]
    assert data.name_variants("mine.bin") == ["mine.bin", "mine.bin.gz"]


@pytest.mark.parametrize("style", [".", "-"])
@pytest.mark.parametrize("gz", [False, True])
def test_both_styles_raw_and_gz_load_the_same(tmp_path, style, gz):
    write_set(tmp_path / "ref")
    folder = tmp_path / "x"
    write_set(folder, style=style, gz=gz)
    for cfg_style in (".", "-"):
        names = {k: v.replace(".idx", cfg_style + "idx") for k, v in NAMES.items()}
        got = data.load_mnist(cfg(folder, **names))
        want = data.load_mnist(cfg(tmp_path / "ref"))
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_exact_name_wins_over_variants(tmp_path):
    exact = write(tmp_path / "train-images.idx3-ubyte.gz", b"x")
    write(tmp_path / "train-images-idx3-ubyte", b"x")
    assert data.resolve_data_file("train-images.idx3-ubyte.gz", tmp_path) == exact


def test_bare_name_data_dir_then_config_dir(tmp_path):
    ddir, cdir = tmp_path / "data", tmp_path / "cfg"
    in_cfg = write(cdir / "a.idx", b"x")
    assert data.resolve_data_file("a.idx", ddir, cdir) == in_cfg
    in_data = write(ddir / "a.idx", b"x")
    assert data.resolve_data_file("a.idx", ddir, cdir) == in_data
    assert data.resolve_data_file("b.idx", ddir, cdir) is None


def test_relative_path_cwd_then_config_dir(tmp_path, monkeypatch):
    cwd, cdir, ddir = tmp_path / "cwd", tmp_path / "cfg", tmp_path / "data"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    write(ddir / "sub" / "a.idx", b"x")  # data_dir is not searched for paths with folders
    in_cfg = write(cdir / "sub" / "a.idx", b"x")
    assert data.resolve_data_file("sub/a.idx", ddir, cdir) == in_cfg
    in_cwd = write(cwd / "sub" / "a.idx", b"x")
    assert data.resolve_data_file("sub/a.idx", ddir, cdir) == in_cwd


def test_absolute_path_as_given(tmp_path):
    path = write(tmp_path / "abs" / "train-images-idx3-ubyte.gz", b"x")
    write(tmp_path / "data" / "train-images-idx3-ubyte.gz", b"x")
    got = data.resolve_data_file(str(tmp_path / "abs" / "train-images.idx3-ubyte"),
                                 tmp_path / "data", tmp_path)
    assert got == path


def test_checkout_data_dir_is_beside_run_py():
    # Independent of how mnist.py computes it: the folder named data that holds the data
    # README, beside run.py and the package, in the checkout this test file belongs to.
    assert (data.CHECKOUT_DATA_DIR / "README.md").is_file()
    assert (data.CHECKOUT_DATA_DIR.parent / "run.py").is_file()
    assert (data.CHECKOUT_DATA_DIR.parent / "nnmnist" / "data" / "mnist.py").samefile(data.__file__)
    assert data.CHECKOUT_DATA_DIR == REPO / "data"


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    """A clean slate for the default data folder: no $NNMNIST_DATA, no run.py rule, an empty
    current folder and a cache folder under tmp_path."""
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_beside", None)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def test_default_data_dir_order(data_home, monkeypatch):
    none = SimpleNamespace(DataDir=None)
    # 4. nothing anywhere: the per-user cache folder (where a fetch then stores)
    assert data.default_data_dir() == data_home / "cache" / "nnmnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(data_home / "home"))
    assert data.default_data_dir() == data_home / "home" / ".cache" / "nnmnist"
    # 3. data/ in the current folder, but only once it holds the four files
    (data_home / "work" / "data").mkdir()
    assert data.default_data_dir() == data_home / "home" / ".cache" / "nnmnist"
    write_set(data_home / "work" / "data", style="-", gz=True)
    assert data.default_data_dir() == data_home / "work" / "data"
    # run.py's rule: data/ beside it, whatever the current folder holds
    data.use_data_beside(data_home / "checkout")
    assert data.default_data_dir() == data_home / "checkout" / "data"
    # 2. $NNMNIST_DATA before both
    monkeypatch.setenv(data.DATA_ENV, str(data_home / "env"))
    assert data.default_data_dir() == data_home / "env"
    # 1. DataDir before everything
    assert data.data_dir_of(none) == data_home / "env"
    assert data.data_dir_of(SimpleNamespace(DataDir=str(data_home / "mine"))) == data_home / "mine"


# ---------------------------------------------------------------- command line

def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nnmnist", "fetch", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=120,
                          env={**os.environ, "NNMNIST_OFFLINE": "1", **(env or {})})


def test_cli_help():
    out = run_cli("--help")
    assert out.returncode == 0 and "DIR" in out.stdout


def test_cli_user_error_is_one_line(tmp_path):
    out = run_cli(str(tmp_path / "d"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: ") and "NNMNIST_OFFLINE" in out.stderr


def test_cli_check(tmp_path):
    write_set(tmp_path, style="-", gz=True)
    out = run_cli("--check", str(tmp_path))
    assert "Parsed the four files" in out.stdout and "MISMATCH" in out.stdout  # synthetic data
    assert out.returncode == 1


# ---------------------------------------------------------------- the real MNIST

needs_mnist = pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"no MNIST at {REAL_MNIST}")


@needs_mnist
def test_real_mnist_checksums():
    for key, md5 in fetch.MNIST_MD5.items():
        path = data.resolve_data_file(key, REAL_MNIST)
        assert path is not None, key
        assert hashlib.md5(gzip.decompress(path.read_bytes())).hexdigest() == md5


@needs_mnist
def test_real_mnist_split():
    s = data.load_mnist(cfg(REAL_MNIST))
    assert (len(s.trn_x), len(s.dev_x), len(s.tst_x)) == (55000, 5000, 10000)
    assert (len(s.trn_y), len(s.dev_y), len(s.tst_y)) == (55000, 5000, 10000)
    assert s.n_in == 784
    for x in (s.trn_x, s.dev_x, s.tst_x):
        assert x.dtype == np.float32 and x.flags.c_contiguous
        assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(s.trn_y)) == set(range(10))
