"""`zoo train`, then `zoo evaluate` and `zoo predict` on the run's weights, in every framework, on a tiny
subset; and what Ctrl-C leaves behind."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from zoo import data, training

pytestmark = pytest.mark.trains

if not (data.DEFAULT_DIR / data.FILES[("train", "images")][0]).exists():
    pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
                allow_module_level=True)

TRAIN_ARGS = ["--epochs", "2", "--batch-size", "32", "--lr", "2e-3", "--seed", "3", "--limit", "256"]


def test_train_evaluate_predict(framework, tmp_path, capsys):
    from PIL import Image

    from zoo.cli import main

    out = tmp_path / "run"
    assert main(["train", "lenet_relu", "--framework", framework, "--out", str(out), *TRAIN_ARGS]) == 0
    said = capsys.readouterr().out
    weights = out / "weights.safetensors"
    assert re.search(r"test accuracy 0\.\d{4}; weights in ", said) and weights.is_file(), said
    meta, _ = training.read_checkpoint(out)
    assert meta["run"]["framework"] == framework and meta["epoch"] == 2
    assert training.Recipe.from_dict(meta["run"]["recipe"]).input_size == 28  # lenet's own size: no shipped recipe
    assert main(["evaluate", "lenet_relu", "--weights", str(weights), "--framework", framework, "--limit", "200"]) == 0
    acc = float(re.search(r"test accuracy (0\.\d+)", capsys.readouterr().out).group(1))
    assert acc > 0.3, acc  # 16 steps of LeNet (ReLU) from scratch: well above chance (0.1)
    images, labels = data.load_fashion_mnist("test")
    Image.fromarray(images[0]).save(tmp_path / "x.png")
    assert main(["predict", "lenet_relu", str(tmp_path / "x.png"), "--weights", str(weights), "-f", framework]) == 0
    assert f"{tmp_path / 'x.png'}: " in capsys.readouterr().out


def test_evaluate_refuses_files_without_a_training_entry(tmp_path, capsys):
    from zoo.cli import main

    (tmp_path / "w.safetensors").write_bytes(b"not a file")
    assert main(["evaluate", "lenet_relu", "--weights", str(tmp_path / "w.safetensors"), "--limit", "10"]) == 2
    assert "holds no training entry" in capsys.readouterr().err
    assert main(["evaluate", "lenet_relu", "--weights", str(tmp_path / "none.pt"), "--limit", "10"]) == 2
    assert "none.pt' exists here, and it is not a pretrained tag of lenet_relu" in capsys.readouterr().err
    (tmp_path / "w.pt").write_bytes(b"weights")
    assert main(["evaluate", "lenet_relu", "--weights", str(tmp_path / "w.pt"), "--limit", "10"]) == 2
    assert "is not a .safetensors file" in capsys.readouterr().err


def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path, monkeypatch, capsys):
    """Ctrl-C after epoch 1's checkpoint: the message names it and the exact command, which then finishes the run."""
    from zoo.cli import main

    save = training.save_checkpoint

    def save_then_interrupt(*args):
        save(*args)
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(training, "save_checkpoint", save_then_interrupt)
    assert main(["train", "lenet_relu", "--out", str(out), *TRAIN_ARGS]) == 130
    err = capsys.readouterr().err
    # the tqdm bar, not a terminal here: its last state, in images with loss and images/s
    bar = [line for line in err.split("\r") if line.startswith("epoch 1/2: 100%")]
    assert bar and "256/256" in bar[-1] and re.search(r"img/s, loss \d\.\d{3}\]", bar[-1]), err
    assert "epoch 1/2: test accuracy" in err
    err = err.splitlines()[-1]
    command = shlex.join(["zoo", "train", "lenet_relu", "--out", str(out), "--resume"])  # the folder has the rest
    assert err == f"zoo: interrupted; kept the checkpoint of epoch 1 (the last complete one) in {out}. " \
                  f"Resume with: {command}"
    monkeypatch.setattr(training, "save_checkpoint", save)
    assert main(shlex.split(command)[1:]) == 0
    assert training.checkpoint_epoch(out) == 2
    assert "resumed" in capsys.readouterr().err
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_ctrl_c_before_a_checkpoint_and_in_other_commands(tmp_path, monkeypatch, capsys):
    import zoo.cli

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.Loop, "run", interrupt)
    out = tmp_path / "run"
    assert zoo.cli.main(["train", "lenet_relu", "--out", str(out), *TRAIN_ARGS]) == 130
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f"zoo: interrupted; no epoch was complete, so {out} holds no checkpoint yet. Resume with: zoo train lenet_relu")
    monkeypatch.setattr(zoo.cli.zoo, "list_models", interrupt)
    assert zoo.cli.main(["list"]) == 130
    assert capsys.readouterr().err == "zoo: interrupted; no output was written\n"


def test_bad_options_are_refused_before_any_work(tmp_path, capsys):
    from zoo.cli import main

    out = tmp_path / "run"
    assert main(["train", "lenet_relu", "--out", str(out), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
    assert main(["train", "lenet_relu", "--out", str(out), "--devices", "2", "--framework", "torch"]) == 2
    assert "torchrun --nproc-per-node 2 -m zoo train" in capsys.readouterr().err
    assert main(["train", "lenet_relu", "--out", str(out), "--batch-size", "100", "--limit", "50"]) == 2
    assert "make no batch of 100" in capsys.readouterr().err
    assert not out.exists()
