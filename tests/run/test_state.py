"""The flat parameter store, and state_dict / load_state_dict on networks and optimizers."""
import numpy as np
import pytest

from nnmnist.backends.cpu import NumbaCompute, NumpyCompute
from nnmnist.run.config import Config
from nnmnist.nn.networks import MLP
from nnmnist.optim import make_optimizer
from nnmnist.nn.params import ParamStore, StateDictError
from nnmnist.nn.tensor import Flow, Tensor

NETS = ["mlp", "mlptop", "mlprand", "mlpvar"]
OPTS = ["sgd", "adagrad", "adam"]


def build(net_type="mlpvar", opt_type="adam", seed=0, compute=None, lazy=False, **kw):
    compute = compute or NumpyCompute()
    cfg = Config(NetType=net_type, OptType=opt_type, HiddenSize=16, TrainTop=4, LabelCount=5,
                 LazyUpdate=lazy, L2RegFactor=0.01, LearningRate=0.01, Dropout=0.1, **kw)
    model = MLP(cfg, 12, compute, np.random.default_rng(seed))
    return model, make_optimizer(cfg, model.params, compute, 100)


def batches(n, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(6, 12)).astype(np.float32), rng.integers(0, 5, 6)) for _ in range(n)]


def train(model, opt, data):
    for x, y in data:
        flow = Flow()
        model.forward(flow, x, y)
        flow.backward()
        opt.step(flow.selections)


def test_the_model_owns_one_flat_store_and_the_optimizer_keeps_it():
    model, _ = build(opt_type="sgd")
    store = model.store
    values = [p.value for p in model.params]
    grads = [p.grad for p in model.params]
    assert store.value.size == sum(p.value.size for p in model.params) == model.param_count
    for p in model.params:
        assert np.shares_memory(p.value, store.value) and np.shares_memory(p.grad, store.grad)
    for opt_type in OPTS:
        make_optimizer(Config(OptType=opt_type), model.params, NumpyCompute(), 10)
        assert model.store is store
        assert all(p.value is v and p.grad is g for p, v, g in zip(model.params, values, grads))


def test_dense_step_is_one_call_over_the_whole_store(monkeypatch):
    model, opt = build(opt_type="adam")
    calls = []
    original = NumpyCompute.update

    def spy(self, rule, w, *args):
        calls.append(w.size)
        return original(self, rule, w, *args)
    monkeypatch.setattr(NumpyCompute, "update", spy)
    train(model, opt, batches(1))
    assert calls == [model.param_count]


@pytest.mark.parametrize("net_type", NETS)
@pytest.mark.parametrize("opt_type", OPTS)
@pytest.mark.parametrize("lazy", [False, True])
def test_save_load_continues_exactly(net_type, opt_type, lazy):
    """Train 3 steps, save; train 3 more. A fresh model and optimizer (another seed) that load
    the saved state and train the same 3 steps end bit for bit where the first did."""
    data = batches(6)
    model, opt = build(net_type, opt_type, lazy=lazy)
    train(model, opt, data[:3])
    if net_type == "mlpvar":
        model.prune(0.3)
    saved_model, saved_opt = model.state_dict(), opt.state_dict()
    train(model, opt, data[3:])

    other, other_opt = build(net_type, opt_type, seed=7, lazy=lazy)
    values = [p.value for p in other.params]
    state_bufs = dict(other_opt.state.flat)
    other.load_state_dict(saved_model)
    other_opt.load_state_dict(saved_opt)
    # In place: the same buffers as before the load.
    assert all(p.value is v for p, v in zip(other.params, values))
    assert all(other_opt.state.flat[n] is b for n, b in state_bufs.items())
    assert other_opt.t == 3
    train(other, other_opt, data[3:])
    for a, b in zip(model.params, other.params):
        np.testing.assert_array_equal(a.value, b.value)
    for a, b in zip(model.state_dict().items(), other.state_dict().items()):
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1])
    for a, b in zip(opt.state_dict().items(), other_opt.state_dict().items()):
        np.testing.assert_array_equal(a[1], b[1])


def test_without_the_load_the_runs_differ():
    """The check above can fail: another seed's model ends elsewhere."""
    data = batches(3)
    a, oa = build("mlptop")
    b, ob = build("mlptop", seed=7)
    train(a, oa, data)
    train(b, ob, data)
    assert not np.array_equal(a.params[0].value, b.params[0].value)


def test_state_dict_holds_what_a_run_needs():
    model, opt = build("mlpvar", "adam")
    train(model, opt, batches(2))
    state = model.state_dict()
    assert set(state) == {"0.W", "0.b", "1.W", "1.b", "2.W", "2.b", "0.active", "0.hits",
                          "0.examples", "1.active", "1.hits", "1.examples", "rng"}
    assert int(state["0.examples"]) == 12 and state["0.hits"].sum() == 12 * 4
    assert set(opt.state_dict()) == {"t"} | {f"{s}.{n}" for s in "mv" for n in model.store.names}
    for value in list(state.values()) + list(opt.state_dict().values()):
        assert isinstance(value, np.ndarray) and value.dtype != object
    # the arrays are copies: training on does not change a saved state
    w = state["0.W"].copy()
    train(model, opt, batches(1, seed=3))
    np.testing.assert_array_equal(state["0.W"], w)


def test_rng_state_round_trips():
    model, _ = build("mlprand")
    saved = model.state_dict()
    first = model.rng.random(4)
    model.load_state_dict(saved)
    np.testing.assert_array_equal(model.rng.random(4), first)


def test_load_errors_name_the_field():
    model, opt = build("mlpvar")
    state = model.state_dict()
    with pytest.raises(StateDictError, match=r"model state: 1\.W has shape \(16, 15\), expected \(16, 16\)"):
        model.load_state_dict({**state, "1.W": np.zeros((16, 15), np.float32)})
    with pytest.raises(StateDictError, match="missing 0.hits"):
        model.load_state_dict({k: v for k, v in state.items() if k != "0.hits"})
    with pytest.raises(StateDictError, match="unexpected 9.W"):
        model.load_state_dict({**state, "9.W": state["0.W"]})
    with pytest.raises(StateDictError, match="rng"):
        model.load_state_dict({**state, "rng": np.array("{}")})
    ostate = opt.state_dict()
    with pytest.raises(StateDictError, match=r"optimizer state: m\.2\.b has shape"):
        opt.load_state_dict({**ostate, "m.2.b": np.zeros(4, np.float32)})
    with pytest.raises(StateDictError, match="step count"):
        opt.load_state_dict({**ostate, "t": np.array(1.5)})
    with pytest.raises(StateDictError, match="missing t"):
        opt.load_state_dict({k: v for k, v in ostate.items() if k != "t"})
    # a failed load leaves the model as it was (checks come before copies)
    before = model.params[0].value.copy()
    with pytest.raises(StateDictError):
        model.load_state_dict({**state, "0.W": state["0.W"] + 1, "2.b": np.zeros(3)})
    np.testing.assert_array_equal(model.params[0].value, before)


def test_take_cuts_values_gradients_and_optimizer_state():
    """Removing neurons: rows of a layer's W and b and columns of the next W, with their state."""
    model, opt = build("mlpvar", "adam")
    train(model, opt, batches(2))
    keep = np.array([0, 3, 4, 9, 15])
    names = model.store.names
    before = {n: p.value.copy() for n, p in zip(names, model.params)}
    m_before = {n: v.copy() for n, v in zip(names, opt.state.views("m"))}
    for p in model.params:
        p.grad[...] = np.arange(p.value.size, dtype=np.float32).reshape(p.shape)
    g_before = {n: p.grad.copy() for n, p in zip(names, model.params)}
    tensors = list(model.params)
    index = {"0.W": keep, "0.b": keep, "1.W": (slice(None), keep)}
    model.store.take(index)
    assert list(model.params) == tensors  # same Tensor objects
    assert model.params[0].shape == (5, 12) and model.params[2].shape == (16, 5)
    assert model.store.size == sum(p.value.size for p in model.params)
    for name, p, m in zip(names, model.params, opt.state.views("m")):
        cut = index.get(name, slice(None))
        np.testing.assert_array_equal(p.value, before[name][cut])
        np.testing.assert_array_equal(p.grad, g_before[name][cut])
        np.testing.assert_array_equal(m, m_before[name][cut])
        assert np.shares_memory(p.value, model.store.value)
        assert np.shares_memory(m, opt.state.flat["m"])
    # The optimizer steps the smaller network, and its state views follow.
    for layer in model.masked_layers[:1]:
        layer.active, layer.mask, layer.hits = layer.active[keep], layer.mask[keep], layer.hits[keep]
    train(model, opt, batches(1, seed=4))
    for p in model.params:
        assert p.state["m"].shape == p.shape and np.shares_memory(p.state["m"], opt.state.flat["m"])


def test_store_checks():
    with pytest.raises(ValueError, match="one dtype"):
        ParamStore([("a", Tensor(np.zeros(2, np.float32))), ("b", Tensor(np.zeros(2)))])
    with pytest.raises(ValueError, match="unique"):
        ParamStore([("a", Tensor(np.zeros(2))), ("a", Tensor(np.zeros(2)))])
    model, _ = build("mlp")
    with pytest.raises(ValueError, match="whole store"):
        make_optimizer(Config(), model.params[:2], NumpyCompute(), 10)
    with pytest.raises(KeyError, match="9.W"):
        model.store.take({"9.W": [0]})


def test_numba_path_continues_exactly_too():
    data = batches(4)
    model, opt = build("mlptop", compute=NumbaCompute())
    train(model, opt, data[:2])
    saved = model.state_dict(), opt.state_dict()
    train(model, opt, data[2:])
    other, other_opt = build("mlptop", seed=3, compute=NumbaCompute())
    other.load_state_dict(saved[0])
    other_opt.load_state_dict(saved[1])
    train(other, other_opt, data[2:])
    for a, b in zip(model.params, other.params):
        np.testing.assert_array_equal(a.value, b.value)
