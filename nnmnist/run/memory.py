"""What a run will need in memory, estimated from its config before anything is allocated, and
what the process may use: the machine's available memory, a cgroup's limit, or the GPU's.

A run that would not fit is refused in one line (`check`) that gives the estimate, the limit
and the field to change, instead of being killed by the system halfway through.
"""
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..optim import optimizer_class

F32 = 4
MNIST_IN, MNIST_EXAMPLES = 784, 70000  # what a config's data holds before it is read
# Arrays of a minibatch's step: per unit its output and the gradient flowing back through it,
# each with a temporary or two (ReLU mask, sparsified gradient, dropout mask).
STEP_ARRAYS_PER_UNIT = 5
EVAL_ARRAYS_PER_UNIT = 2


def _n_state(cfg):
    return len(optimizer_class(cfg.OptType).rule.state)


# Copies of the weights held for the model files: a checkpoint's (weights and optimizer
# state) and the best model's (weights).
KEPT_COPIES = {"epoch": lambda cfg: 2 + _n_state(cfg), "best": lambda cfg: 1, "none": lambda cfg: 0}


@dataclass
class Estimate:
    """Bytes a run needs, by part."""
    weights: int      # values, gradients and optimizer state of every parameter
    kept: int         # copies held for the checkpoint and the best model (Checkpoint)
    scratch: int      # the units' own arrays while the flat store is filled, a layer-sized
                      # gradient product, the buffer of a file being written
    data: int         # the three splits as float32, plus labels
    activations: int  # one training minibatch and one evaluation batch

    @property
    def total(self):
        return self.weights + self.kept + self.scratch + self.data + self.activations

    def biggest(self):
        parts = {"weights": self.weights + self.kept + self.scratch, "data": self.data,
                 "activations": self.activations}
        return max(parts, key=parts.get)


def widths(cfg, n_in):
    return [n_in] + [cfg.HiddenSize] * (cfg.Layers - 1) + [cfg.LabelCount]


def estimate(cfg, n_in=MNIST_IN, n_examples=MNIST_EXAMPLES):
    """The memory a run of `cfg` needs on `n_examples` examples of `n_in` inputs."""
    sizes = widths(cfg, n_in)
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    n_state = _n_state(cfg)
    kept = KEPT_COPIES[cfg.Checkpoint](cfg)
    batch = cfg.MinibatchSize
    units = sum(sizes[1:])
    return Estimate(
        weights=(2 + n_state) * params * F32,
        kept=kept * params * F32,
        scratch=(params + 2 * max(a * b for a, b in zip(sizes[:-1], sizes[1:]))) * F32,
        data=n_examples * (n_in * (F32 + 1) + 16),  # + the bytes as read, + labels
        activations=(batch * n_in * F32  # the minibatch gathered from the training set
                     + (STEP_ARRAYS_PER_UNIT + EVAL_ARRAYS_PER_UNIT) * batch * units * F32))


# ---------------------------------------------------------------- what may be used

def _read_int(path):
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available():
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """Bytes left under this process's cgroup memory limit (v2 or v1), or None if no limit."""
    try:
        lines = Path(proc_cgroup).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        _, controllers, rel = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if controllers == "":  # v2: every limit from this cgroup up to the root applies
            folder = Path(root + rel)
            while True:
                limit, used = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
                if limit is not None:
                    room = limit - (used or 0)
                    best = room if best is None else min(best, room)
                if folder == Path(root) or folder.parent == folder:
                    break
                folder = folder.parent
        elif "memory" in controllers.split(","):  # v1
            folder = Path(root) / "memory" / rel.lstrip("/")
            for f in (folder, Path(root) / "memory"):
                limit = _read_int(f / "memory.limit_in_bytes")
                if limit is not None and limit < 1 << 60:  # v1 writes "no limit" as a huge number
                    room = limit - (_read_int(f / "memory.usage_in_bytes") or 0)
                    best = room if best is None else min(best, room)
                    break
    return best


def available():
    """(bytes this process may still allocate, what says so), or (None, None) if unknown."""
    found = [(n, why) for n, why in ((_meminfo_available(), "available memory"),
                                     (_cgroup_room(), "the cgroup's memory limit")) if n is not None]
    if not found:
        return None, None
    return min(found)


def gpu_available():
    """(free bytes of the current GPU, what says so), or (None, None)."""
    from ..backends.device import memory_free
    free = memory_free()
    return (free, "free GPU memory") if free is not None else (None, None)


# ---------------------------------------------------------------- the check

def size_text(n):
    """Bytes as a short figure: 512 B, 3.1 MB, 36.2 TB (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def check(cfg, source, gpu=False, n_in=MNIST_IN, n_examples=MNIST_EXAMPLES, limit=None):
    """Refuse (UserError, exit 2) a run whose estimate exceeds what it may use: the GPU's free
    memory for a GPU run (the host keeps the data), else available memory and any cgroup limit.
    `limit` is (bytes, what) to compare with instead (tests). Returns the Estimate."""
    need = estimate(cfg, n_in, n_examples)
    checks = []
    if gpu:
        device = limit or gpu_available()
        checks.append((need.total, device))  # the data is copied there too
        checks.append((need.data, limit or available()))  # and read into host memory first
    else:
        checks.append((need.total, limit or available()))
    for amount, (room, what) in checks:
        if room is not None and amount > room:
            raise UserError(f"{source}: this run needs about {size_text(amount)} of memory "
                            f"({_parts(need)}) but {what} is {size_text(max(room, 0))}; "
                            f"{_advice(cfg, need, room)}")
    return need


def _parts(need):
    return (f"weights, gradients and optimizer state {size_text(need.weights + need.scratch)}, "
            f"checkpoint copies {size_text(need.kept)}, data {size_text(need.data)}, "
            f"activations {size_text(need.activations)}")


def _advice(cfg, need, room):
    biggest = need.biggest()
    if biggest == "activations":
        return f"lower MinibatchSize (now {cfg.MinibatchSize})"
    if biggest == "data":
        return "the data alone does not fit; free some memory or use a larger machine"
    advice = f"lower HiddenSize (now {cfg.HiddenSize})"
    if cfg.Layers > 2:
        advice += f" or Layers (now {cfg.Layers})"
    for policy in ("best", "none"):  # fewer copies kept for the model files may be enough
        if policy != cfg.Checkpoint and need.kept > 0 and \
                need.total - need.kept + estimate_kept(cfg, policy, need) <= room:
            return advice + f", or set Checkpoint to {policy}"
    return advice


def estimate_kept(cfg, policy, need):
    """`need.kept` had the run's Checkpoint been `policy`."""
    per_copy = need.kept / KEPT_COPIES[cfg.Checkpoint](cfg)
    return per_copy * KEPT_COPIES[policy](cfg)
