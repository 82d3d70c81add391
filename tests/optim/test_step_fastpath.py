"""The training step's shortcuts against the plain path they replace, bit for bit.

- A dense product or column sum written straight into a gradient buffer that an optimizer
  step has just zeroed, against adding it into the buffer (`Tensor.zero_grad_to_overwrite`).
- A lazy step's parameters without a selection updated as one run of adjacent flat slices,
  against one call per parameter.
"""
import numpy as np
import pytest

from nnmnist.backends.cpu import NumbaCompute, NumpyCompute
from nnmnist.nn import ops
from nnmnist.nn.networks import MLP
from nnmnist.nn.tensor import Flow, Tensor
from nnmnist.optim import make_optimizer
from nnmnist.run.config import Config


def train(cfg, splits, compute, steps, overwrite=True, monkeypatch=None):
    """Weights and optimizer state after `steps` minibatches of 10 (the shortcuts on or off)."""
    if not overwrite:
        monkeypatch.setattr(Tensor, "zero_grad_to_overwrite", lambda self: None)
    model = MLP(cfg, 784, compute, np.random.default_rng(3))
    opt = make_optimizer(cfg, model.store, compute, 1000)
    for s in range(steps):
        flow = Flow()
        rows = slice(10 * s, 10 * s + 10)
        model.forward(flow, splits.trn_x[rows], splits.trn_y[rows])
        flow.backward()
        opt.step(flow.selections)
    if not overwrite:
        monkeypatch.undo()
    return model.store.value.copy(), {k: v.copy() for k, v in opt.state.flat.items()}


@pytest.mark.parametrize("compute", [NumpyCompute(), NumbaCompute()], ids=["numpy", "numba"])
@pytest.mark.parametrize("net_type,lazy", [("mlp", False), ("mlptop", False), ("mlptop", True),
                                           ("mlpvar", True)])
def test_writing_into_zeroed_gradients_equals_adding(tiny_splits, monkeypatch, compute,
                                                     net_type, lazy):
    cfg = Config(NetType=net_type, HiddenSize=40, TrainTop=8, LazyUpdate=lazy)
    fast = train(cfg, tiny_splits, compute, 12)
    plain = train(cfg, tiny_splits, compute, 12, overwrite=False, monkeypatch=monkeypatch)
    assert fast[0].dtype == plain[0].dtype == np.float32
    np.testing.assert_array_equal(fast[0], plain[0])
    for name in plain[1]:
        np.testing.assert_array_equal(fast[1][name], plain[1][name])


def test_a_zeroed_gradient_is_overwritten_only_while_untouched():
    rng = np.random.default_rng(0)
    x = Tensor(rng.normal(size=(4, 6)), requires_grad=False)
    W = Tensor(rng.normal(size=(5, 6)))
    W.grad[...] = 0
    W.zeroed()
    W.grad[...] += 1.0  # someone wrote into it through `grad`: no longer known to be zero
    flow = Flow()
    y = ops.matmul(flow, x, W, NumpyCompute())
    dy = rng.normal(size=y.shape)
    y.grad = dy.copy()
    flow.backward()
    np.testing.assert_allclose(W.grad, 1.0 + dy.T @ x.value, rtol=1e-12)
    # zeroed and untouched: written, not added (a stale non-zero would show otherwise)
    W.grad[...] = 0
    W.zeroed()
    assert W.zero_grad_to_overwrite() is W._grad
    assert W.zero_grad_to_overwrite() is None  # the knowledge is used up


def test_accumulate_and_a_new_buffer_end_the_knowledge():
    t = Tensor(np.zeros((2, 3)))
    t.zeroed()
    ops.accumulate(t, np.ones((2, 3)))
    assert t.zero_grad_to_overwrite() is None
    t.zeroed()
    t.grad = np.zeros((2, 3))  # a buffer that was never marked
    assert t.zero_grad_to_overwrite() is None


@pytest.mark.parametrize("opt_type", ["sgd", "adagrad", "adam", "rmsprop"])
@pytest.mark.parametrize("compute", [NumpyCompute(), NumbaCompute()], ids=["numpy", "numba"])
def test_lazy_step_runs_equal_one_call_per_parameter(tiny_splits, opt_type, compute):
    cfg = Config(NetType="mlptop", HiddenSize=40, TrainTop=8, LazyUpdate=True, OptType=opt_type,
                 L2RegFactor=0.01, LearningRate=0.01)
    results = []
    for grouped in (True, False):
        model = MLP(cfg, 784, compute, np.random.default_rng(4))
        opt = make_optimizer(cfg, model.store, compute, 1000)
        for s in range(6):
            flow = Flow()
            model.forward(flow, tiny_splits.trn_x[10 * s:10 * s + 10],
                          tiny_splits.trn_y[10 * s:10 * s + 10])
            flow.backward()
            if grouped:
                opt.step(flow.selections)
            else:  # the step as it was: every parameter on its own
                opt.t += 1
                opt._begin_step()
                scalars = opt.scalars()
                for p, state in zip(opt.store.params, opt.state_views()):
                    states = [state[name] for name in opt.rule.state]
                    sel = flow.selections.get(p)
                    if sel is None:
                        compute.update(opt.rule, p.value, p.grad, states, scalars)
                    else:
                        compute.update_rows(opt.rule, p.value, p.grad, states,
                                            sel.rows(compute, p.shape[0]), scalars)
        results.append((model.store.value.copy(), model.store.grad.copy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert not results[0][1].any() and not results[1][1].any()
