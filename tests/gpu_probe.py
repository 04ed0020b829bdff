"""Print the GPUs that torch, jax and tensorflow see here, '|'-separated (nothing when none). Used by nox."""

import importlib.util

found = []
if importlib.util.find_spec("torch"):
    import torch

    if torch.cuda.is_available():
        found.append("torch: " + torch.cuda.get_device_name(0))
if importlib.util.find_spec("jax"):
    import jax

    if jax.default_backend() == "gpu":
        found.append("jax: " + str(jax.devices()[0]))
if importlib.util.find_spec("tensorflow"):
    import tensorflow as tf

    found += ["tensorflow: " + d.name for d in tf.config.list_physical_devices("GPU")]
print("|".join(found))
