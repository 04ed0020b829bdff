"""Every `zoo ...` command line in README.md's code blocks, run as a user types it.

The lines are read from the README itself, so that it cannot drift from the tool. They run
in order, in one scratch folder, with small stand-in files where a line names a file, and
with options appended only where a line would train, evaluate or time for minutes
(`EXTRA`): argparse takes the README's own options first, so a line that does not parse
as written still fails.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zoo
import zoo.data

README = Path(__file__).resolve().parent.parent / "README.md"

# Appended to a line that starts with the key: they bound the work, never change what is parsed.
EXTRA = {
    "zoo train": ["--epochs", "1", "--limit", "256"],
    "zoo evaluate": ["--limit", "1000"],
    "zoo bench": ["--rounds", "1", "--min-time", "0.01", "--only", "zoo.predict", "--cases", "1x96"],
}
# The README writes IN and OUT as placeholders for files whose suffix says nothing.
PLACEHOLDERS = {"IN": "checkpoint.bin", "OUT": "converted.weights.h5"}


def readme_commands() -> list[str]:
    """The `zoo` lines (and `torchrun ... -m zoo` lines) of the README's shell code blocks, comments removed,
    in order."""
    lines, block = [], None
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            block = None if block is not None else line[3:].strip()
            continue
        if block in ("bash", "sh", "console") and (line.startswith("zoo ") or
                                                   line.startswith("torchrun ") and " -m zoo " in line):
            lines.append(line.split(" #", 1)[0].strip())
    return lines


def readme_python() -> list[str]:
    """The README's Python code blocks; a block may use `zoo` and `np` from an earlier one."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    return ["import numpy as np\nimport zoo\n" + b for b in blocks]


COMMANDS = readme_commands()
PYTHON = readme_python()


def test_readme_has_commands():
    """The extraction itself: every documented subcommand appears, so an edit cannot empty the list."""
    assert {c.split()[1] for c in COMMANDS} >= {"summary", "evaluate", "predict", "train", "convert", "inspect",
                                                "list", "diff", "bench"}, COMMANDS
    assert len(PYTHON) >= 3 and any("zoo.load(" in b for b in PYTHON)


def _zoo() -> list[str]:
    """The `zoo` script installed beside this Python (what a user runs), else `python -m zoo`."""
    script = Path(sys.executable).with_name("zoo")
    return [str(script)] if script.exists() else [sys.executable, "-m", "zoo"]


def _fashion_mnist_or_skip():
    from zoo import data

    try:
        return data.load_fashion_mnist("test")
    except data.DatasetError as e:
        pytest.skip(f"Fashion-MNIST is not installed ({data.INSTALL_HINT}): {e}")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """A scratch folder holding the files the README's lines name (session-scoped: under pytest-xdist a
    worker may run other modules' tests in between, which would end a module-scoped folder)."""
    folder = tmp_path_factory.mktemp("readme")
    from safetensors.numpy import save_file

    # model.pt and IN: a PyTorch state_dict of nin, written through the canonical safetensors file
    # so that this fixture needs no torch; the convert lines read them as a user's checkpoint.
    spec = zoo.get_spec("nin")
    save_file(zoo.init_weights(spec, seed=1), str(folder / "seed.safetensors"))
    for name in ("model.pt", PLACEHOLDERS["IN"]):
        proc = subprocess.run([*_zoo(), "convert", "seed.safetensors", name, "--to", "torch", "--no-verify"],
                              cwd=folder, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    # resnet18.onnx: an ONNX file of resnet18, which a line converts to a Flax checkpoint
    save_file(zoo.init_weights(zoo.get_spec("resnet18"), seed=2), str(folder / "r18.safetensors"))
    proc = subprocess.run([*_zoo(), "convert", "r18.safetensors", "resnet18.onnx", "--no-verify"],
                          cwd=folder, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return folder


def _images(folder: Path) -> dict[str, int]:
    """shirt.png and boot.jpg: a Fashion-MNIST test shirt and ankle boot as photos would come, dark on
    light and upscaled; returns each file's true label."""
    from PIL import Image

    images, labels = _fashion_mnist_or_skip()
    truth = {}
    for name, label in (("shirt.png", 6), ("boot.jpg", 9)):
        i = int(np.flatnonzero(labels == label)[0])
        Image.fromarray(255 - images[i]).resize((112, 112), Image.BILINEAR).save(folder / name)
        truth[name] = label
    return truth


def test_readme_commands_in_order(workdir: Path):
    """Every `zoo` line of the README, in its order, in one folder: a line may read what an earlier one
    wrote, so they are one test (pytest-xdist would spread parametrized cases over its workers)."""
    for line in COMMANDS:
        _run_command(line, workdir)


def _run_command(line: str, workdir: Path):
    argv = shlex.split(line)
    launcher = _zoo()
    if argv[0] == "torchrun":  # the same program as python -m torch.distributed.run, in this environment
        m = argv.index("-m")
        launcher, argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:m + 2]], argv[m + 1:]
    extra = next((v for k, v in EXTRA.items() if shlex.join(["zoo", *argv[1:]]).startswith(k)), [])
    argv = [PLACEHOLDERS.get(a, a) for a in argv[1:]] + extra
    if argv[0] in ("evaluate", "train"):
        _fashion_mnist_or_skip()
    truth = _images(workdir) if argv[0] == "predict" else {}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([*launcher, *argv], cwd=workdir, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"`{line}` failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    out = proc.stdout
    if argv[0] == "summary":
        spec = zoo.get_spec(argv[1])
        assert f"Total params: {spec.num_params:,}" in out and f"(1, {spec.num_classes})" in out  # down to the logits
    elif argv[0] == "list":
        pattern = argv[1] if len(argv) > 1 else "*"
        assert all(re.search(rf"^{m}\b", out, re.M) for m in zoo.list_models(pattern)), out
        assert "11,689,512" in out  # resnet18's parameters, as torchvision counts them
    elif argv[0] == "diff":
        assert "first divergence" not in out and "no divergence: all" in out, out
    elif argv[0] == "evaluate":
        acc = float(re.search(r"test accuracy (0\.\d+)", out).group(1))
        shipped = not argv[argv.index("--weights") + 1].endswith(".safetensors")
        assert acc > 0.85 or not shipped, out  # the shipped weights: 0.9279 and up on all 10,000
    elif argv[0] == "predict":
        for name, label in truth.items():
            first = re.search(rf"{re.escape(name)}: ([^,]+?) \d\.\d{{3}}", out)
            assert first and first.group(1) == zoo.data.LABELS[label], out
    elif argv[0] == "convert":
        assert "verified:" in out and (workdir / argv[-1].rstrip("/")).exists(), out
    elif argv[0] == "inspect":
        assert "fits: nin" in out and ("onnx format" in out) == argv[1].endswith(".onnx"), out
    elif argv[0] == "train":
        run = workdir / argv[argv.index("--out") + 1]
        assert "test accuracy" in out and (run / "weights.safetensors").exists(), out
    elif argv[0] == "bench":
        assert "zoo.predict(model, x) [default]" in out, out
    leftovers = [p.name for p in workdir.iterdir() if ".partial-" in p.name]
    assert not leftovers, leftovers



@pytest.mark.parametrize("code", PYTHON, ids=[f"python-block-{i}" for i in range(len(PYTHON))])
def test_readme_python(code: str, workdir: Path):
    """Each Python example runs as written, after the command lines (block 3 reads their model.pt)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, f"README block failed:\n{code}\n{proc.stderr[-3000:]}"
    if "zoo.summary(" in code:  # printed once, as a script shows it
        assert proc.stdout.count("Total params:") == 1, proc.stdout
