"""The tagger through the run machinery: exact resume from a checkpoint, the log's shape,
batching by length, and the config checks that belong to it."""
import numpy as np
import pytest

from nnmnist.data.conllu import PAD, PAD_TAG, Sentence, build_vocab, encode, TaggerData, UPOS
from nnmnist.errors import UserError
from nnmnist.run import config
from nnmnist.run.config import Config, TAGGER_NETS
from nnmnist.run.log import RunLog
from nnmnist.run.training import Trainer

from test_checkpoint import assert_same_run, full_run, interrupted_run


def synthetic_tagger_data(seed=0, n=(60, 12, 12)):
    """Sentences whose tags follow from their words (each word has one tag), lengths 1-9."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(40)]
    tag_of = {w: UPOS[i % len(UPOS)] for i, w in enumerate(words)}

    def make(count):
        out = []
        for i in range(count):
            ws = list(rng.choice(words, size=rng.integers(1, 10)))
            out.append(Sentence(ws, [tag_of[w] for w in ws], i + 1))
        return out
    trn, dev, tst = (make(c) for c in n)
    vocab = build_vocab(trn, 1)
    arrays = [a for part in (trn, dev, tst) for a in encode(part, vocab)]
    return TaggerData(*arrays, vocab=vocab, n_in=len(vocab))


def tagger_cfg(**fields):
    base = dict(NetType="lstmtop", HiddenSize=8, EmbedSize=5, TrainTop=3, LabelCount=17,
                Layers=2, MinibatchSize=7, MaxEpoch=3, IterPerEpoch=2, RandomSeed=5,
                LossGrad="mean", TrainFile="t", DevFile="d", TestFile="s")
    base.update(fields)
    return Config(**base)


@pytest.mark.parametrize("opt", ["adam", "adagrad"])
@pytest.mark.parametrize("net", TAGGER_NETS)
def test_tagger_resume_is_exact(tmp_path, net, opt):
    cfg = tagger_cfg(NetType=net, OptType=opt, LearningRate=0.001 if opt == "adam" else 0.05)
    data = synthetic_tagger_data()
    full = full_run(cfg, data, tmp_path)
    first, second, _ = interrupted_run(cfg, data, tmp_path, at=3)
    assert_same_run(full, first, second)


def test_tagger_log_counts_tokens_and_learns(tmp_path):
    data = synthetic_tagger_data()
    cfg = tagger_cfg(NetType="lstm", MaxEpoch=8, HiddenSize=16, EmbedSize=8, LearningRate=0.01)
    log = RunLog(console=False)
    result = Trainer(cfg, data).train(log)
    tokens = int((data.trn_y >= 0).sum())
    assert f"Info: #Tokens: {tokens}, {int((data.dev_y >= 0).sum())}, " in "\n".join(log.lines)
    part = [r for r in log.records if r["type"] == "part"][0]
    assert 0 < part["train_total"] <= tokens  # a part's tokens, not its sentences
    assert result.best_dev > 60  # each word has one tag: a learnable task
    assert any(line.startswith("$ ") for line in log.lines)
    assert log.lines[-2].startswith("AvgTime: fp: ")


def test_batches_are_cut_by_length():
    data = synthetic_tagger_data()
    t = Trainer(tagger_cfg(MinibatchSize=5), data)
    t.data_rng.shuffle(t.order)
    from nnmnist.data.conllu import batch_by_length
    order = batch_by_length(t.order, t.lengths, 5)
    assert sorted(order.tolist()) == list(range(len(order)))
    window = order[:250]
    assert (np.diff(t.lengths[window]) >= 0).all()


def test_padding_ids():
    data = synthetic_tagger_data()
    assert ((data.trn_x == PAD) == (data.trn_y == PAD_TAG)).all()


@pytest.mark.parametrize("fields,message", [
    ({"Layers": 3}, "field Layers = 3: must be 2 for lstmtop"),
    ({"LabelCount": 10}, "field LabelCount = 10: must be 17"),
    ({"TrainTop": 9}, "TrainTop = 9: k must be between 1 and HiddenSize (8)"),
    ({"TrainTop": 33, "TopKScope": "whole"}, "k must be between 1 and 4 x HiddenSize (32)"),
    ({"TopKScope": "row"}, "field TopKScope = \"row\": must be one of gate, whole"),
    ({"DevFile": ""}, "field DevFile = \"\": must name a file"),
    ({"EmbedSize": 0}, "field EmbedSize = 0: must be >= 1"),
])
def test_config_checks(fields, message):
    raw = {k: v for k, v in tagger_cfg().__dict__.items()}
    raw.update(fields)
    with pytest.raises(UserError) as err:
        config.from_dict(raw, "postag.json")
    assert message in str(err.value) and str(err.value).startswith("postag.json: ")


def test_mlp_header_has_no_tagger_fields():
    assert not any(line.startswith(("EmbedSize", "DevFile", "TopKScope", "MinCount"))
                   for line in Config().header_lines())
    lines = tagger_cfg().header_lines()
    assert "EmbedSize: 5" in lines and not any(line.startswith("TrainLabelFile") for line in lines)


# -- the shipped config on the real treebank --------------------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TREEBANK = next((d for d in (REPO.parent / "shared" / "data" / "ud-en-ewt",
                             REPO / "shared" / "data" / "ud-en-ewt")
                 if (d / "en_ewt-ud-train.conllu.gz").is_file()), None)


@pytest.mark.skipif(TREEBANK is None, reason="UD English-EWT not found beside the checkout")
@pytest.mark.parametrize("sets", [[], ["--set", "NetType=lstmtop", "--set", "TrainTop=3"]],
                         ids=["lstm", "lstmtop"])
def test_postag_config_trains_on_the_treebank(tmp_path, sets):
    """`python run.py configs/postag.json` (shrunk: a narrow network, one part of one epoch)."""
    argv = [sys.executable, str(REPO / "run.py"), str(REPO / "configs" / "postag.json"),
            "--set", f"DataDir={TREEBANK}", "--set", "HiddenSize=8", "--set", "EmbedSize=8",
            "--set", "MaxEpoch=1", "--set", "IterPerEpoch=1", "--set", "RandomSeed=1",
            "--set", "MinCount=50", *sets, "--log-dir", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    log = next(tmp_path.glob("*-log-*.txt")).read_text()
    assert "Info: #Tokens: 204577, 25147, 25094 (trn, dev, tst)" in log
    assert "00:00: loss: " in log and "\t dev: loss: " in log and "$ " in log
    assert "Time: fp: " in log and "#################### Run End" in log
