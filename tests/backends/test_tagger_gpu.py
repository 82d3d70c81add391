"""The part-of-speech tagger on the GPU backend against the CPU's, from the same seed.

A small Tagger (vocabulary 30, EmbedSize 6, HiddenSize 8, the 17 tags, minibatch 5 of
sentences of lengths 7, 5, 3, 6 and 1, padded at the end) takes a few Adam steps on each
backend; losses, predictions, every gradient and every weight after each step must agree to
float32 rounding. The nets: lstm (dense), lstmtop per gate and whole, per example and unified
(one case with LazyUpdate, so the embedding's row list reaches the GPU's row update), and
lstmrand. NumbaCompute is checked against the same NumPy reference.

Random-k draws from another generator on the GPU (`CupyCompute.uniform`): under the
simulator that generator is a NumPy one seeded from the network's, so the CPU references of
lstmrand are given the same draws and everything must agree; on a device (cuRAND) only what
the draws cannot change is compared: the first forward pass and the output layer's gradient.

Under the simulator the LSTM cell and the embedding gradient are the NumPy reference's; the
CuPy kernels that replace them on a device run only with NUMBA_ENABLE_CUDASIM=0 on a GPU.
A last test trains one epoch through the run lifecycle with Backend gpu on tiny CoNLL-U files.
"""
import json

import numpy as np
import pytest

from nnmnist.backends import to_numpy
from nnmnist.backends.cpu import NumbaCompute, NumpyCompute
from nnmnist.nn.lstm import NO_TAG, Tagger
from nnmnist.nn.tensor import Flow
from nnmnist.optim import make_optimizer
from nnmnist.run.config import Config

try:
    from .conftest import GPU_REASON, gpu_backend_runs
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from conftest import GPU_REASON, gpu_backend_runs

pytestmark = pytest.mark.skipif(not gpu_backend_runs(), reason=GPU_REASON)

VOCAB = ["<pad>", "<unk>"] + [f"w{i}" for i in range(28)]
LENGTHS = [7, 5, 3, 6, 1]
BASE = dict(EmbedSize=6, HiddenSize=8, LabelCount=17, Layers=2, MinibatchSize=5, TrainTop=3,
            OptType="adam", LearningRate=0.01, Dropout=0.0)
CASES = {
    "lstm": dict(NetType="lstm"),
    "lstmtop-gate": dict(NetType="lstmtop"),
    "lstmtop-whole": dict(NetType="lstmtop", TopKScope="whole", TrainTop=10),
    "lstmtop-gate-unified-lazy": dict(NetType="lstmtop", Unified=True, LazyUpdate=True),
    "lstmtop-whole-unified": dict(NetType="lstmtop", TopKScope="whole", TrainTop=10,
                                  Unified=True),
    "lstmrand": dict(NetType="lstmrand"),
}
STEPS = 3
RTOL, ATOL = 2e-4, 2e-5  # float32: the backends sum products and exponentials in other orders


def batch(seed=0):
    """Word ids (5, 7) and tags, padding at the end of each sentence (id 0, tag -1)."""
    rng = np.random.default_rng(seed)
    L = max(LENGTHS)
    x = np.zeros((len(LENGTHS), L), np.int32)
    y = np.full((len(LENGTHS), L), -1, np.int32)
    for b, n in enumerate(LENGTHS):
        x[b, :n] = rng.integers(1, len(VOCAB), n)
        y[b, :n] = rng.integers(0, 17, n)
    return x, y


def gpu_compute():
    from nnmnist.backends.cuda import CupyCompute
    return CupyCompute()


def with_gpu_draws(cls):
    """`cls` drawing its uniforms as the simulated GPU does (one seed taken from the network's
    generator, then a NumPy generator of that seed), so that random-k agrees."""
    from nnmnist.backends.cuda import CupyCompute

    class SameDraws(cls):
        uniform = CupyCompute.uniform

        def __init__(self):
            super().__init__()
            self._generators = {}
    return SameDraws()


def train(cfg, compute, steps=STEPS):
    """Build the tagger from seed 5 on `compute` and take `steps` Adam steps on one batch;
    per step (losses, predictions, {name: gradient}, {name: weight after the step}), all NumPy."""
    xp = compute.xp
    model = Tagger(cfg, VOCAB, compute, np.random.default_rng(5))
    opt = make_optimizer(cfg, model.params, compute, 50)
    x, y = batch()
    xb, yb = model.prepare_batch(xp.asarray(x), xp.asarray(y))
    out = []
    for _ in range(steps):
        flow = Flow(training=True)
        losses, pred = model.forward(flow, xb, yb)
        flow.backward()
        grads = {name: to_numpy(p.grad).copy() for name, p in model.named_params()}
        opt.step(flow.selections)
        compute.sync()
        weights = {name: to_numpy(p.value).copy() for name, p in model.named_params()}
        out.append((to_numpy(losses), to_numpy(pred), grads, weights))
    return out


def assert_agree(got, ref, what, names=None):
    """Step by step: losses, predictions, the gradients and the weights (of `names`, or all)."""
    for step, ((loss, pred, grads, weights), (loss_r, pred_r, grads_r, weights_r)) in \
            enumerate(zip(got, ref)):
        at = f"{what}, step {step}"
        np.testing.assert_allclose(loss, loss_r, rtol=RTOL, atol=ATOL, err_msg=f"{at}: losses")
        np.testing.assert_array_equal(pred, pred_r, err_msg=f"{at}: predictions")
        for name in names or grads_r:
            np.testing.assert_allclose(grads[name], grads_r[name], rtol=RTOL, atol=ATOL,
                                       err_msg=f"{at}: gradient of {name}")
            np.testing.assert_allclose(weights[name], weights_r[name], rtol=RTOL, atol=ATOL,
                                       err_msg=f"{at}: {name}")


@pytest.mark.parametrize("name", list(CASES))
def test_tagger_steps_agree_across_backends(name):
    cfg = Config(**{**BASE, **CASES[name]})
    gpu = gpu_compute()
    matched = CASES[name]["NetType"] != "lstmrand" or gpu.simulated
    make = (lambda cls: cls()) if CASES[name]["NetType"] != "lstmrand" else with_gpu_draws
    reference = train(cfg, make(NumpyCompute))
    got = train(cfg, gpu)
    assert_agree(train(cfg, make(NumbaCompute)), reference, f"{name} numba")
    if matched:
        assert_agree(got, reference, f"{name} gpu")
        return
    # cuRAND's draws: the first forward pass and the output layer's gradient only
    assert_agree(got[:1], reference[:1], f"{name} gpu", names=["out.W", "out.b"])
    for step in got:
        assert all(np.isfinite(g).all() for g in step[2].values())


def test_padding_is_untouched_on_the_gpu():
    """The padded places predict NO_TAG, and the padding row of the embedding gets no
    gradient (its weight stays zero) on the GPU backend too."""
    cfg = Config(**{**BASE, **CASES["lstmtop-gate"]})
    steps = train(cfg, gpu_compute(), steps=2)
    x, _ = batch()
    for _, pred, grads, weights in steps:
        assert (pred[x == 0] == NO_TAG).all() and (pred[x != 0] >= 0).all()
        assert not grads["embed.W"][0].any() and not weights["embed.W"][0].any()


# -- the run lifecycle with Backend gpu -------------------------------------------------------

def write_conllu(path, n_sentences, seed):
    """Sentences of 2 to 6 tokens over a 12-word vocabulary, each word always the same tag
    (so there is something to learn): 10 tab-separated columns, UPOS in the fourth."""
    rng = np.random.default_rng(seed)
    tags = ["NOUN", "VERB", "DET", "ADJ", "PUNCT", "PRON"]
    lines = []
    for s in range(n_sentences):
        lines.append(f"# sent_id = {s}")
        for t in range(int(rng.integers(2, 7))):
            w = int(rng.integers(0, 12))
            lines.append("\t".join([str(t + 1), f"w{w}", f"w{w}", tags[w % len(tags)], "_",
                                    "_", "0", "dep", "_", "_"]))
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_one_epoch_through_the_lifecycle(tmp_path):
    from nnmnist.run.lifecycle import start_run
    data = tmp_path / "ud"
    data.mkdir()
    for name, n, seed in (("trn.conllu", 20, 0), ("dev.conllu", 6, 1), ("tst.conllu", 6, 2)):
        write_conllu(data / name, n, seed)
    config = tmp_path / "tagger.json"
    config.write_text(json.dumps({
        **BASE, "NetType": "lstmtop", "Backend": "gpu", "MaxEpoch": 1, "IterPerEpoch": 1,
        "RandomSeed": 3, "MinCount": 1, "DataDir": str(data), "TrainFile": "trn.conllu",
        "DevFile": "dev.conllu", "TestFile": "tst.conllu"}), encoding="utf-8")
    logs = tmp_path / "logs"
    logs.mkdir()
    start_run(str(config), log_dir=str(logs), console=False, offline=True)
    text = sorted(logs.glob("*.txt"))[-1].read_text()
    assert "simulated (NUMBA_ENABLE_CUDASIM=1)" in text or not gpu_compute().simulated
    assert "Run End" in text
    metrics = sorted(logs.glob("*.jsonl"))[-1]
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    parts = [r for r in records if r["type"] == "part"]
    assert len(parts) == 1 and 0 <= parts[0]["dev_acc"] <= 100
