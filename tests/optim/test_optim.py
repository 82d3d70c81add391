"""Each optimizer stepped beside docs/ORIGINAL.md §5's equations written out in float64."""
import math

import numpy as np
import pytest

from nnmnist.backends.cpu import NumbaCompute, NumpyCompute
from nnmnist.run.config import Config
from nnmnist.errors import UserError
from nnmnist.nn.select import Selection
from nnmnist.optim import RULES, SGD, AdaGrad, Adam, RMSProp, make_optimizer, optimizer_class
from nnmnist.nn.tensor import Tensor

C = NumpyCompute()


def make_param(seed, shape=(4, 6)):
    rng = np.random.default_rng(seed)
    return Tensor(rng.normal(size=shape).astype(np.float32))


def grads(seed, shape, steps, scale=4.0):
    """Large enough gradients that clipping at 5 bites."""
    rng = np.random.default_rng(seed + 100)
    return [(rng.normal(size=shape) * scale).astype(np.float32) for _ in range(steps)]


def clip(g, bound):
    return np.clip(g, -bound, bound) if bound > 0 else g


def run_steps(opt, p, gs, on_step=None):
    for i, g in enumerate(gs):
        p.grad[...] = g
        opt.step()
        assert np.all(p.grad == 0), "gradient must be zeroed after the update"
        if on_step:
            on_step(i)


@pytest.mark.parametrize("bound", [0.0, 5.0])
def test_sgd_decay_and_clip(bound):
    p = make_param(0)
    w = p.value.astype(np.float64)
    gs = grads(0, p.shape, 5)
    n_train, lr, decay = 3, 0.1, 0.5     # tiny n_train so that the decay is visible
    opt = SGD([p], C, lr, decay, n_train, clip=bound)
    run_steps(opt, p, gs)
    for t, g in enumerate(gs, start=1):
        w -= lr * decay ** (t / n_train) * clip(g.astype(np.float64), bound)
    np.testing.assert_allclose(p.value, w, rtol=2e-6, atol=2e-6)
    assert p.value.dtype == np.float32


def test_sgd_ignores_l2():
    cfg = Config(OptType="sgd", L2RegFactor=0.5)
    p, q = make_param(1), make_param(1)
    g = grads(1, p.shape, 1)
    a = make_optimizer(cfg, [p], C, 10)
    b = make_optimizer(Config(OptType="sgd"), [q], C, 10)
    run_steps(a, p, g)
    run_steps(b, q, g)
    np.testing.assert_array_equal(p.value, q.value)


@pytest.mark.parametrize("l2,bound", [(0.0, 0.0), (0.01, 5.0), (0.3, 1.0)])
def test_adagrad(l2, bound):
    p = make_param(2)
    w = p.value.astype(np.float64)
    h = np.zeros_like(w)
    lr, eps = 0.1, 1e-6
    gs = grads(2, p.shape, 6)
    opt = AdaGrad([p], C, lr, eps, l2=l2, clip=bound)
    run_steps(opt, p, gs)
    for g in gs:
        g = clip(g + l2 * w, bound)
        h += g * g
        w -= g * lr / np.sqrt(h + eps)
    np.testing.assert_allclose(p.value, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.state["h"], h, rtol=1e-5)


def adam_reference(w, gs, lr, l2, bound, m=None, v=None, t0=0):
    m = np.zeros_like(w) if m is None else m
    v = np.zeros_like(w) if v is None else v
    for t, g in enumerate(gs, start=t0 + 1):
        g = clip(g + l2 * w, bound)
        v = 0.999 * v + 0.001 * g * g
        m = 0.9 * m + 0.1 * g
        lr_t = lr * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        w = w - lr_t * m / (np.sqrt(v) + 1e-8)
    return w, m, v


@pytest.mark.parametrize("l2,bound,lr", [(0.0, 0.0, 0.001), (0.01, 5.0, 0.001), (0.1, 2.0, 0.01)])
def test_adam(l2, bound, lr):
    p = make_param(3)
    gs = grads(3, p.shape, 7)
    opt = Adam([p], C, lr, l2=l2, clip=bound)
    run_steps(opt, p, gs)
    w, m, v = adam_reference(make_param(3).value.astype(np.float64), gs, lr, l2, bound)
    np.testing.assert_allclose(p.value, w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p.state["m"], m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p.state["v"], v, rtol=1e-5, atol=1e-9)


def test_adam_honours_learning_rate():
    p, q = make_param(4), make_param(4)
    g = grads(4, p.shape, 1)
    run_steps(Adam([p], C, 0.001), p, g)
    run_steps(Adam([q], C, 0.01), q, g)
    w0 = make_param(4).value
    np.testing.assert_allclose(q.value - w0, 10 * (p.value - w0), rtol=1e-4)


def test_prepare_zeroes_state_but_adam_counter_survives():
    p = make_param(5)
    gs = grads(5, p.shape, 6)
    opt = Adam([p], C, 0.001, clip=5.0)
    run_steps(opt, p, gs[:3])
    assert opt.t == 3 and np.any(p.state["m"] != 0)
    w_mid = p.value.astype(np.float64)
    opt.prepare()
    assert opt.t == 3
    assert np.all(p.state["m"] == 0) and np.all(p.state["v"] == 0)
    run_steps(opt, p, gs[3:])
    # Reference: fresh moments, but bias correction continues from t = 3.
    w, _, _ = adam_reference(w_mid, gs[3:], 0.001, 0.0, 5.0, t0=3)
    np.testing.assert_allclose(p.value, w, rtol=1e-5, atol=1e-7)
    # And it differs from restarting the counter, so the check above can fail.
    w_restart, _, _ = adam_reference(w_mid, gs[3:], 0.001, 0.0, 5.0, t0=0)
    assert not np.allclose(w, w_restart, rtol=1e-5, atol=1e-7)


def test_adagrad_prepare_resets_history():
    p = make_param(6)
    gs = grads(6, p.shape, 4)
    opt = AdaGrad([p], C, 0.1, 1e-6)
    run_steps(opt, p, gs[:2])
    opt.prepare()
    w = p.value.astype(np.float64)
    run_steps(opt, p, gs[2:])
    h = np.zeros_like(w)
    for g in gs[2:]:
        g = clip(g, 0)
        h += g * g
        w -= g * 0.1 / np.sqrt(h + 1e-6)
    np.testing.assert_allclose(p.value, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opt_type", ["sgd", "adagrad", "adam"])
def test_lazy_update_touches_only_listed_rows(opt_type):
    cfg = Config(OptType=opt_type, LazyUpdate=True, L2RegFactor=0.01)
    p = make_param(7, (6, 5))
    before = p.value.copy()
    opt = make_optimizer(cfg, [p], C, 100)
    p.grad[...] = grads(7, p.shape, 1)[0]
    opt.step({p: Selection(np.array([1, 4], dtype=np.int32), 3, unified=True)})
    changed = np.any(p.value != before, axis=1)
    assert list(np.flatnonzero(changed)) == [1, 4]
    assert np.all(p.grad[[1, 4]] == 0) and np.all(p.grad[[0, 2, 3, 5]] != 0)
    # The touched rows get exactly the dense update of those rows.
    q = make_param(7, (6, 5))
    dense = make_optimizer(Config(OptType=opt_type, L2RegFactor=0.01), [q], C, 100)
    q.grad[...] = grads(7, q.shape, 1)[0]
    dense.step()
    np.testing.assert_array_equal(p.value[[1, 4]], q.value[[1, 4]])


def test_a_tiny_model_learns():
    """Adam on least squares y = x a: the loss falls by orders of magnitude."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    a = np.array([[1.5], [-2.0], [0.5]], dtype=np.float32)
    y = x @ a
    p = Tensor(np.zeros((3, 1), dtype=np.float32))
    opt = Adam([p], C, 0.05, clip=5.0)
    first = None
    for _ in range(300):
        r = x @ p.value - y
        loss = float((r ** 2).mean())
        first = first if first is not None else loss
        p.grad[...] = 2 * x.T @ r / len(x)
        opt.step()
    assert loss < first * 1e-3


# -- RMSProp, the rule registry and the rule forms ------------------------------------------

@pytest.mark.parametrize("l2,bound,rho", [(0.0, 0.0, 0.9), (0.01, 5.0, 0.9), (0.1, 1.0, 0.5)])
def test_rmsprop(l2, bound, rho):
    p = make_param(9)
    w = p.value.astype(np.float64)
    r = np.zeros_like(w)
    lr, eps = 0.01, 1e-6
    gs = grads(9, p.shape, 6)
    opt = RMSProp([p], C, lr, rho=rho, eps=eps, l2=l2, clip=bound)
    run_steps(opt, p, gs)
    for g in gs:  # the equations, in float64
        g = clip(g + l2 * w, bound)
        r = rho * r + (1 - rho) * g * g
        w = w - lr * g / np.sqrt(r + eps)
    np.testing.assert_allclose(p.value, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.state["r"], r, rtol=1e-5, atol=1e-9)


def test_rmsprop_forgets_old_gradients_unlike_adagrad():
    """The check above can fail: with rho < 1, r follows recent g^2 (AdaGrad's h only grows)."""
    p, q = make_param(10), make_param(10)
    gs = [np.full(p.shape, 4.0, np.float32)] * 5 + [np.full(p.shape, 0.1, np.float32)] * 20
    run_steps(RMSProp([p], C, 0.01, rho=0.5), p, gs)
    run_steps(AdaGrad([q], C, 0.01, 1e-6), q, gs)
    # r after 5 steps is 16 (1 - 0.5^5); 20 steps of 0.01 then leave 0.01 + (r5 - 0.01) 0.5^20
    r5 = 16 * (1 - 0.5 ** 5)
    np.testing.assert_allclose(p.state["r"], 0.01 + (r5 - 0.01) * 0.5 ** 20, rtol=1e-5)
    assert np.all(q.state["h"] > 80)


@pytest.mark.parametrize("opt_type", ["sgd", "adagrad", "adam", "rmsprop"])
@pytest.mark.parametrize("lazy", [False, True])
def test_numba_rule_equals_numpy_rule(opt_type, lazy):
    """Each rule's Numba loops (dense and rows) against its NumPy body, a few steps."""
    cfg = Config(OptType=opt_type, LazyUpdate=lazy, L2RegFactor=0.01, LearningRate=0.01)
    finals = []
    for compute in (NumpyCompute(), NumbaCompute()):
        p = make_param(11, (6, 5))
        opt = make_optimizer(cfg, [p], compute, 100)
        for g in grads(11, p.shape, 4):
            p.grad[...] = g
            opt.step({p: Selection(np.array([0, 2, 5], np.int32), 4, unified=True)})
        finals.append((p.value.copy(), {k: v.copy() for k, v in p.state.items()}))
    np.testing.assert_allclose(finals[0][0], finals[1][0], rtol=1e-6, atol=1e-7)
    for name in finals[0][1]:
        np.testing.assert_allclose(finals[0][1][name], finals[1][1][name], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("opt_type", ["sgd", "adagrad", "adam", "rmsprop"])
@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("l2, clip", [(0.0, 0.0), (0.001, 0.5)])
def test_numba_rule_is_the_numpy_body_bit_for_bit(opt_type, lazy, l2, clip):
    """The Numba loops do the NumPy body's float32 operations in its order, so weights and
    state agree to the bit, on enough entries (20,000) that any other rounding would show."""
    cfg = Config(OptType=opt_type, LazyUpdate=lazy, L2RegFactor=l2, ClipBound=clip,
                 LearningRate=0.01 if opt_type != "adam" else 0.001)
    rows = Selection(np.arange(0, 400, 3, dtype=np.int32), 4, unified=True)
    finals = []
    for compute in (NumpyCompute(), NumbaCompute()):
        p = make_param(12, (400, 50))
        opt = make_optimizer(cfg, [p], compute, 100)
        for g in grads(12, p.shape, 3):
            p.grad[...] = g
            opt.step({p: rows})
        finals.append((p.value.copy(), {k: v.copy() for k, v in p.state.items()}))
    np.testing.assert_array_equal(finals[0][0], finals[1][0])
    for name in finals[0][1]:
        np.testing.assert_array_equal(finals[0][1][name], finals[1][1][name])


def test_registry_picks_by_name_and_refuses_unknown_names():
    from nnmnist.run.config import OPT_TYPES
    assert tuple(RULES) == OPT_TYPES
    for name in RULES:
        cls = optimizer_class(name)
        assert cls.rule.name == name
        opt = make_optimizer(Config(OptType=name), [make_param(12)], C, 10)
        assert type(opt) is cls
    with pytest.raises(UserError, match="OptType = 'adamw': unknown optimizer; known: sgd"):
        make_optimizer(Config(OptType="adamw"), [make_param(12)], C, 10)


def test_rmsprop_from_config_and_command_line(tmp_path):
    from nnmnist.run import config as cfgmod
    from nnmnist.run.command import parse_override
    path = tmp_path / "c.json"
    path.write_text('{"OptType": "RMSProp", "RmsDecay": 0.8, "Eps": 1e-5}')
    cfg = cfgmod.load(path)
    opt = make_optimizer(cfg, [make_param(13)], C, 10)
    assert type(opt) is RMSProp and (opt.rho, opt.eps) == (0.8, 1e-5)
    cfg = cfgmod.load(path, dict([parse_override("RmsDecay=0.95")]))
    assert cfg.RmsDecay == 0.95 and "RmsDecay: 0.95" in cfg.header_lines()
    # RmsDecay is rmsprop's alone: other optimizers' headers stay as they were
    assert not any(line.startswith("RmsDecay") for line in Config().header_lines())
    for bad, field in (('{"OptType": "rmsprop", "RmsDecay": 1}', "RmsDecay"),
                       ('{"OptType": "rmsprop", "Eps": 0}', "Eps")):
        path.write_text(bad)
        with pytest.raises(UserError, match=field):
            cfgmod.load(path)


def _tiny_moment_case():
    """Weights, first moments from ordinary to denormal, v = 1e-6, and no gradient: the
    state of rows meProp left out for many steps."""
    w = np.array([[0.5, -0.25, 1.0, 2.0, 1e-3, 3.0]], np.float32)
    m = np.array([[1e-36, -1e-39, 2e-30, 0.5, 1e-31, 0.0]], np.float32)
    return w, m, np.full_like(w, 1e-6)


def _check_tiny_moments(w0, m0, w, m):
    decayed = np.float32(0.9) * m0
    tiny = np.abs(decayed) < 2.0 ** -100
    assert tiny.tolist() == [[True, True, False, False, True, True]]
    assert np.array_equal(m, np.where(tiny, np.float32(0), decayed))  # stored as 0, no denormals
    # Kept or not, such a moment moves w by less than float32 can hold: those weights stay put.
    small = np.abs(decayed) < 1e-20
    assert np.array_equal(w[small], w0[small])
    lr_t = 0.001 * math.sqrt(1 - 0.999) / (1 - 0.9)
    expect = w0.astype(np.float64) - lr_t * decayed / (np.sqrt(0.999e-6) + 1e-8)
    np.testing.assert_allclose(w, expect, rtol=1e-6)


@pytest.mark.parametrize("compute", [NumpyCompute(), NumbaCompute()], ids=["numpy", "numba"])
def test_adam_stores_tiny_first_moments_as_zero(compute):
    w0, m0, v0 = _tiny_moment_case()
    p = Tensor(w0.copy())
    opt = Adam([p], compute, 0.001)
    p.state["m"][...] = m0
    p.state["v"][...] = v0
    opt.step()
    _check_tiny_moments(w0, m0, p.value, p.state["m"])


def test_adam_row_update_stores_tiny_first_moments_as_zero():
    import nnmnist.optim.checked as KO
    w0, m0, v0 = _tiny_moment_case()
    w, m, v = w0.copy(), m0.copy(), v0.copy()
    lr_t = 0.001 * math.sqrt(1 - 0.999) / (1 - 0.9)
    KO.adam_update_rows(w, np.zeros_like(w), m, v, np.array([0], np.int32), lr_t, 0.0, 0.0)
    _check_tiny_moments(w0, m0, w, m)


def _second_moment_case(rule):
    """Weights, m = 1e-3 (Adam), no gradient, and second moments (Adam's v, RMSProp's r) that
    decay to below the stored-as-0 limit, to denormals, or stay above it."""
    w = np.array([[0.5, -0.25, 1.0, 2.0]], np.float32)
    if rule == "adam":
        return w, [np.full_like(w, 1e-3), np.array([[1e-33, 1e-40, 2e-32, 1e-6]], np.float32)]
    return w, [np.array([[1e-31, 1e-40, 1e-29, 1e-4]], np.float32)]


def _second_moment_step(rule, how, w, state):
    """One step of `rule` without gradient on w (1 x 4) and its state, through `how`."""
    lr_t = 0.001 * math.sqrt(1 - 0.999) / (1 - 0.9)
    g = np.zeros_like(w)
    if how == "rows":
        import nnmnist.optim.checked as KO
        scalars = (lr_t, 0.0, 0.0) if rule == "adam" else (0.01, 0.9, 1e-6, 0.0, 0.0)
        KO.rule_update_rows(rule, w, g, state, np.array([0], np.int32), scalars)
        return
    p = Tensor(w)
    opt = Adam([p], how, 0.001) if rule == "adam" else RMSProp([p], how, 0.01)
    for name, value in zip(("m", "v") if rule == "adam" else ("r",), state):
        p.state[name][...] = value
    opt.step()
    w[...] = p.value
    for value, name in zip(state, ("m", "v") if rule == "adam" else ("r",)):
        value[...] = p.state[name]


@pytest.mark.parametrize("rule", ["adam", "rmsprop"])
@pytest.mark.parametrize("how", [NumpyCompute(), NumbaCompute(), "rows"], ids=["numpy", "numba", "rows"])
def test_tiny_second_moments_are_stored_as_zero_and_change_no_weight(rule, how):
    w0, state0 = _second_moment_case(rule)
    w, state = w0.copy(), [s.copy() for s in state0]
    _second_moment_step(rule, how, w, state)
    decay, limit = (np.float32(0.999), 2.0 ** -106) if rule == "adam" else (np.float32(0.9), 2.0 ** -100)
    decayed = decay * state0[-1]
    stored = state[-1]
    assert (stored == 0).tolist() == [[True, True, False, False]]  # no denormal is kept
    assert np.array_equal(stored, np.where(decayed < limit, np.float32(0), decayed))
    # The same step in float32 with the decayed moment kept moves every weight the same.
    if rule == "adam":
        m = np.float32(0.9) * state0[0]
        lr_t = np.float32(0.001 * math.sqrt(1 - 0.999) / (1 - 0.9))
        kept = w0 - lr_t * m / (np.sqrt(decayed) + np.float32(1e-8))
        assert not np.array_equal(kept, w0)
    else:
        kept = w0.copy()  # g = 0: RMSProp moves nothing, the check is on r alone
    assert np.array_equal(w, kept)
