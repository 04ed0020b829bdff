"""read, write, convert and inspect weight files in any supported format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import zoo
from zoo import reference
from zoo._checks import negative_variances
from zoo.io import FLOAT_DTYPES, keymaps, load, read, source  # noqa: F401  (re-exported by conversion)
from zoo.io.checkpoint import (
    ConversionError,
    atomic_output,
    check_finite,
    check_output_path,
    check_variances,
    one_line,
)
from zoo.io.formats import detect, function, is_previous_output, sniff
from zoo.io.infer import infer_spec, resolve_spec
from zoo.spec import ModelSpec

# The verification probe: batch 2, the spec's input size, or a smaller one that fits when that is too large;
# a source file that holds its own graph may fix the batch and size instead.
PROBE_MAX_ELEMENTS = 2**25  # of the largest activation: 128 MiB of float32


def probe_size(spec: ModelSpec, size: tuple[int, int] | None = None, batch: int = 2) -> tuple[int, int]:
    """The nominal input size, or the smallest square one that fits when its activations are too large
    (a spec whose linear layer takes a fixed size fits only some sizes: `ModelSpec.fits` says which).
    With `size` (a source graph's own), that size or an error."""
    m = spec.min_input_size
    for s in [size] if size else [tuple(spec.input_size), (m, m)]:
        if spec.fits(s) is not None:
            continue
        largest = max(max(int(np.prod(shape)) for _, shape in spec.layer_shapes(s, batch)),
                      batch * spec.in_channels * s[0] * s[1])
        if largest <= PROBE_MAX_ELEMENTS:
            return s
    if size:
        reason = spec.fits(size)
        why = f"does not run ({reason})" if reason else f"would need activations of over {PROBE_MAX_ELEMENTS:,} values"
        raise ConversionError(f"the source file's graph takes {_size(size)} inputs (batch {batch}), at which "
                              f"{spec.name} {why}; check that the file holds this model, or pass --no-verify / "
                              f"verify=False to skip the verification")
    raise ConversionError(f"verification would need activations of over {PROBE_MAX_ELEMENTS:,} values even at "
                          f"this spec's smallest input that fits ({m}x{m} or its nominal "
                          f"{spec.input_size[0]}x{spec.input_size[1]}); pass --no-verify / verify=False to skip it")


@dataclass
class Report:
    src_format: str
    dst_format: str
    spec: ModelSpec
    spec_origin: str
    dtype: str
    notes: list[str]
    max_abs: float | None = None  # between source and destination model outputs on the probe
    max_rel: float | None = None
    probe_shape: tuple[int, ...] | None = None
    runners: tuple[str, str] | None = None
    rounding: tuple[str, float, float] | None = None  # (dtype, max abs, relative): what a narrowing cast changed

    def __str__(self) -> str:
        lines = [f"{self.src_format} -> {self.dst_format}: {self.spec.name}, {self.spec.num_params:,} parameters, "
                 f"{self.dtype}; spec: {self.spec_origin}"]
        lines += [f"  {n}" for n in self.notes]
        if self.max_abs is not None:
            lines.append(f"  verified: {self.runners[0]} (source) vs {self.runners[1]} (destination) on a "
                         f"{list(self.probe_shape)} probe: max abs error {self.max_abs:.3e}, "
                         f"relative {self.max_rel:.3e}; tensors read back bit-identical")
        if self.rounding is not None:
            dtype, err, rel = self.rounding
            lines[-1] += " (the source run with its weights rounded the same way)"
            lines.append(f"  the rounding to {dtype} asked for moves the outputs on the probe by up to {err:.3e} "
                         f"(relative {rel:.3e}) from the source's own")
        return "\n".join(lines)


def _run(framework: str, spec: ModelSpec, weights: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, str]:
    """Logits from `framework`'s model, or from the float64 reference when it is not installed."""
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    try:
        model = zoo.load(spec, framework)
    except zoo.FrameworkNotInstalled:
        return reference.forward(spec, weights, x), "numpy float64 reference"
    zoo.set_weights(model, weights, allow_nonfinite=True)  # convert refused them unless allowed; outputs are judged
    return zoo.predict(model, x, layout="NCHW"), framework


def convert(src, dst, *, model: str | None = None, overrides: dict | None = None, spec: ModelSpec | None = None,
            src_format: str | None = None, dst_format: str | None = None, dtype: str | None = None,
            verify: bool = True, force: bool = False, allow_nonfinite: bool = False,
            state_dict_key: str | None = None) -> Report:
    """Convert a weight file to another format, through canonical weights; verify it by running both.

    `state_dict_key` names the entry of a .pt training checkpoint that holds the state_dict, where it holds
    several (a model and its moving average).

    >>> print(conversion.convert('model.pt', 'model.weights.h5'))
    """
    src, dst = source(src), Path(dst)  # source: hf-hub:ORG/NAME is a folder of the local hub cache
    if not (src.exists() or src.is_symlink()):  # first: a missing input matters more than an existing output
        raise ConversionError(f"{src} does not exist: nothing to convert")
    sfmt, dfmt = detect(src, src_format), detect(dst, dst_format, writing=True)
    check_output_path(dst)  # before any work
    if dst.exists() or dst.is_symlink():
        if not force:
            raise ConversionError(f"{dst} exists; refusing to overwrite it (pass --force / force=True)")
        if not is_previous_output(dfmt, dst):
            raise ConversionError(f"{dst} exists and is not a {dfmt.name} output ({_what(dst)}); refusing to "
                                  f"replace it even with --force: remove it yourself or choose another output name")
    if src.exists() and (src.resolve() == dst.resolve() or dst.resolve() in src.resolve().parents):
        raise ConversionError(f"the output {dst} would replace the input {src}; choose another output name")
    if dtype and dfmt.float32_only and dtype != "float32":
        raise ConversionError(f"{dfmt.name} files hold float32 weights only; --dtype {dtype} is possible for "
                              f".pt and .safetensors outputs")
    ckpt = read(src, sfmt.name, model=model, spec=spec, state_dict_key=state_dict_key)
    spec, origin = resolve_spec(ckpt, model, overrides, spec)
    weights = zoo.check_weights(spec, ckpt.weights, dtypes=FLOAT_DTYPES)
    check_finite(weights, allow_nonfinite)
    check_variances(src, spec, weights)
    notes = list(ckpt.notes)
    if dtype:
        if dtype not in FLOAT_DTYPES:
            raise ConversionError(f"--dtype must be one of {', '.join(FLOAT_DTYPES)}, got {dtype!r}")
        if dtype != ckpt.dtype:
            notes.append(f"cast from {ckpt.dtype} to {dtype}, as asked")
            weights = {k: v.astype(_numpy_dtype(dtype)) for k, v in weights.items()}
    elif dfmt.float32_only and ckpt.dtype != "float32":
        raise ConversionError(f"{src} holds {ckpt.dtype} weights and {dfmt.name} files hold float32: "
                              f"pass --dtype float32 to cast them")
    out_dtype = str(next(iter(weights.values())).dtype)
    report = Report(sfmt.name, dfmt.name, spec, origin, out_dtype, notes)
    if verify:
        probe_size(spec)  # refuses before writing anything
    writer = function(dfmt, "writer")
    with atomic_output(dst, force, lambda p: is_previous_output(dfmt, p)) as tmp:
        try:
            writer(weights, spec, tmp)
        except (ConversionError, KeyboardInterrupt):
            raise
        except Exception as e:  # OSError, RuntimeError from torch's zip writer, SafetensorError, h5py's, ...
            raise ConversionError(f"could not write {dst}: {one_line(e)}") from None
        if verify:
            _verify(report, src, sfmt, ckpt.weights, weights, tmp, dfmt)
    return report


def _numpy_dtype(name: str):
    """numpy's dtype for a FLOAT_DTYPES name: bfloat16 is ml_dtypes' (NumPy has none of its own)."""
    if name != "bfloat16":
        return np.dtype(name)
    try:
        import ml_dtypes
    except ImportError:
        raise ConversionError("--dtype bfloat16 needs the ml_dtypes package: pip install ml_dtypes") from None
    return ml_dtypes.bfloat16


def _verify(report: Report, src: Path, sfmt, src_weights, written, tmp: Path, dfmt) -> None:
    back = read(tmp, dfmt.name, spec=report.spec)
    bad = [k for k in written if back.weights.get(k) is None or back.weights[k].dtype != written[k].dtype
           or back.weights[k].shape != written[k].shape or back.weights[k].tobytes() != written[k].tobytes()]
    if bad or set(back.weights) != set(written):
        raise ConversionError(f"verification failed: tensors read back from the output differ: {', '.join(bad)}")
    spec = report.spec
    # A file that holds its own graph (ONNX) is run as it is, so that a foreign graph read as the wrong spec shows.
    graph = function(sfmt, "graph")(src, PROBE_MAX_ELEMENTS) if sfmt.graph else None
    x = _probe(spec, graph)
    a, ran_a = (graph(x), graph.runner) if graph else _run(sfmt.framework, spec, src_weights, x)
    b, ran_b = _run(dfmt.framework, spec, back.weights, x)
    if a.shape != b.shape:
        raise ConversionError(f"verification failed: the source gives outputs of shape {a.shape}, the destination "
                              f"{b.shape}; nothing was written")
    # NaN or Inf outputs compare as nothing (NaN - NaN is NaN, Inf - Inf too, and Inf passes an Inf tolerance)
    bad = {side: int(np.size(out) - np.isfinite(out).sum()) for side, out in (("source", a), ("destination", b))}
    if any(bad.values()):
        raise ConversionError(f"verification failed: on the probe, the source gives {bad['source']} and the "
                              f"destination {bad['destination']} NaN or Inf output(s), which prove nothing; nothing "
                              f"was written (pass --no-verify / verify=False to convert without verifying)")
    scale = float(np.abs(a).max())
    report.probe_shape, report.runners = x.shape, (ran_a, ran_b)
    narrower = sorted({str(written[k].dtype) for k in written
                       if written[k].dtype.itemsize < np.asarray(src_weights[k]).dtype.itemsize})
    if narrower:
        # The cast asked for (--dtype float16, say) changes the outputs by itself: that change is measured and
        # reported, and the destination is verified against the source run with the same rounded weights.
        rounding = float(np.abs(a.astype(np.float64) - b).max())
        report.rounding = (", ".join(narrower), rounding, rounding / max(scale, 1e-30))
        a, _ = _run(sfmt.framework, spec, written, x)
    report.max_abs = float(np.abs(a.astype(np.float64) - b).max())
    report.max_rel = report.max_abs / max(scale, 1e-30)
    if not report.max_abs <= 1e-5 * max(1.0, scale):  # written so that NaN fails
        raise ConversionError(f"verification failed: outputs differ by {report.max_abs:.3e} (scale {scale:.3g})"
                              f"{' with the same rounded weights on both sides' if narrower else ''}; "
                              f"nothing was written")


def _probe(spec: ModelSpec, graph=None) -> np.ndarray:
    """Seeded NCHW input: batch 2 at `probe_size`, or what a source graph fixes (its batch, its size)."""
    batch, size = 2, None
    if graph is not None:
        if graph.channels not in (None, spec.in_channels):
            raise ConversionError(f"the source file's graph takes {graph.channels} input channel(s), {spec.name} "
                                  f"{spec.in_channels}: the file holds another model")
        batch, size = max(2, graph.batch or 2), graph.size  # a graph of batch 1 runs the probe sample by sample
    h, w = probe_size(spec, size, batch)
    return np.random.default_rng(0).standard_normal((batch, spec.in_channels, h, w)).astype(np.float32)


def _what(path: Path) -> str:
    return "a folder of other files" if path.is_dir() else sniff(path)


def inspect(path, format: str | None = None, model: str | None = None, state_dict_key: str | None = None) -> str:
    """What a file holds: format, tensors, dtype, foreign keys recognised, and the spec it fits (or why none).

    >>> print(conversion.inspect('resnet18.pt'))
    """
    ckpt = read(path, format, model=model, state_dict_key=state_dict_key)
    lines = [f"{path}: {ckpt.format} format, {len(ckpt.weights)} tensors, {ckpt.num_params:,} values, "
             f"{ckpt.dtype}"]
    lines += [f"  {n}" for n in ckpt.notes]
    spec = None
    try:
        spec, origin = resolve_spec(ckpt, model)
        zoo.check_weights(spec, ckpt.weights, dtypes=FLOAT_DTYPES)
        lines.append(f"fits: {spec.name} (family {spec.family}), {spec.num_params:,} parameters, "
                     f"{spec.in_channels} input channel(s), {spec.num_classes} classes; spec: {origin}")
        lines.append(f"  input: nominal {_size(spec.input_size)}, {_input_fit(spec)}; "
                     f"{spec.flops() / 1e9:.3g} GFLOPs at {_size(spec.input_size)}")
        buffers = spec.buffer_names()
        if buffers:
            lines.append(f"  BatchNorm running statistics: present ({len(buffers)} tensors, running_mean and "
                         f"running_var of {len(buffers) // 2} layers); inference uses them as they are")
        negative = negative_variances(spec, ckpt.weights)
        if negative:
            lines.append(f"  negative BatchNorm running variance in: {', '.join(negative)}; zoo.load and zoo convert "
                         f"refuse the file")
    except (ConversionError, ValueError) as e:
        lines.append(f"fits no model: {e}")
        missing = [k for k in spec.param_shapes() if k not in ckpt.weights] if spec is not None else []
        if missing and set(missing) <= spec.buffer_names():
            lines.append(f"  the file lacks its {len(missing)} BatchNorm running statistics (running_mean, "
                         f"running_var), which inference needs: save the whole state_dict, buffers included")
    bad = [k for k, a in ckpt.weights.items() if not np.isfinite(a.astype(np.float32)).all()]
    if bad:
        lines.append(f"non-finite values in: {', '.join(bad)}")
    for k, a in list(ckpt.weights.items())[:40]:
        lines.append(f"  {k:<28} {str(list(a.shape)):<20} {a.dtype}")
    if len(ckpt.weights) > 40:
        lines.append(f"  ... {len(ckpt.weights) - 40} more")
    return "\n".join(lines)


def _size(pair) -> str:
    return f"{pair[0]}x{pair[1]}"


def _input_fit(spec: ModelSpec) -> str:
    m = spec.min_input_size
    h, w = spec.input_size
    if spec.fits((h + 1, w + 1)) is not None:  # a larger input never vanishes: a fixed-size linear layer
        return f"only some sizes fit (its linear layer takes a fixed number of features; smallest square {m}x{m})"
    return f"any size from {m}x{m} up fits"


__all__ = ["read", "load", "convert", "inspect", "infer_spec", "Report"]
