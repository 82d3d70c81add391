"""The `nnmnist` command (and `python -m nnmnist`): its subcommands, where a run reads and
writes, and what a wheel carries."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nnmnist import cli
from nnmnist.run import config as config_mod

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["train", "resume", "evaluate", "predict", "export", "sweep", "plot", "fetch"]


def nnmnist(*args, cwd, env=None, timeout=300):
    import os
    return subprocess.run([sys.executable, "-m", "nnmnist", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_help_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == SUBCOMMANDS


def test_no_arguments_prints_the_help(capsys):
    assert cli.main([]) == 0 and "subcommands:" in capsys.readouterr().out


def test_unknown_subcommand_is_one_line(capsys):
    assert cli.main(["trian"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unknown subcommand 'trian'")
    assert "did you mean 'train'" in err


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_its_own_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([name, "--help"])
    assert info.value.code == 0
    assert f"usage: nnmnist {name}" in capsys.readouterr().out


def test_config_path_names_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = config_mod.shipped_configs()
    assert config_mod.config_path(None) == str(shipped / "default.json")
    assert config_mod.config_path("mlptop") == str(shipped / "mlptop.json")
    assert config_mod.config_path("mlpvar.json") == str(shipped / "mlpvar.json")
    (tmp_path / "mlptop").write_text("{}")  # a file of that name here is the user's
    assert config_mod.config_path("mlptop") == "mlptop"
    assert config_mod.config_path("nosuch") == "nosuch"  # left for the loader's error
    assert sorted(p.name for p in shipped.glob("*.json")) == sorted(
        p.name for p in (REPO / "configs").glob("*.json"))


def test_train_and_resume_in_an_empty_folder(tmp_path, mnist_dir):
    """`NNMNIST_DATA=DIR nnmnist train` writes its log where it is started, creates no data/
    there, and `nnmnist resume` continues the run from its checkpoint."""
    work = tmp_path / "work"
    work.mkdir()
    small = ["--set", "HiddenSize=32", "--set", "IterPerEpoch=2", "--set", "RandomSeed=1",
             "--set", "MaxEpoch=1", "--quiet"]
    env = {"NNMNIST_DATA": str(mnist_dir), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = nnmnist("train", "mlptop", "--set", "TrainTop=8", *small, cwd=work, env=env)
    assert done.returncode == 0, done.stderr
    [log] = work.glob("mlptop-*-log-*.txt")
    assert sorted(p.name for p in work.iterdir()) == sorted(
        log.name[:-4] + ext for ext in (".txt", ".jsonl", ".ckpt.npz", ".best.npz"))
    assert not (tmp_path / "cache").exists()  # nothing fetched: NNMNIST_DATA had it
    assert "TrainTop: 8" in log.read_text() and "NetType: mlptop" in log.read_text()
    ckpt = log.with_name(log.name[:-4] + ".ckpt.npz")
    done = nnmnist("resume", str(ckpt), "--set", "MaxEpoch=2", "--quiet", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    text = log.read_text()
    # the log reads as one run to MaxEpoch 2 (resume cuts it back to its checkpoint first)
    assert "Run Resume at 01:00" in text and "\n01:01: loss: " in text
    assert text.count("#################### Run End") == 1 and text.endswith("Run End\n")
    assert not (work / "data").exists() and not (tmp_path / "data").exists()


def test_a_wheel_carries_the_configs_and_the_command(tmp_path):
    """The wheel holds every package, the shipped configs as package data and the console
    command; unpacked away from the checkout, its config lookup finds its own configs."""
    import shutil
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(REPO / "nnmnist", source / "nnmnist",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    shutil.copytree(REPO / "configs", source / "configs")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    if built.returncode != 0 and "No module named" in built.stderr:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("nnmnist-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "nnmnist = nnmnist.cli:main" in z.read(entry).decode()
        z.extractall(tmp_path / "site")
    packages = {str(p.parent.relative_to(REPO)) for p in (REPO / "nnmnist").rglob("__init__.py")}
    for package in packages:
        assert f"{package}/__init__.py" in names, package
    for config in (REPO / "configs").glob("*.json"):
        assert f"nnmnist/configs/{config.name}" in names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    import os
    found = subprocess.run(
        [sys.executable, "-c", "from nnmnist.run.config import config_path, load; "
         "p = config_path(None); print(p); print(load(p).NetType)"],
        cwd=elsewhere, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert found.returncode == 0, found.stderr
    path, net_type = found.stdout.split()
    assert Path(path) == tmp_path / "site" / "nnmnist" / "configs" / "default.json"
    assert net_type == config_mod.load(REPO / "configs" / "default.json").NetType
