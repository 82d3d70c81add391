"""The training options that question the original's setup: `LossGrad` (back-propagate the mean
loss instead of the summed one) and `DenseWarmup` (dense steps before meProp starts)."""
import numpy as np
import pytest

from nnmnist.nn import ops
from nnmnist.backends.cpu import NumpyCompute
from nnmnist.run.config import Config
from nnmnist.nn.networks import MLP
from nnmnist.run.log import RunLog
from nnmnist.nn.tensor import Flow, Tensor
from nnmnist.run.training import Trainer, steps_before

from test_checkpoint import assert_same_run, full_run, interrupted_run

EPS = 1e-6


def tiny(**fields):
    # 600 training examples, 2 parts of 300, minibatch 100: 3 steps a part, 6 an epoch.
    base = dict(MaxEpoch=2, IterPerEpoch=2, HiddenSize=16, TrainTop=3, RandomSeed=5,
                Kernels="numpy")
    base.update(fields)
    return Config(**base)


def records(cfg, splits):
    log = RunLog(console=False)
    Trainer(cfg, splits).train(log)
    return [(r["train_loss"], r["dev_loss"], r["dev_acc"]) for r in log.records if r["type"] == "part"]


# -- LossGrad ------------------------------------------------------------------------------
def test_mean_loss_gradient_against_central_differences():
    """With mean=True the logits' gradient is that of the minibatch's mean loss, (p - onehot)/B."""
    rng = np.random.default_rng(3)
    z = Tensor(rng.normal(size=(6, 4)))
    labels = np.array([0, 3, 1, 1, 2, 0])
    flow = Flow()
    ops.softmax_cross_entropy(flow, z, labels, np, mean=True)
    flow.backward()
    p = np.exp(z.value) / np.exp(z.value).sum(1, keepdims=True)
    np.testing.assert_allclose(z.grad, (p - np.eye(4)[labels]) / 6, rtol=1e-10)
    L = lambda v: float(ops.softmax_cross_entropy(Flow(False), Tensor(v), labels, np)[0].mean())
    for _ in range(3):
        d = rng.normal(size=z.shape)
        numeric = (L(z.value + EPS * d) - L(z.value - EPS * d)) / (2 * EPS)
        assert numeric == pytest.approx(float((z.grad * d).sum()), rel=1e-6)


@pytest.mark.parametrize("net_type", ["mlp", "mlptop"])
def test_mean_network_gradient_is_the_summed_one_over_the_batch(net_type):
    cfg = Config(NetType=net_type, HiddenSize=12, TrainTop=4, Layers=3)
    x = np.random.default_rng(1).random((5, 784))
    y = np.array([1, 2, 3, 4, 5])
    grads = {}
    for how in ("sum", "mean"):
        net = MLP(cfg, 784, NumpyCompute(), np.random.default_rng(0))
        net.loss_grad = how
        flow = Flow()
        net.forward(flow, x, y)
        flow.backward()
        grads[how] = [p.grad.copy() for p in net.params]
    for s, m in zip(grads["sum"], grads["mean"]):
        assert np.abs(s).max() > 0
        np.testing.assert_allclose(m, s / 5, rtol=1e-6, atol=1e-9)  # float32 gradients


def test_mean_loss_with_sgd_is_the_summed_loss_at_a_batch_times_smaller_rate(tiny_splits):
    """SGD is linear in the gradient: mean loss at rate r trains as summed loss at r / 100 (every
    minibatch here has 100 examples, clipping off); at the same rate the runs differ."""
    common = dict(NetType="mlptop", OptType="sgd", ClipBound=0.0, AllowDivergence=True)
    mean = records(tiny(LossGrad="mean", LearningRate=0.5, **common), tiny_splits)
    summed = records(tiny(LearningRate=0.005, **common), tiny_splits)
    same_rate = records(tiny(LearningRate=0.5, **common), tiny_splits)
    np.testing.assert_allclose(np.array(mean), np.array(summed), rtol=1e-4)
    assert not np.allclose(np.array(mean), np.array(same_rate), rtol=1e-2)


def test_default_is_the_summed_loss(tiny_splits):
    cfg = tiny(NetType="mlptop")
    assert records(cfg, tiny_splits) == records(tiny(NetType="mlptop", LossGrad="sum"), tiny_splits)
    assert records(cfg, tiny_splits) != records(tiny(NetType="mlptop", LossGrad="mean"), tiny_splits)


# -- DenseWarmup ---------------------------------------------------------------------------
def test_steps_before_counts_minibatches_of_uneven_parts():
    cfg = Config(IterPerEpoch=3, MinibatchSize=10)
    # Parts of 34, 33, 33 examples: 4, 4, 4 minibatches.
    assert [steps_before(100, cfg, 0, p) for p in range(3)] == [0, 4, 8]
    assert steps_before(100, cfg, 2, 1) == 2 * 12 + 4
    cfg = Config(IterPerEpoch=2, MinibatchSize=50)  # 51 and 50 examples: 2 and 1 minibatches
    assert [steps_before(101, cfg, e, p) for e in (0, 1) for p in (0, 1)] == [0, 2, 3, 5]


@pytest.mark.parametrize("warmup,sparse_steps", [(0, 12), (1, 11), (4, 8), (6, 6), (12, 0), (50, 0)])
def test_warmup_steps_back_propagate_densely(tiny_splits, plain_backward_calls, warmup, sparse_steps):
    """Each sparse step runs meProp's backward once per hidden layer (2 here); dense steps none."""
    records(tiny(NetType="mlptop", DenseWarmup=warmup), tiny_splits)
    assert len(plain_backward_calls) == 2 * sparse_steps


@pytest.mark.parametrize("net_type", ["mlptop", "mlprand"])
def test_warmup_over_the_whole_run_is_mlp(tiny_splits, net_type):
    mlp = records(tiny(NetType="mlp"), tiny_splits)
    assert records(tiny(NetType=net_type, DenseWarmup=12), tiny_splits) == mlp
    assert records(tiny(NetType=net_type), tiny_splits) != mlp


def test_partial_warmup_starts_as_mlp_and_then_departs(tiny_splits):
    mlp = records(tiny(NetType="mlp"), tiny_splits)
    top = records(tiny(NetType="mlptop"), tiny_splits)
    warm = records(tiny(NetType="mlptop", DenseWarmup=6), tiny_splits)  # epoch 0 dense
    assert warm[:2] == mlp[:2]
    assert warm[2:] != mlp[2:] and warm != top


def test_the_model_is_left_with_its_rules(tiny_splits):
    t = Trainer(tiny(NetType="mlptop", DenseWarmup=50), tiny_splits)
    rules = [layer.rule for layer in t.model.layers]
    t.train(RunLog(console=False))
    assert [layer.rule for layer in t.model.layers] == rules and rules[0] is not None


@pytest.mark.parametrize("at", [1, 2, 3])  # inside the warm-up, at its last dense part, after it
@pytest.mark.parametrize("net_type", ["mlptop", "mlprand"])
def test_resume_across_the_warmup_is_exact(tmp_path, tiny_splits, net_type, at):
    cfg = tiny(NetType=net_type, DenseWarmup=8, Kernels="numba")  # ends in epoch 1 part 0
    full = full_run(cfg, tiny_splits, tmp_path)
    first, second, _ = interrupted_run(cfg, tiny_splits, tmp_path, at)
    assert_same_run(full, first, second)
