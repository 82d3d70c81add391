"""Part-of-speech data: CoNLL-U files (UD English-EWT), the word vocabulary and the padded
arrays the tagger trains on (docs/DATA.md, docs/MODELS.md).

A sentence becomes a row of word ids and a row of UPOS tag ids, padded at the end: word id 0
is padding, 1 the unknown word; tag -1 marks padding. Minibatches are cut from sentences of
about the same length (`batch_by_length`), so that little of a batch is padding.
"""
import gzip
import hashlib
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import fetch
from .. import fsio
from ..errors import UserError

# The 17 universal POS tags, in the order of their ids.
UPOS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON",
        "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X")
TAG_ID = {tag: i for i, tag in enumerate(UPOS)}
PAD, UNK = 0, 1          # word ids of padding and of a word not in the vocabulary
PAD_TAG = -1             # the tag id of padding
SUBFOLDER = "ud-en-ewt"  # where the treebank lives inside a data folder
SPLIT_FIELDS = ("TrainFile", "DevFile", "TestFile")
# Sentences per window sorted by length before minibatches are cut (`batch_by_length`).
LENGTH_WINDOW = 50


class Sentence(NamedTuple):
    words: list
    tags: list    # UPOS strings, or None for text without tags
    line: int     # the line of its first token in its file (1-based)


class TaggerData(NamedTuple):
    """The three splits as padded id arrays, with the vocabulary they were coded with."""
    trn_x: np.ndarray   # int32 (sentences, longest), 0 = padding
    trn_y: np.ndarray   # int32 (sentences, longest), -1 = padding
    dev_x: np.ndarray
    dev_y: np.ndarray
    tst_x: np.ndarray
    tst_y: np.ndarray
    vocab: tuple        # word of each id (ids 0 and 1: padding and the unknown word)
    n_in: int           # the vocabulary size

    @property
    def trn_lengths(self):
        return lengths_of(self.trn_x)


# ---------------------------------------------------------------- reading CoNLL-U

def read_bytes(path):
    """The content of a file, decompressed if it is gzip (by its first two bytes)."""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        if gz:
            with gzip.open(path, "rb") as f:
                return f.read()
        return Path(path).read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile):
        raise UserError(f"{path}: the gzip stream ends early or is corrupt "
                        "(a truncated download?)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({fsio.os_reason(exc)})") from None


def _open_text(path):
    """The lines of a text file, raw or gzip (by its first two bytes)."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line}: not UTF-8 text") from None


def read_conllu(path, need_tags=True):
    """The sentences of a CoNLL-U file (raw or .gz): each word's FORM and UPOS.

    Comment lines, multiword-token lines (ID `1-2`) and empty nodes (ID `1.1`) are skipped. A
    line that is not 10 tab-separated fields, a word ID out of sequence, or (with
    `need_tags`) a UPOS outside the 17 tags is an error naming the file and line.
    """
    sentences, words, tags, first = [], [], [], None
    lines = _open_text(path)

    def bad(n, why):
        return UserError(f"{path}: line {n}: {why}")

    for n, line in enumerate(lines, 1):
        if not line.strip():
            if words:
                sentences.append(Sentence(words, tags if need_tags else None, first))
                words, tags, first = [], [], None
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise bad(n, f"has {len(cols)} tab-separated fields, a CoNLL-U word line has 10")
        ident = cols[0]
        if "-" in ident or "." in ident:
            continue  # a multiword token's range, or an empty node
        if not ident.isdigit() or int(ident) != len(words) + 1:
            raise bad(n, f"word ID {ident!r} where {len(words) + 1} was expected")
        if not cols[1]:
            raise bad(n, "empty FORM field")
        tag = cols[3]
        if need_tags and tag not in TAG_ID:
            raise bad(n, f"UPOS {tag!r} is not one of the 17 universal tags")
        if first is None:
            first = n
        words.append(cols[1])
        tags.append(tag)
    if words:
        sentences.append(Sentence(words, tags if need_tags else None, first))
    if not sentences:
        raise UserError(f"{path}: holds no sentences")
    return sentences


def read_plain(path):
    """Sentences of a text file: one sentence a line, tokens separated by spaces."""
    out = []
    for n, line in enumerate(_open_text(path), 1):
        tokens = line.split()
        if tokens:
            out.append(Sentence(tokens, None, n))
    if not out:
        raise UserError(f"{path}: holds no sentences (one a line, tokens separated by spaces)")
    return out


def read_sentences(path):
    """A CoNLL-U file (its tags kept when every word has a UPOS) or plain text, by content:
    a file whose first non-comment line has 10 tab-separated fields is CoNLL-U."""
    for line in _open_text(path):
        if line.strip() and not line.startswith("#"):
            if len(line.split("\t")) == 10:
                try:
                    return read_conllu(path, need_tags=True)
                except UserError:
                    return read_conllu(path, need_tags=False)
            break
    return read_plain(path)


# ---------------------------------------------------------------- vocabulary and arrays

def build_vocab(sentences, min_count):
    """Words seen at least `min_count` times in the training sentences, most frequent first
    (ties: first seen first), after the padding and unknown-word entries."""
    counts = {}
    for s in sentences:
        for w in s.words:
            counts[w] = counts.get(w, 0) + 1
    reserved = ("<pad>", "<unk>")
    kept = [w for w, c in sorted(counts.items(), key=lambda wc: -wc[1])
            if c >= min_count and w not in reserved]
    return (*reserved, *kept)


def encode(sentences, vocab, tagged=True):
    """(x, y): int32 arrays (sentences, longest sentence) of word and tag ids, padded."""
    index = {w: i for i, w in enumerate(vocab) if i > UNK}  # a word spelled "<pad>" is unknown
    longest = max(len(s.words) for s in sentences)
    x = np.full((len(sentences), longest), PAD, np.int32)
    y = np.full((len(sentences), longest), PAD_TAG, np.int32)
    for r, s in enumerate(sentences):
        x[r, :len(s.words)] = [index.get(w, UNK) for w in s.words]
        if tagged and s.tags is not None:
            y[r, :len(s.tags)] = [TAG_ID[t] for t in s.tags]
    return x, y


def lengths_of(x):
    """Words per sentence of a padded id array."""
    return (np.asarray(x) != PAD).sum(axis=1)


def batch_by_length(order, lengths, minibatch):
    """`order` rearranged so that minibatches hold sentences of about the same length: each
    window of LENGTH_WINDOW minibatches is sorted by length (stably), and the window's
    minibatches are kept in that order. The shuffle before it decides which sentences meet in
    a window; the result depends only on `order`, so a resumed run cuts the same batches."""
    order = np.asarray(order)
    out = np.empty_like(order)
    window = LENGTH_WINDOW * minibatch
    for a in range(0, len(order), window):
        part = order[a:a + window]
        out[a:a + len(part)] = part[np.argsort(lengths[part], kind="stable")]
    return out


# ---------------------------------------------------------------- finding and loading

def tagger_dir(cfg, data_dir_of):
    """The folder of the treebank: DataDir, else `ud-en-ewt/` in the default data folder."""
    if getattr(cfg, "DataDir", ""):
        return Path(cfg.DataDir).expanduser()
    return Path(data_dir_of(cfg)) / SUBFOLDER


def resolve(folder, name, config_dir=None):
    """The path of `name` (raw, or with .gz added or removed) in `folder` (or, for a relative
    folder, beside the config), or None."""
    path = Path(name).expanduser()
    if path.is_absolute():
        bases = [path.parent]
    else:
        bases = [Path(folder)]
        if config_dir is not None and not Path(folder).is_absolute():
            bases.append(Path(config_dir) / folder)
    leaf = path.name
    variants = [leaf, leaf[:-3]] if leaf.endswith(".gz") else [leaf, leaf + ".gz"]
    for base in bases:
        for v in variants:
            p = Path(os.path.abspath(base / v))
            kind = fsio.file_kind(p)
            if kind is not None:
                raise UserError(f"{p}: is {kind}, not a CoNLL-U file")
            if p.is_file():
                return p
    return None


def load_tagger_data(cfg, data_dir_of, config_dir=None, allow_fetch=None, log=print):
    """The treebank a config names, found as `tagger_dir` says (DataDir, else `ud-en-ewt/`
    in the default data folder). Missing standard files are downloaded there when fetching is
    allowed (as for MNIST); otherwise a missing file is one line naming the folder."""
    folder = tagger_dir(cfg, data_dir_of)
    names = {field: str(getattr(cfg, field)) for field in SPLIT_FIELDS}
    missing = _missing(names, folder, config_dir)
    keys = [fetch.treebank_name(names[f]) for f in missing]
    if missing and all(keys) and allow_fetch is not False and not fetch.is_offline():
        log(f"Treebank not found ({', '.join(names[f] for f in missing)}); "
            f"downloading it into {folder}")
        fetch.fetch_treebank(folder, list(dict.fromkeys(keys)), log=log)
        missing = _missing(names, folder, config_dir)
    if missing:
        raise UserError(_missing_message(names, missing, folder, allow_fetch))
    return load_tagger(cfg, folder, config_dir)[0]


def _missing(names, folder, config_dir):
    """The fields whose file `resolve` cannot find."""
    return [f for f in SPLIT_FIELDS if resolve(folder, names[f], config_dir) is None]


def _missing_message(names, missing, folder, allow_fetch):
    """One line: what is missing, where it was looked for, how to get it."""
    files = ", ".join(f"{f} {names[f]!r}" for f in missing)
    text = f"{files} not found in {folder} (tried raw and .gz); "
    if not all(fetch.treebank_name(names[f]) for f in missing):
        return text + ("check the file names in the config, or point DataDir at their folder "
                       "(see docs/DATA.md)")
    text += (f"run `nnmnist fetch --treebank {folder}` or copy "
             f"en_ewt-ud-{{train,dev,test}}.conllu (raw or .gz) there by hand (see docs/DATA.md)")
    if fetch.is_offline():
        text += f" [fetching is off: {fetch.OFFLINE_ENV} is set]"
    elif allow_fetch is False:
        text += " [fetching is off for this run]"
    return text


def load_tagger(cfg, folder, config_dir=None):
    """Read the three splits a config names from `folder`; build the vocabulary from the
    training split (MinCount) and code all three with it. Returns (TaggerData, paths)."""
    paths = {}
    for field in SPLIT_FIELDS:
        name = getattr(cfg, field)
        found = resolve(folder, name, config_dir)
        if found is None:
            return None, {field: name}
        paths[field] = found
    trn = read_conllu(paths["TrainFile"])
    dev = read_conllu(paths["DevFile"])
    tst = read_conllu(paths["TestFile"])
    vocab = build_vocab(trn, cfg.MinCount)
    trn_x, trn_y = encode(trn, vocab)
    dev_x, dev_y = encode(dev, vocab)
    tst_x, tst_y = encode(tst, vocab)
    return TaggerData(trn_x, trn_y, dev_x, dev_y, tst_x, tst_y, vocab, len(vocab)), paths


# ---------------------------------------------------------------- `nnmnist fetch --treebank`

def cmd_fetch_treebank(dest):
    """Download whichever of the three standard files `dest` lacks (raw or .gz counts)."""
    missing = [name for name in fetch.TREEBANK if resolve(dest, name) is None]
    if not missing:
        print(f"The treebank is already in {dest} "
              f"(`nnmnist fetch --check --treebank {dest}` verifies it)")
        return 0
    fetch.fetch_treebank(dest, missing)
    print(f"The treebank is in {dest}")
    return 0


def cmd_check_treebank(dest):
    """Verify the sha256 of each file's uncompressed content and print its sentence count."""
    paths = {}
    for name in fetch.TREEBANK:
        paths[name] = resolve(dest, name)
        if paths[name] is None:
            raise UserError(f"{dest}: no {name} (raw or .gz); "
                            f"run `nnmnist fetch --treebank {dest}`")
    ok = True
    for name, path in paths.items():
        expected = fetch.TREEBANK[name]
        data = read_bytes(path)
        good = hashlib.sha256(data).hexdigest() == expected.sha256
        ok &= good
        count = len(read_conllu(path))
        print(f"{path}: {count:,} sentences, {len(data):,} bytes, "
              f"sha256 {'ok' if good else 'MISMATCH'}")
    return 0 if ok else 1
