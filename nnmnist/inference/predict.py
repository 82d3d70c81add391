"""`nnmnist predict MODEL INPUT [-o OUT]`: label the images of an IDX file, or tag text.

For an MLP, INPUT is an IDX image file, raw or gzip, in either naming style
(`t10k-images.idx3-ubyte` or `t10k-images-idx3-ubyte`, each with or without `.gz`). Writes a
CSV with a header and one row per image: its index, the predicted label and that label's
probability.

For a tagger, INPUT is a CoNLL-U file (raw or gzip) or plain text, one sentence a line with
tokens separated by spaces (told apart by content). Plain text gives one line of UPOS tags
per sentence; CoNLL-U gives the same file with its UPOS column filled with the predicted
tags (comments, multiword-token lines and the other columns as they were; gzip when OUT
ends in `.gz`), and, when its UPOS column held tags, the token accuracy against them on
standard error.

Without `-o` the output goes to standard output; with it the file is written whole or not at
all.
"""
import argparse
import io
import sys
from pathlib import Path

import numpy as np

from .. import fsio
from ..errors import UserError, report_errors


def find_images(name):
    """The IDX file a name means: the path itself, or its other naming style / gzip twin."""
    from ..data.mnist import resolve_data_file
    path = Path(name).expanduser()
    if path.is_file():
        return path
    found = resolve_data_file(path.name, path.parent)
    if found is None:
        raise UserError(f"{name}: image file not found (also tried the other naming style "
                        f"and .gz in {path.parent})")
    return found


def predictions_csv(labels, probs):
    out = io.StringIO()
    out.write("index,label,probability\n")
    for i, (label, p) in enumerate(zip(labels, probs)):
        out.write(f"{i},{int(label)},{p:.6f}\n")
    return out.getvalue()


def predict_file(model_path, images_path, output=None):
    """Label every image; return (labels, probabilities) and write the CSV."""
    from ..data.mnist import read_idx_images
    from .model import load_model
    model = load_model(model_path)
    if getattr(model, "kind", None) == "tagger":
        return tag_file(model, images_path, output)
    path = find_images(images_path)
    images = read_idx_images(path)
    if images.shape[1] != model.n_in:
        raise UserError(f"{path}: images have {images.shape[1]} pixels but the model "
                        f"{model_path} takes {model.n_in}")
    probs = model.predict_proba(images)
    labels = probs.argmax(axis=1)
    best = probs[np.arange(len(labels)), labels]
    write_output(predictions_csv(labels, best), output)
    return labels, best


def write_output(text, output):
    """`text` (str, or bytes for a file) to standard output, or whole to the file `output`
    (never half of it)."""
    if output is None:
        sys.stdout.write(text)
        return
    if not Path(output).parent.is_dir():
        raise UserError(f"{output}: folder {Path(output).parent} does not exist")
    fsio.atomic_write(output, text)  # a failure is a one-line error naming the file


def tag_file(model, input_path, output=None):
    """Tag a text or CoNLL-U file with a tagger; write the tags (see the module's doc) and,
    for CoNLL-U with gold tags, the token accuracy to standard error. Returns the tags."""
    from .tagging import predict_text
    text, accuracy = predict_text(model, input_path)
    if output is not None and str(output).endswith(".gz"):  # as named: a gzip file
        import gzip
        write_output(gzip.compress(text.encode("utf-8"), mtime=0), output)
    else:
        write_output(text, output)
    if accuracy is not None:
        print(accuracy, file=sys.stderr)
    return text


def main(argv=None, prog="nnmnist predict"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("model", help="a .ckpt.npz, .best.npz or exported model file")
    p.add_argument("input", help="an IDX image file (raw or .gz, either naming style); for a "
                   "tagger, a CoNLL-U or plain text file (one sentence a line)")
    p.add_argument("-o", "--output", help="the CSV (the tags, for a tagger) to write "
                   "(default: standard output)")
    args = p.parse_args(argv)
    return report_errors(lambda: predict_file(args.model, args.input, args.output) and 0)

