"""Shared harness: the framework axis, the device option, tiny spec variants and the error report.

`pytest --device gpu` runs the agreement tests on every GPU the frameworks can see
(TF32 off, JAX matmuls in float32); a framework that sees none is skipped by name.
"""

from __future__ import annotations

import importlib.util
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import zoo

# Tiny widths per preset keep the grid fast; every registered model must have an entry.
TINY = {
    "nin": dict(widths=(8, 16, 16)),
    "nin_cifar10": dict(widths=((8, 8, 8), (8, 12, 8), (8, 8))),
    "nin_imagenet": dict(widths=((8, 8, 8), (8, 8, 8), (12, 12, 12), (16, 16)), num_classes=20),
    "lenet": {}, "lenet_relu": {},  # 62 thousand parameters: tiny already
    "alexnet": dict(ratio=16, hidden=32), "alexnet_d2l": dict(ratio=16, hidden=32, input_size=96),
    "vgg11": dict(ratio=16, hidden=16), "vgg16": dict(ratio=16, hidden=16),
    "vgg11_d2l": dict(ratio=32, hidden=16, input_size=32),
    "googlenet": dict(ratio=16), "googlenet_d2l": dict(ratio=16), "inception_v3": dict(ratio=16, num_classes=10),
    "resnet18": dict(width=4), "resnet34": dict(width=4), "resnet50": dict(width=4), "resnet18_d2l": dict(width=4),
    "densenet121": dict(growth_rate=4, num_init_features=8, bn_size=2),
    "densenet_d2l": dict(growth_rate=4, num_init_features=8),
    "resnet101": dict(width=4, layers=(1, 1, 2, 1)), "resnext50_32x4d": dict(width=8, groups=4, width_per_group=16),
    "wide_resnet50_2": dict(width=4),
    "mobilenet_v2": dict(width_mult=0.25, num_classes=10), "mobilenet_v3_large": dict(width_mult=0.25, num_classes=10),
    "mobilenet_v3_small": dict(width_mult=0.25, num_classes=10),
    **{f"efficientnet_b{i}": dict(width_mult=0.25, depth_mult=0.4, num_classes=10) for i in range(4)},
    "regnet_x_400mf": dict(depth=4, w_0=8, w_a=8.0, w_m=2.0, group_width=4, num_classes=10),
    "regnet_y_400mf": dict(depth=4, w_0=8, w_a=8.0, w_m=2.0, group_width=4, num_classes=10),
    "regnet_d2l": dict(stem=8, widths=(8, 16), depths=(1, 2), group_width=4),
    "squeezenet1_0": dict(ratio=8, num_classes=10), "squeezenet1_1": dict(ratio=8, num_classes=10),
    "resnet152": dict(width=4, layers=(1, 2, 1, 1)),
    **{f"densenet{n}": dict(growth_rate=4, num_init_features=8, bn_size=2, block_config=blocks)
       for n, blocks in ((161, (1, 2, 2, 1)), (169, (2, 1, 1, 2)), (201, (1, 1, 3, 1)))},
    "vgg13": dict(ratio=16, hidden=16), "vgg19": dict(ratio=16, hidden=16),
    **{f"vgg{n}_bn": dict(ratio=16, hidden=16) for n in (11, 13, 16, 19)},
    "mobilenetv3_large_100": dict(width_mult=0.25, num_classes=10),
    "mobilenetv3_small_100": dict(width_mult=0.25, num_classes=10),
    "convnext_tiny": dict(dims=(8, 16, 16, 24), depths=(1, 1, 2, 1), num_classes=10),
    "convnext_small": dict(dims=(8, 8, 16, 16), depths=(1, 1, 3, 1), num_classes=10),
    "vit_b_16": dict(hidden_dim=16, num_heads=2, mlp_dim=24, num_layers=2, input_size=32, num_classes=10),
    "vit_b_32": dict(hidden_dim=16, num_heads=4, mlp_dim=16, num_layers=1, input_size=64, num_classes=10),
    "vit_d2l": dict(num_hiddens=16, num_heads=4, mlp_num_hiddens=24),
}
# Input sides per preset's tiny variant: the minimum (None) at batch 1, then others at batch 3; a network
# whose linear layer takes a fixed size has one side, its nominal one. Each size is one more compilation
# in Flax and Keras, so two at most.
SIZES = {
    "nin": (None, 96), "nin_cifar10": (None, 32), "nin_imagenet": (None, 129),
    "lenet": (28,), "lenet_relu": (28,), "alexnet": (None, 64), "alexnet_d2l": (96,),
    "vgg11": (None, 32), "vgg16": (None, 32), "vgg11_d2l": (32,), "googlenet": (None, 32), "googlenet_d2l": (None, 32),
    "inception_v3": (None, 107),  # 75 (its minimum): 3x3 at Mixed_6, 1x1 at Mixed_7; 107: 5x5, then 2x2
    "resnet18": (None, 32), "resnet34": (None, 32), "resnet50": (None, 32), "resnet18_d2l": (None, 32),
    "densenet121": (None, 32), "densenet_d2l": (None, 32),
    # the variants of one architecture at other widths or depths: one size, their family's first preset two
    "resnet101": (None,), "resnext50_32x4d": (None, 32), "wide_resnet50_2": (None,),
    "mobilenet_v2": (None, 37), "mobilenet_v3_large": (None,), "mobilenet_v3_small": (None, 37),
    "efficientnet_b0": (None, 37), **{f"efficientnet_b{i}": (None,) for i in range(1, 4)},
    "regnet_x_400mf": (None,), "regnet_y_400mf": (None, 37), "regnet_d2l": (None, 32),
    "squeezenet1_0": (None,), "squeezenet1_1": (None, 47),
    "resnet152": (None,), "densenet161": (None,), "densenet169": (None,), "densenet201": (None,),
    "vgg13": (None,), "vgg19": (None,), "vgg11_bn": (None, 32), "vgg13_bn": (None,), "vgg16_bn": (None,),
    "vgg19_bn": (None,), "mobilenetv3_large_100": (None,), "mobilenetv3_small_100": (None,),
    "convnext_tiny": (None, 37), "convnext_small": (None,),
    "vit_b_16": (None,), "vit_b_32": (None,), "vit_d2l": (None,),  # a position embedding: one size fits
}
# One full-width preset per family, run at its nominal input size (the d2l variants: what the book trains).
FULL_SIZE = ["lenet", "alexnet_d2l", "vgg11_d2l", "nin", "googlenet_d2l", "resnet18_d2l", "densenet_d2l",
             "mobilenet_v3_small", "efficientnet_b0", "regnet_d2l", "squeezenet1_1", "convnext_tiny", "vit_b_16"]


def keras_backend() -> str:
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def _packages(fw: str) -> tuple[str, ...]:
    return {"torch": ("torch",), "flax": ("jax", "flax"), "keras": ("keras", keras_backend()),
            "onnx": ("onnx", "onnxruntime")}[fw]


def label(fw: str) -> str:
    return f"keras[{keras_backend()}]" if fw == "keras" else fw


def fw_params():
    """The framework axis: one param per framework, marked with its name (`pytest -m keras`)."""
    return [pytest.param(fw, marks=getattr(pytest.mark, fw), id=fw) for fw in zoo.FRAMEWORKS]


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "gpu"),
                     help="where the framework models run (default: cpu)")
    parser.addoption("--errors-json", metavar="FILE", default=None,
                     help="also write the worst errors against the float64 reference to FILE (JSON), from which "
                          "python -m zoo.docs_tables renders docs/testing.md's agreement tables")


# The longest tests (30-120 s each on a 2-core machine) run first: at the end of the run they would leave one
# pytest-xdist worker idle while the other finishes them.
LONGEST = ("tests/test_readme.py::test_commands_in_order", "tests/test_pretrained.py::test_same_class_for_every",
           "tests/test_fuzz.py", "tests/test_data_parallel.py", "tests/test_timm.py::test_timm_networks_are")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(LONGEST))  # stable: the rest keep their order


def pytest_configure(config):
    config._zoo_errors = defaultdict(lambda: [0.0, 0.0])  # (preset, framework) -> [abs, rel]
    if config.getoption("--device") == "gpu":
        # Full float32 on GPUs: TF32 would cost ~1e-3 relative error and hide real bugs.
        os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
        os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "float32")


def _gpu_skip_reason(fw: str) -> str | None:
    """None when `fw` can run on a GPU here, else why not."""
    if fw == "torch" or (fw == "keras" and keras_backend() == "torch"):
        import torch

        if not torch.cuda.is_available():
            return f"{label(fw)}: PyTorch sees no CUDA GPU"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    elif fw == "flax" or (fw == "keras" and keras_backend() == "jax"):
        import jax

        jax.config.update("jax_default_matmul_precision", "float32")
        if jax.default_backend() != "gpu":
            return f"{label(fw)}: JAX sees no GPU (backend {jax.default_backend()!r})"
    elif fw == "onnx":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return ("onnx: onnxruntime has no CUDAExecutionProvider here (the GPU build is another package: "
                    "pip install onnxruntime-gpu)")
    else:  # keras on tensorflow
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
        if not tf.config.list_physical_devices("GPU"):
            return f"{label(fw)}: TensorFlow sees no GPU"
    return None


@pytest.fixture
def device(request) -> str:
    return request.config.getoption("--device")


@pytest.fixture
def framework(request, device) -> str:
    """The framework under test; skipped, by name, when it is not installed or sees no GPU."""
    fw = request.param
    missing = [p for p in _packages(fw) if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"{label(fw)}: {', '.join(missing)} not installed (pip install '.[{zoo.FRAMEWORKS[fw].extra}]')")
    if device == "gpu":
        reason = _gpu_skip_reason(fw)
        if reason:
            pytest.skip(reason)
    return fw


def pytest_generate_tests(metafunc):
    """The framework axis; a test marked `trains` gets only the frameworks with a training mode."""
    if "framework" in metafunc.fixturenames:
        trains = metafunc.definition.get_closest_marker("trains") is not None
        params = [p for p in fw_params() if not trains or zoo.FRAMEWORKS[p.values[0]].trains]
        metafunc.parametrize("framework", params, indirect=True)


def to_device(fw: str, model, device: str):
    if device == "gpu" and fw == "torch":
        return model.to("cuda")
    if device == "gpu" and fw == "onnx":
        from zoo.frameworks.onnx_model import OnnxModel

        return OnnxModel(model.spec, zoo.get_weights(model), providers=["CUDAExecutionProvider"])
    return model  # JAX, TensorFlow and Keras place work on the GPU by default


def run(fw: str, model, x_nchw: np.ndarray) -> np.ndarray:
    """Run a zoo model on an NCHW batch, whatever its framework's layout."""
    return zoo.predict(model, x_nchw, layout="NCHW")


def random_weights(spec, seed: int) -> dict[str, np.ndarray]:
    """He-scaled kernels, non-zero biases and BatchNorm statistics that show mistakes (op_specs.revealing_weights)."""
    from op_specs import revealing_weights

    return revealing_weights(spec, seed)


@pytest.fixture
def record_error(request):
    """Check `out` against the float64 reference at the suite's tolerance and keep the worst error."""
    errors = request.config._zoo_errors

    def check(preset: str, fw: str, out: np.ndarray, ref: np.ndarray) -> None:
        assert out.shape == ref.shape, f"shape {out.shape} != reference {ref.shape}"
        scale = float(np.abs(ref).max())
        err = float(np.abs(out.astype(np.float64) - ref).max())
        worst = errors[(preset, label(fw))]
        worst[0], worst[1] = max(worst[0], err), max(worst[1], err / max(scale, 1e-30))
        # fp32 against fp64: 1e-5 of the output's scale (and never tighter than 1e-5 absolute)
        assert err <= 1e-5 * max(1.0, scale), f"{preset}/{label(fw)}: max abs error {err:.3e} at scale {scale:.3g}"

    return check


# Under pytest-xdist (`pytest -n 2`, as nox runs it) each worker keeps its own worst errors; they
# travel to the controller, whose terminal summary prints them all.
def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["zoo_errors"] = [[p, f, a, r] for (p, f), (a, r) in session.config._zoo_errors.items()]


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown without it
def pytest_testnodedown(node, error):
    errors = node.config._zoo_errors
    for p, f, a, r in getattr(node, "workeroutput", {}).get("zoo_errors", []):
        worst = errors[(p, f)]
        worst[0], worst[1] = max(worst[0], a), max(worst[1], r)


def pytest_terminal_summary(terminalreporter, config):
    errors = config._zoo_errors
    if not errors:
        return
    tr = terminalreporter
    tr.section(f"worst error against the float64 reference (device: {config.getoption('--device')}); "
               f"rel = max abs / max |reference|")
    width = max(len(p) for p, _ in errors) + 2
    tr.write_line(f"{'preset':<{width}}{'framework':<20}{'max abs':>12}{'max rel':>12}")
    for (preset, fw), (a, r) in sorted(errors.items()):
        tr.write_line(f"{preset:<{width}}{fw:<20}{a:>12.3e}{r:>12.3e}")
    path = config.getoption("--errors-json")
    if path:
        _write_errors(Path(path), errors, config.getoption("--device"))
        tr.write_line(f"wrote {path}")


def _write_errors(path: Path, errors: dict, device: str) -> None:
    """The worst errors as JSON (what docs/testing.md's tables are rendered from), written whole or not at all."""
    from zoo.bench import _machine, write_json

    rows = [{"preset": p, "framework": f, "max_abs": a, "max_rel": r} for (p, f), (a, r) in sorted(errors.items())]
    write_json(path, {"machine": _machine(), "device": device, "keras_backend": keras_backend(), "errors": rows})
