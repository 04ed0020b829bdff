"""What a newcomer types first, as a timm user would type it: pretrained=True, the pretrained column of
`zoo list`, typos in model names and weight tags, and quiet framework imports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import zoo
from zoo import cli, data

ROOT = Path(__file__).resolve().parent.parent
needs_data = pytest.mark.skipif(not (data.DEFAULT_DIR / data.FILES[("train", "images")][0]).exists(),
                                reason="Debian's dataset-fashion-mnist is not installed")


def test_list_models_pretrained():
    shipped = sorted({key.split(".")[0] for key in zoo.list_pretrained()})
    assert shipped and zoo.list_models(pretrained=True) == shipped
    assert zoo.list_models("nin*", pretrained=True) == ["nin"]
    assert "nin_cifar10" in zoo.list_models("nin*")


def test_zoo_list_has_a_pretrained_column(capsys):
    assert cli.main(["list", "nin*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "Pretrained"
    row = {line.split()[0]: line.split()[-1] for line in lines[1:4]}
    assert row == {"nin": "fashion_mnist", "nin_cifar10": "-", "nin_imagenet": "-"}


@pytest.mark.torch
def test_load_pretrained_true_is_the_shipped_weights():
    pytest.importorskip("torch")
    a = zoo.get_weights(zoo.load("nin", "torch", pretrained=True))
    b = zoo.get_weights(zoo.load("nin", "torch", weights="fashion_mnist"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(zoo.PretrainedError, match=r"resnet18 ships no pretrained weights; models that do: "
                                                  r"nin\.fashion_mnist"):
        zoo.load("resnet18", "torch", pretrained=True)
    with pytest.raises(TypeError, match="either pretrained=True .* or weights="):
        zoo.load("nin", "torch", pretrained=True, weights="fashion_mnist")
    with pytest.raises(TypeError, match="pretrained weights fix the spec"):
        zoo.load("nin", "torch", pretrained=True, num_classes=5)


@pytest.mark.torch
@pytest.mark.parametrize("text, said", [
    ("fashion-mnist", "no file or folder 'fashion-mnist' exists here, and it is not a pretrained tag of nin "
                      "(nin's pretrained tags: fashion_mnist). Did you mean 'fashion_mnist'?"),
    ("fashionmnist", "no pretrained weights 'nin.fashionmnist'; shipped: nin.fashion_mnist, "
                     "resnet18_d2l.fashion_mnist. Did you mean 'nin.fashion_mnist'?"),
    ("missing.pt", "no file or folder 'missing.pt' exists here"),
])
def test_weights_typo_names_the_tag(text, said, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(zoo.PretrainedError) as e:
        zoo.load("nin", "torch", weights=text)
    assert said in str(e.value)


def test_evaluate_weights_typo_names_the_tag(tmp_path, monkeypatch):
    from zoo import pretrained

    monkeypatch.chdir(tmp_path)
    with pytest.raises(zoo.PretrainedError, match="Did you mean 'fashion_mnist'"):
        pretrained.cfg_for("nin", "fashion-mnist")


@pytest.mark.parametrize("argv", [
    ["convert", "nim", "model.pt", "out.onnx"],
    ["summary", "nim"],
    ["inspect", "model.pt", "--model", "nim"],
    ["diff", "nim", "torch", "keras"],
    ["train", "nim", "--out", "run"],
    ["evaluate", "nim", "--weights", "fashion_mnist"],
    ["predict", "nim", "x.png", "--weights", "fashion_mnist"],
])
def test_model_typo_is_said_first(argv, tmp_path, monkeypatch, capsys):
    """Before any file is read or framework imported: `convert nim` once said "the file holds a nin model,
    not a nim" after 7 s, when the file existed, and complained about the file first when it did not."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.startswith("zoo: error: unknown model 'nim'. Did you mean 'nin'?")


def test_convert_says_a_missing_input_before_an_existing_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("out.weights.h5").write_bytes(b"mine")
    assert cli.main(["convert", "nin", "missing.pt", "out.weights.h5"]) == 2
    assert capsys.readouterr().err.strip() == "zoo: error: missing.pt does not exist: nothing to convert"
    assert Path("out.weights.h5").read_bytes() == b"mine"


@pytest.mark.torch
def test_tracing_a_torch_model_warns_nothing():
    """torch.jit.trace and torch.onnx.export (how users export) recorded the input check's comparisons as
    TracerWarnings; a wrong input still fails when the model is run."""
    torch = pytest.importorskip("torch")
    model = zoo.load("lenet", "torch")
    x = torch.zeros(1, 1, 28, 28)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, x)
    tracer = [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert not tracer, tracer
    assert torch.allclose(traced(x), model(x))
    with pytest.raises(ValueError, match="expects 1 input channel"):
        model(torch.zeros(1, 3, 28, 28))


@pytest.mark.keras
def test_keras_import_prints_nothing(tmp_path):
    """TensorFlow's C++ logging (absl's preamble, oneDNN and CPU-feature lines) is held back at import;
    ZOO_VERBOSE=1 shows it."""
    pytest.importorskip("keras")
    code = "import zoo; zoo.load('lenet', 'keras'); print('built')"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ZOO_VERBOSE", None)
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stdout == "built\n"
    assert quiet.stderr == "", quiet.stderr
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                              env={**env, "ZOO_VERBOSE": "1"})
        assert loud.returncode == 0 and "oneDNN" in loud.stderr


def test_summary_refuses_a_small_input_before_importing_the_framework(tmp_path):
    code = ("import sys, zoo\n"
            "try:\n    zoo.summary('nin', framework='keras', input_size=40)\n"
            "except ValueError as e:\n    print(e)\n"
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    said, imported = r.stdout.strip().splitlines()
    assert "67" in said and imported == "[]", r.stdout


@pytest.mark.torch
@pytest.mark.onnx
def test_bench_prints_each_framework_as_it_is_measured(tmp_path):
    """`zoo bench` with its defaults printed nothing for 540 s on a busy machine: it says how long a run takes,
    then each framework's table as soon as that framework is done."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    cmd = [sys.executable, "-m", "zoo.cli", "bench", "lenet", "--frameworks", "onnx", "torch", "--cases", "2x28",
           "--rounds", "1", "--min-time", "0.01", "--only", "zoo.predict(model, x)"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    err = r.stderr
    assert err.startswith("zoo bench: 2 framework(s) x 1 case(s) x 1 rounds of at least 0.01 s: about")
    assert err.index("onnx: measured in") < err.index("\ntorch ...") < err.index("torch: measured in")
    assert "Against onnxruntime" in r.stdout


@pytest.mark.keras
@needs_data
def test_keras_training_prints_only_the_zoo(tmp_path):
    """TensorFlow's "Memory patch applied" INFO line split the progress bar, and its import lines came first."""
    pytest.importorskip("keras")
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.skip("TensorFlow's lines: the tensorflow backend")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ZOO_VERBOSE", None)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    r = subprocess.run([sys.executable, "-m", "zoo.cli", "train", "lenet", "--framework", "keras", "--out", "run",
                        "--limit", "128", "--epochs", "1", "--batch-size", "64"],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    foreign = [line for line in r.stderr.replace("\r", "\n").splitlines()
               if line.strip() and not line.startswith("epoch ")]
    assert not foreign, foreign


@pytest.mark.keras
@needs_data
def test_ctrl_c_in_keras_training_exits_cleanly(tmp_path):
    """Ctrl-C printed TensorFlow's GeneratorDataset FAILED_PRECONDITION line as the interpreter shut down
    (and the shutdown took seconds); the zoo's own message is the last line."""
    import signal

    pytest.importorskip("keras")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ZOO_VERBOSE", None)
    p = subprocess.Popen([sys.executable, "-m", "zoo.cli", "train", "lenet", "--framework", "keras", "--out", "run",
                          "--limit", "20000", "--epochs", "20", "--batch-size", "32"],
                         stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    seen = ""
    while "epoch 2/20" not in seen:  # TensorFlow's line came once its data iterator had run an epoch
        ch = p.stderr.read(1)
        assert ch, f"training ended before it could be interrupted: {seen[-2000:]}"
        seen += ch
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    rest = p.communicate(timeout=120)[1]
    assert p.returncode == 130, rest[-2000:]
    last = rest.replace("\r", "\n").strip().splitlines()[-1]
    assert "zoo: interrupted;" in last and "Resume with: zoo train lenet" in last, rest[-2000:]
    assert "FAILED_PRECONDITION" not in rest


def test_a_ctrl_c_that_keras_swallows_is_raised_again_at_the_next_batch():
    """In CI, once, a Ctrl-C during Keras training on TensorFlow was lost and training went on (the test above
    timed out): the handler the trainer sets during model.fit remembers it, and the next batch's end raises it."""
    pytest.importorskip("keras")
    from zoo.frameworks.keras_train import EpochEnd, Interrupt

    interrupt = Interrupt()
    with pytest.raises(KeyboardInterrupt):
        interrupt(2, None)  # SIGINT: raised at once, wherever the main thread is (here: caught, as TF did)
    with pytest.raises(KeyboardInterrupt, match="interrupted"):
        EpochEnd(None, None, False, interrupt).on_train_batch_end(0, {"loss": 1.0})


@pytest.mark.torch
@pytest.mark.parametrize("dtype, dst", [("float16", "b.safetensors"), ("bfloat16", "b.pt")])
def test_a_narrowing_cast_is_verified_and_its_rounding_reported(dtype, dst, tmp_path):
    """`--dtype float16` failed verification ("outputs differ by 2.3e-04") without saying that the rounding
    asked for was the cause: the destination is verified against the source with the same rounded weights,
    and what the rounding changes is measured and said."""
    pytest.importorskip("torch")
    from zoo import conversion
    from zoo.io import io_safetensors

    spec = zoo.get_spec("lenet")
    io_safetensors.write(zoo.init_weights(spec), spec, tmp_path / "a.safetensors")
    report = conversion.convert(tmp_path / "a.safetensors", tmp_path / dst, dtype=dtype)
    assert report.max_abs <= 1e-5
    rounded, err, rel = report.rounding
    assert rounded == dtype and 1e-5 < err < 0.1 and rel < 0.1, report.rounding
    assert f"the rounding to {dtype} asked for moves the outputs on the probe by up to {err:.3e}" in str(report)
    plain = conversion.convert(tmp_path / "a.safetensors", tmp_path / "c.safetensors")
    assert plain.rounding is None and "rounding" not in str(plain)
