"""evaluate, predict and export for the tagger's files: checkpoints, best models and exports."""
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnmnist
from nnmnist.backends.cpu import NumpyCompute
from nnmnist.data.conllu import UPOS, encode, read_conllu, read_plain
from nnmnist.inference import evaluate as evaluate_cmd
from nnmnist.inference import export as export_cmd
from nnmnist.inference import predict as predict_cmd
from nnmnist.nn.tensor import Flow
from nnmnist.run import checkpoint
from nnmnist.run.lifecycle import start_run
from nnmnist.run.state import build_network


@pytest.fixture(autouse=True)
def default_threads():
    """evaluate applies the run's Threads to this process, as a run does; put the libraries'
    defaults back so that the other tests see them."""
    yield
    from nnmnist.kernels import set_num_threads
    set_num_threads(0)


REPO = Path(__file__).resolve().parents[2]
TIMES = re.compile(r"time = \d+\.\d+s")
LEXICON = {"DET": ["the", "a"], "ADJ": ["big", "red", "old"], "NOUN": ["dog", "cat", "park", "man"],
           "VERB": ["sees", "runs", "eats"], "ADP": ["in", "on"], "PROPN": ["Kim", "Lee"],
           "PUNCT": ["."]}


def synthetic_sentences(rng, n):
    """(words, tags) of n short sentences from a toy grammar."""
    out = []
    for _ in range(n):
        tags = (["PROPN"] if rng.random() < 0.3 else ["DET"] + ["ADJ"] * int(rng.integers(0, 2))
                + ["NOUN"])
        tags += ["VERB", "DET", "NOUN"]
        if rng.random() < 0.5:
            tags += ["ADP", "DET", "NOUN"]
        tags += ["PUNCT"]
        words = [LEXICON[t][int(rng.integers(len(LEXICON[t])))] for t in tags]
        out.append((words, tags))
    return out


def conllu_text(sentences, multiword=False):
    lines = []
    for n, (words, tags) in enumerate(sentences, 1):
        lines += [f"# sent_id = s{n}", f"# text = {' '.join(words)}"]
        for i, (w, t) in enumerate(zip(words, tags), 1):
            if multiword and i == 2:
                lines.append(f"2-3\t{words[1]}{words[2]}\t_\t_\t_\t_\t_\t_\t_\t_")
            lines.append(f"{i}\t{w}\t{w.lower()}\t{t}\tXP\tNum=Sing\t{max(i - 1, 0)}\tdep\t_\t_")
        lines.append("")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny two-epoch tagger run: its folder, log, checkpoint and best model."""
    root = tmp_path_factory.mktemp("tagger")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(4)
    for name, n in (("train", 40), ("dev", 12), ("test", 12)):
        (data / f"{name}.conllu").write_text(conllu_text(synthetic_sentences(rng, n)))
    config = {"NetType": "lstm", "HiddenSize": 8, "EmbedSize": 6, "LabelCount": 17, "Layers": 2,
              "TrainFile": "train.conllu", "DevFile": "dev.conllu", "TestFile": "test.conllu",
              "MinibatchSize": 4, "MaxEpoch": 2, "IterPerEpoch": 1, "RandomSeed": 1,
              "LossGrad": "mean", "Kernels": "numpy", "DataDir": str(data)}
    (root / "config.json").write_text(json.dumps(config))
    logs = root / "logs"
    logs.mkdir()
    start_run(str(root / "config.json"), log_dir=str(logs), console=False)
    (log,) = logs.glob("*.txt")
    stem = log.name[:-4]
    return {"root": root, "data": data, "log": log, "ckpt": logs / f"{stem}.ckpt.npz",
            "best": logs / f"{stem}.best.npz"}


def cli(*args, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": str(REPO), "NNMNIST_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "nnmnist", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)


def own_tags(model_file, sentences):
    """The tags Tagger.forward's argmax gives, computed here without the predict code."""
    mf = checkpoint.read(model_file)
    tagger = build_network(mf, mf.config(), NumpyCompute())
    x, _ = encode(sentences, tagger.vocab, tagged=False)
    _, pred = tagger.forward(Flow(training=False), x)
    return [[UPOS[t] for t in row[:len(s.words)]] for row, s in zip(pred, sentences)]


# ---------------------------------------------------------------- evaluate

def test_evaluate_best_gives_the_logs_best_dev_and_test(run, capsys):
    text = run["log"].read_text()
    lines = text.splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("$ "))
    best_dev, test_at_best = lines[last][2:].split(" | ")
    dev_line = next(line for line in reversed(lines[:last]) if line.startswith("\t dev: "))
    dev, tst = evaluate_cmd.evaluate_file(run["best"], backend="cpu")
    assert f"{dev.acc:.2f}" == best_dev and f"{tst.acc:.2f}" == test_at_best
    printed = capsys.readouterr().out.splitlines()
    assert TIMES.sub("", printed[0]) == TIMES.sub("", dev_line)
    assert printed[1].startswith("\t tst: loss: ")
    assert dev.total == sum(len(s.words) for s in read_conllu(run["data"] / "dev.conllu"))


def test_evaluate_from_another_folder_and_with_data(run, tmp_path):
    r = cli("evaluate", run["ckpt"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [line.split(":")[0] for line in r.stdout.splitlines()] == ["\t dev", "\t tst"]
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("dev.conllu", "test.conllu"):  # gzip: found as the run would find it
        (moved / f"{name}.gz").write_bytes(gzip.compress((run["data"] / name).read_bytes()))
    again = cli("evaluate", run["ckpt"], "--data", moved, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert TIMES.sub("", again.stdout) == TIMES.sub("", r.stdout)


def test_evaluate_without_the_data_is_one_line(run, tmp_path):
    r = cli("evaluate", run["best"], "--data", tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "DevFile 'dev.conllu' not found in" in r.stderr


# ---------------------------------------------------------------- predict

def test_predict_plain_text_gives_the_models_own_argmax(run, tmp_path):
    text = tmp_path / "in.txt"
    text.write_text("the big dog sees Kim .\n\nLee eats a zebra in the park .\n  a  cat  \n")
    out = tmp_path / "tags.txt"
    assert predict_cmd.main([str(run["best"]), str(text), "-o", str(out)]) == 0
    got = [line.split() for line in out.read_text().splitlines()]
    assert got == own_tags(run["best"], read_plain(text))
    assert [len(t) for t in got] == [6, 8, 2]  # blank lines skipped, "zebra" unknown
    model = nnmnist.load_model(run["best"])
    assert model.predict([["the", "big", "dog", "sees", "Kim", "."]]) == [got[0]]
    with pytest.raises(ValueError, match="list of tokens"):
        model.predict(["the big dog"])


def test_predict_conllu_fills_upos_and_reports_accuracy(run, tmp_path, capsys):
    rng = np.random.default_rng(9)
    sentences = synthetic_sentences(rng, 5)
    source = conllu_text(sentences, multiword=True)
    path = tmp_path / "in.conllu.gz"
    path.write_bytes(gzip.compress(source.encode()))
    assert predict_cmd.main([str(run["ckpt"]), str(path)]) == 0
    captured = capsys.readouterr()
    tags = own_tags(run["ckpt"], read_conllu(path))
    flat = [t for row in tags for t in row]
    old, new = source.splitlines(), captured.out.splitlines()
    assert len(old) == len(new)
    filled = []
    for a, b in zip(old, new):
        if a.startswith("#") or not a or "-" in a.split("\t")[0]:
            assert a == b
            continue
        ca, cb = a.split("\t"), b.split("\t")
        assert ca[:3] + ca[4:] == cb[:3] + cb[4:]
        filled.append(cb[3])
    assert filled == flat
    gold = [t for _, ts in sentences for t in ts]
    right = sum(g == p for g, p in zip(gold, flat))
    assert captured.err == (f"{path}: token accuracy {100.0 * right / len(gold):.2f} "
                            f"({right}/{len(gold)}) against its UPOS column\n")


def test_predict_conllu_without_gold_tags_reports_nothing(run, tmp_path, capsys):
    source = conllu_text(synthetic_sentences(np.random.default_rng(2), 2)).replace(
        "\tDET\t", "\t_\t")
    path = tmp_path / "in.conllu"
    path.write_text(source)
    out = tmp_path / "out.conllu"
    assert predict_cmd.main([str(run["best"]), str(path), "-o", str(out)]) == 0
    assert capsys.readouterr().err == ""
    assert [line.split("\t")[3] for line in out.read_text().splitlines()
            if line and not line.startswith("#")] == [
        t for row in own_tags(run["best"], read_conllu(path, need_tags=False)) for t in row]
    zipped = tmp_path / "out.conllu.gz"
    assert predict_cmd.main([str(run["best"]), str(path), "-o", str(zipped)]) == 0
    assert gzip.decompress(zipped.read_bytes()).decode() == out.read_text()


@pytest.mark.parametrize("case", ["malformed", "empty", "binary", "folder", "missing", "bad id"])
def test_predict_input_mistakes_are_one_line_and_write_nothing(run, tmp_path, case):
    path = tmp_path / "input.conllu"
    good = conllu_text(synthetic_sentences(np.random.default_rng(1), 2)).splitlines()
    if case == "malformed":  # line 4: the second word with a field missing
        good[3] = "\t".join(good[3].split("\t")[:8])
        path.write_text("\n".join(good) + "\n")
        expect = f"{path}: line 4: has 8 tab-separated fields"
    elif case == "bad id":
        good[4] = "7" + good[4][1:]
        path.write_text("\n".join(good) + "\n")
        expect = f"{path}: line 5: word ID '7' where 3 was expected"
    elif case == "empty":
        path.write_text("\n\n")
        expect = f"{path}: holds no sentences"
    elif case == "binary":
        path.write_bytes(b"PK\x03\x04\xff\xfe\x00\x81" * 10)
        expect = f"{path}: line 1: not UTF-8 text"
    elif case == "folder":
        path.mkdir()
        expect = f"{path}: is a folder"
    else:
        expect = f"{path}: input file not found"
    out = tmp_path / "out.txt"
    r = cli("predict", run["best"], path, "-o", out)
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {expect}") and r.stderr.count("\n") == 1, r.stderr
    assert not out.exists() and r.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["input.conllu"] or case == "missing"


# ---------------------------------------------------------------- export

def test_export_holds_weights_vocab_and_tags_and_predicts_the_same(run, tmp_path, capsys):
    dest = tmp_path / "model.npz"
    assert export_cmd.main([str(run["ckpt"]), "-o", str(dest)]) == 0
    assert capsys.readouterr().out.strip().endswith("layer widths [6, 8, 8, 17]")
    mf = checkpoint.read(dest)
    assert mf.kind == "export" and mf.meta["network"]["kind"] == "tagger"
    src = checkpoint.read(run["ckpt"])
    assert [str(t) for t in mf.arrays["net.tags"]] == list(UPOS)
    assert np.array_equal(mf.arrays["net.vocab"], src.arrays["net.vocab"])
    weights = {k for k in mf.arrays if k not in ("net.vocab", "net.tags")}
    assert weights == {k for k in src.arrays if k.startswith("net.")} - {"net.vocab", "net.rng"}
    for k in weights:
        assert np.array_equal(mf.arrays[k], src.arrays[k]), k
    text = tmp_path / "in.txt"
    text.write_text("the old man runs in a park .\nKim sees the red cat .\n")
    assert predict_cmd.main([str(dest), str(text)]) == 0
    from_export = capsys.readouterr().out
    assert [line.split() for line in from_export.splitlines()] == own_tags(
        run["ckpt"], read_plain(text))
    exported = evaluate_cmd.evaluate_file(dest)
    direct = evaluate_cmd.evaluate_file(run["ckpt"], backend="cpu")
    assert [(s.correct, s.total) for s in exported] == [(s.correct, s.total) for s in direct]
    assert [s.loss for s in exported] == pytest.approx([s.loss for s in direct], rel=1e-5)


def test_export_refusals_are_one_line(run, tmp_path):
    dest = tmp_path / "model.npz"
    assert export_cmd.main([str(run["best"]), "-o", str(dest)]) == 0
    r = cli("export", dest, "-o", tmp_path / "again.npz")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "expected a checkpoint or best" in r.stderr
    mf = checkpoint.read(dest)
    meta = {k: v for k, v in mf.meta.items() if k not in ("format", "version", "kind")}
    bad = tmp_path / "bad.npz"
    checkpoint.save(bad, "export", meta, {**mf.arrays, "net.tags": np.array(UPOS[::-1])})
    r = cli("predict", bad, tmp_path / "x.txt")
    assert r.returncode == 2 and r.stderr == (
        f"error: {bad}: field net.tags is not the list of the 17 universal POS tags this nnmnist "
        f"tags with (a damaged or foreign file)\n")
    arrays = {k: v for k, v in mf.arrays.items() if k != "net.out.b"}
    checkpoint.save(bad, "export", meta, arrays)
    r = cli("evaluate", bad)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "out.b" in r.stderr, r.stderr
    assert not (tmp_path / "again.npz").exists()
