"""Ops: each computes its forward and records its backward, beside it, on the Flow.

Weights are stored neuron-major, shape (out, in): row j holds neuron j's incoming weights, so
y = x @ W.T. Both loops of meProp's sparse backward (dX[b] += dy[b,j] W[j], dW[j] += dy[b,j] x[b])
then walk contiguous rows, and removing a neuron removes a row.
"""
from .tensor import Tensor


def accumulate(t, g):
    """Add `g` into t's gradient (taking ownership of `g` when t has none yet)."""
    if not t.requires_grad:
        return
    t._zero_grad = None  # written below, so no longer known to be zero
    if t._grad is None:
        t._grad = g
    else:
        t._grad += g


def add_product(t, a, b, xp):
    """t's gradient += a @ b, written straight into the buffer when it holds only zeros (as
    after every optimizer step): 0 + p is p, so the numbers are the same, without the
    temporary product and the pass that adds it."""
    g = t.zero_grad_to_overwrite()
    if g is None:
        t.grad += a @ b
    else:
        xp.matmul(a, b, out=g)


def add_column_sums(t, dy):
    """t's gradient += dy summed over the minibatch (into the buffer when it holds zeros)."""
    g = t.zero_grad_to_overwrite()
    if g is None:
        t.grad += dy.sum(axis=0)
    else:
        dy.sum(axis=0, out=g)


def matmul(flow, x, W, compute):
    """y = x @ W.T with the ordinary dense backward."""
    y = Tensor(compute.matmul_xwt(x.value, W.value), requires_grad=True)

    def backward():
        dy = y.grad
        if x.requires_grad:
            accumulate(x, dy @ W.value)
        add_product(W, dy.T, x.value, compute.xp)
    flow.record(backward)
    return y


def meprop_matmul(flow, x, W, compute, select, on_selection=None):
    """y = x @ W.T; backward uses only the entries of dy that `select(dy)` keeps (meProp).

    The step-by-step form of meProp's backward: a unit built from it (`Dense.__call__` with a
    rule) is the reference the fused `meprop_relu_unit` is checked against in the tests, and
    a building block for units of your own; training uses the fused unit.

    `select(dy)` returns a Selection (k columns per example, or one column set for the whole
    minibatch); `on_selection(selection)` sees each one (meSimp's hit counting).
    """
    y = Tensor(compute.matmul_xwt(x.value, W.value), requires_grad=True)

    def backward():
        dy = y.grad
        selection = select(dy)
        if on_selection is not None:
            on_selection(selection)
        dx = compute.meprop_backward(x.value, W.value, dy, selection, W.grad, x.requires_grad)
        flow.selected(W, selection)
        if dx is not None:
            accumulate(x, dx)
    flow.record(backward)
    return y


def meprop_relu_unit(flow, x, W, b, compute, rule, rng, mask=None, hits=None,
                     on_selection=None):
    """out = relu(mask * (x @ W.T + b)) as one op, whose backward is meProp's.

    The same function as `relu(mask(add_bias(meprop_matmul(...))))`, recorded as one backward
    so that a backend can run the whole of it in one call (`compute.meprop_relu_backward`).
    `rule` is the SelectionRule (random ones draw from `rng`); `hits` (meSimp's hit counts)
    counts each chosen (example, neuron); `on_selection(selection)` sees each selection. The
    backward may overwrite the output's gradient buffer in place (with dy); nothing reads it
    afterwards.
    """
    h = compute.matmul_xwt(x.value, W.value)
    h += b.value
    if mask is not None:
        h *= mask
    h *= h > 0
    y = Tensor(h, requires_grad=True)

    def backward():
        dx, selection = compute.meprop_relu_backward(x.value, W.value, h, y.grad, b.grad, W.grad,
                                                     rule, rng, hits, x.requires_grad)
        flow.selected(W, selection)
        if on_selection is not None:
            on_selection(selection)
        if dx is not None:
            accumulate(x, dx)
    flow.record(backward)
    return y


def add_bias(flow, h, b):
    """y = h + b; the bias gets the whole dy, summed over the minibatch."""
    y = Tensor(h.value + b.value, requires_grad=True)

    def backward():
        dy = y.grad
        add_column_sums(b, dy)
        accumulate(h, dy)
    flow.record(backward)
    return y


def relu(flow, x):
    """y = max(x, 0)."""
    positive = x.value > 0
    y = Tensor(x.value * positive, requires_grad=True)

    def backward():
        accumulate(x, y.grad * positive)
    flow.record(backward)
    return y


def mask(flow, x, m):
    """y = m * x for a 0/1 float mask over the columns (meSimp's active neurons).

    Training applies the mask inside `meprop_relu_unit`; this op is the step-by-step
    reference (`MaskedDense.__call__`) that the fused unit is checked against in the tests.
    """
    y = Tensor(x.value * m, requires_grad=True)

    def backward():
        accumulate(x, y.grad * m)
    flow.record(backward)
    return y


def dropout(flow, x, p, rng, compute):
    """Inverted dropout: zero each entry with probability p, scale the rest by 1/(1-p)."""
    keep = compute.uniform(rng, x.shape, x.value.dtype) >= p
    scale = x.value.dtype.type(1.0 / (1.0 - p))
    m = keep * scale
    y = Tensor(x.value * m, requires_grad=True)

    def backward():
        accumulate(x, y.grad * m)
    flow.record(backward)
    return y


def softmax_parts(logits, labels, xp):
    """Per-example -log p[label] and predictions of a (batch, classes) array of logits, with
    what the gradient p - onehot is made of: exp(z - max) e, its row sums s and the row
    indices."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(z)
    s = e.sum(axis=1, keepdims=True)
    rows = xp.arange(z.shape[0])
    return xp.log(s[:, 0]) - z[rows, labels], z.argmax(axis=1), e, s, rows


def softmax_cross_entropy(flow, logits, labels, xp, mean=False):
    """Per-example -log p[label] and predictions; backward hands p - onehot to the logits.

    The gradient is NOT divided by the minibatch size: the original optimises the summed loss.
    With `mean` it is: (p - onehot) / batch, the gradient of the minibatch's mean loss.
    """
    losses, pred, e, s, rows = softmax_parts(logits.value, labels, xp)

    def backward():
        g = e / s
        g[rows, labels] -= 1
        if mean:
            g /= g.shape[0]
        accumulate(logits, g)
    flow.record(backward)
    return losses, pred
