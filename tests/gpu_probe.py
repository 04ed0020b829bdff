"""Report the GPUs that torch, jax, tensorflow and onnxruntime see here, for nox's `accelerator` session.

The answer is one line, `zoo-gpu-probe: ["torch: NVIDIA H200", ...]` (JSON; `[]` when none),
so that it cannot be confused with the log lines frameworks print while importing.
"""

import importlib.util
import json
import os

PREFIX = "zoo-gpu-probe: "

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's import notices are noise here
found = []
if importlib.util.find_spec("torch"):
    import torch

    if torch.cuda.is_available():
        found += [f"torch: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
if importlib.util.find_spec("jax"):
    import jax

    if jax.default_backend() == "gpu":
        found += [f"jax: {d.device_kind} ({d})" for d in jax.devices()]
if importlib.util.find_spec("tensorflow"):
    import tensorflow as tf

    found += ["tensorflow: " + d.name for d in tf.config.list_physical_devices("GPU")]
if importlib.util.find_spec("onnxruntime"):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        found.append("onnxruntime: CUDAExecutionProvider")
print(PREFIX + json.dumps(found), flush=True)
