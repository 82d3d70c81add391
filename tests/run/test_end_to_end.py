"""Whole runs: the log lines in docs/ORIGINAL.md §9's order, parameter counts, determinism."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nnmnist.run.config import Config
from nnmnist.run.log import RunLog, log_path
from nnmnist.run.training import part_bounds, train_and_evaluate

REPO = Path(__file__).resolve().parents[2]
NUM = r"\d+\.\d+"
SCORE = rf"loss: {NUM}, acc: {NUM}\(\d+/\d+\), time = {NUM}s"
TIMES = re.compile(r"\d+\.\d+s")


def run_tiny(tmp_path, tiny_splits, **fields):
    fields.setdefault("RandomSeed", 7)
    cfg = Config(MaxEpoch=2, IterPerEpoch=3, HiddenSize=32, Kernels="numpy", **fields)
    path = log_path(tmp_path, cfg.run_name())
    with RunLog(path, console=False) as log:
        res = train_and_evaluate(cfg, tiny_splits, log)
    return cfg, res, path.read_text(encoding="utf-8").splitlines()


def check_log_structure(lines, cfg, n_trn, n_dev, n_tst, dims_after=()):
    """Walk the log line by line against the grammar of docs/ORIGINAL.md §9."""
    it = iter(lines)
    assert next(it) == "#" * 20
    header = [next(it) for _ in cfg.header_lines()]
    assert header == cfg.header_lines()
    assert next(it) == "#" * 20
    assert next(it) == f"Info: #in: 784, #out: {cfg.LabelCount}"
    assert next(it) == f"Info: #Trn: {n_trn}"
    assert next(it) == f"Info: #Dev: {n_dev}"
    assert next(it) == f"Info: #Tst: {n_tst}"
    assert next(it) == "#" * 20 + " Run Start"
    rest = list(it)
    pos = 0
    for epoch in range(cfg.MaxEpoch):
        for part, (_, size) in enumerate(part_bounds(n_trn, cfg.IterPerEpoch)):
            assert re.fullmatch(rf"{epoch:02d}:{part:02d}: {SCORE}", rest[pos]), rest[pos]
            assert re.search(rf"\(\d+/{size}\)", rest[pos])
            assert re.fullmatch(rf"\t dev: {SCORE}", rest[pos + 1]), rest[pos + 1]
            pos += 2
            if rest[pos].startswith("\t tst: "):  # a new best dev: test, then the `$` line
                assert re.fullmatch(rf"\t tst: {SCORE}", rest[pos])
                assert f"/{n_tst})" in rest[pos]
                assert re.fullmatch(rf"\$ {NUM} \| {NUM}", rest[pos + 1]), rest[pos + 1]
                pos += 2
            if (epoch, part) in dims_after:
                assert re.fullmatch(r"Dims: (\d+\(\d+\), )+\d+", rest[pos]), rest[pos]
                pos += 1
        assert re.fullmatch(rf"Time: fp: {NUM}s, bp: {NUM}s, update: {NUM}s", rest[pos]), rest[pos]
        pos += 1
    assert re.fullmatch(rf"AvgTime: fp: {NUM}s, bp: {NUM}s, update:{NUM}s", rest[pos])
    assert rest[pos + 1:] == ["#" * 20 + " Run End"]


@pytest.mark.parametrize("net_type", ["mlp", "mlptop", "mlprand", "mlpvar"])
def test_log_lines_in_order(tmp_path, tiny_splits, net_type):
    cfg, res, lines = run_tiny(tmp_path, tiny_splits, NetType=net_type, TrainTop=8, TrainCycle=1)
    dims_after = [(0, p) for p in range(3)] if net_type == "mlpvar" else ()
    check_log_structure(lines, cfg, 600, 200, 200, dims_after)
    # 784*32+32 + 32*32+32 + 32*10+10
    assert res.param_count == 784 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    # It really learned (chance is 10 %); random-k at k=8 of 32 learns slowest.
    assert res.best_dev > (15 if net_type == "mlprand" else 50)


def test_first_dev_evaluation_always_runs_test(tmp_path, tiny_splits):
    _, _, lines = run_tiny(tmp_path, tiny_splits)
    start = lines.index("#" * 20 + " Run Start")
    assert lines[start + 3].startswith("\t tst: ")


def without_times(lines):
    return [TIMES.sub("T", line) for line in lines]


@pytest.mark.parametrize("net_type", ["mlprand", "mlpvar"])
def test_same_seed_same_log(tmp_path, tiny_splits, net_type):
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        (tmp_path / name).mkdir()
        _, _, lines = run_tiny(tmp_path / name, tiny_splits, NetType=net_type, TrainTop=8,
                               TrainCycle=1, Dropout=0.2, RandomSeed=seed)
        runs[name] = [line for line in without_times(lines) if "acc:" in line or "Dims" in line]
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]  # a different seed gives different numbers


def test_part_bounds():
    assert part_bounds(10, 3) == [(0, 4), (4, 3), (7, 3)]
    assert part_bounds(55000, 8) == [(i * 6875, 6875) for i in range(8)]
    b = part_bounds(55003, 8)
    assert [s for _, s in b] == [6876] * 3 + [6875] * 5
    assert b[-1][0] + b[-1][1] == 55003


def test_shuffle_is_seeded():
    from nnmnist.run.training import make_rngs
    import numpy as np
    orders = []
    for seed in (3, 3, 4):
        data_rng, _ = make_rngs(seed)
        order = np.arange(100)
        data_rng.shuffle(order)
        orders.append(order)
    assert (orders[0] == orders[1]).all() and not (orders[0] == orders[2]).all()
    from nnmnist.run.training import effective_seed
    assert effective_seed(5) == 5
    a, b = effective_seed(-1), effective_seed(-1)
    assert a >= 0 and b >= 0 and a != b  # a negative seed is drawn from the clock


def run_cli(*args, cwd=REPO, timeout=600):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_help():
    out = run_cli("--help")
    assert out.returncode == 0 and "NetType" in out.stdout


@pytest.mark.parametrize("content,needle", [
    ('{"NetType": "mlptopp"}', 'NetType = "mlptopp": must be one of'),
    ('{"HiddenSize": 100, "NetType": "mlptop", "TrainTop": 200}', "TrainTop = 200"),
    ('{"Layrs": 2}', "unknown field 'Layrs'; did you mean Layers?"),
    ('{"NetType": ', "invalid JSON"),
    ('{"TrainFile": "nowhere-images.idx3-ubyte"}', "nowhere-images.idx3-ubyte"),
])
def test_cli_user_errors_are_one_line(tmp_path, content, needle):
    cfg = tmp_path / "bad.json"
    cfg.write_text(content)
    out = run_cli(cfg, "--offline", "--log-dir", tmp_path)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("error: ")
    assert list(tmp_path.glob("*-log-*")) == []  # no half-written log


def test_cli_missing_config(tmp_path):
    out = run_cli(tmp_path / "none.json")
    assert out.returncode != 0 and "config file not found" in out.stderr and "Traceback" not in out.stderr


def test_cli_unusable_log_folder(tmp_path, mnist_dir):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"DataDir": str(mnist_dir), "MaxEpoch": 1}))
    out = run_cli(cfg, "--log-dir", tmp_path / "missing")
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr
    assert list(tmp_path.glob("**/*-log-*")) == []


def test_cli_bad_override(tmp_path):
    out = run_cli("--set", "MaxEpoch")
    assert out.returncode != 0 and "expected Name=Value" in out.stderr


def test_real_mnist_one_epoch_via_run_py(tmp_path, mnist_dir):
    """The original's C#-style config (BOM, bare data-file names) on the real MNIST, one epoch."""
    cfg = tmp_path / "cfg.json"
    raw = json.loads((REPO / "configs" / "default.json").read_text(encoding="utf-8-sig"))
    raw.update(MaxEpoch=1, RandomSeed=1, IterPerEpoch=2, DataDir=str(mnist_dir))
    cfg.write_bytes(b"\xef\xbb\xbf" + json.dumps(raw).encode())
    out = run_cli(cfg, "--offline", "--log-dir", tmp_path, "--quiet")
    assert out.returncode == 0, out.stderr
    (log,) = tmp_path.glob("mlp-adam-h500-i2-m100-log-*.txt")
    lines = log.read_text(encoding="utf-8").splitlines()
    check_log_structure(lines, Config(**{k: v for k, v in raw.items()}), 55000, 5000, 10000)
    best_dev = float(next(l for l in reversed(lines) if l.startswith("$ ")).split()[1])
    assert best_dev > 95.0, lines[-8:]


def test_metrics_file_agrees_with_log(tmp_path, tiny_splits):
    cfg, res, lines = run_tiny(tmp_path, tiny_splits, NetType="mlpvar", TrainTop=8, TrainCycle=1)
    (path,) = tmp_path.glob("*-log-*.jsonl")
    (log,) = tmp_path.glob("*-log-*.txt")
    assert log.name == f"{cfg.run_name()}-log-{log.name.split('-log-')[1]}"
    assert "-p0.1-" in log.name and log.name[:-4] == path.name[:-6]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    start, parts, summary = records[0], records[1:-1], records[-1]
    assert start == {"type": "start", "run_name": cfg.run_name(), "seed": 7}
    assert [(r["epoch"], r["part"]) for r in parts] == [(e, p) for e in range(2) for p in range(3)]
    train_lines = [l for l in lines if re.match(r"\d\d:\d\d: ", l)]
    dev_lines = [l for l in lines if l.startswith("\t dev: ")]
    for rec, tl, dl in zip(parts, train_lines, dev_lines):
        assert f"loss: {rec['train_loss']:.4f}, acc: {rec['train_acc']:.2f}(" in tl
        assert f"loss: {rec['dev_loss']:.4f}, acc: {rec['dev_acc']:.2f}(" in dl
    dims_lines = [l[6:] for l in lines if l.startswith("Dims: ")]
    pruned = [r["dims"] for r in parts if r["pruned"]]
    assert [", ".join(f"{a}(32)" for a in d[:-1]) + ", 10" for d in pruned] == dims_lines
    last_dollar = [l for l in lines if l.startswith("$ ")][-1]
    assert summary["type"] == "summary"
    assert last_dollar == f"$ {summary['best_dev']:.2f} | {summary['test_at_best']:.2f}"
    assert summary["config"]["NetType"] == "mlpvar" and summary["seed"] == 7
    assert summary["param_count"] == res.param_count
    epoch_bp = sum(r["bp"] for r in parts)
    assert summary["bp"] == pytest.approx(epoch_bp)


def test_mlptop_with_k_equal_hidden_size_reproduces_mlp(tmp_path, tiny_splits):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, _, dense = run_tiny(tmp_path / "a", tiny_splits, NetType="mlp")
    _, _, top = run_tiny(tmp_path / "b", tiny_splits, NetType="mlptop", TrainTop=32)
    def numbers(lines):
        start = lines.index("#" * 20 + " Run Start")
        return without_times(lines[start:])
    assert numbers(dense) == numbers(top)
