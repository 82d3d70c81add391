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


def tagger_rows():
    rows = []
    for net, scope, ks in (("lstmtop", "gate", (5, 10, 20)), ("lstmrand", "gate", (10,)),
                           ("lstmtop", "whole", (10,)), ("lstm", "gate", (None,))):
        for k in ks:
            for seed in (1, 2):
                overrides = {"NetType": net, "RandomSeed": seed}
                if k is not None:
                    overrides["TrainTop"] = k
                if scope == "whole":
                    overrides["TopKScope"] = "whole"
                cfg = {"NetType": "lstm", "HiddenSize": 500, "TrainTop": 10, "MaxEpoch": 3,
                       "TopKScope": "gate", **overrides}
                rows.append({"run_id": f"{net}-{scope}-{k}-{seed}", "status": "done",
                             "overrides": overrides, "config": cfg,
                             "test_at_best": 94 + (k or 40) / 100 + seed / 10})
    rows.append({"run_id": "mlp", "status": "done", "overrides": {"NetType": "mlp"},
                 "test_at_best": 97.0, "config": {"NetType": "mlp", "HiddenSize": 500}})
    return rows


def tagger_bp_json(path):
    rows = [{"case": "lstm", "NetType": "lstm", "TrainTop": None, "TopKScope": "gate", "bp": 60.0}]
    rows += [{"case": f"lstmtop k={k}", "NetType": "lstmtop", "TrainTop": k, "TopKScope": "gate",
              "bp": 10.0 + k} for k in (20, 5, 10)]
    rows += [{"case": "lstmrand k=10", "NetType": "lstmrand", "TrainTop": 10, "TopKScope": "gate",
              "bp": 22.0},
             {"case": "lstmtop k=10 whole", "NetType": "lstmtop", "TrainTop": 10,
              "TopKScope": "whole", "bp": 12.0}]
    path.write_text(json.dumps({"settings": {"hidden": 500}, "rows": rows}))
    return path


def test_tagger_k_points():
    points, dense = plot.tagger_k_points(tagger_rows())
    top = points["top-k of each gate (lstmtop)"]
    assert [p[0] for p in top] == [5, 10, 20]
    k, mean, std, n = top[0]
    assert n == 2 and mean == pytest.approx(94.2) and std == pytest.approx(0.0707, abs=1e-3)
    assert [p[0] for p in points["top-k of the whole 4H (lstmtop, TopKScope whole)"]] == [10]
    assert [p[0] for p in points["random-k of each gate (lstmrand)"]] == [10]
    assert dense[0] == pytest.approx(94.55) and dense[2] == 2  # the MLP's row is left out
    only_dense, dense = plot.tagger_k_points(tagger_rows(), {"NetType": "lstm"})
    assert only_dense == {} and dense[2] == 2


def test_tagger_bp_points(tmp_path):
    points, dense = plot.tagger_bp_points(tagger_bp_json(tmp_path / "bp.json"))
    assert dense == 60.0
    assert points["top-k of each gate (lstmtop)"] == [(5, 15.0), (10, 20.0), (20, 30.0)]
    assert points["top-k of the whole 4H (lstmtop, TopKScope whole)"] == [(10, 12.0)]


def test_tagger_k_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"runs": tagger_rows()}))
    bp = tagger_bp_json(tmp_path / "bp.json")
    out = tmp_path / "tagger_k.png"
    assert plot.main(["tagger-k", str(results), str(bp), "-o", str(out)]) == 0
    assert_png(out)
    assert plot.main(["tagger-k", str(results), str(bp), "-o", str(out),
                      "--where", "OptType=sgd"]) == 2
    assert "no finished lstm" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"rows": [{"case": "lstm"}]}')
    assert plot.main(["tagger-k", str(results), str(tmp_path / "bad.json"), "-o", str(out)]) == 2
    assert "tagger-bp --json" in capsys.readouterr().err
    assert plot.main(["tagger-k", str(results), str(tmp_path / "none.json"), "-o", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
