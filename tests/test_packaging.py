"""What `pip install .` puts into site-packages, the import names in a checkout, `zoo --version`, `nox -l`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import zoo
from zoo import cli

ROOT = Path(__file__).resolve().parents[1]
# What a wheel is built from (pyproject.toml's packages and package data, the readme and the licence)
SOURCES = ("zoo", "conversion", "weights", "pyproject.toml", "README.md", "LICENSE")


def _setuptools_major() -> int:
    """The installed setuptools' major version, 0 when there is none."""
    from importlib import metadata

    try:
        return int(metadata.version("setuptools").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return 0


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel `pip wheel . --no-deps` builds, from a copy of the tree (a build writes build/ and
    *.egg-info beside pyproject.toml)."""
    tmp = tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        src, dst = ROOT / name, tmp / "src" / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    cmd = [sys.executable, "-m", "pip", "wheel", str(tmp / "src"), "--no-deps", "-w", str(tmp / "out"), "-q"]
    if _setuptools_major() >= 77:  # pyproject.toml's build requirement: then build offline, with this one
        cmd.append("--no-build-isolation")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = (tmp / "out").glob("multizoo-*.whl")
    return zipfile.ZipFile(built)


def test_wheel_holds_one_top_level_name(wheel):
    """Only `zoo` and its dist-info: no `conversion` or `weights` for a user's own module to collide with."""
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert tops == {"zoo", f"multizoo-{zoo.__version__}.dist-info"}, sorted(tops)
    # the RECORD lists the same files
    record = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
    assert {line.split(",")[0].split("/")[0] for line in wheel.read(record).decode().splitlines() if line} == tops


def test_wheel_holds_every_package_and_the_shipped_weights(wheel):
    """Every package folder of the tree is in the wheel (pyproject.toml lists them by hand), and the weights
    named in the manifest, with the licence."""
    names = set(wheel.namelist())
    for folder, package in (("zoo", "zoo"), ("conversion", "zoo/conversion"), ("weights", "zoo/weights")):
        for init in (ROOT / folder).rglob("__init__.py"):
            assert f"{package}/{init.relative_to(ROOT / folder).as_posix()}" in names, init
    manifest = json.loads(wheel.read("zoo/weights/manifest.json"))
    for cfg in manifest.values():
        assert {f"zoo/weights/{cfg['file']}", f"zoo/weights/{cfg['test_logits']}"} <= names, cfg
    assert f"multizoo-{zoo.__version__}.dist-info/licenses/LICENSE" in names
    metadata = wheel.read(f"multizoo-{zoo.__version__}.dist-info/METADATA").decode()
    assert "ONNX" in metadata.split("Summary:", 1)[1].split("\n", 1)[0] and "Classifier: " in metadata


def test_checkout_imports_ignore_the_users_own_modules(tmp_path):
    """From a checkout (PYTHONPATH, no install), in a folder holding the user's own weights.py and
    conversion.py: zoo.conversion and the shipped weights are the zoo's."""
    for name in ("weights.py", "conversion.py"):
        (tmp_path / name).write_text("raise SystemExit('the user module was imported')\n")
    code = ("import zoo, zoo.conversion, zoo.weights\n"
            "from zoo import pretrained\n"
            "print(zoo.conversion.convert.__module__, sorted(zoo.list_pretrained()))\n"
            "print(pretrained.resolve('nin', 'fashion_mnist')[0].is_file())\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["zoo.conversion.convert", "['nin.fashion_mnist',", "'resnet18_d2l.fashion_mnist']",
                                   "True"], proc.stdout


def test_version_constant_is_the_distributions():
    """pyproject.toml takes its version from zoo.__version__, so the two cannot differ."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "zoo.__version__"}


def test_zoo_version(capsys, monkeypatch):
    """`zoo --version`: the installed distribution's version, else (a checkout) zoo.__version__."""
    from importlib import metadata

    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.split()[:2] == ["zoo", cli.version()]

    def missing(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "version", missing)
    monkeypatch.setattr(zoo, "__version__", "9.8.7")
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.split()[:2] == ["zoo", "9.8.7"]


def test_nox_session_descriptions_are_whole_sentences():
    """`nox -l` shows each session docstring's first line: it must be a whole sentence, the rest apart."""
    import ast

    tree = ast.parse((ROOT / "noxfile.py").read_text())
    sessions = [f for f in tree.body if isinstance(f, ast.FunctionDef)
                and any("session" in ast.unparse(d) for d in f.decorator_list)]
    assert len(sessions) >= 6, [f.name for f in sessions]
    for f in sessions:
        lines = (ast.get_docstring(f) or "").splitlines()
        assert lines and lines[0].endswith(".") and (len(lines) == 1 or not lines[1].strip()), (f.name, lines)


def test_the_tree_imports_conversion_under_zoo():
    """Installed, there is no top-level `conversion` (or `weights`): a test or module that imports it passes in a
    checkout and fails in nox's installed environment."""
    pattern = re.compile(r"^\s*(import (conversion|weights)\b|from (conversion|weights)\b)", re.M)
    offenders = [str(p.relative_to(ROOT)) for folder in ("zoo", "conversion", "tests", "weights")
                 for p in (ROOT / folder).rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders, offenders
