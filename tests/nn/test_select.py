"""Selection rules: a rule defined here, outside the package, runs the same on every backend;
the fused Numba kernels run only the rules they implement."""
import numpy as np
import pytest

from nnmnist.backends import to_numpy
from nnmnist.backends.cpu import NumbaCompute, NumpyCompute
from nnmnist.nn.layers import Dense, MaskedDense
from nnmnist.nn.select import RandomK, Selection, SelectionRule, TopK, UnifiedRandomK, UnifiedTopK
from nnmnist.nn.tensor import Flow, Tensor

try:
    from ..conftest import GPU_REASON, gpu_backend_runs
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from conftest import GPU_REASON, gpu_backend_runs


class LargestK(SelectionRule):
    """Per example, the k entries of largest signed dy (not |dy|): a rule no kernel knows."""

    def __call__(self, dy, compute, rng):
        xp = compute.xp
        idx = xp.argsort(-dy, axis=1)[:, :self.k]
        return Selection(xp.sort(idx, axis=1).astype(np.int32), dy.shape[0])


class SubclassedTopK(TopK):
    """A subclass of a built-in rule that changes what it picks: the kernels must not run it."""

    def __call__(self, dy, compute, rng):
        return LargestK(self.k)(dy, compute, rng)


def computes():
    out = [pytest.param(NumpyCompute, id="numpy"), pytest.param(NumbaCompute, id="numba")]
    marks = pytest.mark.skipif(not gpu_backend_runs(), reason=GPU_REASON)

    def cupy():
        from nnmnist.backends.cuda import CupyCompute
        return CupyCompute()
    out.append(pytest.param(cupy, id="cupy", marks=marks))
    return out


def run_unit(compute, rule, masked, x, g):
    cls = MaskedDense if masked else Dense
    layer = cls(9, 12, np.random.default_rng(3), compute, rule)
    xp = compute.xp
    flow = Flow()
    xt = Tensor(xp.asarray(x), requires_grad=True)
    y = layer.activate(flow, xt)
    y.grad = xp.asarray(g)
    flow.backward()
    selection = flow.selections[layer.W]
    out = [to_numpy(a) for a in (y.value, xt.grad, layer.W.grad, layer.b.grad, selection.chosen)]
    if masked:
        out += [to_numpy(layer.hits), np.array(layer.examples)]
    return out


def data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(7, 9)).astype(np.float32),
            rng.normal(size=(7, 12)).astype(np.float32))


@pytest.mark.parametrize("make", computes())
@pytest.mark.parametrize("rule_cls", [LargestK, SubclassedTopK])
@pytest.mark.parametrize("masked", [False, True])
def test_a_new_rule_gives_the_same_result_on_every_backend(make, rule_cls, masked):
    x, g = data()
    got = run_unit(make(), rule_cls(4), masked, x, g)
    # Expected, written out: the dense backward of relu(x W.T + b) with dy zeroed outside
    # each row's 4 largest signed entries.
    layer = Dense(9, 12, np.random.default_rng(3), NumpyCompute())
    W, b = layer.W.value.astype(np.float64), layer.b.value.astype(np.float64)
    a = x.astype(np.float64) @ W.T + b
    dy = g * (a > 0)
    kept = np.zeros_like(dy)
    chosen = np.zeros((7, 4), np.int64)
    for r in range(7):
        order = sorted(range(12), key=lambda j: -dy[r, j])[:4]
        chosen[r] = sorted(order)
        kept[r, order] = dy[r, order]
    np.testing.assert_array_equal(got[4], chosen)
    np.testing.assert_allclose(got[1], kept @ W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2], kept.T @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[3], dy.sum(axis=0), rtol=1e-5, atol=1e-6)
    if masked:
        np.testing.assert_array_equal(got[5], np.bincount(chosen.ravel(), minlength=12))
        assert int(got[6]) == 7
    # It really is another rule: top-k by magnitude picks other entries here.
    top = run_unit(NumpyCompute(), TopK(4), masked, x, g)
    assert not np.array_equal(top[4], got[4])


@pytest.mark.parametrize("rule,fused", [(TopK(4), True), (RandomK(4), True),
                                        (UnifiedTopK(4), True), (UnifiedRandomK(4), True),
                                        (LargestK(4), False), (SubclassedTopK(4), False)])
def test_fused_kernels_run_only_the_rules_they_implement(plain_backward_calls, rule, fused):
    x, g = data(1)
    run_unit(NumbaCompute(), rule, True, x, g)
    assert plain_backward_calls == ([] if fused else [1])


@pytest.mark.parametrize("rule", [TopK(3), RandomK(3), UnifiedTopK(3), UnifiedRandomK(3)])
def test_built_in_rules_agree_between_plain_and_fused(rule):
    x, g = data(2)
    plain = run_unit(NumpyCompute(), rule, True, x, g)
    fused = run_unit(NumbaCompute(), rule, True, x, g)
    np.testing.assert_array_equal(fused[4], plain[4])
    np.testing.assert_array_equal(fused[5], plain[5])
    for a, b in zip(fused[:4], plain[:4]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_selection_knows_its_rows():
    c = NumpyCompute()
    per_example = Selection(np.array([[1, 4], [4, 7]], np.int32), 2)
    np.testing.assert_array_equal(per_example.rows(c, 9), [1, 4, 7])
    shared = Selection(np.array([0, 5], np.int32), 3, unified=True)
    np.testing.assert_array_equal(shared.rows(c, 9), [0, 5])
    hits = np.zeros(9, np.int64)
    per_example.count_hits(c, hits)
    shared.count_hits(c, hits)
    np.testing.assert_array_equal(hits, [3, 1, 0, 0, 2, 3, 0, 1, 0])


@pytest.mark.parametrize("rule", [TopK(13), RandomK(13), UnifiedTopK(13), LargestK(13)])
def test_a_rule_wider_than_its_layer_is_refused(rule):
    with pytest.raises(ValueError, match="k = 13.*12"):
        Dense(9, 12, np.random.default_rng(0), NumpyCompute(), rule)
    with pytest.raises(ValueError, match="k = 13.*12"):
        MaskedDense(9, 12, np.random.default_rng(0), NumpyCompute(), rule)


@pytest.mark.parametrize("k", [0, -3])
def test_a_rule_keeps_at_least_one_entry(k):
    with pytest.raises(ValueError, match=f"k = {k}"):
        TopK(k)


def test_a_k_raised_after_construction_is_an_error_not_a_crash():
    # The fused kernels write k entries per row; a k above the layer's width must never reach
    # them (it once ended the process with a segmentation fault). Run apart from pytest's
    # process, so that a crash fails this test instead of the whole test run.
    import subprocess
    import sys
    code = """if True:
        import numpy as np
        from nnmnist.backends.cpu import NumbaCompute
        from nnmnist.nn.layers import Dense
        from nnmnist.nn.select import TopK
        from nnmnist.nn.tensor import Flow, Tensor
        c = NumbaCompute()
        layer = Dense(9, 12, np.random.default_rng(3), c, TopK(4))
        layer.rule.k = 40
        flow = Flow()
        y = layer.activate(flow, Tensor(np.ones((7, 9), np.float32), requires_grad=True))
        y.grad = np.ones((7, 12), np.float32)
        try:
            flow.backward()
        except ValueError as exc:
            print("ValueError", exc)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ValueError") and "k = 40" in out.stdout
