"""Sweeps: tiny real runs (separate processes) on synthetic IDX files; resume, failures, spec errors."""
import csv
import gzip
import json
import struct

import numpy as np
import pytest

from nnmnist.experiments import sweep

TINY = {"HiddenSize": 16, "MaxEpoch": 1, "IterPerEpoch": 1, "MinibatchSize": 500, "Kernels": "numpy"}


def write_idx(folder, seed=0):
    """5,100 training images (the first 5,000 are the dev set) and 200 test images, random bytes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def images(name, n):
        with gzip.open(folder / name, "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + rng.integers(0, 256, n * 784, np.uint8).tobytes())

    def labels(name, n):
        with gzip.open(folder / name, "wb") as f:
            f.write(struct.pack(">II", 2049, n) + rng.integers(0, 10, n, np.uint8).tobytes())
    images("train-images.idx3-ubyte.gz", 5100)
    labels("train-labels.idx1-ubyte.gz", 5100)
    images("t10k-images.idx3-ubyte.gz", 200)
    labels("t10k-labels.idx1-ubyte.gz", 200)


@pytest.fixture
def workspace(tmp_path):
    """A base config pointing at tiny synthetic data, and a helper that writes a spec beside it."""
    write_idx(tmp_path / "data")
    (tmp_path / "base.json").write_text(json.dumps({**TINY, "DataDir": str(tmp_path / "data")}))

    def spec(**body):
        body.setdefault("base", "base.json")
        path = tmp_path / "spec.json"
        path.write_text(json.dumps(body))
        return path
    return tmp_path, spec


def run_main(capsys, *argv):
    rc = sweep.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def file_times(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


class NoRunsExecutor(sweep.Executor):
    def submit(self, task):
        raise AssertionError(f"{task.run_id} was launched again")

    def shutdown(self, cancel=False):
        pass


def test_tiny_sweep_collects_results_and_resumes(workspace, capsys):
    tmp, spec = workspace
    path = spec(runs=[{"NetType": "mlp"}, {"NetType": "mlptop", "TrainTop": 8}],
                grid={"RandomSeed": [1, 2]})
    out = tmp / "out"
    # An interrupted run: a folder with a metrics file but no summary record is cleaned and rerun.
    partial = out / "runs" / "NetType=mlp,RandomSeed=2"
    partial.mkdir(parents=True)
    (partial / "old-log-20200101-000000.jsonl").write_text('{"type": "part"}\n')
    (partial / "junk.txt").write_text("x")

    rc, text, err = run_main(capsys, path, "--out", out, "--jobs", 2, "--offline")
    assert rc == 0, text + err
    assert "4 of 4 runs done, 0 failed" in text
    assert not (partial / "junk.txt").exists()

    doc = json.loads((out / "results.json").read_text())
    rows = {r["run_id"]: r for r in doc["runs"]}
    assert list(rows) == ["NetType=mlp,RandomSeed=1", "NetType=mlp,RandomSeed=2",
                          "NetType=mlptop,TrainTop=8,RandomSeed=1", "NetType=mlptop,TrainTop=8,RandomSeed=2"]
    for r in rows.values():
        assert r["status"] == "done"
        assert 0 <= r["test_at_best"] <= 100 and 0 <= r["best_dev"] <= 100
        assert r["dims"] == [16, 16, 10] and r["epochs"] == 1
        assert r["bp"] >= 0 and r["fp"] >= 0 and r["update"] >= 0
        assert r["config"]["Threads"] == 1  # one thread per run unless the spec says otherwise
        assert (out / r["log_file"]).is_file() and r["log_file"].endswith(".txt")
    assert rows["NetType=mlptop,TrainTop=8,RandomSeed=2"]["seed"] == 2
    assert rows["NetType=mlptop,TrainTop=8,RandomSeed=1"]["config"]["TrainTop"] == 8

    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["run_id"] for t in table] == list(rows)
    assert {t["NetType"] for t in table} == {"mlp", "mlptop"}
    assert all(t["status"] == "done" and float(t["test_at_best"]) >= 0 for t in table)
    assert not list(out.glob(".*.tmp"))

    # Re-running launches nothing and touches no run file.
    before = file_times(out / "runs")
    rc, text, _ = run_main(capsys, path, "--out", out, "--offline")
    assert rc == 0 and "4 already done, 0 to run" in text
    assert file_times(out / "runs") == before
    plan = sweep.build_plan(path, out, offline=True)
    assert sweep.run_sweep(plan, 1, executor=NoRunsExecutor(), echo=lambda s: None) == 0

    # A changed spec does not silently reuse runs made with other settings.
    stale = spec(runs=[{"NetType": "mlp"}, {"NetType": "mlptop", "TrainTop": 8}],
                 grid={"RandomSeed": [1, 2]}, set={"LearningRate": 0.01})
    rc, _, err = run_main(capsys, stale, "--out", out, "--offline")
    assert rc == 2 and "LearningRate" in err and err.count("\n") == 1

    rc, table_md, _ = run_main(capsys, "summarize", out, "--by", "NetType")
    assert rc == 0
    lines = table_md.splitlines()
    assert lines[0].startswith("| NetType | n | test at best dev (%)")
    assert any(ln.startswith("| mlp | 2 | ") and " ± " in ln and "16, 16, 10" in ln for ln in lines)
    assert any(ln.startswith("| mlptop | 2 | ") for ln in lines)


def test_failed_run_is_reported_and_the_others_finish(workspace, capsys):
    tmp, spec = workspace
    # Valid as a config, so the sweep starts; the data file is only missed when the run starts.
    path = spec(runs=[{"TrainFile": "missing-images.idx3-ubyte"}, {"NetType": "mlp"}],
                grid={"RandomSeed": [1]})
    out = tmp / "out"
    rc, text, _ = run_main(capsys, path, "--out", out, "--jobs", 1, "--offline")
    assert rc == 1
    bad = "TrainFile=missing-images.idx3-ubyte,RandomSeed=1"
    failed_line = next(ln for ln in text.splitlines() if "FAILED" in ln)
    assert bad in failed_line and "missing-images" in failed_line and "not found" in failed_line
    assert (out / "runs" / bad / "stderr.txt").read_text().strip()
    rows = {r["run_id"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert rows[bad]["status"] == "failed" and rows[bad]["returncode"] == 2
    assert "not found" in rows[bad]["error"]
    assert rows["NetType=mlp,RandomSeed=1"]["status"] == "done"

    # Re-running retries only the failed run.
    good = out / "runs" / "NetType=mlp,RandomSeed=1"
    before = file_times(good)
    rc, text, _ = run_main(capsys, path, "--out", out, "--offline")
    assert rc == 1 and "1 already done, 1 to run" in text
    assert file_times(good) == before


def test_spec_errors_are_one_line_and_launch_nothing(workspace, capsys):
    tmp, spec = workspace
    out = tmp / "out"
    cases = [
        (dict(grid={"NetTyp": ["mlp"]}), "unknown field 'NetTyp'; did you mean NetType?"),
        (dict(gird={"NetType": ["mlp"]}), "unknown key 'gird'"),
        (dict(base="nowhere.json"), "base config 'nowhere.json' not found"),
        (dict(grid={"NetType": []}), "non-empty list"),
        (dict(set={"MaxEpoch": 1}, grid={"MaxEpoch": [1, 2]}), "both"),
        (dict(grid={"NetType": ["mlptop"], "TrainTop": [8, 32]}), "run NetType=mlptop,TrainTop=32"),
        (dict(runs=[{"NetType": "mlp"}, {"NetType": "mlp"}]), "appears twice"),
    ]
    for body, message in cases:
        rc, _, err = run_main(capsys, spec(**body), "--out", out)
        assert rc == 2, body
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert "Traceback" not in err
    rc, _, err = run_main(capsys, tmp / "nothing.json", "--out", out)
    assert rc == 2 and "not found" in err
    assert not out.exists()


def test_dry_run_lists_the_runs(workspace, capsys):
    tmp, spec = workspace
    path = spec(set={"LearningRate": 0.01}, grid={"NetType": ["mlp", "mlptop"], "TrainTop": [4, 8],
                                                   "RandomSeed": [1, 2]})
    rc, text, _ = run_main(capsys, path, "--out", tmp / "out", "--dry-run", "--offline")
    assert rc == 0
    assert "8 runs: 0 done, 8 to run" in text
    assert "NetType=mlptop,TrainTop=8,RandomSeed=2" in text
    assert "--set LearningRate=0.01" in text and "--offline" in text and "--set Threads=1" in text
    assert not (tmp / "out").exists()


def test_threads_from_the_spec_are_kept(workspace):
    tmp, spec = workspace
    plan = sweep.build_plan(spec(set={"Threads": 2}), tmp / "out")
    assert all(t.config["Threads"] == 2 for t in plan.tasks)
    assert "--offline" not in plan.tasks[0].command


def test_run_ids():
    assert sweep.run_id_of({"NetType": "mlptop", "TrainTop": 80, "RandomSeed": 1}) == \
        "NetType=mlptop,TrainTop=80,RandomSeed=1"
    assert sweep.run_id_of({"Unified": True, "Dropout": 0.5}) == "Unified=true,Dropout=0.5"
    assert sweep.run_id_of({}) == "base"
    odd = sweep.run_id_of({"TrainFile": "sub/dir file.idx"})
    assert "/" not in odd and " " not in odd and odd.startswith("TrainFile=sub_dir_file.idx-")
    assert odd != sweep.run_id_of({"TrainFile": "sub_dir file.idx"})  # the hash keeps them apart
    long = sweep.run_id_of({f"F{i}": "x" * 20 for i in range(10)})
    assert len(long) <= sweep.MAX_ID_LEN
    assert long == sweep.run_id_of({f"F{i}": "x" * 20 for i in range(10)})  # deterministic


def test_default_jobs_does_not_oversubscribe(monkeypatch):
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 2)
    assert sweep.default_jobs() == 1
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: None)
    assert sweep.default_jobs() == 1


def test_a_finished_run_with_other_threads_is_another_run(monkeypatch):
    """BLAS sums in another order with another thread count, so a finished run made with
    another Threads is not reused; one that recorded fewer threads only because its machine
    had no more cores (a run caps Threads and records what it used) is."""
    from types import SimpleNamespace
    from nnmnist.run import procs
    monkeypatch.setattr(procs, "usable_cores", lambda: 2)
    task = SimpleNamespace(config={"NetType": "mlp", "Threads": 2, "LogDir": "here"})
    done = {"config": {"NetType": "mlp", "Threads": 1, "LogDir": "there"}}
    assert sweep._stale_field(task, done) == ("Threads", 1, 2)
    done["config"]["Threads"] = 2
    assert sweep._stale_field(task, done) is None
    task.config["Threads"] = 8  # asked for 8, ran on this 2-core machine with 2
    assert sweep._stale_field(task, done) is None
