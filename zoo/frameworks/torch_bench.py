"""PyTorch's ways to run a zoo model, written plainly, for `zoo bench`.

Each entry of `alternatives` takes a batch (numpy, NCHW) and returns a function that
runs the model once on it and returns numpy logits; anything done before that
function is returned (moving the input, compiling) is not timed.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

import zoo
from zoo.frameworks import torch_model
from zoo.spec import Act, Parallel, SelfAttention

LAYOUT = "NCHW"


def describe() -> str:
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {_cpu_capability()}"


def _cpu_capability() -> str:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        return "unknown"


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def _sequential(model) -> torch.nn.Sequential | None:
    """For a chain (no branches), the zoo model's layers (copies, same weights) in a plain nn.Sequential,
    as d2l writes its networks, with in-place ReLU modules; None for a network with branches."""
    spec = zoo.spec_of(model)
    if any(isinstance(layer.node, (Parallel, *torch_model.BARE)) for layer in spec.layers()):
        return None  # a branch, or a tensor held by its parent module (a class token): not an nn.Sequential
    layers = [torch.nn.ReLU(inplace=True) if isinstance(layer.node, Act) and layer.node.kind == "relu"
              else copy.deepcopy(model.get_submodule(layer.path)) for layer in spec.layers()]
    return torch.nn.Sequential(*layers).eval()


def _run(module, to_channels_last: bool = False):
    def make(x: np.ndarray):
        t = torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                inp = t.contiguous(memory_format=torch.channels_last) if to_channels_last else t
                return module(inp).numpy()
        return run
    return make


def alternatives(model) -> dict:
    """name -> make(x) -> run(); the first is the zoo's default call, as the README shows it.

    Called once per input shape: compiled code of an earlier shape is dropped first, so
    that no shape meets torch.compile's recompilation limit (it would fall back to eager).
    """
    torch._dynamo.reset()
    runs = {
        "zoo.predict(model, x)": lambda x: (lambda: zoo.predict(model, x)),
        "model(x), inference_mode": _run(model),
        "torch.compile(model)": _run(torch.compile(model, dynamic=False)),
    }
    spec = zoo.spec_of(model)
    if any(isinstance(op, SelfAttention) for op in spec.ops().values()):  # the fused kernel or plain matmuls
        runs["attention as matmuls"] = _run(torch_model.build(spec, zoo.get_weights(model), attention="matmul"))
    if _sequential(model) is not None:
        nchw = _sequential(model).to(memory_format=torch.contiguous_format)
        channels_last = _sequential(model).to(memory_format=torch.channels_last)
        runs.update({
            "eager NCHW": _run(nchw),
            "eager channels_last": _run(channels_last, to_channels_last=True),
            "torch.compile NCHW": _run(torch.compile(nchw, dynamic=False)),
            "torch.compile channels_last": _run(torch.compile(channels_last, dynamic=False), to_channels_last=True),
        })
    return runs
