"""meSimp: recording hits, pruning by the floor threshold, no reactivation, and the cycle."""
import numpy as np
import pytest

from nnmnist.backends.cpu import NumpyCompute
from nnmnist.run.config import Config
from nnmnist.nn.layers import MaskedDense
from nnmnist.nn.networks import MLP
from nnmnist.run.log import RunLog
from nnmnist.nn.select import TopK
from nnmnist.nn.tensor import Flow, Tensor
from nnmnist.run.training import train_and_evaluate

C = NumpyCompute()


def masked_layer(n_out=5, k=2):
    return MaskedDense(3, n_out, np.random.default_rng(0), C, TopK(k))


def backward_with(layer, dy):
    flow = Flow()
    y = layer(flow, Tensor(np.ones((dy.shape[0], 3), dtype=np.float32), requires_grad=False))
    y.grad = dy.astype(np.float32)
    flow.backward()


def test_record_counts_each_examples_topk():
    layer = masked_layer()
    dy = np.array([[5, 0, -4, 1, 0],
                   [0, 3, 0, -9, 1],
                   [1, 1, 1, 1, 1]])  # all equal: ties go to the lower columns
    backward_with(layer, dy)
    assert layer.examples == 3
    np.testing.assert_array_equal(layer.hits, [2, 2, 1, 1, 0])


def test_prune_floor_threshold_and_reset():
    layer = masked_layer()
    layer.examples = 19
    layer.hits[:] = [2, 1, 5, 0, 1]
    layer.prune(0.1)              # threshold = floor(1.9) = 1: hits < 1 go
    np.testing.assert_array_equal(layer.active, [True, True, True, False, True])
    assert layer.examples == 0 and np.all(layer.hits == 0)
    layer.examples = 20
    layer.hits[:] = [2, 1, 5, 9, 1]
    layer.prune(0.1)              # threshold = 2; neuron 3 had 9 hits but never returns
    np.testing.assert_array_equal(layer.active, [True, False, True, False, False])
    np.testing.assert_array_equal(layer.mask, [1, 0, 1, 0, 0])
    assert layer.active_count == 2


def test_masked_neurons_get_no_gradient_and_output_zero():
    layer = masked_layer(k=5)
    layer.active[:] = [True, False, True, True, False]
    layer.mask[:] = layer.active
    flow = Flow()
    y = layer(flow, Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=False))
    assert np.all(y.value[:, [1, 4]] == 0)
    y.grad = np.ones((2, 5), dtype=np.float32)
    flow.backward()
    assert np.all(layer.W.grad[[1, 4]] == 0) and np.all(layer.b.grad[[1, 4]] == 0)
    assert np.all(layer.b.grad[[0, 2, 3]] == 2)


def test_dims_string():
    cfg = Config(NetType="mlpvar", HiddenSize=6, TrainTop=2, LabelCount=3)
    model = MLP(cfg, 4, C, np.random.default_rng(0))
    assert model.dims() == "6(6), 6(6), 3"
    model.masked_layers[0].active[:3] = False
    model.prune(0.0)  # threshold 0 keeps every active neuron, and refreshes the mask
    assert model.dims() == "3(6), 6(6), 3"
    np.testing.assert_array_equal(model.masked_layers[0].mask, [0, 0, 0, 1, 1, 1])


# The meSimp schedule over 6 epochs, written out by hand: a cycle of `c` epochs simplifies
# (prunes after every part), the next trains normally, and so on; Prepare comes after every
# part of the last epoch of each cycle, counted from the first epoch.
PRUNE_EPOCHS = {1: [0, 2, 4], 2: [0, 1, 4, 5], 3: [0, 1, 2]}
PREPARE_EPOCHS = {1: [0, 1, 2, 3, 4, 5], 2: [1, 3, 5], 3: [2, 5]}


@pytest.mark.parametrize("cycle", [1, 2, 3])
def test_cycle_logic_over_several_epochs(tiny_splits, cycle):
    cfg = Config(NetType="mlpvar", HiddenSize=40, TrainTop=8, MaxEpoch=6, TrainCycle=cycle,
                 IterPerEpoch=2, RandomSeed=3, Kernels="numpy", Prune=0.3)
    log = RunLog(console=False)
    prepares = []
    import nnmnist.optim as optim
    original = optim.Optimizer.prepare

    def spy(self):
        prepares.append(len(log.lines))
        original(self)
    optim.Optimizer.prepare = spy
    try:
        train_and_evaluate(cfg, tiny_splits, log)
    finally:
        optim.Optimizer.prepare = original
    # Which epoch/part each Dims line follows.
    dims_at, epoch_part = [], None
    for line in log.lines:
        if line[:2].isdigit() and line[2] == ":":
            epoch_part = (int(line[:2]), int(line[3:5]))
        if line.startswith("Dims: "):
            dims_at.append(epoch_part)
    want = [(e, p) for e in PRUNE_EPOCHS[cycle] for p in range(2)]
    assert dims_at == want
    # Prepare: once at the start, then after every part of the cycles' last epochs.
    assert len(prepares) == 1 + 2 * len(PREPARE_EPOCHS[cycle])
    # Active counts never grow.
    counts = [[int(d.split("(")[0]) for d in line[6:].split(", ")[:-1]]
              for line in log.lines if line.startswith("Dims: ")]
    for a, b in zip(counts, counts[1:]):
        assert all(y <= x for x, y in zip(a, b))
    assert counts[-1][0] < 40  # pruning really happened
