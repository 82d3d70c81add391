"""The files of a resumed run: the log beside a checkpoint, cut back to where it stood.

A resumed run (`lifecycle.Run.from_checkpoint`) continues to MaxEpoch with the checkpoint's
config (plus any `--set` that keeps the run the same), appending to the log and `.jsonl`
beside the checkpoint after cutting them back to where they stood when the checkpoint's state
was taken. The data is found where the run found it, whatever the current folder.
"""
import os
import sys
from pathlib import Path

from ..errors import UserError


def log_file_of(ckpt_path):
    """The log beside a checkpoint: same name, `.txt` in place of `.ckpt.npz`."""
    ckpt_path = Path(ckpt_path)
    name = ckpt_path.name
    stem = name[:-len(".ckpt.npz")] if name.endswith(".ckpt.npz") else ckpt_path.stem
    return ckpt_path.with_name(stem + ".txt")


def cut_back(mf, log_file):
    """Cut the log and the .jsonl back to where they stood when the checkpoint's state was
    taken, so that parts written after it (by a run killed outright) are not there twice.
    If either file does not begin with what the checkpoint recorded, both are left whole (a
    warning says why) and the resumed run appends after them."""
    from .log import metrics_path, prefix_problem
    mark = mf.meta.get("log")
    files = ((log_file, "log"), (metrics_path(log_file), "jsonl"))
    try:
        marks = [(path, int(mark[key][0]), str(mark[key][1])) for path, key in files]
    except (TypeError, KeyError, IndexError, ValueError):
        return  # a checkpoint without the mark (or none to keep): append as before
    for path, size, digest in marks:
        why = prefix_problem(path, size, digest)
        if why is not None:
            print(f"warning: {path}: not cut back to the checkpoint ({why}); "
                  "appending after its end", file=sys.stderr)
            return
    for path, size, _ in marks:
        try:
            os.truncate(path, size)
        except OSError as exc:
            from ..fsio import os_reason
            raise UserError(f"{path}: cannot cut back to the checkpoint ({os_reason(exc)})") from None
