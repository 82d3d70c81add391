"""The part-of-speech tagger: word embeddings, a bidirectional LSTM and a softmax over the
tags, with meProp in the LSTM's backward (docs/TAGGER.md).

Arrays are time-major inside: a minibatch of B sentences padded to L words is (L, B, ...),
so that each time step is one contiguous (B, ...) block. Padding is always at the end of a
sentence (the backward direction reads each sentence reversed, `reverse_each`), so no valid
output ever depends on a padded step and the gradient at padded steps is exactly zero: the
only masks needed are the loss's (which tokens count) and the reversal.

meProp applies to the output gradient of each matrix product (the gate pre-activations
z = x Wx.T + h Wh.T + b, at every step, for every sentence). With `per_gate` (the default,
`TopKScope` gate) k entries are kept in each of the four H-wide gate blocks (4k of 4H);
otherwise k of the whole 4H-wide vector. The kept entries flow to Wx, Wh, the input and the
previous hidden state; the bias and the element-wise cell take the whole gradient, as the
MLP's units do.
"""
import json

import numpy as np

from . import ops
from .layers import Dense
from .params import ParamStore, StateDictError, check_state_keys, load_into
from .select import RandomK, Selection, TopK, UnifiedRandomK, UnifiedTopK
from .tensor import Tensor

PAD = 0          # word id of padding (the same as nnmnist.data.conllu.PAD)
NO_TAG = -2      # the prediction written at padded places (never equal to a tag or to -1)


# ---------------------------------------------------------------- the element-wise cell

def cell_forward(xp, z, c_prev, c_out, tc_out, h_out):
    """One LSTM step after the products: z (B, 4H) holds the pre-activations of the gates
    i, f, g, o and is overwritten with their activations; c = f*c_prev + i*g, h = o*tanh(c)
    go to c_out, h_out (tanh(c) to tc_out). The plain reference of `compute.lstm_cell_forward`."""
    H = c_out.shape[1]
    z[:, :2 * H] = 1 / (1 + xp.exp(-z[:, :2 * H]))
    z[:, 2 * H:3 * H] = xp.tanh(z[:, 2 * H:3 * H])
    z[:, 3 * H:] = 1 / (1 + xp.exp(-z[:, 3 * H:]))
    i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
    c_out[...] = f * c_prev + i * g
    tc_out[...] = xp.tanh(c_out)
    h_out[...] = o * tc_out


def cell_backward(xp, dh, dc, acts, c_prev, tc, dz_out):
    """The step's backward: given dh and dc (the gradient reaching c from the next step),
    write dz (B, 4H), the gradient of the gates' pre-activations, into dz_out and return the
    gradient reaching c_prev. The plain reference of `compute.lstm_cell_backward`."""
    H = tc.shape[1]
    i, f, g, o = acts[:, :H], acts[:, H:2 * H], acts[:, 2 * H:3 * H], acts[:, 3 * H:]
    dct = dc + dh * o * (1 - tc * tc)
    dz_out[:, :H] = dct * g * i * (1 - i)
    dz_out[:, H:2 * H] = dct * c_prev * f * (1 - f)
    dz_out[:, 2 * H:3 * H] = dct * i * (1 - g * g)
    dz_out[:, 3 * H:] = dh * tc * o * (1 - o)
    return dct * f


# ---------------------------------------------------------------- meProp inside the cell

def select_gates(rule, dz, compute, rng, per_gate):
    """The Selection of dz (B, 4H) that flows back through the gates' products.

    `per_gate`: k entries of each gate's H-wide block (columns ascending in each row, 4k in
    all); otherwise the rule on the whole 4H-wide row. Unified rules choose one set of columns
    for the whole minibatch (per gate: the k largest column sums of |dz| in each block)."""
    if not per_gate:
        return rule(dz, compute, rng)
    B, four_h = dz.shape
    H, k = four_h // 4, rule.k
    xp = compute.xp
    offsets = (xp.arange(4, dtype=np.int32) * H)[:, None]
    if type(rule) is TopK:
        idx = compute.select_topk_rows(dz.reshape(B * 4, H), k).reshape(B, 4, k)
    elif type(rule) is RandomK:
        idx = compute.select_random_rows(rng, B * 4, H, k).reshape(B, 4, k)
    elif type(rule) is UnifiedTopK:
        score = xp.abs(dz).sum(axis=0).reshape(4, H)
        cols = compute.select_topk_rows(xp.ascontiguousarray(score), k)
        return Selection((cols + offsets).reshape(4 * k).astype(np.int32), B, unified=True)
    elif type(rule) is UnifiedRandomK:
        cols = compute.select_random_rows(rng, 4, H, k)
        return Selection((cols + offsets).reshape(4 * k).astype(np.int32), B, unified=True)
    else:
        raise TypeError(f"{rule!r}: the LSTM's per-gate selection knows the four built-in rules")
    idx = (idx + offsets[None]).reshape(B, 4 * k).astype(np.int32)
    return Selection(idx, B)


# ---------------------------------------------------------------- ops

class RowSelection:
    """The rows of an embedding table that received gradient (sorted, unique): what a lazy
    optimizer updates (`Optimizer.step(flow.selections)`)."""

    unified = True

    def __init__(self, rows):
        self.chosen = rows

    def rows(self, compute, n_rows):
        return self.chosen


def embed(flow, table, ids, compute):
    """Rows of `table` for the word ids `ids` (any shape): out[...] = table[ids[...]]. The
    gradient is row-sparse: only the rows of the ids present receive it."""
    xp = compute.xp
    y = Tensor(table.value[ids], requires_grad=True)

    def backward():
        d = y.grad.reshape(-1, table.shape[1])
        flat = ids.reshape(-1)
        compute.add_rows(table.grad, flat, d)
        rows = xp.unique(flat)
        flow.selected(table, RowSelection(rows[rows != PAD].astype(np.int32)))
    flow.record(backward)
    return y


def reverse_each(flow, x, src, compute):
    """out[t, b] = x[src[t, b], b]: each sentence's words reversed (src from `reversal`),
    by `compute.reverse_steps`. The permutation is its own inverse, so the backward applies
    it again."""
    y = Tensor(compute.reverse_steps(x.value, src), requires_grad=True)

    def backward():
        ops.accumulate(x, compute.reverse_steps(y.grad, src))
    flow.record(backward)
    return y


def reversal(lengths, L, xp):
    """(L, B) time indices that reverse the first lengths[b] steps of column b and leave the
    padding after them in place."""
    t = xp.arange(L)[:, None]
    n = lengths[None, :]
    return xp.where(t < n, n - 1 - t, t)


def split_linear(flow, a, b, layer, xp):
    """[a, b] @ W.T + bias over every position, for a, b (L, B, H) and a Dense `layer` of
    2H inputs, without building [a, b]: W's two halves take a and b in turn, and the gradients
    reaching a and b come out as separate contiguous arrays. Returns (L*B, out)."""
    L, B, H = a.shape
    fa, fb = a.value.reshape(L * B, H), b.value.reshape(L * B, H)
    W = layer.W.value
    y = Tensor(fa @ W[:, :H].T + fb @ W[:, H:].T + layer.b.value, requires_grad=True)

    def backward():
        g = y.grad
        ops.add_column_sums(layer.b, g)
        dW = layer.W.grad
        dW[:, :H] += g.T @ fa
        dW[:, H:] += g.T @ fb
        if a.requires_grad:
            ops.accumulate(a, (g @ W[:, :H]).reshape(L, B, H))
        if b.requires_grad:
            ops.accumulate(b, (g @ W[:, H:]).reshape(L, B, H))
    flow.record(backward)
    return y


def take_rows(flow, x, rows, xp):
    """x[rows] for a 2-D x and distinct row indices."""
    y = Tensor(x.value[rows], requires_grad=True)

    def backward():
        g = xp.zeros_like(x.value)
        g[rows] = y.grad
        ops.accumulate(x, g)
    flow.record(backward)
    return y


# ---------------------------------------------------------------- the LSTM layer

class LSTM:
    """One direction of an LSTM over time-major input (L, B, n_in), from zero states.

    Parameters: Wx (4H, n_in), Wh (4H, H) and b (4H), gates in the order i, f, g, o, all
    drawn uniformly from [-1/sqrt(H), 1/sqrt(H)]. `rule` (a SelectionRule, None: ordinary
    backprop) and `per_gate` decide meProp's selection (see the module's doc).
    """

    def __init__(self, n_in, hidden, rng, compute, rule=None, per_gate=True):
        bound = 1.0 / np.sqrt(hidden)
        draw = lambda *shape: compute.xp.asarray(  # noqa: E731
            rng.uniform(-bound, bound, size=shape).astype(np.float32))
        self.Wx = Tensor(draw(4 * hidden, n_in), name="Wx")
        self.Wh = Tensor(draw(4 * hidden, hidden), name="Wh")
        self.b = Tensor(draw(4 * hidden), name="b")
        self.hidden, self.compute, self.rng = hidden, compute, rng
        self.rule, self.per_gate = rule, per_gate
        self._kept = {}  # reused per-step buffers (`_buffers`)
        if rule is not None:
            width = hidden if per_gate else 4 * hidden
            if rule.k > width:
                raise ValueError(f"{rule!r}: k = {rule.k} is more than the {width} entries it "
                                 "selects from")

    @property
    def params(self):
        return [self.Wx, self.Wh, self.b]

    def __call__(self, flow, xs):
        c, xp, H = self.compute, self.compute.xp, self.hidden
        L, B, n_in = xs.shape
        Wx, Wh = self.Wx.value, self.Wh.value
        acts, hs, cs, tcs = self._buffers(L, B, xs.value.dtype, "acts", "hs", "cs", "tcs")
        xp.matmul(xs.value.reshape(L * B, n_in), Wx.T, out=acts.reshape(L * B, 4 * H))
        acts += self.b.value
        zero = xp.zeros((B, H), hs.dtype)
        for t in range(L):
            if t:
                acts[t] += c.matmul_xwt(hs[t - 1], Wh)
            c.lstm_cell_forward(acts[t], cs[t - 1] if t else zero, cs[t], tcs[t], hs[t])
        y = Tensor(hs, requires_grad=True)

        def backward():
            self._backward(flow, xs, y.grad, acts, hs, cs, tcs, zero)
        flow.record(backward)
        return y

    def _buffers(self, L, B, dtype, *names):
        """(L, B, width) arrays for the named per-step values (acts and dZ 4H wide, the
        others H), as views of buffers this layer keeps from one call to the next, grown when
        too small: a step then writes into memory already mapped, where fresh arrays of this
        size (megabytes) would page-fault on first touch. The values of one forward stay valid
        until this layer's next forward, so a Flow runs its backward before that (as training
        does)."""
        xp, H = self.compute.xp, self.hidden
        out = []
        for name in names:
            width = 4 * H if name in ("acts", "dZ") else H
            size = L * B * width
            buf = self._kept.get(name)
            if buf is None or buf.size < size or buf.dtype != dtype:
                buf = self._kept[name] = xp.empty(max(size, 2 * buf.size if buf is not None
                                                      and buf.dtype == dtype else size), dtype)
            out.append(buf[:size].reshape(L, B, width))
        return out

    def _backward(self, flow, xs, dH, acts, hs, cs, tcs, zero):
        c, xp, H = self.compute, self.compute.xp, self.hidden
        L, B, n_in = xs.shape
        rule = self.rule
        dc = zero
        dh_next = None
        flat_x = xs.value.reshape(L * B, n_in)
        # Through time, step by step: only what the recurrence needs (dz, and the gradient
        # reaching the previous hidden state); the weight gradients are summed afterwards.
        if rule is None:
            (dZ,) = self._buffers(L, B, acts.dtype, "dZ")
            for t in range(L - 1, -1, -1):
                dh = dH[t] if dh_next is None else dH[t] + dh_next
                dc = c.lstm_cell_backward(dh, dc, acts[t], cs[t - 1] if t else zero, tcs[t], dZ[t])
                if t:
                    dh_next = dZ[t] @ self.Wh.value
            self.b.grad += dZ.sum(axis=(0, 1))
            flat_dz = dZ.reshape(L * B, 4 * H)
            if L > 1:
                ops.add_product(self.Wh, dZ[1:].reshape(-1, 4 * H).T, hs[:-1].reshape(-1, H), xp)
            ops.add_product(self.Wx, flat_dz.T, flat_x, xp)
            dx = flat_dz @ self.Wx.value if xs.requires_grad else None
        else:
            # meProp: the dense dz of a step is not kept, only its kept entries (and its sum,
            # for the bias)
            db = xp.zeros(4 * H, acts.dtype)
            kept = [None] * L
            for t in range(L - 1, -1, -1):
                dc, selection, vals, dh_next = c.lstm_meprop_step(
                    dH[t], dh_next, dc, acts[t], cs[t - 1] if t else zero, tcs[t], rule,
                    self.rng, self.per_gate, self.Wh.value, t > 0, db)
                kept[t] = (selection, vals)
            self.b.grad += db
            dx = self._sparse_weight_grads(kept, xs, hs, flat_x)
        if dx is not None:
            ops.accumulate(xs, dx.reshape(L, B, n_in))

    def _sparse_weight_grads(self, kept, xs, hs, flat_x):
        """dWh += (kept dZ).T @ h_prev and dWx += (kept dZ).T @ x over every step; return
        dx = (kept dZ) @ Wx. Per-example choices take one call over all L*B rows each (a
        weight row then gathers the contributions of every step at once); unified ones one
        call per step."""
        c, xp, H = self.compute, self.compute.xp, self.hidden
        L, B, n_in = xs.shape
        need_dx = xs.requires_grad
        Wx, Wh = self.Wx, self.Wh
        if not kept[0][0].unified:
            idx = xp.concatenate([s.chosen for s, _ in kept], axis=0)
            vals = xp.concatenate([v for _, v in kept], axis=0)
            if L > 1:
                c.meprop_pairs_weight_grad(hs[:-1].reshape(-1, H), Selection(idx[B:], (L - 1) * B),
                                           vals[B:], Wh.grad)
            every = Selection(idx, L * B)
            c.meprop_pairs_weight_grad(flat_x, every, vals, Wx.grad)
            return c.meprop_pairs_input_grad(Wx.value, every, vals) if need_dx else None
        parts = []
        for t, (s, v) in enumerate(kept):
            if t:
                c.meprop_pairs_weight_grad(hs[t - 1], s, v, Wh.grad)
            c.meprop_pairs_weight_grad(xs.value[t], s, v, Wx.grad)
            if need_dx:
                parts.append(c.meprop_pairs_input_grad(Wx.value, s, v))
        return xp.concatenate(parts, axis=0) if need_dx else None


# ---------------------------------------------------------------- the tagger

class Tagger:
    """Embeddings -> bidirectional LSTM -> linear -> softmax over the tags.

    `cfg` gives EmbedSize, HiddenSize (each direction), LabelCount (the tags), NetType (lstm
    dense, lstmtop top-k, lstmrand random-k, k = TrainTop), Unified, TopKScope and Dropout (on
    the LSTM's outputs while training). `vocab` is the word list (ids 0 and 1: padding and the
    unknown word).
    """

    kind = "tagger"

    def __init__(self, cfg, vocab, compute, rng):
        from .select import rule_for
        self.cfg, self.compute, self.rng = cfg, compute, rng
        self.vocab = tuple(vocab)
        self.net_type = cfg.NetType
        xp = compute.xp
        E, H = cfg.EmbedSize, cfg.HiddenSize
        table = rng.normal(0.0, 1.0, size=(len(self.vocab), E)).astype(np.float32)
        table[PAD] = 0
        self.embedding = Tensor(xp.asarray(table), name="W")
        rule = None if cfg.NetType == "lstm" else rule_for(
            "mlprand" if cfg.NetType == "lstmrand" else "mlptop", cfg.TrainTop, cfg.Unified)
        per_gate = cfg.TopKScope == "gate"
        self.fwd = LSTM(E, H, rng, compute, rule, per_gate)
        self.bwd = LSTM(E, H, rng, compute, rule, per_gate)
        self.out = Dense(2 * H, cfg.LabelCount, rng, compute)
        self.dropout = cfg.Dropout
        self.loss_grad = "mean"
        self._rules = None
        self.store = ParamStore(self.named_params(), xp)

    def named_params(self):
        return ([("embed.W", self.embedding)]
                + [(f"fwd.{p.name}", p) for p in self.fwd.params]
                + [(f"bwd.{p.name}", p) for p in self.bwd.params]
                + [(f"out.{p.name}", p) for p in self.out.params])

    @property
    def params(self):
        return [p for _, p in self.named_params()]

    @property
    def param_count(self):
        return sum(int(p.value.size) for p in self.params)

    # -- batches -----------------------------------------------------------------------------
    def prepare_batch(self, x, y):
        """A minibatch's rows cut to its longest sentence."""
        longest = int((x != PAD).sum(axis=1).max()) if len(x) else 0
        return x[:, :max(longest, 1)], y[:, :max(longest, 1)]

    @staticmethod
    def count(y):
        """The tokens a minibatch's tags score (padding excluded)."""
        return (y >= 0).sum()

    def forward(self, flow, x, labels=None):
        """Per-token losses (of the tagged tokens, time-major order) and predictions (B, L),
        NO_TAG at padding, for a batch of padded word ids x (B, L) and tags (B, L)."""
        c, xp = self.compute, self.compute.xp
        ids = xp.ascontiguousarray(x.T)  # (L, B)
        L, B = ids.shape
        valid = ids != PAD
        lengths = valid.sum(axis=0)
        src = reversal(lengths, L, xp)
        cols = xp.arange(B)
        emb_f = embed(flow, self.embedding, ids, c)
        emb_b = embed(flow, self.embedding, xp.ascontiguousarray(ids[src, cols]), c)
        h_f = self.fwd(flow, emb_f)
        h_b = reverse_each(flow, self.bwd(flow, emb_b), src, c)
        if flow.training and self.dropout > 0:
            h_f = ops.dropout(flow, h_f, self.dropout, self.rng, c)
            h_b = ops.dropout(flow, h_b, self.dropout, self.rng, c)
        positions = xp.flatnonzero(valid.reshape(-1))
        logits = take_rows(flow, split_linear(flow, h_f, h_b, self.out, xp), positions, xp)
        pred = xp.full(L * B, NO_TAG, np.int32 if labels is None else labels.dtype)
        if labels is None:
            pred[positions] = logits.value.argmax(axis=1)
            return None, pred.reshape(L, B).T
        gold = xp.ascontiguousarray(labels.T).reshape(-1)[positions]
        losses, best = ops.softmax_cross_entropy(flow, logits, gold, xp,
                                                 mean=self.loss_grad == "mean")
        pred[positions] = best
        return losses, pred.reshape(L, B).T

    # -- DenseWarmup --------------------------------------------------------------------------
    def dense_backward(self, on):
        lstms = (self.fwd, self.bwd)
        if on and self._rules is None:
            self._rules = [m.rule for m in lstms]
            for m in lstms:
                m.rule = None
        elif not on and self._rules is not None:
            for m, rule in zip(lstms, self._rules):
                m.rule = rule
            self._rules = None

    # -- what the run reports and keeps -----------------------------------------------------
    def active_dims(self):
        return [self.cfg.HiddenSize, self.cfg.HiddenSize, self.cfg.LabelCount]

    def dims(self):
        H = self.cfg.HiddenSize
        return f"{len(self.vocab)}x{self.cfg.EmbedSize}, {H}+{H}, {self.cfg.LabelCount}"

    def meta(self):
        return {"kind": self.kind, "n_in": len(self.vocab), "embed": int(self.cfg.EmbedSize),
                "hidden": int(self.cfg.HiddenSize), "tags": int(self.cfg.LabelCount)}

    def state_dict(self):
        """Weights, the vocabulary (one string per id) and the generator's state."""
        out = self.store.state_dict()
        out["vocab"] = np.array(self.vocab)
        out["rng"] = np.array(json.dumps(self.rng.bit_generator.state))
        return out

    def load_state_dict(self, state):
        check_state_keys("model", state, self.store.names + ["vocab", "rng"])
        vocab = tuple(str(w) for w in np.asarray(state["vocab"]).tolist())
        if vocab != self.vocab:
            raise StateDictError("model state: its vocabulary differs from the one the data "
                                 "gives (another training file or MinCount?)")
        try:
            rng_state = json.loads(str(np.asarray(state["rng"])))
            probe = type(self.rng.bit_generator)()
            probe.state = rng_state
        except (ValueError, TypeError, KeyError) as exc:
            raise StateDictError(f"model state: rng is not a generator state ({exc})") from None
        load_into("model", self.store.loading(state), self.compute.xp)
        self.rng.bit_generator.state = rng_state
