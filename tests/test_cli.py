"""The `zoo` command line: options in any order, and messages that name the right fix."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import zoo
from zoo import bench, cli


@pytest.mark.parametrize("argv", [
    # every order a user may type: options before, between and after the positionals
    "convert nin --from torch --to keras IN OUT",
    "convert nin IN OUT --from torch --to keras",
    "convert --from torch --to keras nin IN OUT",
    "convert nin --from=torch IN --to=keras OUT",
    "convert --from torch nin IN OUT --to keras",
])
def test_convert_options_anywhere(argv):
    args = cli.parse_args(argv.split())
    assert (args.command, args.paths, args.src_format, args.dst_format) == \
        ("convert", ["nin", "IN", "OUT"], "torch", "keras")


@pytest.mark.parametrize("options", list(itertools.permutations(
    [["--force"], ["--no-verify"], ["--set", "num_classes=100"], ["--dtype", "float32"]], 2)))
def test_convert_flags_between_model_and_paths(options):
    argv = ["convert", "nin", *options[0], "a.pt", *options[1], "b.weights.h5"]
    args = cli.parse_args(argv)
    assert args.paths == ["nin", "a.pt", "b.weights.h5"]
    flags = [o[0] for o in options]
    assert args.force == ("--force" in flags) and args.verify == ("--no-verify" not in flags)
    assert dict(args.set) == ({"num_classes": 100} if "--set" in flags else {})


def test_other_commands_take_options_anywhere():
    args = cli.parse_args("predict nin --weights fashion_mnist shirt.png boot.jpg --top 2".split())
    assert (args.model, args.images, args.weights, args.top) == ("nin", ["shirt.png", "boot.jpg"], "fashion_mnist", 2)
    args = cli.parse_args("bench --frameworks keras[jax] --cases 32x224 --rounds 15".split())
    assert (args.model, args.frameworks, args.cases, args.rounds) == ("nin", ["keras[jax]"], [(32, 224)], 15)
    args = cli.parse_args("summary --framework keras nin --set num_classes=5".split())
    assert (args.model, args.framework, args.set) == ("nin", "keras", [("num_classes", 5)])


def test_hint_for_overrides_parses():
    """The message for a file that fits no preset suggests `zoo convert nin --set num_classes=100 ...`."""
    args = cli.parse_args("convert nin --set num_classes=100 in.pt out.safetensors".split())
    assert args.paths == ["nin", "in.pt", "out.safetensors"] and args.set == [("num_classes", 100)]


def test_unknown_command_and_bad_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["nope"])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["convert", "nin", "a.pt", "b.pt", "--frm", "torch"])
    assert "unrecognized arguments: --frm" in capsys.readouterr().err


def test_convert_with_output_forgotten(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["convert", "nin", "model.pt"]) == 2
    err = capsys.readouterr().err
    assert "'nin' is a model name and 'model.pt' the input, so the output is missing" in err, err
    assert "suffix ''" not in err


def test_inspect_unknown_suffix_names_its_option(capsys, tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0" * 16)
    assert cli.main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "--format with zoo inspect" in err, err


@pytest.mark.torch
def test_nhwc_input_to_an_nchw_model():
    """The layout mix-up names the layout and the fix, not an absurd channel count."""
    pytest.importorskip("torch", reason="torch: not installed (pip install '.[torch]')")
    model = zoo.load("nin", "torch", widths=(8, 16, 16))
    with pytest.raises(ValueError) as e:
        zoo.predict(model, np.zeros((1, 224, 224, 1), np.float32))
    msg = str(e.value)
    assert "looks like NHWC" in msg and "layout='NHWC'" in msg and "in_channels=224" not in msg, msg
    np.testing.assert_allclose(zoo.predict(model, np.zeros((1, 224, 224, 1), np.float32), layout="NHWC"),
                               zoo.predict(model, np.zeros((1, 1, 224, 224), np.float32)))


def test_nchw_input_to_an_nhwc_spec():
    spec = zoo.get_spec("nin")
    with pytest.raises(ValueError, match=r"looks like NCHW .*layout='NCHW'"):
        spec.check_input((2, 1, 96, 96), "NHWC")
    spec.check_input((2, 96, 96, 1), "NHWC")


def _result(default_times, other_times):
    """A bench result with two alternatives on one case, as a worker returns it."""
    rows = {}
    for name, times in (("zoo.predict(model, x)", default_times), ("other", other_times)):
        median = float(np.median(times))
        rows[name] = {"first_call_s": 0.1, "max_abs_diff": 0.0, "seconds": median, "images_per_s": 1 / median,
                      "gflops": 1.0, "spread": max(times) / min(times) - 1,
                      "vs_default": float(np.median(np.divide(default_times, times)))}
    return {"framework": "torch", "target": "torch", "describe": "test", "matmul_gflops": 1.0, "model": "nin",
            "nominal": "224x224", "first": {"bare_import_s": 1, "load_s": 1, "first_predict_s": 1},
            "cases": [{"batch": 1, "size": 96, "flops": 1, "rows": rows}]}


def test_bench_flags_unsteady_rounds():
    steady = bench.format_results([_result([1.0, 1.02, 0.99], [0.5, 0.51, 0.5])], "m")
    assert "x2.00" in steady and "unsteady" not in steady
    # one alternative slowed 70x in one round (the machine was busy): no ratio is printed for it
    busy = bench.format_results([_result([1.0, 1.02, 0.99], [0.5, 35.0, 0.5])], "m")
    assert "x? (unsteady" in busy and "x2.00" not in busy and "Rerun on an idle machine" in busy
    # an unsteady default makes every ratio of that case noise
    busy_default = bench.format_results([_result([1.0, 9.0, 0.99], [0.5, 0.51, 0.5])], "m")
    assert busy_default.count("x? (unsteady") == 2


def test_keras_file_names_keras_accepts(capsys, tmp_path):
    """--to keras with an output Keras would refuse to write (or read back) is refused first, naming the fix."""
    src = tmp_path / "IN"
    src.write_bytes(b"\0" * 16)
    assert cli.main(["convert", "nin", "--from", "torch", "--to", "keras", str(src), str(tmp_path / "OUT")]) == 2
    err = capsys.readouterr().err
    assert "must be named *.weights.h5" in err and "name the output OUT.weights.h5" in err, err
    assert cli.main(["inspect", str(src), "--format", "keras_archive"]) == 2
    assert "rename it to IN.keras" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IN"]


def test_list_shows_family_params_gflops_and_input(capsys):
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["Model", "Family", "Params", "GFLOPs", "Input", "Classes", "Pretrained"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert sorted(rows) == zoo.list_models()
    for name, row in rows.items():  # every registered model, its numbers from its spec
        spec = zoo.get_spec(name)
        h, w = spec.input_size
        tags = [key.split(".", 1)[1] for key in zoo.list_pretrained(name)]
        assert row[1:] == [spec.family, f"{spec.num_params:,}", f"{spec.flops() / 1e9:.3g}",
                           f"{spec.in_channels}x{h}x{w}", str(spec.num_classes), ", ".join(tags) or "-"], row
    assert rows["nin"][1:] == ["nin", "1,992,166", "1.52", "1x224x224", "10", "fashion_mnist"]
    assert lines[-1].startswith("GFLOPs of one image at its nominal input")


def test_list_takes_a_pattern(capsys):
    assert cli.main(["list", "nin_c*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:-1]] == zoo.list_models("nin_c*") == ["nin_cifar10"]
    assert cli.main(["list", "no_such_*"]) == 2
    assert capsys.readouterr().err.strip() == "zoo: error: no model matches 'no_such_*'; `zoo list` shows them all"
