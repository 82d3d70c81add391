"""The tagger's side of evaluate, predict and export (docs/MODELS.md).

    model = nnmnist.load_model("lstm-...-log-....best.npz")
    tags = model.predict([["The", "dog", "barks", "."]])   # [["DET", "NOUN", "VERB", "PUNCT"]]

Every tagger file keeps its vocabulary (`net.vocab`, one word per id), so words are coded as
the run coded them wherever the data now is; a word it does not know gets the unknown id.
The model is the training code's `Tagger` on the NumPy path, so its tags are the run's own.
An export holds the weights, the vocabulary and the tag list (`net.tags`), nothing else.
"""
import json
from pathlib import Path

import numpy as np

from .. import fsio
from ..errors import UserError
from ..run import checkpoint

SPLITS = (("dev", "DevFile"), ("tst", "TestFile"))
BATCH = 64  # sentences per forward pass when tagging


def is_tagger_file(mf):
    """Whether a checked model file holds the tagger (its network meta or its NetType says
    so; a file where the two disagree is refused by the tagger's loading, in one line)."""
    net, cfg = mf.meta.get("network"), mf.meta.get("config")
    return ((isinstance(net, dict) and net.get("kind") == "tagger")
            or str(cfg.get("NetType", "")).startswith("lstm"))


def tag_names():
    """The tags of the output's units, in order (a tagger's LabelCount is always 17)."""
    from ..data.conllu import UPOS
    return UPOS


class TaggerModel:
    """A trained tagger for inference: `predict` takes sentences (lists of tokens) and gives
    their UPOS tags; `forward`, `prepare_batch` and `count` are what `training.evaluate`
    scores with."""

    kind = "tagger"
    xp = np

    def __init__(self, tagger, config=None, path=None):
        self.tagger, self.config, self.path = tagger, config, path
        self.vocab = tagger.vocab
        self.tags = tag_names()

    @property
    def param_count(self):
        return self.tagger.param_count

    def forward(self, flow, x, labels=None):
        return self.tagger.forward(flow, x, labels)

    def prepare_batch(self, x, y):
        return self.tagger.prepare_batch(x, y)

    def count(self, y):
        return self.tagger.count(y)

    def encode(self, sentences):
        """Padded word ids (n, longest) of token lists; unknown words get the unknown id,
        and so does a token spelled like the padding entry (id 0 would end the sentence)."""
        from ..data.conllu import PAD, UNK, Sentence, encode
        if any(isinstance(s, str) for s in sentences):
            raise ValueError("a sentence is a list of tokens, not a string (use str.split())")
        rows = [s if isinstance(s, Sentence) else Sentence(list(s), None, 0) for s in sentences]
        if not rows:
            return np.zeros((0, 1), np.int32)
        if any(not r.words for r in rows):
            raise ValueError("every sentence needs at least one token")
        x, _ = encode(rows, self.vocab, tagged=False)
        inside = np.arange(x.shape[1])[None, :] < np.array([len(r.words) for r in rows])[:, None]
        x[inside & (x == PAD)] = UNK
        return x

    def predict_ids(self, sentences, batch=BATCH):
        """Tag ids, one int array per sentence (the argmax of `Tagger.forward`)."""
        from ..data.conllu import PAD
        from ..nn.tensor import Flow
        x = self.encode(sentences)
        flow = Flow(training=False)
        out = []
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            _, pred = self.tagger.forward(flow, xb[:, :max(int((xb != PAD).sum(1).max()), 1)])
            out += [row[row >= 0] for row in np.asarray(pred)]
        return out

    def predict(self, sentences, batch=BATCH):
        """The tags of each sentence, as lists of UPOS strings."""
        return [[self.tags[t] for t in row] for row in self.predict_ids(sentences, batch)]


# ---------------------------------------------------------------- loading

def build_tagger(cfg, vocab):
    from ..backends.cpu import NumpyCompute
    from ..nn.lstm import Tagger
    return Tagger(cfg, vocab, NumpyCompute(), np.random.default_rng(0))


def from_file(mf):
    """The TaggerModel of a checked tagger file: a checkpoint or best model is rebuilt as its
    run built it; an export's weights, vocabulary and tags are checked and loaded."""
    cfg = mf.config()
    if mf.kind != "export":
        from ..backends.cpu import NumpyCompute
        from ..run.state import build_network
        return TaggerModel(build_network(mf, cfg, NumpyCompute()), mf.meta.get("config"), mf.path)
    state = checkpoint.section(mf.arrays, checkpoint.NET)
    vocab, tags = (_strings(mf, name) for name in ("vocab", "tags"))
    if tags != tag_names():
        raise UserError(f"{mf.path}: field {checkpoint.NET}tags is not the list of the 17 "
                        f"universal POS tags this nnmnist tags with (a damaged or foreign file)")
    tagger = build_tagger(cfg, vocab)
    unexpected = sorted(set(state) - set(tagger.store.names) - {"vocab", "tags"})
    if unexpected:
        raise UserError(f"{mf.path}: field {checkpoint.NET}{unexpected[0]} is not part of an "
                        f"exported tagger (a damaged or foreign file)")
    weights = {name: state[name] for name in tagger.store.names if name in state}
    fresh = json.dumps(np.random.default_rng(0).bit_generator.state)
    try:
        tagger.load_state_dict({**weights, "vocab": np.array(vocab), "rng": np.array(fresh)})
    except UserError as exc:
        raise UserError(f"{mf.path}: {exc}") from None
    return TaggerModel(tagger, mf.meta.get("config"), mf.path)


def _strings(mf, name):
    a = mf.array(checkpoint.NET + name)
    if a.dtype.kind != "U" or a.ndim != 1 or not len(a):
        raise UserError(f"{mf.path}: field {checkpoint.NET}{name} is not a list of strings "
                        f"(a damaged or foreign file)")
    return tuple(str(w) for w in a.tolist())


# ---------------------------------------------------------------- export

def export_arrays(mf):
    """(network meta, arrays) of a tagger checkpoint or best model's export: the weights under
    their training names, the vocabulary and the tag list; no generator, no optimizer."""
    model = from_file(mf)
    state = {k: v for k, v in model.tagger.state_dict().items() if k != "rng"}
    state["tags"] = np.array(model.tags)
    return model.tagger.meta(), checkpoint.flatten(checkpoint.NET, state)


# ---------------------------------------------------------------- evaluate

def split_paths(mf, cfg, data_dir=None):
    """The dev and test files of a tagger's run, found as the run found them: in the data
    folder it recorded, else as the config
    says; `data_dir` (evaluate --data) replaces both."""
    from ..data.conllu import SUBFOLDER, resolve, tagger_dir
    from ..data.mnist import data_dir_of
    train = mf.meta.get("train")
    train = train if isinstance(train, dict) else {}
    if data_dir is not None:
        places = [(Path(data_dir).expanduser(), None)]
    else:
        places = []
        recorded = train.get("data_dir")
        if isinstance(recorded, str) and recorded:
            places.append((Path(recorded), None))  # the treebank's own folder
            if not cfg.DataDir:  # files written before the folder itself was recorded
                places.append((Path(recorded) / SUBFOLDER, None))
        places.append((tagger_dir(cfg, data_dir_of), train.get("config_dir")))
    paths = {}
    for name, field in SPLITS:
        value = getattr(cfg, field)
        found = next((p for folder, config_dir in places
                      if (p := resolve(folder, value, config_dir)) is not None), None)
        if found is None:
            raise UserError(f"{field} {value!r} not found in {places[0][0]} (tried raw and .gz); "
                            f"give the treebank's folder with --data DIR")
        paths[name] = found
    return paths


def tagger_sets(paths, model):
    """(name, x, y) of each split, coded with the model's own vocabulary and sorted by length
    as a run scores them (so the loss is the log's too)."""
    from ..data.conllu import encode, read_conllu
    from ..run.training import by_length
    out = []
    for name, path in paths.items():
        x, y = encode(read_conllu(path), model.vocab)
        out.append((name, *by_length(x, y)))
    return out


# ---------------------------------------------------------------- predict

def read_input(path):
    """The sentences of a text or CoNLL-U file (`read_sentences`), and its lines when it is
    CoNLL-U (to write back with the predicted tags), else None."""
    from ..data import conllu
    path = Path(path).expanduser()
    kind = fsio.file_kind(path)
    if kind is not None:
        raise UserError(f"{path}: is {kind}, not a text or CoNLL-U file")
    if not path.exists():
        raise UserError(f"{path}: input file not found")
    try:
        sentences = conllu.read_sentences(path)
        lines = conllu._open_text(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({fsio.os_reason(exc)})") from None
    is_conllu = any(len(line.split("\t")) == 10 for line in lines
                    if line.strip() and not line.startswith("#"))
    return sentences, (lines if is_conllu else None)


def fill_upos(lines, tags):
    """CoNLL-U `lines` with each word line's UPOS replaced by the next of `tags`; comments,
    multiword-token and empty-node lines and every other column as they were."""
    it = iter(tags)
    out = []
    for line in lines:
        if line.strip() and not line.startswith("#"):
            cols = line.split("\t")
            if cols[0].isdigit():
                cols[3] = next(it)
                line = "\t".join(cols)
        out.append(line)
    return "\n".join(out) + "\n"


def predict_text(model, path):
    """(text to write, accuracy line or None) for a text or CoNLL-U input file."""
    sentences, lines = read_input(path)
    predicted = model.predict(sentences)
    if lines is None:
        return "".join(" ".join(tags) + "\n" for tags in predicted), None
    text = fill_upos(lines, [t for tags in predicted for t in tags])
    if any(s.tags is None for s in sentences):
        return text, None
    gold = [t for s in sentences for t in s.tags]
    right = sum(g == p for g, p in zip(gold, (t for tags in predicted for t in tags)))
    return text, (f"{path}: token accuracy {100.0 * right / len(gold):.2f} "
                  f"({right}/{len(gold)}) against its UPOS column")
