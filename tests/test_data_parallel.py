"""Data parallel on each framework's own engine: a step on 2 devices against the 1-device step.

torch: 2 processes under torchrun (DDP, gloo). flax: a 2-device `jax.sharding` mesh. keras:
`keras.distribution.DataParallel` on 2 JAX devices. On a CPU, JAX gets its 2 devices from
XLA_FLAGS=--xla_force_host_platform_device_count=2. Each runs in its own process (tests/dp_step.py).

BatchNorm: JAX computes the batch statistics over the global, sharded batch (synchronised), so the
flax and keras steps equal the 1-device step. DDP normalises each process's share with its own
statistics and keeps rank 0's running statistics; the test holds it to exactly that, computed in one
process from the two halves of the batch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zoo
from zoo import data, training

pytestmark = pytest.mark.trains

if not (data.DEFAULT_DIR / data.FILES[("train", "images")][0]).exists():
    pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
                allow_module_level=True)

HERE = Path(__file__).parent
ROOT = HERE.parent
CASES = {"nin": {"model": "nin", "overrides": {"widths": [16, 32, 32], "input_size": 67}},
         "resnet18_d2l": {"model": "resnet18_d2l", "overrides": {"width": 8, "layers": [1, 1, 1, 1], "input_size": 32}}}
TOL = 1e-5


def _case(tmp_path, model: str) -> Path:
    size = CASES[model]["overrides"]["input_size"]
    case = {**CASES[model], "images": 64,
            "recipe": {"input_size": size, "epochs": 1, "batch_size": 32, "optimizer": "sgd", "peak_lr": 0.05,
                       "weight_decay": 5e-4, "seed": 2}}
    path = tmp_path / f"{model}.json"
    path.write_text(json.dumps(case))
    return path


def _run(args: list[str], env_extra: dict | None = None) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           **(env_extra or {})}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _step(framework: str, case: Path, out: Path, devices: int) -> dict[str, np.ndarray]:
    if framework == "torch" and devices > 1:
        _run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
              str(HERE / "dp_step.py"), framework, str(case), str(out)], {"OMP_NUM_THREADS": "1"})
    else:
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={max(devices, 2)}"}
        if framework == "keras":
            env["KERAS_BACKEND"] = "jax"
        _run([sys.executable, str(HERE / "dp_step.py"), framework, str(case), str(out), str(devices)], env)
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def _worst(a, b) -> tuple[float, str]:
    return max((float(np.abs(a[k] - b[k]).max() / max(1.0, np.abs(b[k]).max())), k) for k in b)


def _ghost_batch_step(case: Path) -> dict[str, np.ndarray]:
    """DDP's step, by its documented semantics, in one process: the mean of the two halves' losses, each
    half normalised by its own BatchNorm statistics, and the running statistics that half 0 left."""
    import torch
    import torch.nn.functional as F

    from zoo.frameworks import torch_train

    c = json.loads(case.read_text())
    spec, recipe = zoo.get_spec(c["model"], **c["overrides"]), training.Recipe(**c["recipe"])
    images, labels = data.load_fashion_mnist("train")
    subset = images[:c["images"]], labels[:c["images"]]
    t = torch_train.Trainer(spec, recipe, subset, subset, dropout=False)
    halves = [next(training.epoch_batches(*subset, recipe, 0, rank, 2)) for rank in (0, 1)]
    losses, stats = [], None
    for i, (x, y) in enumerate(halves):
        logits = t.model(torch.from_numpy(x))
        losses.append(F.cross_entropy(logits, torch.from_numpy(y).long(), label_smoothing=recipe.label_smoothing))
        if i == 0:
            stats = {k: v.clone() for k, v in t.model.state_dict().items() if "running" in k}
    t.optimizer.zero_grad()
    (sum(losses) / 2).backward()
    torch.nn.utils.clip_grad_norm_(t.model.parameters(), recipe.clip_norm)
    t.optimizer.step()
    t.model.load_state_dict(stats, strict=False)
    return t.weights()


@pytest.mark.parametrize("model", list(CASES))
def test_two_devices_take_the_one_device_step(framework, model, tmp_path, request):
    if framework == "keras" and importlib.util.find_spec("jax") is None:
        pytest.skip("keras: DataParallel needs the JAX backend, and jax is not installed")
    case = _case(tmp_path, model)
    two = _step(framework, case, tmp_path / "two.npz", 2)
    if framework == "torch" and CASES[model]["model"] == "resnet18_d2l":
        one, what = _ghost_batch_step(case), "each half with its own BatchNorm statistics"
    else:
        one, what = _step(framework, case, tmp_path / "one.npz", 1), "one device"
    err, where = _worst(two, one)
    fw = "keras[jax]" if framework == "keras" else framework
    w = request.config._zoo_errors[(f"data parallel {model}, 2 devices", fw)]
    w[0], w[1] = max(w[0], err), max(w[1], err)
    assert err <= TOL, f"{framework} on 2 devices: {where} is {err:.2e} (normalised) from {what}"
    if framework == "torch" and model == "resnet18_d2l":  # and not the whole batch's statistics
        whole = _step(framework, case, tmp_path / "one.npz", 1)
        assert _worst(two, whole)[0] > 1e-3
