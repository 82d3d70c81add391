"""The training run of the original: shuffle, cut into parts, train, evaluate, meSimp cycle, log."""
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..backends import get_compute
from ..backends.fused_step import fused_step_for
from ..data.conllu import batch_by_length, lengths_of
from ..nn.compact import compact
from ..errors import RunError, UserError
from ..nn.networks import MLP
from ..optim import make_optimizer
from .log import RunLog
from .state import Position
from ..nn.tensor import Flow

RULE = "#" * 20
# A mean training loss above this has diverged as surely as a NaN (chance level is ln 10 = 2.3).
DIVERGED_LOSS = 1e6


def effective_seed(seed):
    """The seed a run uses: the configured one, or for a negative one a seed from the clock."""
    return seed if seed >= 0 else time.time_ns() % (2 ** 31)


def make_rngs(seed):
    """Two independent generators, (data, network), from one non-negative seed."""
    data_ss, net_ss = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(data_ss), np.random.default_rng(net_ss)


def steps_before(n, cfg, epoch, part):
    """Training steps (minibatches) a run has taken when it starts `part` of `epoch`."""
    per_part = [-(-size // cfg.MinibatchSize) for _, size in part_bounds(n, cfg.IterPerEpoch)]
    return epoch * sum(per_part) + sum(per_part[:part])


def part_bounds(n, parts):
    """(start, size) of `parts` contiguous parts; the first n % parts get one extra example."""
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        bounds.append((start, size))
        start += size
    return bounds


class Diverged(RunError):
    """The training loss became NaN, infinite or huge: the run cannot go on (exit status 1)."""


class KeepNothing:
    """What a Trainer keeps at part boundaries with no run's files attached: nothing (the
    run's own are `lifecycle.Checkpoints`)."""

    def notes(self):
        return []

    def keep(self, epoch, part, timer, total):
        pass

    def keep_best(self):
        pass

    def write(self):
        pass


@dataclass
class Timer:
    """Seconds spent in forward, backward and update."""
    fp: float = 0.0
    bp: float = 0.0
    update: float = 0.0

    def add(self, other):
        self.fp += other.fp
        self.bp += other.bp
        self.update += other.update


@dataclass
class Score:
    loss: float
    correct: int
    total: int
    seconds: float

    @property
    def acc(self):
        return 100.0 * self.correct / max(self.total, 1)

    def line(self):
        return (f"loss: {self.loss:.4f}, acc: {self.acc:.2f}({self.correct}/{self.total}), "
                f"time = {self.seconds:.1f}s")


@dataclass
class Result:
    """What a run produced, for callers that want numbers rather than log lines.

    `epochs` counts the run's whole epochs and `total` sums their times, those before a resume
    included (a checkpoint carries both); `epoch_times` and `parts` hold only what this process
    trained."""
    best_dev: float = 0.0
    test_at_best: float = 0.0
    param_count: int = 0
    epoch_times: list = field(default_factory=list)
    parts: list = field(default_factory=list)
    dims: str = ""
    total: Timer = field(default_factory=Timer)
    epochs: int = 0


def evaluate(model, x, y, compute, batch):
    """Loss and accuracy over a whole set in minibatches of `batch`, with no gradient recording
    and no dropout; the loss is the mean of the minibatches' mean losses, as the original's."""
    xp = compute.xp
    start = time.perf_counter()
    loss, correct = xp.zeros((), dtype=np.float64), xp.zeros((), dtype=np.int64)
    total = xp.zeros((), dtype=np.int64)
    flow = Flow(training=False)
    prepare = getattr(model, "prepare_batch", None)
    for i in range(0, len(y), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        if prepare is not None:
            xb, yb = prepare(xb, yb)
        losses, pred = model.forward(flow, xb, yb)
        loss += losses.mean(dtype=np.float64)
        correct += (pred == yb).sum()
        total += count_of(model, yb)
    loss, correct = float(loss), int(correct)
    n_batches = -(-len(y) // batch)
    return Score(loss / max(n_batches, 1), correct, int(total), time.perf_counter() - start)


def count_of(model, y):
    """What a minibatch's labels score: its examples, or for the tagger its tokens."""
    count = getattr(model, "count", None)
    return len(y) if count is None else count(y)


def by_length(x, y):
    """Sentences (padded id rows) and their tags sorted by length, stably."""
    order = np.argsort(lengths_of(x), kind="stable")
    return x[order], y[order]


def build_model(cfg, splits, compute, rng):
    """The network a config describes: the MLP, or for NetType lstm* the tagger."""
    if cfg.is_tagger:
        from ..nn.lstm import Tagger
        return Tagger(cfg, splits.vocab, compute, rng)
    return MLP(cfg, splits.trn_x.shape[1], compute, rng)


class Trainer:
    """Holds the model, optimizer and data of one run and steps it part by part."""

    def __init__(self, cfg, splits, compute=None, model=None):
        if cfg.IterPerEpoch > len(splits.trn_y):
            raise UserError(f"IterPerEpoch = {cfg.IterPerEpoch}: more parts than the "
                            f"{len(splits.trn_y)} training examples")
        self.cfg = cfg
        self.log = RunLog(console=False)  # replaced by the run's log in `train`
        self.compute = compute or get_compute(cfg.Backend, cfg.Kernels)
        xp = self.compute.xp
        self.seed = effective_seed(cfg.RandomSeed)
        self.data_rng, self.net_rng = make_rngs(self.seed)
        dev_x, dev_y, tst_x, tst_y = splits.dev_x, splits.dev_y, splits.tst_x, splits.tst_y
        if getattr(cfg, "is_tagger", False):  # scored in order of length: little padding
            dev_x, dev_y = by_length(dev_x, dev_y)
            tst_x, tst_y = by_length(tst_x, tst_y)
        self.trn_x, self.trn_y = xp.asarray(splits.trn_x), xp.asarray(splits.trn_y)
        self.dev_x, self.dev_y = xp.asarray(dev_x), xp.asarray(dev_y)
        self.tst_x, self.tst_y = xp.asarray(tst_x), xp.asarray(tst_y)
        self.n_in = splits.n_in if getattr(cfg, "is_tagger", False) else splits.trn_x.shape[1]
        self.model = model or build_model(cfg, splits, self.compute, self.net_rng)
        # the tagger's sentence lengths: its minibatches are cut by length (`batch_by_length`)
        self.lengths = lengths_of(splits.trn_x) if getattr(cfg, "is_tagger", False) else None
        self.model.loss_grad = cfg.LossGrad
        self.opt = make_optimizer(cfg, self.model.params, self.compute, len(splits.trn_y))
        # The fused step for the cases it covers (built-in mlp / mlptop, Adam, Numba), else
        # None and the tape path; setting it to None trains by the tape (the reference).
        self.fused = fused_step_for(cfg, self.model, self.opt, self.compute)
        self.order = np.arange(len(splits.trn_y))
        self.result = Result(param_count=self.model.param_count)
        self.position = None          # where a resumed run continues (state.Position)
        self.files = KeepNothing()    # what is kept at part boundaries (lifecycle.Checkpoints)
        self.config_dir = None        # the config's folder, stored so a resume finds the data
        self.work_dir = None          # the folder the run started in (relative data paths)
        self.data_dir = None          # DataDir as an absolute folder
        self.at = None  # "epoch E part P" while training

    def train(self, log, position=None):
        """Log the header (or, continuing from a checkpoint's `position`, the resume line),
        train to MaxEpoch and log the end; return the Result. Files and stops are the run's
        (`lifecycle.Run`)."""
        from .warm import compile_for
        self.log, self.position = log, position
        compile_for(self.cfg, self.compute)  # nothing left to do when the run compiled them
        if position is None:
            log_header(self.cfg, self, log)
            log.record({"type": "start", "run_name": self.cfg.run_name(), "seed": self.seed})
            for line in self.files.notes():
                log(line)
            log(f"{RULE} Run Start")
        else:
            log.record({"type": "resume", "run_name": self.cfg.run_name(), "seed": self.seed,
                        "epoch": position.epoch, "part": position.part})
            log(f"{RULE} Run Resume at {position.epoch:02d}:{position.part:02d}")
            for line in self.files.notes():
                log(line)
        result = self._run()
        log(f"{RULE} Run End")
        return result

    def check_divergence(self, epoch, part, trn):
        """Stop the run (Diverged) on a NaN, infinite or huge training loss, unless AllowDivergence;
        the part's training line is logged first."""
        cfg, loss = self.cfg, trn.loss
        if cfg.AllowDivergence or (math.isfinite(loss) and loss <= DIVERGED_LOSS):
            return
        self.log(f"{epoch:02d}:{part:02d}: {trn.line()}")
        what = f"{loss}" if not math.isfinite(loss) else f"{loss:.3g} (above {DIVERGED_LOSS:g})"
        cause = f"LearningRate = {cfg.LearningRate:g} is likely too large for {cfg.OptType}"
        if cfg.ClipBound <= 0:
            cause += " with gradient clipping off (ClipBound <= 0)"
        reason = (f"training diverged at epoch {epoch} part {part}: the training loss is {what}; "
                  f"{cause}; lower LearningRate" + (" or set ClipBound > 0" if cfg.ClipBound <= 0 else "")
                  + " (AllowDivergence = true trains on regardless)")
        raise Diverged(reason)

    def train_part(self, idx, timer, desc, dense_steps=0):
        """Train on the examples `idx` (in order) in minibatches; return the part's Score. The
        first `dense_steps` minibatches back-propagate densely (`DenseWarmup`)."""
        cfg, c, xp = self.cfg, self.compute, self.compute.xp
        clock = time.perf_counter
        start = clock()
        loss, correct = xp.zeros((), dtype=np.float64), xp.zeros((), dtype=np.int64)
        total = xp.zeros((), dtype=np.int64)
        prepare = getattr(self.model, "prepare_batch", None)
        idx_dev = xp.asarray(idx)
        n_batches = -(-len(idx) // cfg.MinibatchSize)
        with self.log.progress(n_batches, desc) as bar:
            for i in range(0, len(idx), cfg.MinibatchSize):
                if cfg.DenseWarmup:
                    self.model.dense_backward(i // cfg.MinibatchSize < dense_steps)
                rows = idx_dev[i:i + cfg.MinibatchSize]
                xb, yb = self.trn_x[rows], self.trn_y[rows]
                if prepare is not None:
                    xb, yb = prepare(xb, yb)
                t0 = clock()
                if self.fused is not None and self.fused.covers():
                    losses, pred = self.fused.forward(xb, yb)
                    t1 = clock()
                    self.fused.backward()
                    t2 = clock()
                    self.fused.update()
                    t3 = clock()
                else:
                    flow = Flow(training=True)
                    losses, pred = self.model.forward(flow, xb, yb)
                    c.sync()
                    t1 = clock()
                    flow.backward()
                    c.sync()
                    t2 = clock()
                    self.opt.step(flow.selections)
                    c.sync()
                    t3 = clock()
                timer.fp += t1 - t0
                timer.bp += t2 - t1
                timer.update += t3 - t2
                loss += losses.mean(dtype=np.float64)
                correct += (pred == yb).sum()
                total += count_of(self.model, yb)
                bar.update(1)
        if cfg.DenseWarmup:
            self.model.dense_backward(False)  # a part never leaves the model switched
        # As the original: the part's loss is the mean of its minibatches' mean losses.
        loss, correct = float(loss), int(correct)
        return Score(loss / max(n_batches, 1), correct, int(total), clock() - start)

    def _run(self):
        cfg, log, res = self.cfg, self.log, self.result
        pos = self.position or Position()
        total = Timer(*pos.total_time)
        res.total, res.epochs = total, pos.epoch  # the whole epochs so far, for the summary
        self.files.keep(pos.epoch, pos.part, Timer(*pos.epoch_time), total)
        for epoch in range(pos.epoch, cfg.MaxEpoch):
            resumed = epoch == pos.epoch and pos.part > 0  # keeps the order it was shuffled into
            if not resumed:
                self.data_rng.shuffle(self.order)
                if self.lengths is not None:
                    self.order[...] = batch_by_length(self.order, self.lengths, cfg.MinibatchSize)
            timer = Timer(*pos.epoch_time) if resumed else Timer()
            for part, (start, size) in enumerate(part_bounds(len(self.order), cfg.IterPerEpoch)):
                if resumed and part < pos.part:
                    continue
                tag = f"{epoch:02d}:{part:02d}"
                self.at = f"epoch {epoch} part {part}"
                part_timer = Timer()
                warm = max(0, cfg.DenseWarmup - steps_before(len(self.order), cfg, epoch, part))
                trn = self.train_part(self.order[start:start + size], part_timer, tag, warm)
                self.check_divergence(epoch, part, trn)
                timer.add(part_timer)
                mb = cfg.MinibatchSize
                dev = evaluate(self.model, self.dev_x, self.dev_y, self.compute, mb)
                log(f"{tag}: {trn.line()}")
                log(f"\t dev: {dev.line()}")
                tst = None
                if dev.acc > res.best_dev:  # a new best: test, and report both (the `$` line)
                    tst = evaluate(self.model, self.tst_x, self.tst_y, self.compute, mb)
                    res.best_dev, res.test_at_best = dev.acc, tst.acc
                    log(f"\t tst: {tst.line()}")
                    log(f"$ {res.best_dev:.2f} | {res.test_at_best:.2f}")
                    self.files.keep_best()
                pruned = False
                if cfg.NetType == "mlpvar":
                    # Two separate rules: Prepare at the end of every cycle; prune after every
                    # part of the even cycles (simplify one cycle, train normally the next).
                    if (epoch + 1) % cfg.TrainCycle == 0:
                        self.opt.prepare()
                    if (epoch // cfg.TrainCycle) % 2 == 0:
                        self.model.prune(cfg.Prune)
                        if cfg.Compact:
                            compact(self.model, self.opt)
                        pruned = True
                        log(f"Dims: {self.model.dims()}")
                record = part_record(epoch, part, trn, dev, tst, res, part_timer, self.model, pruned)
                res.parts.append(record)
                log.record(record)
                self.files.keep(epoch, part + 1, timer, total)
            log(f"Time: fp: {timer.fp:.2f}s, bp: {timer.bp:.2f}s, update: {timer.update:.2f}s")
            res.epoch_times.append(timer)
            total.add(timer)
            res.epochs = epoch + 1
            self.files.keep(epoch + 1, 0, Timer(), total)
            self.files.write()
        n = cfg.MaxEpoch
        log(f"AvgTime: fp: {total.fp / n:.2f}s, bp: {total.bp / n:.2f}s, update:{total.update / n:.2f}s")
        res.total = total
        res.dims = self.model.dims()
        log.record(summary_record(cfg, res, self))
        return res


def part_record(epoch, part, trn, dev, tst, res, timer, model, pruned):
    """One JSON Lines record per part: the numbers of the log's lines for that part."""
    return {
        "type": "part", "epoch": epoch, "part": part,
        "train_loss": trn.loss, "train_acc": trn.acc, "train_correct": trn.correct,
        "train_total": trn.total, "train_seconds": trn.seconds,
        "dev_loss": dev.loss, "dev_acc": dev.acc,
        "test_loss": tst.loss if tst else None, "test_acc": tst.acc if tst else None,
        "best_dev": res.best_dev, "test_at_best": res.test_at_best,
        "fp": timer.fp, "bp": timer.bp, "update": timer.update,
        "dims": model.active_dims(), "pruned": pruned,
    }


def summary_record(cfg, res, trainer, stopped="completed", reason=None):
    """The final record: best dev, test at best dev, total times, final dims and the config.

    `stopped` says how the run ended: "completed", or "diverged" / "interrupted" with a
    `reason`. Either way it counts the run's whole epochs and their times, across resumes."""
    total = res.total
    rec = {
        "type": "summary", "run_name": cfg.run_name(), "seed": trainer.seed,
        "best_dev": res.best_dev, "test_at_best": res.test_at_best,
        "param_count": res.param_count,
        "epochs": res.epochs,
        "fp": total.fp, "bp": total.bp, "update": total.update,
        "dims": trainer.model.active_dims(), "config": asdict(cfg), "stopped": stopped,
    }
    if reason:
        rec["reason"] = reason
    return rec


def log_header(cfg, trainer, log):
    """The config block and the data sizes that open every log."""
    log(RULE)
    for line in cfg.header_lines():
        log(line)
    log(RULE)
    log(f"Info: #in: {trainer.n_in}, #out: {cfg.LabelCount}")
    log(f"Info: #Trn: {len(trainer.trn_y)}")
    log(f"Info: #Dev: {len(trainer.dev_y)}")
    log(f"Info: #Tst: {len(trainer.tst_y)}")
    if trainer.lengths is not None:  # the tagger: sentences above, tokens here
        tokens = [int(count_of(trainer.model, y)) for y in (trainer.trn_y, trainer.dev_y, trainer.tst_y)]
        log(f"Info: #Tokens: {tokens[0]}, {tokens[1]}, {tokens[2]} (trn, dev, tst)")
    note = getattr(trainer.compute, "note", None)  # e.g. that the GPU backend is simulated
    if note:
        log(f"Info: {note}")


def train_and_evaluate(cfg, splits, log, compute=None):
    """Build the model, then log the header, train and log the end; return the Result (no
    files, no stop handling: `lifecycle.Run` adds those)."""
    return Trainer(cfg, splits, compute).train(log)
