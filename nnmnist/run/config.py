"""Every configuration field in one place: defaults, validation, the run name and the log header.

Field names are the original C# program's PascalCase names, so its config files run unchanged.
Fields after the first block are extensions of ours; their defaults keep the original behaviour.
"""
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from .. import fsio
from ..errors import UserError
from ..optim import RULES as OPT_RULES

MLP_NETS = ("mlp", "mlprand", "mlptop", "mlpvar")
TAGGER_NETS = ("lstm", "lstmtop", "lstmrand")  # the part-of-speech tagger (docs/MODELS.md)
NET_TYPES = MLP_NETS + TAGGER_NETS
OPT_TYPES = tuple(OPT_RULES)  # the optimizer registry's names
BACKENDS = ("cpu", "gpu", "auto")
KERNELS = ("numba", "numpy")
LOSS_GRADS = ("sum", "mean")
CHECKPOINTS = ("epoch", "best", "none")  # what a run keeps on disk besides its log
K_NETS = ("mlprand", "mlptop", "mlpvar", "lstmtop", "lstmrand")
TOPK_SCOPES = ("gate", "whole")
UPOS_COUNT = 17  # the tagger's labels: the universal POS tags


def shipped_configs():
    """The folder of the configs that ship with nnmnist: inside an installed package, or the
    configs/ folder of a source checkout."""
    inside = Path(__file__).resolve().parents[1] / "configs"
    return inside if inside.is_dir() else Path(__file__).resolve().parents[2] / "configs"


def config_path(name):
    """The config file a command line names: a path as given; a bare name that is no file here
    but names a shipped config (`mlptop`, `mlptop.json`) is that config; none is the shipped
    default."""
    if not name:
        return str(shipped_configs() / "default.json")
    path = Path(name)
    if not path.exists() and len(path.parts) == 1:
        shipped = shipped_configs() / (name if name.endswith(".json") else name + ".json")
        if shipped.is_file():
            return str(shipped)
    return name


@dataclass
class Config:
    """One run's settings (docs/CONFIG.md gives each field's meaning)."""
    # The original program's fields.
    ClipBound: float = 5.0
    DecayRate: float = 0.09
    Eps: float = 1e-6
    HiddenSize: int = 500
    IterPerEpoch: int = 8
    L2RegFactor: float = 0.0
    LabelCount: int = 10
    Layers: int = 3
    LearningRate: float = 0.001
    MaxEpoch: int = 20
    MinibatchSize: int = 100
    NetType: str = "mlp"
    OptType: str = "adam"
    Prune: float = 0.1
    RandomSeed: int = -1
    TestFile: str = "t10k-images.idx3-ubyte"
    TestLabelFile: str = "t10k-labels.idx1-ubyte"
    TrainCycle: int = 5
    TrainFile: str = "train-images.idx3-ubyte"
    TrainLabelFile: str = "train-labels.idx1-ubyte"
    TrainTop: int = 160
    # Extensions.
    Unified: bool = False        # one top-k column set per minibatch instead of per example
    LazyUpdate: bool = False     # optimizer touches only weight rows that got gradient this step
    Dropout: float = 0.0         # inverted dropout on hidden outputs while training
    Backend: str = "cpu"         # cpu (NumPy + Numba), gpu (CuPy) or auto
    Kernels: str = "numba"       # CPU hot loops: numba kernels or the plain NumPy reference
    Threads: int = 1             # Numba and BLAS threads; 0 = the libraries' defaults (all cores)
    DataDir: str = ""            # where bare data-file names are looked up ("" = data/ beside run.py)
    LogDir: str = ""             # where the log is written ("" = beside run.py)
    Compact: bool = True         # mlpvar: remove pruned neurons (False: keep them, masked)
    AllowDivergence: bool = False  # keep training when the training loss is NaN, infinite or huge
    RmsDecay: float = 0.9        # rmsprop's decay rho of the average of g^2 (only rmsprop uses it)
    LossGrad: str = "sum"        # gradient of the minibatch's summed loss (the original) or its mean
    DenseWarmup: int = 0         # mlptop/mlprand: back-propagate densely for the first this many steps
    Checkpoint: str = "epoch"    # epoch: checkpoint and best model; best: the best model; none: neither
    # The part-of-speech tagger's (NetType lstm, lstmtop, lstmrand; docs/CONFIG.md).
    DevFile: str = ""            # its development split (MNIST's is the first 5,000 training images)
    EmbedSize: int = 100         # width of the word embeddings
    MinCount: int = 2            # training-set count a word needs to get its own embedding
    TopKScope: str = "gate"      # gate: k of each gate's H entries; whole: k of all 4H

    @property
    def is_tagger(self):
        return self.NetType in TAGGER_NETS

    @property
    def uses_k(self):
        return self.NetType in K_NETS

    def run_name(self):
        """`{NetType}-{OptType}-h..-i..-m..` with -t/-p/-c suffixes, as the original names its runs."""
        name = (f"{self.NetType}-{self.OptType}-h{self.HiddenSize}"
                f"-i{self.IterPerEpoch}-m{self.MinibatchSize}")
        if self.uses_k:
            name += f"-t{self.TrainTop}"
        if self.NetType == "mlpvar":
            name += f"-p{csharp_format(self.Prune)}"
            if 0 < self.TrainCycle < self.MaxEpoch:
                name += f"-c{self.TrainCycle}"
        return name

    def ignored_settings(self, backend=None):
        """Fields set away from their defaults that this combination does not use; `backend`
        is the resolved backend ("cpu" or "gpu") when known (an "auto" that found a GPU)."""
        notes = []
        if not self.uses_k:
            for name in ("Unified", "LazyUpdate"):
                if getattr(self, name):
                    notes.append(f"{name} has no effect with NetType {self.NetType} "
                                 "(it only changes meProp's sparse backward)")
        if self.DenseWarmup and self.NetType in ("mlp", "lstm"):
            notes.append(f"DenseWarmup has no effect with NetType {self.NetType} (it already "
                         "back-propagates densely)")
        if (backend or self.Backend) == "gpu" and self.Kernels != "numba":
            notes.append("Kernels has no effect with Backend gpu")
        return notes

    def header_lines(self):
        """`Name: value` for every field, sorted by name, as the log's header prints them."""
        model = "tagger" if self.is_tagger else "mlp"
        return [f"{f.name}: {csharp_format(getattr(self, f.name))}"
                for f in sorted(fields(self), key=lambda f: f.name)
                if (f.name not in _RULE_FIELDS or _RULE_FIELDS[f.name] == self.OptType)
                and _MODEL_FIELDS.get(f.name, model) == model]


# Fields of one optimizer only, printed in the header only when it is the OptType.
_RULE_FIELDS = {"RmsDecay": "rmsprop"}
# Fields of one model only, printed in the header only for it.
_MODEL_FIELDS = {"TrainLabelFile": "mlp", "TestLabelFile": "mlp", "Prune": "mlp",
                 "TrainCycle": "mlp", "Compact": "mlp", "DevFile": "tagger",
                 "EmbedSize": "tagger", "MinCount": "tagger", "TopKScope": "tagger"}
FIELD_TYPES = {f.name: f.type for f in fields(Config)}
# The original read its JSON with case-insensitive names and enum values; so do we.
_BY_LOWER = {name.lower(): name for name in FIELD_TYPES}
_CHOICES = {"NetType": NET_TYPES, "OptType": OPT_TYPES, "Backend": BACKENDS, "Kernels": KERNELS,
            "LossGrad": LOSS_GRADS, "Checkpoint": CHECKPOINTS, "TopKScope": TOPK_SCOPES}
_OPTIONAL_PATHS = ("DataDir", "LogDir")  # null means "the default place"


def csharp_format(v):
    """Format a value the way C#'s default ToString does (5.0 -> 5, 1e-06 -> 1E-06, True)."""
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, float):
        if v == int(v) and abs(v) < 1e15:
            return str(int(v))
        text = repr(v)
        if "e" in text:
            mantissa, exp = text.split("e")
            sign = "-" if exp.startswith("-") else "+"
            return f"{mantissa}E{sign}{abs(int(exp)):02d}"
        return text
    return str(v)


def _field_error(source, name, value, why):
    try:
        shown = json.dumps(value)
    except (RecursionError, ValueError):
        shown = "(a value nested too deeply to show)"
    err = UserError(f"{source}: field {name} = {fsio.shorten(shown)}: {why}")
    err.field, err.value, err.why = name, value, why
    return err


def _coerce(source, name, value):
    """Check a raw JSON value against the field's type; ints are accepted for floats."""
    kind = FIELD_TYPES[name]
    if kind in (float, "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _field_error(source, name, value, "must be a number")
        value = float(value)
        if not math.isfinite(value):
            raise _field_error(source, name, value, "must be finite")
        return value
    if kind in (int, "int"):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _field_error(source, name, value, "must be an integer")
        return value
    if kind in (bool, "bool"):
        if not isinstance(value, bool):
            raise _field_error(source, name, value, "must be true or false")
        return value
    if value is None and name in _OPTIONAL_PATHS:
        return ""
    if not isinstance(value, str):
        raise _field_error(source, name, value, "must be a string")
    if name in _CHOICES and value.lower() in _CHOICES[name]:
        return value.lower()
    return value


def _check(cond, source, name, value, why):
    if not cond:
        raise _field_error(source, name, value, why)


def validate(cfg, source="config"):
    """Range-check every field; raise UserError naming the source, the field and the value."""
    c = cfg
    # ClipBound: any finite value; <= 0 disables clipping, as in the original.
    if c.OptType == "sgd":
        _check(c.DecayRate > 0, source, "DecayRate", c.DecayRate, "must be > 0 for sgd")
    if c.OptType in ("adagrad", "rmsprop"):
        _check(c.Eps > 0, source, "Eps", c.Eps, f"must be > 0 for {c.OptType}")
    if c.OptType == "rmsprop":
        _check(0 <= c.RmsDecay < 1, source, "RmsDecay", c.RmsDecay, "must be in [0, 1)")
    _check(c.HiddenSize >= 1, source, "HiddenSize", c.HiddenSize, "must be >= 1")
    _check(c.IterPerEpoch >= 1, source, "IterPerEpoch", c.IterPerEpoch, "must be >= 1")
    _check(c.L2RegFactor >= 0, source, "L2RegFactor", c.L2RegFactor, "must be >= 0")
    _check(c.LabelCount >= 2, source, "LabelCount", c.LabelCount, "must be >= 2")
    _check(c.Layers >= 1, source, "Layers", c.Layers, "must be >= 1")
    _check(c.LearningRate > 0, source, "LearningRate", c.LearningRate, "must be > 0")
    _check(c.MaxEpoch >= 1, source, "MaxEpoch", c.MaxEpoch, "must be >= 1")
    _check(c.MinibatchSize >= 1, source, "MinibatchSize", c.MinibatchSize, "must be >= 1")
    _check(c.NetType in NET_TYPES, source, "NetType", c.NetType, f"must be one of {', '.join(NET_TYPES)}")
    _check(c.OptType in OPT_TYPES, source, "OptType", c.OptType, f"must be one of {', '.join(OPT_TYPES)}")
    _check(0 <= c.Prune <= 1, source, "Prune", c.Prune, "must be in [0, 1]")
    files = ("TrainFile", "DevFile", "TestFile") if c.is_tagger else (
        "TestFile", "TestLabelFile", "TrainFile", "TrainLabelFile")
    for name in files:
        _check(getattr(c, name).strip() != "", source, name, getattr(c, name), "must name a file")
    if c.NetType == "mlpvar":
        _check(c.TrainCycle >= 1, source, "TrainCycle", c.TrainCycle, "must be >= 1 for mlpvar")
    _check(c.TopKScope in TOPK_SCOPES, source, "TopKScope", c.TopKScope,
           f"must be one of {', '.join(TOPK_SCOPES)}")
    if c.is_tagger:
        _check(c.Layers == 2, source, "Layers", c.Layers,
               f"must be 2 for {c.NetType} (one bidirectional LSTM layer, then the output layer)")
        _check(c.LabelCount == UPOS_COUNT, source, "LabelCount", c.LabelCount,
               f"must be {UPOS_COUNT} for {c.NetType} (the universal POS tags)")
        _check(c.EmbedSize >= 1, source, "EmbedSize", c.EmbedSize, "must be >= 1")
        _check(c.MinCount >= 1, source, "MinCount", c.MinCount, "must be >= 1")
        if c.uses_k:
            width = c.HiddenSize if c.TopKScope == "gate" else 4 * c.HiddenSize
            what = "HiddenSize" if c.TopKScope == "gate" else "4 x HiddenSize"
            _check(1 <= c.TrainTop <= width, source, "TrainTop", c.TrainTop,
                   f"k must be between 1 and {what} ({width}) with TopKScope {c.TopKScope}")
    elif c.uses_k:
        _check(c.Layers >= 2, source, "Layers", c.Layers,
               f"{c.NetType} needs at least one hidden layer (Layers >= 2)")
        _check(1 <= c.TrainTop <= c.HiddenSize, source, "TrainTop", c.TrainTop,
               f"k must be between 1 and HiddenSize ({c.HiddenSize})")
    _check(0 <= c.Dropout < 1, source, "Dropout", c.Dropout, "must be in [0, 1)")
    _check(c.Backend in BACKENDS, source, "Backend", c.Backend, f"must be one of {', '.join(BACKENDS)}")
    _check(c.Kernels in KERNELS, source, "Kernels", c.Kernels, f"must be one of {', '.join(KERNELS)}")
    _check(c.Threads >= 0, source, "Threads", c.Threads, "must be >= 0 (0 = library default)")
    _check(c.LossGrad in LOSS_GRADS, source, "LossGrad", c.LossGrad, f"must be one of {', '.join(LOSS_GRADS)}")
    _check(c.Checkpoint in CHECKPOINTS, source, "Checkpoint", c.Checkpoint,
           f"must be one of {', '.join(CHECKPOINTS)}")
    _check(c.DenseWarmup >= 0, source, "DenseWarmup", c.DenseWarmup, "must be >= 0 (0 = no warm-up)")
    _check(c.DenseWarmup == 0 or c.NetType != "mlpvar", source, "DenseWarmup", c.DenseWarmup,
           "must be 0 for mlpvar (meSimp counts its hits from the first step)")
    return cfg


def from_dict(raw, source="config"):
    """Build a validated Config from a dict of PascalCase fields; unknown fields are errors."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: the top level must be a JSON object, not {type(raw).__name__}")
    values = {name: _coerce(source, name, value)
              for name, value in _canonical_items(raw, source).items()}
    return validate(Config(**values), source)


def _canonical_items(raw, source):
    """raw's items under canonical field names; one field given twice (in any case) is an error."""
    out, keys = {}, {}
    for key, value in raw.items():
        name = canonical_field(key, source)
        if name in out:
            raise UserError(f"{source}: field {name} is given twice "
                            f"(as {fsio.shorten(repr(keys[name]))} and {fsio.shorten(repr(key))})")
        out[name], keys[name] = value, key
    return out


def canonical_field(key, source="config"):
    """The field a key names (case-insensitively); an unknown key is an error with a hint."""
    name = _BY_LOWER.get(str(key).lower())
    if name is None:
        hint = fsio.did_you_mean(key, FIELD_TYPES)
        raise UserError(f"{source}: unknown field {fsio.shorten(repr(key))}{hint}")
    return name


def load(path, overrides=None):
    """Read a JSON config (a UTF-8 BOM is allowed), apply overrides, and validate it."""
    raw = fsio.read_json(path, "config file")
    if isinstance(raw, dict) and overrides:
        checked, flags = {}, {}
        for key, value in overrides.items():  # an override's own mistakes are the flag's
            name = canonical_field(key, "--set")
            _coerce(f"--set {key}", name, value)
            checked[name], flags[name] = value, key
        # Canonical names on both sides, so that an override replaces a differently-cased key.
        raw = {**_canonical_items(raw, str(path)), **checked}
        try:
            return from_dict(raw, source=str(path))
        except UserError as exc:  # a value out of range that came from --set: name the flag
            name = getattr(exc, "field", None)
            if name in flags:
                raise _field_error(f"--set {name}", name, exc.value, exc.why) from None
            raise
    return from_dict(raw, source=str(path))
