"""CoNLL-U reading, the vocabulary and padded arrays, and fetching the treebank
(nnmnist/data/conllu.py, nnmnist/data/fetch.py) against a local HTTP server; never the real
network."""
import gzip
import hashlib
import http.server
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from nnmnist.data import conllu, fetch, mnist
from nnmnist.errors import UserError

REPO = Path(__file__).resolve().parents[2]
# Where a copy of the real treebank may be, as for MNIST: beside the checkout, or in it.
TREEBANK_DIRS = [REPO.parent / "shared" / "data" / "ud-en-ewt", REPO / "shared" / "data" / "ud-en-ewt"]
NAMES = list(fetch.TREEBANK)
CFG = dict(TrainFile="en_ewt-ud-train.conllu", DevFile="en_ewt-ud-dev.conllu",
           TestFile="en_ewt-ud-test.conllu", MinCount=1)


@pytest.fixture(autouse=True)
def no_network(monkeypatch, loopback_only):
    """Only loopback connections, no proxy in the way, the offline switch off, and the default
    source a closed local port, so that a test forgetting its server cannot reach out."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY", "NNMNIST_OFFLINE", "NNMNIST_TREEBANK_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(fetch, "TREEBANK_URL", "http://127.0.0.1:9/")


# ---------------------------------------------------------------- writing CoNLL-U

def word(i, form, upos="NOUN"):
    return "\t".join([str(i), form, form.lower(), upos, "_", "_", "0", "root", "_", "_"])


def conllu_text(sentences, comments=True):
    """CoNLL-U for [[(form, upos), ...], ...], with a comment line before each sentence."""
    out = []
    for n, sent in enumerate(sentences, 1):
        if comments:
            out += [f"# sent_id = s{n}", f"# text = {' '.join(f for f, _ in sent)}"]
        out += [word(i, f, t) for i, (f, t) in enumerate(sent, 1)]
        out.append("")
    return "\n".join(out) + "\n"


def write(path, text, gz=False):
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def raises_at(match, path, line):
    """pytest.raises for a UserError naming `path` and `line`, on one line."""
    return pytest.raises(UserError, match=rf"^{path}: line {line}: .*{match}")


# ---------------------------------------------------------------- reading

MIXED = "\n".join([
    "# newdoc id = d1",
    "# sent_id = s1",
    "# text = Don't go.",
    "1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_",
    word(1, "Do", "AUX"),
    word(2, "n't", "PART"),
    word(3, "go", "VERB"),
    "3.1\tgone\tgo\tVERB\t_\t_\t_\t_\t0:root\t_",
    word(4, ".", "PUNCT"),
    "",
    "",
    "# sent_id = s2",
    word(1, "Yes", "INTJ"),
    "",
])


@pytest.mark.parametrize("gz", [False, True])
def test_read_skips_comments_multiword_tokens_and_empty_nodes(tmp_path, gz):
    path = write(tmp_path / ("a.conllu.gz" if gz else "a.conllu"), MIXED, gz)
    got = conllu.read_conllu(path)
    assert [s.words for s in got] == [["Do", "n't", "go", "."], ["Yes"]]
    assert [s.tags for s in got] == [["AUX", "PART", "VERB", "PUNCT"], ["INTJ"]]
    assert [s.line for s in got] == [5, 13]


def test_gzip_found_by_content_and_byte_order_mark_ignored(tmp_path):
    path = write(tmp_path / "no-suffix", "\ufeff" + conllu_text([[("A", "DET")]]), gz=True)
    assert conllu.read_conllu(path)[0].words == ["A"]


def test_last_sentence_without_blank_line(tmp_path):
    path = write(tmp_path / "a.conllu", word(1, "Hi", "INTJ"))
    assert [s.words for s in conllu.read_conllu(path)] == [["Hi"]]


def test_wrong_field_count_names_file_and_line(tmp_path):
    path = write(tmp_path / "a.conllu", "# c\n" + word(1, "a") + "\n2\tb\tb\tNOUN\n")
    with raises_at("has 4 tab-separated fields", path, 3):
        conllu.read_conllu(path)


def test_id_out_of_sequence_names_file_and_line(tmp_path):
    path = write(tmp_path / "a.conllu", word(1, "a") + "\n" + word(3, "b") + "\n")
    with raises_at("word ID '3' where 2 was expected", path, 2):
        conllu.read_conllu(path)
    path = write(tmp_path / "b.conllu", "\n".join([word(1, "a"), "", "# c", word(2, "b")]))
    with raises_at("word ID '2' where 1 was expected", path, 4):
        conllu.read_conllu(path)


def test_unknown_upos_names_file_and_line(tmp_path):
    path = write(tmp_path / "a.conllu", word(1, "a") + "\n" + word(2, "b", "NN") + "\n")
    with raises_at("UPOS 'NN' is not one of the 17", path, 2):
        conllu.read_conllu(path)
    assert conllu.read_conllu(path, need_tags=False)[0].tags is None


def test_not_utf8_names_file_and_line(tmp_path):
    data = (word(1, "a") + "\n\n" + word(1, "caf") + "\n").encode().replace(b"caf", b"caf\xe9")
    for gz in (False, True):
        path = write(tmp_path / f"a{gz}.conllu", data, gz)
        with raises_at("not UTF-8", path, 3):
            conllu.read_conllu(path)


def test_truncated_gzip_names_the_file(tmp_path):
    whole = gzip.compress(conllu_text([[("a", "DET"), ("b", "NOUN")]] * 200).encode())
    path = write(tmp_path / "a.conllu.gz", whole[:len(whole) // 2])
    with pytest.raises(UserError, match=rf"^{path}: the gzip stream ends early") as info:
        conllu.read_conllu(path)
    assert "\n" not in str(info.value)


def test_empty_file_names_the_file(tmp_path):
    path = write(tmp_path / "a.conllu", "# only a comment\n\n")
    with pytest.raises(UserError, match=rf"^{path}: holds no sentences"):
        conllu.read_conllu(path)


# ---------------------------------------------------------------- vocabulary and arrays

def sents(*word_lists, tags=True):
    return [conllu.Sentence(list(w), ["NOUN"] * len(w) if tags else None, 1) for w in word_lists]


def test_vocab_keeps_words_seen_min_count_times_most_frequent_first():
    data = sents(["b", "a", "c"], ["a", "b", "a"], ["d"])
    assert conllu.build_vocab(data, 1) == ("<pad>", "<unk>", "a", "b", "c", "d")
    assert conllu.build_vocab(data, 2) == ("<pad>", "<unk>", "a", "b")
    assert conllu.build_vocab(data, 3) == ("<pad>", "<unk>", "a")
    assert conllu.build_vocab(data, 4) == ("<pad>", "<unk>")


def test_encode_pads_words_with_0_unknowns_with_1_and_tags_with_minus_1():
    vocab = ("<pad>", "<unk>", "a", "b")
    data = [conllu.Sentence(["a", "zz", "b"], ["DET", "NOUN", "VERB"], 1),
            conllu.Sentence(["b"], ["PUNCT"], 5)]
    x, y = conllu.encode(data, vocab)
    assert x.dtype == y.dtype == np.int32
    assert x.tolist() == [[2, 1, 3], [3, conllu.PAD, conllu.PAD]]
    tag = conllu.TAG_ID
    assert y.tolist() == [[tag["DET"], tag["NOUN"], tag["VERB"]], [tag["PUNCT"], -1, -1]]
    assert conllu.lengths_of(x).tolist() == [3, 1]
    _, untagged = conllu.encode(data, vocab, tagged=False)
    assert (untagged == conllu.PAD_TAG).all()


def test_batch_by_length_is_a_deterministic_permutation_sorted_per_window():
    rng = np.random.default_rng(0)
    n, minibatch = 1234, 4
    lengths = rng.integers(1, 40, n)
    order = rng.permutation(n)
    out = conllu.batch_by_length(order, lengths, minibatch)
    assert sorted(out.tolist()) == list(range(n))
    window = conllu.LENGTH_WINDOW * minibatch
    for a in range(0, n, window):
        assert sorted(out[a:a + window].tolist()) == sorted(order[a:a + window].tolist())
        assert (np.diff(lengths[out[a:a + window]]) >= 0).all()
    assert (conllu.batch_by_length(order, lengths, minibatch) == out).all()
    # Only `order` decides: another shuffle gives other windows.
    assert not (conllu.batch_by_length(rng.permutation(n), lengths, minibatch) == out).all()


# ---------------------------------------------------------------- a local HTTP server

class Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.routes (path -> bytes) and records each path asked for."""

    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.routes, srv.requests = {}, []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/r2.16/"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def files():
    """Small synthetic splits under the standard names: 3, 2 and 1 sentences."""
    train = [[("The", "DET"), ("dog", "NOUN"), ("runs", "VERB"), (".", "PUNCT")],
             [("A", "DET"), ("dog", "NOUN")], [("Yes", "INTJ")]]
    return {"en_ewt-ud-train.conllu": conllu_text(train).encode(),
            "en_ewt-ud-dev.conllu": conllu_text(train[:2]).encode(),
            "en_ewt-ud-test.conllu": conllu_text(train[1:2]).encode()}


@pytest.fixture(scope="module")
def sha256s(files):
    return {name: hashlib.sha256(raw).hexdigest() for name, raw in files.items()}


def serve(server, files, gz=False):
    for name, raw in files.items():
        server.routes["/r2.16/" + name] = gzip.compress(raw) if gz else raw
    return server.url


def pin(monkeypatch, sha256s):
    """Make the synthetic files the release, as far as the checksums go."""
    for name, sha in sha256s.items():
        monkeypatch.setitem(fetch.TREEBANK, name, fetch.TREEBANK[name]._replace(sha256=sha))


def listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


# ---------------------------------------------------------------- fetching

@pytest.mark.parametrize("gz", [False, True])
def test_fetch_stores_verified_files(tmp_path, server, files, sha256s, gz):
    lines = []
    got = fetch.fetch_treebank(tmp_path / "new" / "tb", base_url=serve(server, files, gz),
                               checksums=sha256s, log=lines.append)
    assert got == [tmp_path / "new" / "tb" / n for n in NAMES]
    for name in NAMES:
        assert (tmp_path / "new" / "tb" / name).read_bytes() == files[name]
    assert listing(tmp_path / "new" / "tb") == sorted(NAMES)  # no temp files left
    assert len(lines) == 3 and all(server.url in line for line in lines)


def test_checksum_mismatch_is_one_line_and_leaves_nothing(tmp_path, server, files, sha256s):
    bad = {**sha256s, "en_ewt-ud-train.conllu": "0" * 64}
    with pytest.raises(UserError) as info:
        fetch.fetch_treebank(tmp_path, ["en_ewt-ud-train.conllu"], base_url=serve(server, files),
                             checksums=bad)
    msg = str(info.value)
    assert "en_ewt-ud-train.conllu: sha256" in msg and "0" * 64 in msg
    assert str(tmp_path) in msg and "\n" not in msg
    assert listing(tmp_path) == []


def test_server_down_is_one_line_naming_the_folder(tmp_path, sha256s):
    with pytest.raises(UserError) as info:
        fetch.fetch_treebank(tmp_path / "tb", base_url="http://127.0.0.1:9/", checksums=sha256s)
    msg = str(info.value)
    assert msg.startswith(f"Could not download en_ewt-ud-train.conllu into {tmp_path / 'tb'}")
    assert f"nnmnist fetch --treebank {tmp_path / 'tb'}" in msg and "\n" not in msg
    assert listing(tmp_path / "tb") == []


def test_missing_file_on_the_server_keeps_what_arrived(tmp_path, server, files, sha256s):
    url = serve(server, {k: v for k, v in files.items() if "test" not in k})
    with pytest.raises(UserError, match="en_ewt-ud-test.conllu .*HTTP 404"):
        fetch.fetch_treebank(tmp_path, base_url=url, checksums=sha256s, log=lambda s: None)
    assert listing(tmp_path) == ["en_ewt-ud-dev.conllu", "en_ewt-ud-train.conllu"]


def test_offline_makes_no_request(tmp_path, server, files, sha256s, monkeypatch):
    monkeypatch.setenv("NNMNIST_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        fetch.fetch_treebank(tmp_path / "tb", base_url=serve(server, files), checksums=sha256s)
    assert "NNMNIST_OFFLINE=1" in str(info.value) and str(tmp_path / "tb") in str(info.value)
    assert server.requests == [] and not (tmp_path / "tb").exists()


def test_base_url_from_the_environment(tmp_path, server, files, sha256s, monkeypatch):
    monkeypatch.setenv("NNMNIST_TREEBANK_URL", serve(server, files))
    fetch.fetch_treebank(tmp_path, ["en_ewt-ud-dev.conllu.gz"], checksums=sha256s,
                         log=lambda s: None)
    assert listing(tmp_path) == ["en_ewt-ud-dev.conllu"]
    assert server.requests == ["/r2.16/en_ewt-ud-dev.conllu"]


def test_default_source_is_the_release_tag():
    """The pinned checksums hold only for the tag (the fixture points the default elsewhere)."""
    source = Path(fetch.__file__).read_text()
    assert ('"https://raw.githubusercontent.com/UniversalDependencies/UD_English-EWT/r2.16/"'
            in source)


# ---------------------------------------------------------------- through load_tagger_data and the CLI

def tagger_cfg(folder, **kw):
    return SimpleNamespace(**{**CFG, "DataDir": str(folder), **kw})


def test_load_fetches_missing_files(tmp_path, server, files, sha256s, monkeypatch):
    pin(monkeypatch, sha256s)
    monkeypatch.setenv("NNMNIST_TREEBANK_URL", serve(server, files))
    folder = tmp_path / "data" / "ud-en-ewt"
    folder.mkdir(parents=True)
    write(folder / "en_ewt-ud-dev.conllu.gz", files["en_ewt-ud-dev.conllu"], gz=True)
    lines = []
    data = conllu.load_tagger_data(tagger_cfg(folder), mnist.data_dir_of, log=lines.append)
    assert (len(data.trn_x), len(data.dev_x), len(data.tst_x)) == (3, 2, 1)
    assert "downloading" in lines[0] and str(folder) in lines[0]
    assert sorted(server.requests) == ["/r2.16/en_ewt-ud-test.conllu", "/r2.16/en_ewt-ud-train.conllu"]
    assert listing(folder) == ["en_ewt-ud-dev.conllu.gz", "en_ewt-ud-test.conllu",
                               "en_ewt-ud-train.conllu"]


def test_load_default_folder_is_created(tmp_path, server, files, sha256s, monkeypatch):
    pin(monkeypatch, sha256s)
    monkeypatch.setenv("NNMNIST_TREEBANK_URL", serve(server, files))
    cfg = tagger_cfg("", DataDir="")
    data = conllu.load_tagger_data(cfg, lambda c: tmp_path / "cache", log=lambda s: None)
    assert data.n_in == len(data.vocab) and listing(tmp_path / "cache" / "ud-en-ewt") == sorted(NAMES)


@pytest.mark.parametrize("how", ["env", "allow_fetch"])
def test_load_offline_is_one_line_naming_folder_and_file(tmp_path, server, files, monkeypatch, how):
    monkeypatch.setenv("NNMNIST_TREEBANK_URL", serve(server, files))
    if how == "env":
        monkeypatch.setenv("NNMNIST_OFFLINE", "yes")
    write(tmp_path / "en_ewt-ud-train.conllu", files["en_ewt-ud-train.conllu"])
    write(tmp_path / "en_ewt-ud-dev.conllu", files["en_ewt-ud-dev.conllu"])
    with pytest.raises(UserError) as info:
        conllu.load_tagger_data(tagger_cfg(tmp_path), mnist.data_dir_of,
                                allow_fetch=None if how == "env" else False)
    msg = str(info.value)
    assert msg.startswith(f"TestFile 'en_ewt-ud-test.conllu' not found in {tmp_path}")
    assert f"nnmnist fetch --treebank {tmp_path}" in msg and "copy" in msg and "\n" not in msg
    assert ("NNMNIST_OFFLINE" in msg) == (how == "env")
    assert server.requests == []


def test_load_download_failure_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(UserError) as info:
        conllu.load_tagger_data(tagger_cfg(tmp_path / "tb"), mnist.data_dir_of, log=lambda s: None)
    msg = str(info.value)
    assert str(tmp_path / "tb") in msg and "en_ewt-ud-train.conllu" in msg and "\n" not in msg
    assert "nnmnist fetch --treebank" in msg


def test_load_non_standard_name_is_not_fetched(tmp_path, server, files, monkeypatch):
    monkeypatch.setenv("NNMNIST_TREEBANK_URL", serve(server, files))
    for name in NAMES[1:]:
        write(tmp_path / name, files[name])
    with pytest.raises(UserError, match="^TrainFile 'mine.conllu' not found .*check the file names"):
        conllu.load_tagger_data(tagger_cfg(tmp_path, TrainFile="mine.conllu"), mnist.data_dir_of)
    assert server.requests == []


def test_cli_fetch_and_check(tmp_path, server, files, sha256s, monkeypatch, capsys):
    pin(monkeypatch, sha256s)
    monkeypatch.setenv("NNMNIST_TREEBANK_URL", serve(server, files))
    assert mnist.main(["--treebank", str(tmp_path)]) == 0
    assert listing(tmp_path) == sorted(NAMES)
    assert mnist.main(["--treebank", str(tmp_path)]) == 0
    assert "already" in capsys.readouterr().out
    assert mnist.main(["--check", "--treebank", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{tmp_path / n}: {s} sentences, {len(files[n]):,} bytes, sha256 ok"
                   for n, s in zip(NAMES, (3, 2, 1))]
    # A .gz copy checks against the uncompressed content; a changed file is reported.
    (tmp_path / "en_ewt-ud-dev.conllu").unlink()
    write(tmp_path / "en_ewt-ud-dev.conllu.gz", files["en_ewt-ud-dev.conllu"], gz=True)
    write(tmp_path / "en_ewt-ud-test.conllu", files["en_ewt-ud-dev.conllu"])
    assert mnist.main(["--check", "--treebank", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "en_ewt-ud-dev.conllu.gz: 2 sentences" in out and "test.conllu: 2 sentences" in out
    assert out.count("sha256 ok") == 2 and out.count("MISMATCH") == 1


def test_cli_default_folder_and_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NNMNIST_DATA", str(tmp_path))
    assert mnist.main(["--check", "--treebank"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'ud-en-ewt'}: no en_ewt-ud-train.conllu")
    assert err.count("\n") == 1
    assert mnist.main(["--treebank"]) == 2  # the default source is a closed port here
    err = capsys.readouterr().err
    assert f"into {tmp_path / 'ud-en-ewt'}" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        mnist.main(["--treebank", "--index-url", "http://127.0.0.1:9/"])


# ---------------------------------------------------------------- the real treebank

@pytest.fixture(scope="module")
def real_dir():
    found = next((d for d in TREEBANK_DIRS if all(conllu.resolve(d, n) for n in NAMES)), None)
    if found is None:
        pytest.skip(f"UD English-EWT not found in {', '.join(map(str, TREEBANK_DIRS))}")
    return found


def test_real_treebank_matches_the_pinned_checksums(real_dir):
    for name, entry in fetch.TREEBANK.items():
        data = conllu.read_bytes(conllu.resolve(real_dir, name))
        assert len(data) == entry.size
        assert hashlib.sha256(data).hexdigest() == entry.sha256


def test_real_treebank_loads(real_dir):
    data = conllu.load_tagger_data(tagger_cfg(real_dir, MinCount=2), mnist.data_dir_of,
                                   allow_fetch=False)
    assert (len(data.trn_x), len(data.dev_x), len(data.tst_x)) == (12_544, 2_001, 2_077)
    assert [entry.sentences for entry in fetch.TREEBANK.values()] == [12_544, 2_001, 2_077]
    assert data.trn_y.max() == len(conllu.UPOS) - 1 and data.vocab[:2] == ("<pad>", "<unk>")
