"""Plots: training curves and the effect-of-k figure into PNGs (matplotlib's Agg backend)."""
import json
import sys

import pytest

from nnmnist.experiments import plot
from nnmnist.run.config import Config
from nnmnist.run.log import RunLog, log_path
from nnmnist.run.training import train_and_evaluate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_metrics(tmp_path, tiny_splits, seed, **fields):
    cfg = Config(MaxEpoch=2, IterPerEpoch=2, HiddenSize=16, Kernels="numpy", RandomSeed=seed, **fields)
    folder = tmp_path / f"run{seed}"
    folder.mkdir()
    with RunLog(log_path(folder, cfg.run_name()), console=False) as log:
        train_and_evaluate(cfg, tiny_splits, log)
    return log.metrics_path


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_training_curves_png(tmp_path, tiny_splits, capsys):
    pytest.importorskip("matplotlib")
    files = [tiny_metrics(tmp_path, tiny_splits, seed) for seed in (1, 2)]
    out = tmp_path / "curves.png"
    assert plot.main([str(f) for f in files] + ["-o", str(out), "--title", "two seeds"]) == 0
    assert_png(out)
    m = [plot.read_metrics(f) for f in files]
    assert len(m[0].parts) == 4 and m[0].summary["seed"] == 1
    assert plot._labels(m) == ["mlp-adam-h16-i2-m100 seed 1", "mlp-adam-h16-i2-m100 seed 2"]


def test_curves_of_a_run_still_going(tmp_path, tiny_splits):
    pytest.importorskip("matplotlib")
    path = tiny_metrics(tmp_path, tiny_splits, 3)
    lines = path.read_text().splitlines()
    partial = tmp_path / "partial-log-20260101-000000.jsonl"
    # the start record and two parts, then a half-written line and no summary
    partial.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    m = plot.read_metrics(partial)
    assert len(m.parts) == 2 and m.summary is None and m.run_name == "partial"
    out = tmp_path / "p.png"
    plot.plot_curves([partial], out)
    assert_png(out)


def test_curves_after_a_hard_kill_and_resume_count_each_part_once(tmp_path):
    # kill -9 after part (1, 1) left records past the checkpoint of the end of epoch 0; the
    # resumed run replays from (1, 0). The replayed records replace the ones written before.
    def part(epoch, p, dev):
        return {"type": "part", "epoch": epoch, "part": p, "dev_acc": dev, "train_loss": 1.0,
                "dev_loss": 1.0}
    records = [{"type": "start"}, part(0, 0, 90), part(0, 1, 91), part(1, 0, 80), part(1, 1, 81),
               {"type": "resume", "epoch": 1, "part": 0},
               part(1, 0, 92), part(1, 1, 93), {"type": "summary", "run_name": "r", "seed": 1}]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    m = plot.read_metrics(path)
    assert [(r["epoch"], r["part"], r["dev_acc"]) for r in m.parts] == \
        [(0, 0, 90), (0, 1, 91), (1, 0, 92), (1, 1, 93)]


def results_rows():
    rows = []
    for net, field, ks in (("mlptop", "TrainTop", (10, 20, 40)), ("mlprand", "TrainTop", (10, 20, 40)),
                           ("mlp", "HiddenSize", (10, 20, 40))):
        for k in ks:
            for seed in (1, 2, 3):
                cfg = {"NetType": net, "HiddenSize": 500, "TrainTop": 160, "MaxEpoch": 2,
                       "RandomSeed": seed, field: k}
                rows.append({"run_id": f"{net}-{k}-{seed}", "status": "done",
                             "overrides": {"NetType": net, field: k, "RandomSeed": seed},
                             "test_at_best": 90 + k / 10 + seed / 10, "config": cfg})
    rows.append({"run_id": "broken", "status": "failed", "overrides": {"NetType": "mlptop", "TrainTop": 80},
                 "test_at_best": None, "config": {"NetType": "mlptop", "TrainTop": 80}})
    return rows


def test_k_effect_points():
    points = plot.k_effect_points(results_rows())
    assert set(points) == {label for _, label, _ in plot.K_GROUPS}
    top = points["top-k (meProp, mlptop)"]
    assert [p[0] for p in top] == [10, 20, 40]  # the failed k=80 run is left out
    k, mean, std, n = top[0]
    assert n == 3 and mean == pytest.approx(91.2) and std == pytest.approx(0.1)
    dense = plot.k_effect_points(results_rows(), {"NetType": "mlp"})
    assert list(dense) == ["dense, only k wide (mlp, HiddenSize = k)"]


def test_k_effect_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"runs": results_rows()}))
    out = tmp_path / "k.png"
    assert plot.main(["k-effect", str(results), "-o", str(out)]) == 0
    assert_png(out)
    assert plot.main(["k-effect", str(results), "-o", str(out), "--where", "OptType=sgd"]) == 2
    assert "no finished" in capsys.readouterr().err


def test_missing_matplotlib_is_one_line(tmp_path, tiny_splits, monkeypatch, capsys):
    path = tiny_metrics(tmp_path, tiny_splits, 1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert plot.main([str(path), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install .[plot]" in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_bad_inputs_are_one_line(tmp_path, capsys):
    assert plot.main([str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "x.png")]) == 2
    assert "metrics file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "summary"}\n')
    assert plot.main([str(bad), "-o", str(tmp_path / "x.png")]) == 2
    assert "no part records" in capsys.readouterr().err
    assert plot.main(["k-effect", str(tmp_path / "none.json"), "-o", str(tmp_path / "k.png")]) == 2
    assert "not found" in capsys.readouterr().err
