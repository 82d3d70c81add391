"""Config: BOM, defaults, the run name, every validation error, unknown-field suggestions."""
import json
import re

import pytest

from nnmnist.run import config as cfgmod
from nnmnist.run.config import Config
from nnmnist.errors import UserError


def write(tmp_path, obj, bom=False, name="c.json"):
    path = tmp_path / name
    text = obj if isinstance(obj, str) else json.dumps(obj)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_defaults_match_spec():
    c = Config()
    assert (c.ClipBound, c.DecayRate, c.Eps, c.HiddenSize, c.IterPerEpoch) == (5.0, 0.09, 1e-6, 500, 8)
    assert (c.L2RegFactor, c.LabelCount, c.Layers, c.LearningRate, c.MaxEpoch) == (0.0, 10, 3, 0.001, 20)
    assert (c.MinibatchSize, c.NetType, c.OptType, c.Prune, c.RandomSeed) == (100, "mlp", "adam", 0.1, -1)
    assert (c.TrainCycle, c.TrainTop) == (5, 160)
    assert c.TrainFile == "train-images.idx3-ubyte" and c.TestLabelFile == "t10k-labels.idx1-ubyte"
    # Extensions default to the original behaviour.
    assert (c.Unified, c.LazyUpdate, c.Dropout, c.Backend) == (False, False, 0.0, "cpu")
    assert (c.LossGrad, c.DenseWarmup) == ("sum", 0)


def test_bom_and_missing_fields(tmp_path):
    path = write(tmp_path, {"NetType": "mlptop", "TrainTop": 80}, bom=True)
    c = cfgmod.load(path)
    assert c.NetType == "mlptop" and c.TrainTop == 80 and c.HiddenSize == 500


def test_shipped_configs_load():
    from pathlib import Path
    root = Path(__file__).resolve().parents[2] / "configs"
    loaded = {p.stem: cfgmod.load(p) for p in root.glob("*.json")}
    assert loaded["default"] == Config(RandomSeed=-1)
    assert (loaded["mlptop"].NetType, loaded["mlptop"].TrainTop) == ("mlptop", 80)
    assert (loaded["mlprand"].NetType, loaded["mlprand"].TrainTop) == ("mlprand", 80)
    v = loaded["mlpvar"]
    assert (v.NetType, v.TrainTop, v.Prune, v.TrainCycle) == ("mlpvar", 160, 0.1, 5)


@pytest.mark.parametrize("fields,name", [
    ({}, "mlp-adam-h500-i8-m100"),
    ({"NetType": "mlptop", "TrainTop": 80}, "mlptop-adam-h500-i8-m100-t80"),
    ({"NetType": "mlprand", "TrainTop": 20, "OptType": "sgd"}, "mlprand-sgd-h500-i8-m100-t20"),
    ({"NetType": "mlpvar"}, "mlpvar-adam-h500-i8-m100-t160-p0.1-c5"),
    ({"NetType": "mlpvar", "TrainCycle": 20}, "mlpvar-adam-h500-i8-m100-t160-p0.1"),
    ({"NetType": "mlpvar", "Prune": 0.05, "MaxEpoch": 3, "TrainCycle": 1}, "mlpvar-adam-h500-i8-m100-t160-p0.05-c1"),
])
def test_run_name(fields, name):
    assert cfgmod.from_dict(fields).run_name() == name


def test_header_lines_sorted_with_csharp_numbers():
    lines = Config().header_lines()
    names = [line.split(":")[0] for line in lines]
    assert names == sorted(names)
    assert "ClipBound: 5" in lines and "Eps: 1E-06" in lines and "LearningRate: 0.001" in lines
    assert "Unified: False" in lines and "NetType: mlp" in lines


@pytest.mark.parametrize("fields,needle", [
    ({"HiddenSize": 0}, "HiddenSize = 0"),
    ({"HiddenSize": 2.5}, "must be an integer"),
    ({"HiddenSize": "500"}, "must be an integer"),
    ({"MinibatchSize": -1}, "MinibatchSize = -1"),
    ({"IterPerEpoch": 0}, "IterPerEpoch"),
    ({"MaxEpoch": 0}, "MaxEpoch"),
    ({"Layers": 0}, "Layers"),
    ({"LabelCount": 1}, "LabelCount"),
    ({"LearningRate": 0}, "LearningRate"),
    ({"LearningRate": "fast"}, "must be a number"),
    ({"LearningRate": True}, "must be a number"),
    ({"DecayRate": -0.1, "OptType": "sgd"}, "DecayRate"),
    ({"Eps": 0, "OptType": "adagrad"}, "Eps"),
    ({"L2RegFactor": -1}, "L2RegFactor"),
    ({"Prune": 1.5}, "Prune"),
    ({"NetType": "cnn"}, "NetType = \"cnn\": must be one of mlp, mlprand, mlptop, mlpvar"),
    ({"OptType": "adadelta"}, "OptType"),
    ({"NetType": "mlptop", "TrainTop": 501}, "TrainTop = 501: k must be between 1 and HiddenSize (500)"),
    ({"NetType": "mlpvar", "TrainTop": 0}, "TrainTop = 0"),
    ({"NetType": "mlprand", "Layers": 1}, "needs at least one hidden layer"),
    ({"NetType": "mlpvar", "TrainCycle": 0}, "TrainCycle = 0: must be >= 1 for mlpvar"),
    ({"Dropout": 1.0}, "Dropout"),
    ({"Backend": "tpu"}, "Backend"),
    ({"Kernels": "c"}, "Kernels"),
    ({"Threads": -2}, "Threads"),
    ({"Unified": 1}, "must be true or false"),
    ({"TrainFile": ""}, "TrainFile"),
    ({"TrainFile": 3}, "must be a string"),
    ({"LossGrad": "median"}, "LossGrad = \"median\": must be one of sum, mean"),
    ({"DenseWarmup": -1}, "DenseWarmup = -1"),
    ({"DenseWarmup": 1.5}, "must be an integer"),
    ({"NetType": "mlpvar", "DenseWarmup": 100}, "DenseWarmup = 100: must be 0 for mlpvar"),
])
def test_validation_errors_name_file_field_value(tmp_path, fields, needle):
    path = write(tmp_path, fields)
    with pytest.raises(UserError) as err:
        cfgmod.load(path)
    msg = str(err.value)
    assert needle in msg and str(path) in msg and "\n" not in msg


def test_large_k_is_fine_for_mlp():
    assert cfgmod.from_dict({"NetType": "mlp", "TrainTop": 9999}).TrainTop == 9999


def test_non_finite_numbers_rejected(tmp_path):
    path = write(tmp_path, '{"LearningRate": NaN}')
    with pytest.raises(UserError, match="LearningRate.*finite"):
        cfgmod.load(path)
    path = write(tmp_path, '{"ClipBound": Infinity}')
    with pytest.raises(UserError, match="ClipBound.*finite"):
        cfgmod.load(path)


@pytest.mark.parametrize("typo,suggestion", [
    ("HiddenSzie", "HiddenSize"), ("LearnRate", "LearningRate"), ("MinibachSize", "MinibatchSize"),
    ("NetTyp", "NetType"), ("TrainTopK", "TrainTop")])
def test_unknown_field_suggests_nearest(tmp_path, typo, suggestion):
    path = write(tmp_path, {typo: 1})
    with pytest.raises(UserError, match=f"unknown field '{typo}'; did you mean {suggestion}\\?"):
        cfgmod.load(path)


def test_unrelated_unknown_field_gets_no_hint(tmp_path):
    with pytest.raises(UserError) as err:
        cfgmod.load(write(tmp_path, {"Foo": 1}))
    assert str(err.value).endswith("unknown field 'Foo'")


def test_names_and_choices_are_case_insensitive_like_the_original(tmp_path):
    c = cfgmod.load(write(tmp_path, {"nettype": "MLPTop", "hiddensize": 100, "TRAINTOP": 20,
                                     "OptType": "Adam"}))
    assert (c.NetType, c.HiddenSize, c.TrainTop, c.OptType) == ("mlptop", 100, 20, "adam")


def test_unused_hyperparameters_are_not_checked(tmp_path):
    c = cfgmod.load(write(tmp_path, {"OptType": "adam", "DecayRate": 0, "Eps": 0}))
    assert c.DecayRate == 0 and c.Eps == 0


def test_null_paths_mean_default(tmp_path):
    c = cfgmod.load(write(tmp_path, {"DataDir": None, "LogDir": None}))
    assert c.DataDir == "" and c.LogDir == ""


def test_override_errors_name_the_flag(tmp_path):
    path = write(tmp_path, {})
    with pytest.raises(UserError, match="^--set: unknown field 'Fo0'"):
        cfgmod.load(path, {"Fo0": 1})
    with pytest.raises(UserError, match="^--set MaxEpoch: field MaxEpoch"):
        cfgmod.load(path, {"MaxEpoch": "x"})
    # A value that parses but is out of range is the flag's too, not the file's
    with pytest.raises(UserError, match='^--set NetType: field NetType = "mpl": must be one of'):
        cfgmod.load(path, {"nettype": "mpl"})
    with pytest.raises(UserError, match="^--set MaxEpoch: field MaxEpoch = 0: must be >= 1"):
        cfgmod.load(path, {"MaxEpoch": 0})
    # while a bad value in the file is still the file's, whatever else --set changes
    bad = write(tmp_path, {"MaxEpoch": 0}, name="bad.json")
    with pytest.raises(UserError, match=f"^{re.escape(str(bad))}: field MaxEpoch = 0"):
        cfgmod.load(bad, {"HiddenSize": 20})


@pytest.mark.parametrize("text,needle", [
    ("{", "invalid JSON at line 1"),
    ("[1, 2]", "top level must be a JSON object"),
    ("", "invalid JSON"),
    ('{"HiddenSize": 10,}', "invalid JSON"),
])
def test_malformed_files(tmp_path, text, needle):
    with pytest.raises(UserError, match=needle):
        cfgmod.load(write(tmp_path, text))


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        cfgmod.load(tmp_path / "nope.json")
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="not UTF-8"):
        cfgmod.load(binary)
    with pytest.raises(UserError, match="is a folder"):
        cfgmod.load(tmp_path)


def test_overrides_are_validated(tmp_path):
    path = write(tmp_path, {"NetType": "mlptop", "TrainTop": 80})
    assert cfgmod.load(path, {"TrainTop": 20}).TrainTop == 20
    with pytest.raises(UserError, match="TrainTop = 900"):
        cfgmod.load(path, {"TrainTop": 900})


def test_ignored_settings_are_named():
    assert Config().ignored_settings() == []
    assert Config(NetType="mlptop", Unified=True, LazyUpdate=True).ignored_settings() == []
    notes = Config(NetType="mlp", Unified=True, LazyUpdate=True).ignored_settings()
    assert len(notes) == 2 and notes[0].startswith("Unified has no effect with NetType mlp")
    assert Config(Backend="gpu", Kernels="numpy").ignored_settings() == [
        "Kernels has no effect with Backend gpu"]
