"""nox sessions: `nox` runs the suite, Keras on every backend, the accelerator check and lint; `nox -s bench` times."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "keras", "accelerator", "lint"]
nox.options.default_venv_backend = "venv"

PYPROJECT = nox.project.load_toml("pyproject.toml")
TEST = nox.project.dependency_groups(PYPROJECT, "test")
# An unpinned torch pulls a multi-GB CUDA build; this CPU build is what the project is tested with.
TORCH = "torch==2.13.0"
KERAS_BACKEND_PACKAGES = {"tensorflow": ["tensorflow-cpu"], "jax": ["jax"], "torch": [TORCH]}
# Keep several frameworks in one GPU process from each taking all of its memory.
GPU_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_FORCE_GPU_ALLOW_GROWTH": "true",
           "NVIDIA_TF32_OVERRIDE": "0", "JAX_DEFAULT_MATMUL_PRECISION": "float32"}


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite in all three frameworks, Keras on TensorFlow."""
    session.install(".[all]", TORCH, *TEST)
    session.run("pytest", *session.posargs, env={"KERAS_BACKEND": "tensorflow"})


@nox.session
@nox.parametrize("backend", list(KERAS_BACKEND_PACKAGES))
def keras(session: nox.Session, backend: str) -> None:
    """The Keras tests under one KERAS_BACKEND (tensorflow, jax, torch)."""
    session.install(".", "keras", *KERAS_BACKEND_PACKAGES[backend], *TEST)
    session.run("pytest", "-m", "keras", *session.posargs, env={"KERAS_BACKEND": backend})


@nox.session(venv_backend="none")
def accelerator(session: nox.Session) -> None:
    """The agreement suite on every GPU the installed frameworks see (current environment, TF32 off)."""
    probe = session.run("python", "tests/gpu_probe.py", silent=True, env=GPU_ENV) or ""
    last_line = probe.strip().splitlines()[-1] if probe.strip() else ""
    gpus = [g for g in last_line.split("|") if g]
    if not gpus:
        session.log("accelerator: no GPU visible to torch, jax or tensorflow here; nothing to check.")
        return
    session.log("GPUs: " + "; ".join(gpus))
    agreement = ["pytest", "tests/test_agreement.py", "--device", "gpu", *session.posargs]
    session.run(*agreement, "-m", "torch or flax", env=GPU_ENV)
    for backend in KERAS_BACKEND_PACKAGES:  # a backend that is not installed is skipped by name
        session.run(*agreement, "-m", "keras", env={**GPU_ENV, "KERAS_BACKEND": backend})


@nox.session
def bench(session: nox.Session) -> None:
    """Inference throughput side by side with each framework's alternatives (`zoo bench`; not run by default)."""
    session.install(".[all]", TORCH)
    args = session.posargs or ["--frameworks", "torch", "flax", "keras[tensorflow]", "keras[jax]"]
    session.run("zoo", "bench", *args)


@nox.session
def fuzz(session: nox.Session) -> None:
    """The fuzzing harness's larger corpus (ZOO_FUZZ_PER_KIND mutants of each kind per format; not run by default)."""
    session.install(".[all]", TORCH, *TEST)
    per_kind = os.environ.get("ZOO_FUZZ_PER_KIND", "20")
    session.run("pytest", "tests/test_fuzz.py", "-s", *session.posargs,
                env={"KERAS_BACKEND": "tensorflow", "ZOO_FUZZ_PER_KIND": per_kind})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".", *session.posargs)
