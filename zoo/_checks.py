"""Checks of canonical weights against a spec, shared by `zoo.api` and the file readers in `zoo.io`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from zoo.spec import ModelSpec


class WeightsError(ValueError):
    """Weights that do not fit a model: wrong names, shapes or dtypes. Lists every problem."""


def check_weights(spec: ModelSpec, weights: Mapping[str, np.ndarray],
                  dtypes: tuple[str, ...] = ("float32",)) -> dict[str, np.ndarray]:
    """Check canonical weights against a spec; return them as numpy arrays, or raise listing all problems."""
    expected = spec.param_shapes()
    problems = []
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected)}")
    arrays = {}
    for name, shape in expected.items():
        if name not in weights:
            continue
        a = np.asarray(weights[name])
        if a.shape != shape:
            problems.append(f"{name}: expected shape {shape}, got {a.shape}")
        elif str(a.dtype) not in dtypes:
            problems.append(f"{name}: expected {' or '.join(dtypes)}, got {a.dtype} "
                            f"(cast it explicitly, e.g. .astype(np.float32))")
        arrays[name] = a
    if problems:
        raise WeightsError(f"weights do not fit {spec.name} ({len(expected)} tensors expected):\n  "
                           + "\n  ".join(problems))
    return arrays


def nonfinite_tensors(weights: Mapping[str, np.ndarray]) -> list[str]:
    """'name (N values)' for each tensor holding NaN or Inf (half precision compared as float32)."""
    finite = {k: np.isfinite(np.asarray(a).astype(np.float32, copy=False)) for k, a in weights.items()}
    return [f"{k} ({int(f.size - f.sum())} values)" for k, f in finite.items() if not f.all()]


def negative_variances(spec: ModelSpec, weights: Mapping[str, np.ndarray]) -> list[str]:
    """'name (N of M values, minimum V)' for each BatchNorm running variance holding a negative value.

    A variance is never negative; BatchNorm divides by sqrt(var + eps), so one that is gives NaN outputs.
    """
    bad = []
    for path, op in spec.ops().items():
        name = f"{path}.running_var"
        if "running_var" in op.buffers() and name in weights:
            a = np.asarray(weights[name]).astype(np.float32, copy=False)
            n = int((a < 0).sum())
            if n:
                bad.append(f"{name} ({n} of {a.size} values, minimum {float(a.min()):.4g})")
    return bad


def check_finite(weights: Mapping[str, np.ndarray]) -> None:
    """Refuse weights holding NaN or Inf, as files holding them are refused."""
    bad = nonfinite_tensors(weights)
    if bad:
        raise WeightsError(f"NaN or Inf in {len(bad)} tensor(s): {', '.join(bad)}; refused "
                           f"(pass allow_nonfinite=True to load them anyway)")
