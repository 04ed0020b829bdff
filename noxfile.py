"""nox sessions: `nox` runs the suite, Keras on every backend, the accelerator check and lint.

`nox -s bench` times inference; `nox -s fuzz` runs the fuzzing harness's larger corpus.
"""

from __future__ import annotations

import json
import logging
import os

import nox

nox.options.sessions = ["tests", "keras", "accelerator", "lint"]
# venv + pip, so that pip's own configuration applies (PIP_EXTRA_INDEX_URL for a CPU-only torch, say).
nox.options.default_venv_backend = "venv"
# nox looks for uv before it creates any environment and logs "uv binary not found." where there is
# none; these sessions never use uv, so that line is noise.
logging.getLogger("nox").addFilter(lambda record: "uv binary not found" not in record.getMessage())

PYPROJECT = nox.project.load_toml("pyproject.toml")
TEST = nox.project.dependency_groups(PYPROJECT, "test")
# torch is pinned to the version the project is tested with. The pin does not choose a CPU build: on
# the public index the Linux wheel of this version pulls the CUDA packages (README.md: Install, run, test).
TORCH = "torch==2.13.0"
# timm, for tests/test_timm.py only (its checkpoints against its own forward): installed without its
# dependencies, since it requires torchvision, whose PyPI wheel is a CUDA build (tests/timm_shim.py).
TIMM = ["timm==1.0.31"]
TIMM_DEPS = ["pyyaml", "huggingface_hub"]  # what timm's import needs (huggingface_hub: also the hub extra)
# keras-hub, for tests/test_keras_hub.py only: without its dependencies, since it requires tensorflow-text (and
# sentencepiece, kagglehub), which its vision models never import; regex and tokenizers its import does need.
KERAS_HUB = ["keras-hub==0.32.0"]
KERAS_HUB_DEPS = ["regex", "tokenizers"]
KERAS_BACKEND_PACKAGES = {"tensorflow": ["tensorflow-cpu"], "jax": ["jax"], "torch": [TORCH]}
# Keep several frameworks in one GPU process from each taking all of its memory.
GPU_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_FORCE_GPU_ALLOW_GROWTH": "true",
           "NVIDIA_TF32_OVERRIDE": "0", "JAX_DEFAULT_MATMUL_PRECISION": "float32", "TF_CPP_MIN_LOG_LEVEL": "3"}
PROBE_PREFIX = "zoo-gpu-probe: "
# What each other Keras backend must prove: every preset against the reference, the traps, the Keras model
# itself (files included), its errors, and its training steps against float64 (each backend trains with its
# own kernels: zoo/frameworks/keras_torch_ops.py, jax_ops.py). Conversions between formats, hostile files and
# the 10,000 test images are the tests session's (Keras on TensorFlow, every other framework beside it): run with the
# backends alone they doubled CI's time.
KERAS_BACKEND_TESTS = ["tests/test_agreement.py", "tests/test_traps.py", "tests/test_backend_keras.py",
                       "tests/test_errors.py", "tests/test_training.py"]  # tests/gpu_probe.py's answer line


# Two worker processes (pytest-xdist), one per core of a small CI machine: most of the suite's time is
# single-threaded (tracing and compiling models, Python), so two workers nearly halve it. A page's
# command lines (README.md, docs/*.md) are one test, so they run in one worker, in order.
PARALLEL = ["-n", os.environ.get("ZOO_TEST_WORKERS", "2"), "--durations", "15"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite in all four frameworks (torch, flax, keras, onnx), Keras on TensorFlow."""
    # openvino: optional for users (a `zoo bench` alternative beside onnxruntime); here so that its rows are tested
    session.install(".[all]", TORCH, "openvino", *TEST, *TIMM_DEPS, *KERAS_HUB_DEPS)
    session.install("--no-deps", *TIMM, *KERAS_HUB)
    session.run("pytest", *PARALLEL, *session.posargs, env={"KERAS_BACKEND": "tensorflow"})


@nox.session
@nox.parametrize("backend", [b for b in KERAS_BACKEND_PACKAGES if b != "tensorflow"])
def keras(session: nox.Session, backend: str) -> None:
    """The Keras tests under the other KERAS_BACKENDs (jax, torch), each backend installed alone (and torch).

    `tests` runs them on TensorFlow, with every other framework beside it (conversions to and from Keras files).
    """
    # torch beside the backend: tests/test_training.py's float64 reference steps are PyTorch's; the data extra:
    # a training run's folder holds its curves' plot (matplotlib)
    reference = [] if backend == "torch" else [TORCH]
    session.install(".[data]", "keras", *KERAS_BACKEND_PACKAGES[backend], *reference, *TEST)
    named = any(a.startswith("tests/") for a in session.posargs)  # else options only: for the usual files
    session.run("pytest", *PARALLEL, "-m", "keras", *session.posargs, *([] if named else KERAS_BACKEND_TESTS),
                env={"KERAS_BACKEND": backend})


@nox.session(venv_backend="none")
def accelerator(session: nox.Session) -> None:
    """The agreement suite on every GPU the installed frameworks see (current environment, TF32 off)."""
    probe = session.run("python", "tests/gpu_probe.py", silent=True, env=GPU_ENV) or ""
    answers = [line[len(PROBE_PREFIX):] for line in probe.splitlines() if line.startswith(PROBE_PREFIX)]
    if not answers:
        session.error(f"tests/gpu_probe.py gave no answer line; it printed:\n{probe}")
    gpus = json.loads(answers[-1])
    if not gpus:
        session.log("accelerator: no GPU visible to torch, jax, tensorflow or onnxruntime here; nothing to check.")
        return
    session.log("GPUs: " + "; ".join(gpus))
    # This session uses the current environment (its GPU builds of the frameworks): check that it can test.
    missing = session.run("python", "-c", "import importlib.util as u; "
                          "print(' '.join(m for m in ('pytest', 'zoo', 'zoo.conversion') if not u.find_spec(m)))",
                          silent=True).strip()
    if missing:
        session.error(f"the accelerator session runs in the current environment, which lacks {missing}: "
                      "from the checkout, pip install . pytest")
    agreement = ["python", "-m", "pytest", "tests/test_agreement.py", "--device", "gpu", *session.posargs]
    session.run(*agreement, "-m", "torch or flax or onnx", env=GPU_ENV)
    for backend in KERAS_BACKEND_PACKAGES:  # a backend that is not installed is skipped by name
        session.run(*agreement, "-m", "keras", env={**GPU_ENV, "KERAS_BACKEND": backend})


@nox.session
def bench(session: nox.Session) -> None:
    """Inference throughput side by side with each framework's alternatives (`zoo bench`; not run by default)."""
    session.install(".[all]", TORCH, "openvino")  # OpenVINO: one more runtime of the same .onnx graph
    args = session.posargs or ["--frameworks", "torch", "onnx", "flax", "keras[tensorflow]", "keras[jax]"]
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
