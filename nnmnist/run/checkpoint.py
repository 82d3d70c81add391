"""Model and checkpoint files: one `.npz` format, written atomically and read with checks.

Every file is a plain `.npz` (it loads with `numpy.load(path, allow_pickle=False)`) holding
named arrays and one `meta` entry: a JSON string with the format name, its version, the kind
of file and the run's config. Three kinds share the format:

- `checkpoint` (`.ckpt.npz`): everything a run needs to continue exactly: weights, optimizer
  moments and step counter, meSimp's active sets and hit counts, both random generators, the
  shuffled example order, the position (epoch and next part), the best dev accuracy with the
  test accuracy at it, and the summed times; in meta also where the run found its data and
  how long its log and `.jsonl` were at that point (a resume cuts them back to it).
- `best` (`.best.npz`): the network at the best dev accuracy, weights and masks only.
- `export`: an inference-only network with pruned neurons removed (`nnmnist.inference.export`).

The arrays are state dicts flattened under a prefix: the network's (`Network.state_dict()`)
under `net.` (`net.0.W`, `net.0.active`, `net.rng`, ...), the optimizer's under `opt.`
(`opt.t`, `opt.m.0.W`, ...) and the run's own under `train.` (`train.order`). An export holds
only the weights of the compacted network, under the same names (`net.0.W`, `net.0.b`, ...).
Version 1 files differ only in an export's prefix (`layer.`); they are still read.
"""
import dataclasses
import json
import math
import sys
import zipfile
import zlib
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from .. import fsio
from ..errors import UserError

FORMAT = "nnmnist-model"
VERSION = 2
READS = (1, 2)  # the versions this nnmnist reads
NET, OPT, TRAIN = "net.", "opt.", "train."  # the prefixes of the flattened state dicts
KINDS = ("checkpoint", "best", "export")

# Fields that fix the shapes of the stored arrays (or their meaning): a resumed run may not
# change them.
SHAPE_FIELDS = ("NetType", "OptType", "Layers", "HiddenSize", "LabelCount", "IterPerEpoch",
                "Compact", "TrainFile", "TrainLabelFile")
# The fields a resumed run may change: how long it trains, where and with how many threads it
# computes, where it finds its data, whether it stops on divergence and which files it keeps.
# Any other field (the seed, the learning rate, k, ...) would make the continuation a
# different run than the one the log and the checkpoint describe, so changing it is refused.
RESUME_FIELDS = ("MaxEpoch", "Backend", "Kernels", "Threads", "DataDir", "LogDir",
                 "AllowDivergence", "Checkpoint")
# Of those, the ones that compute the same maths in another order (other hardware, other
# kernels, BLAS with another thread count): a continuation's figures may then differ from an
# uninterrupted run's in the last digits, and a resume that changes one says so.
ORDER_FIELDS = ("Backend", "Kernels", "Threads")
DATA_FILES = ("TrainFile", "TrainLabelFile", "TestFile", "TestLabelFile")


def _sibling(log_file, suffix):
    log_file = Path(log_file)
    stem = log_file.name[:-len(".txt")] if log_file.name.endswith(".txt") else log_file.name
    return log_file.with_name(stem + suffix)


def checkpoint_path(log_file):
    """The checkpoint that goes with a log file: same name, `.ckpt.npz` in place of `.txt`."""
    return _sibling(log_file, ".ckpt.npz")


def best_path(log_file):
    """The best-dev model that goes with a log file (`.best.npz`)."""
    return _sibling(log_file, ".best.npz")


def to_host(a):
    """A NumPy array of a NumPy or CuPy array (a NumPy array as it is: no copy, so that writing
    a checkpoint does not hold its state twice)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def flatten(prefix, state):
    """A state dict's entries as file arrays: `prefix` + name."""
    return {prefix + name: value for name, value in state.items()}


def section(arrays, prefix):
    """The state dict stored under `prefix` (the prefix removed)."""
    return {name[len(prefix):]: a for name, a in arrays.items() if name.startswith(prefix)}


def as_float(value):
    """A float stored in meta: null stands for NaN (the strict JSON writer's NaN)."""
    return math.nan if value is None else float(value)


# ---------------------------------------------------------------- writing

def save(path, kind, meta, arrays):
    """Write `arrays` and `meta` (JSON-able; format, version and kind are added) to `path`
    atomically: a temporary file in the same folder, flushed and fsync'ed, then renamed over
    the target, so a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    meta = {"format": FORMAT, "version": VERSION, "kind": kind, **meta}
    payload = {name: to_host(a) for name, a in arrays.items()}  # 0-d arrays stay 0-d
    payload["meta"] = np.array(fsio.dumps(meta))  # strict JSON: a NaN is written as null
    with fsio.atomic_writer(path) as f:  # mode from the umask; a failure is a WriteError
        np.savez(f, **payload)
    return path


# ---------------------------------------------------------------- reading

class ModelFile:
    """A checked model file: `meta` (dict), `arrays` (name -> NumPy array) and its `path`."""

    def __init__(self, path, meta, arrays):
        self.path, self.meta, self.arrays = Path(path), meta, arrays

    @property
    def kind(self):
        return self.meta["kind"]

    def config(self):
        """The run's config as stored (validated again, so a hand-edited file cannot slip by)."""
        from . import config as config_mod
        return config_mod.from_dict(self.meta["config"], source=f"{self.path}: config")

    def array(self, name, shape=None, dtype=None):
        """A stored array, checked to exist and (optionally) to have this shape and dtype kind."""
        a = self.arrays.get(name)
        if a is None:
            raise UserError(f"{self.path}: field {name} is missing (a damaged or foreign file)")
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise UserError(f"{self.path}: field {name} has shape {tuple(a.shape)}, "
                            f"expected {tuple(shape)}")
        if dtype is not None and np.dtype(a.dtype).kind != np.dtype(dtype).kind:
            raise UserError(f"{self.path}: field {name} has dtype {a.dtype}, expected {np.dtype(dtype)}")
        return a

    def field(self, name):
        """A meta entry that must be present."""
        if name not in self.meta:
            raise UserError(f"{self.path}: field {name} is missing from meta (a damaged or foreign file)")
        return self.meta[name]


def read(path, kinds=KINDS):
    """Load and check a model file; every problem is a one-line UserError naming the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: model file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a model file")
    try:  # anything but a zip archive (text, a pickle, a .npy) is refused before NumPy reads it
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({fsio.os_reason(exc)})") from None
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise UserError(f"{path}: not an .npz file (a model file is a zip archive of arrays)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise UserError(f"{path}: not an nnmnist model file (field meta is missing)")
            arrays = {name: z[name] for name in z.files}
    except UserError:
        raise
    except (zipfile.BadZipFile, EOFError, zlib.error, ValueError, OSError, KeyError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, OSError) and exc.strerror:
            why = exc.strerror
        raise UserError(f"{path}: not a readable .npz file (truncated or corrupt: {why})") from None
    raw = arrays.pop("meta")
    try:
        if raw.dtype.kind != "U" or raw.shape != ():
            raise ValueError
        meta = json.loads(str(raw))
        if not isinstance(meta, dict):
            raise ValueError
    except ValueError:
        raise UserError(f"{path}: field meta is not a JSON object (a damaged or foreign file)") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: field format = {json.dumps(meta.get('format'))}: "
                        f"not an nnmnist model file")
    version = meta.get("version")
    if version not in READS or isinstance(version, bool):
        raise UserError(f"{path}: field version = {json.dumps(version)}: unknown format version "
                        f"(this nnmnist reads versions {', '.join(map(str, READS))})")
    if meta.get("kind") not in kinds:
        wanted = " or ".join(kinds)
        raise UserError(f"{path}: field kind = {json.dumps(meta.get('kind'))}: expected a {wanted} file")
    if not isinstance(meta.get("config"), dict):
        raise UserError(f"{path}: field config is missing (a damaged or foreign file)")
    if version == 1 and meta["kind"] == "export":  # version 1 exports: layer.{i}.W, layer.{i}.b
        arrays = {(NET + k[len("layer."):] if k.startswith("layer.") else k): a
                  for k, a in arrays.items()}
    return ModelFile(path, meta, arrays)


def resume_config(model_file, overrides):
    """The checkpoint's config with `--set` overrides applied; overriding a field that fixes
    the network's shape (or the data's order) is an error naming the file and the field."""
    from . import config as config_mod
    stored = model_file.meta["config"]
    known = {f.name for f in fields(config_mod.Config)}
    raw = {k: v for k, v in stored.items() if k in known}
    reordered = []
    for key, value in (overrides or {}).items():
        name = config_mod.canonical_field(key, "--set")
        new = config_mod._coerce(f"--set {key}", name, value)
        old = config_mod._coerce(str(model_file.path), name, stored[name]) if name in stored else None
        if name in SHAPE_FIELDS and new != old:
            raise UserError(f"{model_file.path}: --set {name}={json.dumps(value)} would change the "
                            f"network or its data (the checkpoint has {name} = {json.dumps(old)}); "
                            f"start a new run instead")
        if name not in RESUME_FIELDS and new != old:
            raise UserError(f"{model_file.path}: --set {name}={json.dumps(value)} cannot be used with "
                            f"--resume: the checkpoint's run has {name} = {json.dumps(old)} and the "
                            f"continuation would not be the same run (--resume may change "
                            f"{', '.join(RESUME_FIELDS)}); start a new run instead")
        if name in ORDER_FIELDS and new != old:
            reordered.append(f"{name} = {json.dumps(new)} (the run had {json.dumps(old)})")
        raw[name] = value
    if reordered:
        print(f"warning: {model_file.path}: {'; '.join(reordered)}: the same maths, summed in "
              f"another order, so from here on the figures may differ in the last digits from "
              f"those of an uninterrupted run", file=sys.stderr)
    return config_mod.from_dict(raw, source=f"{model_file.path}: config")


def data_config(model_file, cfg, given=()):
    """`cfg` with the run's data paths as the run resolved them, so that a resume or an
    evaluation from another folder reads the same files (and would fetch into the same folder):
    DataDir becomes the absolute folder the run used, and a data file name with a relative
    folder in it is taken from the folder the run started in, where a file of that name is.
    Fields in `given` (set on this command line) are left as they are; files written before
    these were recorded keep the old lookup (relative to the current folder)."""
    from ..data.mnist import candidate_paths
    train = model_file.meta.get("train")
    train = train if isinstance(train, dict) else {}
    work, data_dir = train.get("work_dir"), train.get("data_dir")
    changes = {}
    if "DataDir" not in given and isinstance(data_dir, str) and data_dir:
        changes["DataDir"] = data_dir
    if isinstance(work, str) and work:
        for name in DATA_FILES:
            value = Path(str(getattr(cfg, name))).expanduser()
            if name in given or value.is_absolute() or len(value.parts) < 2:
                continue
            there = Path(work) / value
            if any(p.is_file() for p in candidate_paths(str(there), work)):
                changes[name] = str(there)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def config_meta(cfg):
    return {"config": asdict(cfg)}
