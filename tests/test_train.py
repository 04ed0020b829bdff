"""The Flax trainer, a few steps on a small slice: the loss falls, runs are seeded, resume continues exactly."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import zoo
from zoo import data

pytestmark = pytest.mark.flax
pytest.importorskip("optax", reason="flax: optax not installed (pip install '.[flax]')")
pytest.importorskip("flax", reason="flax: flax not installed (pip install '.[flax]')")

if not (data.DEFAULT_DIR / data.FILES[("train", "images")][0]).exists():
    pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
                allow_module_level=True)

from zoo.frameworks import flax_train  # noqa: E402

SPEC = zoo.get_spec("nin", widths=(16, 32, 32), input_size=67)
RECIPE = flax_train.Recipe(input_size=67, epochs=2, batch_size=32, peak_lr=2e-3, seed=3)


def _train(out, recipe=RECIPE, resume=False, limit=512):
    return flax_train.train(SPEC, recipe, out, resume=resume, limit=limit, progress=False)


def _weights(trainer):
    return zoo.get_weights(trainer.model)


def test_loss_falls_and_files_are_written(tmp_path):
    images, labels = data.load_fashion_mnist("train")
    x, y = images[:1024], labels[:1024]
    recipe = flax_train.Recipe(**{**RECIPE.__dict__, "epochs": 3})
    loss0, _ = flax_train.Trainer(SPEC, recipe, (x, y), (x, y)).evaluate(x, y)
    trainer = _train(tmp_path / "run", recipe, limit=1024)  # 96 steps
    loss1, _ = trainer.evaluate(x, y)
    # NiN without normalisation leaves its plateau slowly: 96 steps take 2.41 to about 2.19
    assert loss1 < loss0 - 0.1, (loss0, loss1)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert {"train_loss", "test_acc", "lr", "images_per_s"} <= set(lines[0])
    assert (tmp_path / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_exactly(tmp_path):
    straight = _weights(_train(tmp_path / "a"))
    flax_train.train(SPEC, RECIPE, tmp_path / "b", limit=512, progress=False, stop_after=1)  # as if killed
    assert json.loads((tmp_path / "b" / "checkpoint.json").read_text())["epoch"] == 1
    resumed = _train(tmp_path / "b", resume=True)
    assert resumed.epoch == 2 and len(resumed.history) == 2
    for k, v in straight.items():
        np.testing.assert_allclose(_weights(resumed)[k], v, rtol=0, atol=1e-6, err_msg=k)


def test_refuses_to_mix_runs(tmp_path):
    _train(tmp_path / "run", flax_train.Recipe(**{**RECIPE.__dict__, "epochs": 1}))
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        _train(tmp_path / "run")
    with pytest.raises(ValueError, match="was trained with another recipe or spec"):
        _train(tmp_path / "run", flax_train.Recipe(**{**RECIPE.__dict__, "peak_lr": 1e-4}), resume=True)


TRAIN_ARGS = ["--set", "widths=(16, 32, 32)", "--input-size", "67", "--epochs", "2", "--batch-size", "32",
              "--lr", "2e-3", "--seed", "3", "--limit", "512"]


def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path, monkeypatch, capsys):
    """Ctrl-C after epoch 1's checkpoint: the message names it and the exact command, which then finishes the run."""
    import shlex

    from zoo.cli import main

    save = flax_train.Trainer.save

    def save_then_interrupt(self, out):
        save(self, out)
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(flax_train.Trainer, "save", save_then_interrupt)
    assert main(["train", "nin", "--out", str(out), *TRAIN_ARGS]) == 130
    err = capsys.readouterr().err
    # the tqdm bar, not a terminal here: its last state, in images with loss, accuracy and images/s
    bar = [line for line in err.split("\r") if line.startswith("epoch 1/2: 100%")]
    assert bar and "512/512" in bar[-1] and re.search(r"img/s, loss \d\.\d{3}, acc 0\.\d{3}\]", bar[-1]), err
    assert "epoch 1/2: test accuracy" in err
    err = err.splitlines()[-1]
    command = shlex.join(["zoo", "train", "nin", "--out", str(out), *TRAIN_ARGS, "--resume"])
    assert err == f"zoo: interrupted; kept the checkpoint of epoch 1 (the last complete one) in {out}. " \
                  f"Resume with: {command}"
    monkeypatch.setattr(flax_train.Trainer, "save", save)
    assert main(shlex.split(command)[1:]) == 0
    assert json.loads((out / "checkpoint.json").read_text())["epoch"] == 2
    assert "resumed" in capsys.readouterr().err


def test_ctrl_c_before_a_checkpoint_and_in_other_commands(tmp_path, monkeypatch, capsys):
    import zoo.cli

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(flax_train.Trainer, "run", interrupt)
    out = tmp_path / "run"
    assert zoo.cli.main(["train", "nin", "--out", str(out), *TRAIN_ARGS]) == 130
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f"zoo: interrupted; no epoch was complete, so {out} holds no checkpoint yet. Resume with: zoo train nin")
    monkeypatch.setattr(zoo.cli.zoo, "list_models", interrupt)
    assert zoo.cli.main(["list"]) == 130
    assert capsys.readouterr().err == "zoo: interrupted; no output was written\n"


def test_batchnorm_spec_trains_and_resumes_with_its_statistics(tmp_path):
    """A spec with BatchNorm, dropout and a linear head: the steps move the running statistics (which the
    optimizer leaves alone), and a resumed run ends where a straight one does, statistics included."""
    from flax import nnx

    from zoo.spec import Act, AdaptivePool, BatchNorm, Conv, Dropout, Flatten, Linear, ModelSpec, Pool, Seq

    spec = ModelSpec("bn_net", "test", 1, 10, Seq(
        ("conv", Conv(1, 8, 3, 1, 1, bias=False)), ("bn", BatchNorm(8, momentum=0.2)), ("act", Act()),
        ("pool", Pool("max", 2, 2)), ("gap", AdaptivePool(2)), ("flatten", Flatten()), ("drop", Dropout(0.3)),
        ("fc", Linear(32, 10))), input_size=28)
    recipe = flax_train.Recipe(input_size=28, epochs=2, batch_size=32, peak_lr=2e-3, seed=1)
    straight = flax_train.train(spec, recipe, tmp_path / "a", limit=256, progress=False)
    assert all(np.isfinite(h["train_loss"]) for h in straight.history)
    weights, init = _weights(straight), zoo.init_weights(spec, recipe.seed)
    stats = sorted(spec.buffer_names())
    assert stats and all(not np.allclose(weights[k], init[k]) for k in stats)
    optimized = {p for p, _ in nnx.to_flat_state(nnx.state(straight.optimizer, nnx.optimizer.OptState))}
    assert optimized and not any({"mean", "var"} & set(map(str, p)) for p in optimized), optimized
    flax_train.train(spec, recipe, tmp_path / "b", limit=256, progress=False, stop_after=1)
    resumed = _weights(flax_train.train(spec, recipe, tmp_path / "b", resume=True, limit=256, progress=False))
    for k, v in weights.items():
        np.testing.assert_allclose(resumed[k], v, rtol=0, atol=1e-6, err_msg=k)
