"""Sweeps on a real Dask cluster on 127.0.0.1: same results as the local pool, worker deaths,
interrupted and killed clients, unreachable schedulers, workers with other code.

Skipped when the cluster extra (dask[distributed]) is not installed, except the checks that need
no Dask at all.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nnmnist.experiments import sweep
from test_sweep import TINY, file_times, run_main, write_idx

REPO = Path(__file__).resolve().parents[2]
FIGURES = ("seed", "best_dev", "test_at_best", "epochs", "dims", "param_count")


@pytest.fixture
def distributed():
    return pytest.importorskip("distributed")


@pytest.fixture
def workspace(tmp_path):
    write_idx(tmp_path / "data")
    (tmp_path / "base.json").write_text(json.dumps({**TINY, "DataDir": str(tmp_path / "data")}))

    def spec(name="spec", **body):
        body.setdefault("base", "base.json")
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(body))
        return path
    return tmp_path, spec


@pytest.fixture
def cluster(distributed):
    """A scheduler and two single-threaded worker processes on loopback, and a client to watch them."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as lc, distributed.Client(lc) as client:
        yield lc, client


def rows_of(out):
    return {r["run_id"]: r for r in json.loads((out / "results.json").read_text())["runs"]}


def summaries(out):
    """The finished run folders (not the hidden ones still being written back)."""
    return [p.name for p in sorted((out / "runs").iterdir())
            if not p.name.startswith(".") and sweep.find_summary(p)[0] is not None]


def env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}


def wait_for(condition, timeout=60, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = condition()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_same_figures_as_the_local_pool_and_resume(distributed, workspace, capsys):
    tmp, spec = workspace
    path = spec(runs=[{"NetType": "mlp"}, {"NetType": "mlptop", "TrainTop": 8}], grid={"RandomSeed": [1, 2]})
    local, dask = tmp / "local", tmp / "dask"
    rc, text, err = run_main(capsys, path, "--out", local, "--jobs", 2, "--offline")
    assert rc == 0, text + err
    rc, text, err = run_main(capsys, path, "--out", dask, "--jobs", 2, "--offline", "--executor", "dask")
    assert rc == 0, text + err
    assert "on a local Dask cluster of 2 worker(s)" in text and "4 of 4 runs done, 0 failed" in text

    a, b = rows_of(local), rows_of(dask)
    assert list(a) == list(b)
    for run_id in a:
        assert b[run_id]["status"] == "done"
        assert {k: b[run_id][k] for k in FIGURES} == {k: a[run_id][k] for k in FIGURES}, run_id
        assert b[run_id]["config"] == a[run_id]["config"]
        # The same files, written back on this machine.
        kinds = lambda d: sorted(p.name.split(".", 1)[1] if p.name.startswith(("mlp", "mlptop"))  # noqa: E731
                                 else p.name for p in d.iterdir())
        assert kinds(dask / "runs" / run_id) == kinds(local / "runs" / run_id)
        assert {"jsonl", "txt", "run.json", "stderr.txt", "stdout.txt"} <= set(kinds(dask / "runs" / run_id))
        assert (dask / b[run_id]["log_file"]).is_file()
        info = json.loads((dask / "runs" / run_id / "run.json").read_text())
        assert info["worker"].startswith("tcp://127.0.0.1:") and info["run_id"] == run_id
    assert not [p for p in (dask / "runs").iterdir() if p.name.startswith(".")]
    assert (dask / "results.csv").read_text().count("\n") == 5

    # Finished runs are skipped (and no cluster is started for nothing).
    before = file_times(dask / "runs")
    rc, text, _ = run_main(capsys, path, "--out", dask, "--offline", "--executor", "dask")
    assert rc == 0 and "4 already done, 0 to run" in text
    assert file_times(dask / "runs") == before

    # The changed-spec guard holds: a finished run made with other settings stops the sweep.
    stale = spec(runs=[{"NetType": "mlp"}, {"NetType": "mlptop", "TrainTop": 8}],
                 grid={"RandomSeed": [1, 2]}, set={"LearningRate": 0.01})
    rc, _, err = run_main(capsys, stale, "--out", dask, "--offline", "--executor", "dask")
    assert rc == 2 and "LearningRate" in err and err.count("\n") == 1


def _pids(client):
    return client.run(os.getpid)


def _worker_running_a_run(client):
    """(worker address, its pid, the run's pid) for a worker whose run.py child is running."""
    import psutil
    for address, pid in _pids(client).items():
        try:
            for child in psutil.Process(pid).children(recursive=True):
                if any(a.endswith("run.py") for a in child.cmdline()):
                    return address, pid, child.pid
        except psutil.Error:
            continue
    return None


def _sweep_in_thread(argv):
    result = {}

    def go():
        result["rc"] = sweep.main([str(a) for a in argv])
    t = threading.Thread(target=go)
    t.start()
    return t, result


def _kill_a_worker_mid_sweep(client, capsys, argv):
    """Run a sweep, SIGKILL the worker process of its first running run, and wait for the end:
    the sweep's result, its printed output and the killed worker's address."""
    thread, result = _sweep_in_thread(argv)
    address, pid, _ = wait_for(lambda: _worker_running_a_run(client), what="a running run")
    os.kill(pid, signal.SIGKILL)
    thread.join(120)
    return result, capsys.readouterr().out, address


def test_a_worker_killed_mid_run_is_retried_at_most_retries_times(cluster, workspace, capsys):
    lc, client = cluster
    tmp, spec = workspace
    path = spec(set={"MaxEpoch": 20}, grid={"RandomSeed": [1, 2, 3, 4]})
    common = ["--scheduler", lc.scheduler_address, "--offline", "--executor", "dask"]

    # No retries: the run whose worker is killed fails, the others finish.
    out0 = tmp / "no-retries"
    result, text, address = _kill_a_worker_mid_sweep(client, capsys, [path, "--out", out0,
                                                                      "--retries", 0, *common])
    assert result["rc"] == 1, text
    rows = rows_of(out0)
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert len(failed) == 1 and "died" in failed[0]["error"], text
    assert sum(r["status"] == "done" for r in rows.values()) == 3
    assert "FAILED" in text and "died 1 time(s)" in text
    assert "died 1 time(s)" in (out0 / failed[0]["run_dir"] / "stderr.txt").read_text()

    # With retries, the same failure is absorbed: the run is started again on a live worker.
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker
    out = tmp / "retried"
    result, text, address = _kill_a_worker_mid_sweep(client, capsys, [path, "--out", out,
                                                                      "--retries", 2, *common])
    assert result["rc"] == 0, text
    rows = rows_of(out)
    assert all(r["status"] == "done" for r in rows.values()), text
    workers = {json.loads((out / r["run_dir"] / "run.json").read_text())["worker"].split()[0]
               for r in rows.values()}
    assert address not in workers  # the killed worker finished nothing
    # The scheduler's own setting is given back when the sweep ends.
    assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures) == 3


def _start_sweep(path, out):
    return subprocess.Popen([sys.executable, "-m", "nnmnist", "sweep", str(path), "--out", str(out),
                             "--executor", "dask", "--jobs", "2", "--offline"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(),
                            cwd=str(REPO), preexec_fn=default_sigint)


def default_sigint():
    """In the child: Ctrl-C's default action, which a test sends. A shell without job control
    (`pytest ... &` in a script) starts its background jobs with SIGINT ignored, and an
    ignored SIGINT is inherited: Python would then never raise KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _descendants(pid):
    import psutil
    return psutil.Process(pid).children(recursive=True)


def _all_gone(procs, timeout=30):
    import psutil
    gone, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:  # do not leave anything behind, then fail
        p.kill()
    return not alive


def test_interrupted_then_killed_client_resumes_without_rerunning(distributed, workspace, capsys):
    tmp, spec = workspace
    path = spec(set={"MaxEpoch": 10}, grid={"RandomSeed": [1, 2, 3, 4, 5, 6]})
    out = tmp / "out"

    # Ctrl-C (SIGINT to the client): pending tasks are cancelled, running runs stopped, exit 130.
    proc = _start_sweep(path, out)
    wait_for(lambda: summaries(out) if (out / "runs").is_dir() else None, what="a finished run")
    kids = _descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, text
    assert "interrupted; run the same command again to resume" in text
    assert _all_gone(kids), "worker or run processes outlived the interrupted sweep"
    done = summaries(out)
    assert 1 <= len(done) < 6
    rows = rows_of(out)
    assert {r["status"] for r in rows.values()} <= {"done", "pending"}
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".")]

    # Resume, then SIGKILL the client once another run has finished: no cleanup runs at all.
    proc = _start_sweep(path, out)
    wait_for(lambda: len(summaries(out)) > len(done), what="another finished run")
    kids = _descendants(proc.pid)
    proc.kill()
    proc.communicate(timeout=30)
    assert _all_gone(kids), "worker or run processes outlived the killed client"
    done = summaries(out)
    before = {p: t for p, t in file_times(out / "runs").items() if p.parent.name in done}

    # The next run of the command finishes the rest and reruns none of the finished runs.
    rc, text, err = run_main(capsys, path, "--out", out, "--offline", "--executor", "dask", "--jobs", 2)
    assert rc == 0, text + err
    assert f"{len(done)} already done, {6 - len(done)} to run" in text
    assert all(r["status"] == "done" for r in rows_of(out).values())
    after = file_times(out / "runs")
    assert {p: after.get(p) for p in before} == before
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".")]


def test_a_killed_client_leaves_no_run_going_on_the_cluster(cluster, workspace):
    import psutil
    lc, client = cluster
    tmp, spec = workspace
    path = spec(set={"MaxEpoch": 5000}, grid={"RandomSeed": [1, 2]})  # minutes, unless stopped
    proc = subprocess.Popen([sys.executable, "-m", "nnmnist", "sweep", str(path), "--out", str(tmp / "out"),
                             "--executor", "dask", "--scheduler", lc.scheduler_address, "--offline"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(), cwd=str(REPO))
    try:
        _, _, run_pid = wait_for(lambda: _worker_running_a_run(client), what="a running run")
        run = psutil.Process(run_pid)
    finally:
        proc.kill()
        proc.wait(30)
    # The scheduler drops the client's tasks; the worker sees its task cancelled and stops the run.
    assert _all_gone([run], timeout=15), "the run went on after its sweep was killed"
    wait_for(lambda: not _worker_running_a_run(client), timeout=15, what="idle workers")


def test_a_scheduler_that_does_not_answer_is_a_one_line_error(distributed, workspace, capsys):
    tmp, spec = workspace
    path = spec(grid={"RandomSeed": [1]})
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts TCP connections, never speaks
    try:
        for sock in (refused, silent):
            address = "tcp://127.0.0.1:%d" % sock.getsockname()[1]
            start = time.monotonic()
            rc, _, err = run_main(capsys, path, "--out", tmp / "out", "--executor", "dask",
                                  "--scheduler", address)
            assert time.monotonic() - start < 15
            assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
            assert err.startswith(f"error: --scheduler {address}: no Dask scheduler answered within")
    finally:
        refused.close()
        silent.close()
    with distributed.LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None) as lc:
        rc, _, err = run_main(capsys, path, "--out", tmp / "out", "--executor", "dask",
                              "--scheduler", lc.scheduler_address)
    assert rc == 2 and err.count("\n") == 1 and "the scheduler has no workers" in err, err
    assert not (tmp / "out").exists()


def test_a_worker_with_other_nnmnist_code_is_refused(distributed, workspace, capsys):
    tmp, spec = workspace
    path = spec(grid={"RandomSeed": [1]})
    other = tmp / "other"
    shutil.copytree(REPO / "nnmnist", other / "nnmnist", ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "nnmnist" / "training.py", "a") as f:
        f.write("\n# a local change\n")
    with distributed.LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None) as lc:
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", lc.scheduler_address,
             "--nthreads", "1", "--no-dashboard", "--no-nanny", "--host", "127.0.0.1"],
            cwd=other, env={**os.environ, "PYTHONPATH": str(other)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with distributed.Client(lc) as client:
                client.wait_for_workers(1, timeout=60)
            rc, _, err = run_main(capsys, path, "--out", tmp / "out", "--executor", "dask",
                                  "--scheduler", lc.scheduler_address, "--offline")
        finally:
            worker.terminate()
            worker.wait(30)
    assert rc == 2 and err.count("\n") == 1, err
    assert "source hash" in err and "install the same nnmnist on every worker" in err
    assert not (tmp / "out").exists()


def test_flags_are_checked(workspace, capsys):
    tmp, spec = workspace
    path = spec(grid={"RandomSeed": [1]})
    cases = [
        (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler is only for --executor dask"),
        (["--retries", "1"], "--retries is only for --executor dask"),
        (["--executor", "dask", "--retries", "-1"], "must be 0 or more"),
        (["--executor", "dask", "--scheduler", "tcp://127.0.0.1:1", "--jobs", "2"], "--jobs"),
    ]
    for extra, message in cases:
        rc, _, err = run_main(capsys, path, "--out", tmp / "out", *extra)
        assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp / "out").exists()


def test_without_dask_a_one_line_error(workspace, capsys, monkeypatch):
    tmp, spec = workspace
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the extra were not installed
    rc, _, err = run_main(capsys, spec(grid={"RandomSeed": [1]}), "--out", tmp / "out", "--executor", "dask")
    assert rc == 2 and err.count("\n") == 1
    assert "pip install 'nnmnist[cluster]'" in err
    assert not (tmp / "out").exists()


def test_nothing_imports_dask_unless_asked():
    code = ("import sys; import nnmnist.experiments.sweep, nnmnist.experiments.cluster; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    proc = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_a_worker_fetches_missing_mnist_once_for_all_its_runs(workspace, monkeypatch):
    """Runs that start together on one machine: the first downloads under the lock, the others
    wait for it and find the files."""
    from nnmnist.experiments import cluster
    from nnmnist.data import fetch
    tmp, _ = workspace
    monkeypatch.delenv(fetch.OFFLINE_ENV, raising=False)
    empty = tmp / "fresh-data"
    config = tmp / "fresh.json"
    config.write_text(json.dumps({**TINY, "DataDir": str(empty)}))
    calls, inside, most = [], [], [0]

    def fake_fetch(dest, names, log=print):
        inside.append(1)
        most[0] = max(most[0], len(inside))
        calls.append(sorted(names))
        time.sleep(0.3)  # long enough for the other threads to arrive
        write_idx(Path(dest))
        inside.pop()
    monkeypatch.setattr(fetch, "fetch_mnist", fake_fetch)
    threads = [threading.Thread(target=cluster.ensure_data, args=(config, {"RandomSeed": i}))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most[0] == 1 and len(calls) == 1 and len(calls[0]) == 4, (most, calls)
    cluster.ensure_data(config, {})  # everything there now: no download
    assert len(calls) == 1


def test_runs_do_not_inherit_what_the_nanny_added_to_the_worker(cluster):
    """Dask's nanny gives its worker MALLOC_TRIM_THRESHOLD_ and one-thread BLAS/OpenMP variables;
    a run inherited them, and they made it a third slower."""
    from nnmnist.experiments import cluster as cluster_mod
    lc, client = cluster

    def look():
        from distributed import get_worker
        env = cluster_mod.run_environment(get_worker())
        return {k: (os.environ.get(k), env.get(k)) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "PATH")}
    seen = client.submit(look, pure=False).result()
    assert seen["MALLOC_TRIM_THRESHOLD_"] == ("65536", None)
    assert seen["OMP_NUM_THREADS"] == ("1", None)
    assert seen["PATH"][0] == seen["PATH"][1] == os.environ["PATH"]
