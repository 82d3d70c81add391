"""`nnmnist predict MODEL IMAGES [-o preds.csv]`: label the images of an IDX file.

IMAGES is an IDX image file, raw or gzip, in either naming style (`t10k-images.idx3-ubyte` or
`t10k-images-idx3-ubyte`, each with or without `.gz`). Writes a CSV with a header and one row
per image: its index, the predicted label and that label's probability. Without `-o` the CSV
goes to standard output.
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
    path = find_images(images_path)
    images = read_idx_images(path)
    if images.shape[1] != model.n_in:
        raise UserError(f"{path}: images have {images.shape[1]} pixels but the model "
                        f"{model_path} takes {model.n_in}")
    probs = model.predict_proba(images)
    labels = probs.argmax(axis=1)
    best = probs[np.arange(len(labels)), labels]
    text = predictions_csv(labels, best)
    if output is None:
        sys.stdout.write(text)
    else:
        if not Path(output).parent.is_dir():
            raise UserError(f"{output}: folder {Path(output).parent} does not exist")
        fsio.atomic_write(output, text)  # a failure is a one-line error naming the file
    return labels, best


def main(argv=None, prog="nnmnist predict"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("model", help="a .ckpt.npz, .best.npz or exported model file")
    p.add_argument("images", help="an IDX image file (raw or .gz, either naming style)")
    p.add_argument("-o", "--output", help="the CSV to write (default: standard output)")
    args = p.parse_args(argv)
    return report_errors(lambda: predict_file(args.model, args.images, args.output) and 0)

