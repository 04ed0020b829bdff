"""Every `zoo` command line and Python block of README.md and of the docs pages, run as a user types it.

The lines are read from the pages themselves, so that they cannot drift from the tool. A page's lines
run in order, in one scratch folder of its own, with small stand-in files where a line names a file, and
with options appended only where a line would train, evaluate or time for minutes (`EXTRA`): argparse
takes the page's own options first, so a line that does not parse as written still fails. A line whose
comment starts with `slow:` (a full benchmark, an hour of training) is not run: it is listed as skipped,
with the comment's reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zoo
import zoo.data

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The pages whose command lines and Python blocks a user copies: the README first, then docs/, each on its own.
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SLOW = "slow:"

# Appended to a line that starts with the key: they bound the work, never change what is parsed.
EXTRA = {
    "zoo train": ["--epochs", "1", "--limit", "256"],
    "zoo evaluate": ["--limit", "1000"],
    "zoo bench": ["--rounds", "1", "--min-time", "0.01", "--only", "zoo.predict", "--cases", "1x96",
                  "--no-first-prediction"],
}
HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"  # of the stand-in hub cache (seed_folder)
# The pages write IN and OUT as placeholders for files whose suffix says nothing.
PLACEHOLDERS = {"IN": "checkpoint.bin", "OUT": "converted.weights.h5"}


def page_lines(page: Path) -> list[tuple[str, str]]:
    """(line, comment) of the `zoo` lines (and `torchrun ... -m zoo` lines) of a page's shell code blocks,
    in order; the comment is what follows ` #`."""
    lines, block = [], None
    for line in page.read_text().splitlines():
        line = line.strip()  # a block inside a list item is indented
        if line.startswith("```"):
            block = None if block is not None else line[3:].strip()
            continue
        if block in ("bash", "sh", "console") and (line.startswith("zoo ") or
                                                   line.startswith("torchrun ") and " -m zoo " in line):
            command, _, comment = line.partition(" #")
            lines.append((command.strip(), comment.strip()))
    return lines


def page_commands(page: Path) -> list[str]:
    """The lines of a page that run (not marked slow)."""
    return [line for line, comment in page_lines(page) if not comment.startswith(SLOW)]


def readme_commands() -> list[str]:
    return page_commands(README)


def page_python(page: Path) -> list[str]:
    """A page's Python code blocks; a block may use `zoo` and `np` from an earlier one."""
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    return ["import numpy as np\nimport zoo\n" + b for b in blocks]


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


COMMANDS = readme_commands()
PYTHON = [(_name(page), i, code) for page in PAGES for i, code in enumerate(page_python(page))]
SLOW_LINES = [(_name(page), line, comment) for page in PAGES for line, comment in page_lines(page)
              if comment.startswith(SLOW)]


def test_readme_has_commands():
    """The extraction itself: every documented subcommand appears in the README, so an edit cannot empty
    the list, and the docs pages' lines and blocks are found too."""
    assert {c.split()[1] for c in COMMANDS} >= {"summary", "evaluate", "predict", "train", "convert", "inspect",
                                                "list", "diff", "bench"}, COMMANDS
    assert any("zoo.load(" in code for page, _, code in PYTHON if page == "README.md")
    docs = [line for page in PAGES[1:] for line in page_commands(page)]
    assert len(docs) >= 20 and sum(page != "README.md" for page, _, _ in PYTHON) >= 3, docs


def test_slow_lines_are_marked(tmp_path: Path):
    """The marker's own extraction: a `# slow: ...` comment takes the line out of the run, and only those."""
    page = tmp_path / "page.md"
    page.write_text("```bash\nzoo list            # every model\nzoo bench --rounds 15   # slow: a full bench\n```\n"
                    "- an item:\n\n  ```bash\n  zoo inspect model.pt   # indented in a list item\n  ```\n")
    assert page_lines(page) == [("zoo list", "every model"), ("zoo bench --rounds 15", "slow: a full bench"),
                                ("zoo inspect model.pt", "indented in a list item")]
    assert page_commands(page) == ["zoo list", "zoo inspect model.pt"]


@pytest.mark.parametrize("page, line, comment", SLOW_LINES or [pytest.param("", "", "", marks=pytest.mark.skip(
    reason="no line is marked slow"))], ids=[f"{p}: {line}" for p, line, _ in SLOW_LINES] or ["none"])
def test_slow_line(page: str, line: str, comment: str):
    """A line marked slow is not run here; the skip says which and why, so that it is not forgotten."""
    assert shlex.split(line), line  # it still parses as a shell line
    pytest.skip(f"{page}: `{line}` not run ({comment})")


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
def seed_folder(tmp_path_factory) -> Path:
    """The files the pages' lines name, made once (session-scoped: under pytest-xdist a worker may run other
    modules' tests in between, which would end a module-scoped folder)."""
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
    # hub/: a Hugging Face hub cache holding timm/resnet18.a1_in1k (a folder the zoo writes as timm's), which
    # the lines read with HF_HUB_CACHE pointing at it: nothing is downloaded
    snapshot = folder / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / HUB_REVISION
    snapshot.parent.mkdir(parents=True)
    proc = subprocess.run([*_zoo(), "convert", "r18.safetensors", str(snapshot), "--to", "hf", "--no-verify"],
                          cwd=folder, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(HUB_REVISION)
    for stand_in in ("seed.safetensors", "r18.safetensors"):
        (folder / stand_in).unlink()
    return folder


@pytest.fixture
def workdir(seed_folder: Path, tmp_path: Path) -> Path:
    """A page's own scratch folder, holding the stand-in files: pages may write the same output names. Hard
    links, not copies: the zoo never writes into an existing file (it renames a finished one over it)."""
    folder = tmp_path / "work"
    shutil.copytree(seed_folder, folder, copy_function=os.link)
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


@pytest.mark.parametrize("page", [page for page in PAGES if page_commands(page)], ids=_name)
def test_commands_in_order(page: Path, workdir: Path):
    """Every `zoo` line of a page, in its order, in one folder: a line may read what an earlier one wrote,
    so a page is one test (pytest-xdist would spread parametrized lines over its workers)."""
    for line in page_commands(page):
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
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "HF_HUB_CACHE": str(workdir / "hub")}
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
        assert "verified:" in out and (workdir / _positionals(argv)[-1].rstrip("/")).exists(), out
    elif argv[0] == "inspect":
        fits = "resnet18" if "resnet18" in argv[1] else "nin"  # the stand-ins: model.*, hf-hub:timm/resnet18...
        assert f"fits: {fits}" in out and ("onnx format" in out) == argv[1].endswith(".onnx"), out
    elif argv[0] == "train":
        run = workdir / argv[argv.index("--out") + 1]
        assert "test accuracy" in out and (run / "weights.safetensors").exists(), out
    elif argv[0] == "bench":
        assert "zoo.predict(model, x) [default]" in out, out
    leftovers = [p.name for p in workdir.iterdir() if ".partial-" in p.name]
    assert not leftovers, leftovers


def _positionals(argv: list[str]) -> list[str]:
    """A command's arguments without its options (`--to hf`, `--set k=v`, `--no-verify`)."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a.startswith("--"):
            skip = "=" not in a and i + 1 < len(argv) and not argv[i + 1].startswith("--") and a not in FLAGS
        else:
            out.append(a)
    return out


FLAGS = ("--no-verify", "--force", "--allow-nonfinite", "--markdown", "--resume")


@pytest.mark.parametrize("page, i, code", PYTHON, ids=[f"{page}-python-block-{i}" for page, i, _ in PYTHON])
def test_python(page: str, i: int, code: str, workdir: Path):
    """Each Python example runs as written, in a folder holding the stand-in files (model.pt, ...)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "HF_HUB_CACHE": str(workdir / "hub")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, f"{page}, Python block {i} failed:\n{code}\n{proc.stderr[-3000:]}"
    if "zoo.summary(" in code:  # printed once, as a script shows it
        assert proc.stdout.count("Total params:") == 1, proc.stdout
