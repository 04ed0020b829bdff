"""`zoo diff`: run one model two ways, layer by layer, and find the first layer where they part.

Each side is a framework (torch, flax, keras, onnx, keras[BACKEND]), the float64 reference
(`reference`), a weight file in any format the zoo reads, or (from Python) a zoo model already
built. Both run the same seeded random NCHW batch through every layer of the spec (the backends'
`trace`, `zoo.reference.forward(trace=...)`), and each layer's outputs are compared in NCHW: the
largest absolute difference, and that over the largest |a| (side A's output). A layer diverges
when the difference exceeds `tol * max(1, max|a|)`: float32 against float64 stays within 1e-5
of the output's scale, so an error above it is a bug, not rounding; the first such layer is
where to look (every layer after it inherits the difference). An activation, pool, flatten,
dropout or join computes nothing that rounds much, but it may shrink what it passes on (a
sigmoid of huge values, a sum that cancels), so its scale is its input's when that is larger:
the rounding it inherits is relative to its input.

    zoo diff nin torch keras                       # the same weights in two frameworks
    zoo diff nin model.pt converted.weights.h5     # each file in its own framework
    zoo diff nin torch reference --weights fashion_mnist

    >>> rows = zoo.diff('nin', 'torch', 'flax', widths=(8, 16, 16))
    >>> rows.first is None                          # no layer diverged
    True
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo import _frameworks, reference
from zoo._checks import check_weights
from zoo._registry import get_spec
from zoo.spec import (
    Act,
    AdaptivePool,
    Dropout,
    DropPath,
    Flatten,
    ModelSpec,
    Parallel,
    Pool,
    Seq,
    init_weights,
    join_path,
)

REFERENCE = "reference"
TOLERANCE = 1e-5  # of max(1, max|a|): float32 against the float64 reference stays well within it


class SideFailed(RuntimeError):
    """A side that ran in a process of its own (another Keras backend) failed there."""


@dataclass(frozen=True)
class Row:
    layer: str  # the layer's path in the spec
    type: str  # e.g. 'Conv 3x3/1 pad 1, 64->64'
    shape: tuple[int, ...]  # side A's output, NCHW
    max_abs: float  # max |a - b|; inf when the shapes differ or only one side is NaN
    rel: float  # max_abs / max|a|
    tolerance: float  # tol * max(1, max|a|)

    @property
    def diverged(self) -> bool:
        return not self.max_abs <= self.tolerance


class Diff(list):
    """The rows of `zoo.diff`, one per layer, in execution order; `first` is the first that diverged (or None)."""

    def __init__(self, rows, *, model: str, a: str, b: str, input_shape: tuple[int, ...], seed: int, tol: float):
        super().__init__(rows)
        self.model, self.a, self.b, self.input_shape, self.seed, self.tol = model, a, b, input_shape, seed, tol

    @property
    def first(self) -> Row | None:
        return next((r for r in self if r.diverged), None)

    @property
    def diverged(self) -> bool:
        return self.first is not None

    def __str__(self) -> str:
        first = self.first
        cells = [("Layer", "Type", "Output shape (NCHW)", "Max abs err", "Rel err", "")]
        for r in self:
            mark = "<- first divergence" if r is first else ("over" if r.diverged else "")
            cells.append((r.layer, r.type, str(r.shape), f"{r.max_abs:.3e}", f"{r.rel:.3e}", mark))
        widths = [max(len(c[i]) for c in cells) for i in range(6)]
        lines = [f"{self.model}: {self.a} (a) vs {self.b} (b), input {self.input_shape} NCHW, seed {self.seed}; "
                 f"a layer diverges when max |a - b| > {self.tol:g} x max(1, max|a|) (max over the "
                 f"input too for activations, pools and joins)"]
        for i, c in enumerate(cells):
            lines.append("  ".join(v.ljust(w) if j < 3 or j == 5 else v.rjust(w)
                                   for j, (v, w) in enumerate(zip(c, widths))).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths[:5]))
        if first is not None:
            lines.append(f"first divergence: {first.layer} ({first.type}): max abs error {first.max_abs:.3e} over the "
                         f"tolerance {first.tolerance:.3e}; the layers before it agree, those after inherit it")
        elif self:
            worst = max(self, key=lambda r: r.rel)
            lines.append(f"no divergence: all {len(self)} layers agree within the tolerance (largest relative error "
                         f"{worst.rel:.3e}, at {worst.layer})")
        return "\n".join(lines)

    def __repr__(self) -> str:
        where = f"first divergence at {self.first.layer}" if self.first else "no divergence"
        return f"<Diff {self.model}: {self.a} vs {self.b}, {len(self)} layers, {where}>"


# --------------------------------------------------------------------------- the sides

@dataclass
class _Side:
    label: str
    runner: str  # a framework name or REFERENCE
    env: dict  # e.g. {'KERAS_BACKEND': 'jax'}
    path: Path | None = None  # a weight file
    model: object = None  # a zoo model built by the caller
    spec: ModelSpec | None = None
    weights: dict | None = None
    own_graph: bool = False  # a zoo .onnx run as its own graph, not as a model rebuilt from its spec


def _framework(text: str) -> tuple[str, dict] | None:
    """'torch' -> ('torch', {}); 'keras[jax]' -> ('keras', {'KERAS_BACKEND': 'jax'}); None if not a framework."""
    name, bracket, rest = text.partition("[")
    if name not in _frameworks.FRAMEWORKS:
        return None
    if not bracket:
        return name, {}
    if name != "keras" or not rest.endswith("]") or not rest[:-1].isidentifier():
        raise ValueError(f"{text!r}: only keras takes a backend, as keras[jax], keras[tensorflow] or keras[torch]")
    return name, {"KERAS_BACKEND": rest[:-1]}


def _side(value, which: str, runner: str | None) -> _Side:
    if not isinstance(value, (str, os.PathLike)):  # a zoo model
        fw, mod = _frameworks.adapter_for(value)
        return _Side(f"{fw.name} model", fw.name, {}, model=value, spec=mod.spec_of(value))
    if isinstance(value, str) and value == REFERENCE:
        return _Side("float64 reference", REFERENCE, {})
    fw = _framework(value) if isinstance(value, str) else None
    if fw is not None:
        name, env = fw
        return _Side(value if env else name, name, env)
    path = Path(value)
    if not (path.exists() or path.is_symlink()):
        raise ValueError(f"{which}: {str(value)!r} is neither a framework ({', '.join(_frameworks.FRAMEWORKS)}, "
                         f"keras[BACKEND], {REFERENCE}) nor an existing weight file or folder")
    from zoo.io.formats import detect

    own = detect(path).framework
    run_in = runner or own
    return _Side(f"{path.name} ({'float64 reference' if run_in == REFERENCE else run_in})",
                 run_in, {}, path=path)


def _own_graph(side: _Side, name: str | None, overrides: dict) -> bool:
    """Put a zoo .onnx's spec and weights on a side that runs in onnxruntime, to run the file's own graph (even one
    edited after it was written, which zoo.load refuses: the diff shows where it parts); False for other files.
    A foreign .onnx runs as the model read from it, which zoo.load has checked against its graph on a probe."""
    from zoo import io
    from zoo.io.formats import detect

    fmt = detect(side.path)
    if side.runner != "onnx" or fmt.name != "onnx":
        return False
    from zoo.io import io_onnx
    from zoo.io.infer import resolve_spec

    io._check_input_path(side.path, fmt)
    ckpt = io_onnx.read(side.path, check_graph=False)
    if ckpt.spec is None:
        return False
    side.spec, _ = resolve_spec(ckpt, name, overrides or None)
    side.weights, side.own_graph = check_weights(side.spec, ckpt.weights), True
    return True


def _same_model(a: ModelSpec, b: ModelSpec) -> bool:
    return a.in_channels == b.in_channels and a.layers() == b.layers()


def _resolve(model, sides: list[_Side], weights, seed: int, overrides: dict) -> tuple[ModelSpec, dict]:
    """The spec both sides run, and the canonical weights of the framework sides; each file side's own
    weights (and spec) are put on the side."""
    name = model if isinstance(model, str) else None
    if not isinstance(model, (str, ModelSpec)):
        raise TypeError(f"model must be a model name or a ModelSpec, got {type(model).__name__}")
    if overrides and name is None:
        raise TypeError("overrides apply to a model name, not to a spec")
    from_files = None
    for s in sides:
        if s.path is not None:
            if not _own_graph(s, name, overrides):
                from zoo import io

                s.spec, s.weights, _ = io.load(s.path, name, overrides or None)
            from_files = from_files or (s.spec, s.weights)
    # the spec: the one given, else a file side's, else the weights file's, else the preset's
    spec = model if isinstance(model, ModelSpec) else from_files[0] if from_files else None
    shared = None
    if weights is None:
        shared = from_files[1] if from_files else None
    elif isinstance(weights, Mapping):
        spec = spec or get_spec(model, **overrides)
        shared = check_weights(spec, weights)
    elif isinstance(weights, (str, os.PathLike)):
        from zoo import io
        from zoo.api import _is_tag

        path = weights
        if isinstance(weights, str) and name is not None and _is_tag(name, weights):  # a tag of that model
            from zoo import pretrained

            if overrides:
                raise TypeError(f"pretrained weights fix the spec; drop the overrides {sorted(overrides)}")
            path, _ = pretrained.resolve(name, weights)
        file_spec, shared, _ = io.load(path, name, overrides or None)
        if spec is not None and not _same_model(file_spec, spec):
            raise ValueError(f"the weights {weights} are of another model ({file_spec.name}) than the one "
                             f"compared ({spec.name})")
        spec = spec or file_spec
    else:
        raise TypeError(f"weights must be a pretrained tag, a path or a dict of arrays, got {type(weights).__name__}")
    spec = spec or get_spec(model, **overrides)
    if shared is None:
        shared = init_weights(spec, seed)
    for s in sides:
        if s.spec is not None and not _same_model(s.spec, spec):
            raise ValueError(f"{s.label} holds a different model ({s.spec.name}, {len(s.spec.layers())} layers) "
                             f"from the one compared ({spec.name}, {len(spec.layers())} layers)")
        if s.weights is None and s.model is None:
            s.weights = shared
    return spec, shared


# --------------------------------------------------------------------------- running a side

def _to_nchw(out: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    """A layer's output in NCHW: channels-last image outputs transposed, anything else as it is."""
    out = np.asarray(out)
    if out.shape != expected and out.ndim == 4 and (out.shape[0], out.shape[3], *out.shape[1:3]) == expected:
        return out.transpose(0, 3, 1, 2)
    return out


def _model_trace(mod, model, spec: ModelSpec, x: np.ndarray, layout: str) -> list[tuple[str, np.ndarray]]:
    """A framework model's trace, every output in NCHW (and flattened in NCHW order)."""
    xin = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x
    expected = dict(spec.layer_shapes(x.shape[2:], x.shape[0]))
    nodes = {layer.path: layer.node for layer in spec.layers()}
    out, prev, hwc = [], x, None
    for path, y in mod.trace(model, xin):
        y = _to_nchw(y, expected.get(path, ()))
        node = nodes.get(path)
        # A channels-last framework flattens (H, W, C), and its next linear layer's weights are permuted to
        # match: the flat values (up to that layer) are the same, in another order. Flattening is exact,
        # so its input says which order the output is in.
        if isinstance(node, Flatten):
            hwc = prev.shape[1:] if layout == "NHWC" and _flat_in_hwc(prev, y) else None
        elif not isinstance(node, Dropout):
            hwc = None
        if hwc is not None:
            c, h, w = hwc
            y = y.reshape(len(y), h, w, c).transpose(0, 3, 1, 2).reshape(len(y), -1)
        out.append((path, y))
        prev = y
    return out


def _flat_in_hwc(image: np.ndarray, flat: np.ndarray) -> bool:
    """Whether `flat` is the NCHW `image` flattened in (H, W, C) order, and not in (C, H, W) order."""
    if image.ndim != 4 or flat.shape != (len(image), image[0].size):
        return False
    b = len(image)
    return not np.array_equal(flat, image.reshape(b, -1), equal_nan=True) and \
        np.array_equal(flat, image.transpose(0, 2, 3, 1).reshape(b, -1), equal_nan=True)


def _keras_backend_here() -> str:
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def _run(side: _Side, spec: ModelSpec, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    if side.runner == REFERENCE:
        out = []
        reference.forward(spec, side.weights, x, trace=out)
        return out
    if side.own_graph:
        from zoo.io import io_onnx

        return io_onnx.trace_file(side.path, spec, x)
    if side.model is not None:
        fw, mod = _frameworks.adapter_for(side.model)
        return _model_trace(mod, side.model, spec, x, fw.layout)
    backend = side.env.get("KERAS_BACKEND")
    if backend is not None and backend != _keras_backend_here():
        return _run_elsewhere(side, spec, x)  # Keras takes its backend once per process
    mod = _frameworks.adapter(side.runner)
    weights = {k: np.asarray(v, np.float32) for k, v in side.weights.items()}
    return _model_trace(mod, mod.build(spec, weights), spec, x, _frameworks.FRAMEWORKS[side.runner].layout)


def _run_elsewhere(side: _Side, spec: ModelSpec, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Trace a side in a fresh Python process with `side.env` set (another Keras backend)."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, **side.env, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH"))
                                                                   if p)}
    with tempfile.TemporaryDirectory(prefix="zoo-diff-") as tmp:
        tmp = Path(tmp)
        (tmp / "spec.json").write_text(spec.to_json())
        np.savez(tmp / "in.npz", x=x, **{f"w/{k}": np.asarray(v, np.float32) for k, v in side.weights.items()})
        code = f"from zoo.diff import _worker; _worker({side.runner!r}, {str(tmp)!r})"
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise SideFailed(f"{side.label}: its process failed: {last}")
        paths = json.loads((tmp / "paths.json").read_text())
        with np.load(tmp / "out.npz") as f:
            return [(p, f[str(i)]) for i, p in enumerate(paths)]


def _worker(runner: str, folder: str) -> None:
    """The other process's half of `_run_elsewhere`."""
    folder = Path(folder)
    spec = ModelSpec.from_json((folder / "spec.json").read_text())
    with np.load(folder / "in.npz") as f:
        x = f["x"]
        weights = {k[2:]: f[k] for k in f.files if k.startswith("w/")}
    mod = _frameworks.adapter(runner)
    out = _model_trace(mod, mod.build(spec, weights), spec, x, _frameworks.FRAMEWORKS[runner].layout)
    np.savez(folder / "out.npz", **{str(i): np.asarray(a) for i, (_, a) in enumerate(out)})
    (folder / "paths.json").write_text(json.dumps([p for p, _ in out]))


# --------------------------------------------------------------------------- comparing

_PASS_ON = (Act, Pool, AdaptivePool, Dropout, DropPath, Flatten, Parallel)  # nothing of their own that rounds much


def _input_scales(node, x: float, scales: dict[str, float], prefix: str, out: dict[str, float]) -> float:
    """Each layer's input scale (max|a| of what it receives), following the tree as `zoo.spec.run` does."""
    if isinstance(node, Seq):
        for name, child in node.children:
            path = join_path(prefix, name)
            if isinstance(child, Parallel):
                out[path] = max(_input_scales(b, x, scales, join_path(prefix, bn), out) for bn, b in child.branches)
                x = scales.get(path, 0.0)
            else:
                x = _input_scales(child, x, scales, path, out)
        return x
    out[prefix] = x
    return scales.get(prefix, 0.0)


def _scale(a: np.ndarray | None) -> float:
    if a is None:
        return 0.0
    finite = np.abs(a[np.isfinite(a)])
    return float(finite.max()) if finite.size else 0.0


def _compare(a: np.ndarray | None, b: np.ndarray | None) -> tuple[float, float]:
    """(max abs error, relative error) of one layer's outputs."""
    if a is None or b is None or a.shape != b.shape:
        return float("inf"), float("inf")
    a, b = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, settled below
        err = np.abs(a - b)
    both = np.isnan(a) & np.isnan(b)
    err = np.where(both | (a == b), 0.0, np.where(np.isnan(err), np.inf, err))  # equal infinities agree too
    max_abs = float(err.max()) if err.size else 0.0
    return max_abs, max_abs / max(_scale(a), 1e-30) if max_abs else 0.0


def diff(model, a, b, *, weights=None, input_size=None, batch: int = 2, seed: int = 0, tol: float = TOLERANCE,
         runner: str | None = None, overrides: dict | None = None, **more_overrides) -> Diff:
    """Run `model` two ways layer by layer and compare every layer's output: a `Diff` (a list of rows).

    `a` and `b`: 'torch', 'flax', 'keras', 'keras[BACKEND]', 'reference', a weight file (run in its
    own framework: torch for .pt and .safetensors, flax for Orbax, keras for .weights.h5 and .keras;
    or in `runner`, e.g. 'reference'), or a zoo model. Framework sides run `weights` (a pretrained
    tag, a file or a dict), else the weights of the file side, else `zoo.init_weights(spec, seed)`.
    `input_size` is the size of the input run; spec overrides are keywords, or `overrides`
    (where a spec's own `input_size` is one: `overrides={'input_size': 96}`).

    >>> zoo.diff('nin', 'model.pt', 'model.weights.h5').first    # None: no layer diverged
    """
    if not (isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1):
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    if runner is not None and runner != REFERENCE and runner not in _frameworks.FRAMEWORKS:
        raise ValueError(f"runner must be {REFERENCE!r} or a framework ({', '.join(_frameworks.FRAMEWORKS)}), "
                         f"got {runner!r}")
    overrides = {**(overrides or {}), **more_overrides}
    sides = [_side(a, "A", runner), _side(b, "B", runner)]
    spec, _ = _resolve(model, sides, weights, seed, overrides)
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size or spec.input_size)
    spec.check_input((batch, spec.in_channels, *size), "NCHW")
    x = np.random.default_rng(seed).standard_normal((batch, spec.in_channels, *size)).astype(np.float32)
    outs = [dict(_run(s, spec, x)) for s in sides]
    from zoo.api import _describe

    expected = dict(spec.layer_shapes(size, batch))
    scales = {path: _scale(out) for path, out in outs[0].items()}
    inputs: dict[str, float] = {}
    _input_scales(spec.body, _scale(x), scales, "", inputs)
    rows = []
    for layer in spec.layers():
        out_a, out_b = (o.get(layer.path) for o in outs)
        max_abs, rel = _compare(out_a, out_b)
        scale = max(scales.get(layer.path, 0.0), inputs[layer.path] if isinstance(layer.node, _PASS_ON) else 0.0)
        shape = tuple(out_a.shape) if out_a is not None else expected[layer.path]
        rows.append(Row(layer.path, _describe(layer.node), shape, max_abs, rel, tol * max(1.0, scale)))
    return Diff(rows, model=spec.name, a=sides[0].label, b=sides[1].label, input_shape=x.shape, seed=seed, tol=tol)
