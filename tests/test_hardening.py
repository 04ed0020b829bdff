"""Hostile and broken files, and write errors: one test per failure issue 10 lists (the fuzzing
harness, tests/test_fuzz.py, covers the same ground at random)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fuzz_cases import spec_location

import zoo
from zoo import conversion
from zoo.conversion import ConversionError
from zoo.io.formats import FORMATS, function

ROOT = Path(__file__).parents[1]
SPEC = zoo.get_spec("nin", widths=(8, 16, 16), input_size=96)


def _has(*packages: str) -> bool:
    return all(importlib.util.find_spec(p) is not None for p in packages)


needs_torch = pytest.mark.skipif(not _has("torch"), reason="torch not installed")
needs_keras = pytest.mark.skipif(not _has("keras", "h5py"), reason="keras not installed")
needs_flax = pytest.mark.skipif(not _has("flax", "orbax"), reason="flax not installed")


def _write(fmt: str, path: Path, spec=SPEC, weights=None) -> Path:
    function(FORMATS[fmt], "writer")(weights if weights is not None else zoo.init_weights(spec, 1), spec, path)
    return path


def _cli(*args: str, cwd: Path | None = None, timeout: float = 300,
         max_file_kib: int | None = None) -> subprocess.CompletedProcess:
    """`zoo` in a fresh process; `max_file_kib` caps the size of any file it writes, as a full disk would
    (`ulimit -f` in a shell that then execs it: no Python runs between fork and exec in this JAX process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    argv = [sys.executable, "-m", "zoo.cli", *args]
    if max_file_kib is not None:
        argv = ["bash", "-c", f'ulimit -f {max_file_kib} && exec "$@"', "bash", *argv]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _zoo_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".zoo-") or ".partial" in p.name)


# --------------------------------------------------------------------------- data loss and wrong results

@needs_torch
def test_force_never_replaces_a_folder_of_other_files(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    src = _write("safetensors", work / "nin.safetensors")
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    # before: `zoo convert nin.pt ../work --force` from inside work/ deleted work/, the input with it
    with pytest.raises(ConversionError, match=r"would replace the input|not a flax output"):
        conversion.convert("nin.safetensors", "../work", force=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("keep")
    with pytest.raises(ConversionError, match=r"exists and is not a flax output \(a folder of other files\); "
                                              r"refusing to replace it even with --force"):
        conversion.convert(src, other, dst_format="flax", force=True)
    assert sorted(p.name for p in work.iterdir()) == ["nin.safetensors", "notes.txt"]
    assert (other / "keep.txt").read_text() == "keep"


@needs_flax
@pytest.mark.flax
def test_force_replaces_a_previous_output_of_the_same_format(tmp_path):
    src = _write("safetensors", tmp_path / "a.safetensors")
    conversion.convert(src, tmp_path / "ckpt", verify=False)
    conversion.convert(src, tmp_path / "ckpt", verify=False, force=True)
    assert conversion.read(tmp_path / "ckpt").spec == SPEC and _zoo_files(tmp_path) == []


def _nodes(d, op: str):
    """The dictionaries of every `op` node in a spec dictionary (to_dict's output), in layer order."""
    if isinstance(d, dict):
        if d.get("op") == op:
            yield d
        for v in d.values():
            yield from _nodes(v, op)
    elif isinstance(d, list):
        for v in d:
            yield from _nodes(v, op)


def _nonpreset():
    """SPEC with its first pool averaging and its first conv of stride 3: a spec no preset describes."""
    d = SPEC.to_dict()
    next(_nodes(d, "Pool"))["kind"] = "avg"
    next(_nodes(d, "Conv"))["stride"] = 3
    return zoo.ModelSpec.from_dict(d)


@needs_torch
@needs_keras
@pytest.mark.keras
def test_nonpreset_spec_survives_pt_and_weights_h5(tmp_path):
    """Before: .pt and .weights.h5 dropped the spec; reading them back built the preset (logits off by 0.6)."""
    spec = _nonpreset()
    w = zoo.init_weights(spec, 2)
    src = _write("safetensors", tmp_path / "a.safetensors", spec, w)
    conversion.convert(src, tmp_path / "b.pt")
    conversion.convert(tmp_path / "b.pt", tmp_path / "c.weights.h5")
    for p in (tmp_path / "b.pt", tmp_path / "c.weights.h5"):
        back = conversion.read(p)
        assert back.spec == spec, p
        got, _ = conversion.resolve_spec(back)
        assert got == spec
    x = np.random.default_rng(0).standard_normal((2, 1, 96, 96)).astype(np.float32)
    a = zoo.predict(zoo.load("nin", "torch", weights=tmp_path / "b.pt"), x, layout="NCHW")
    b = zoo.predict(zoo.load("nin", "keras", weights=tmp_path / "c.weights.h5"), x, layout="NCHW")
    np.testing.assert_allclose(a, b, atol=1e-5)


@needs_torch
def test_plain_state_dict_still_reads(tmp_path):
    import torch

    torch.save({k: torch.from_numpy(v) for k, v in zoo.init_weights(SPEC).items()}, tmp_path / "plain.pt")
    ckpt = conversion.read(tmp_path / "plain.pt")
    assert ckpt.spec is None and conversion.resolve_spec(ckpt)[0].param_shapes() == SPEC.param_shapes()


def test_tag_and_path_are_never_ambiguous(tmp_path, monkeypatch):
    from zoo import pretrained

    if "nin.fashion_mnist" not in pretrained.manifest():
        pytest.skip("no shipped nin.fashion_mnist")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fashion_mnist").mkdir()
    # before: the folder was loaded instead of the shipped weights, without the hash check
    with pytest.raises(ValueError, match=r"'fashion_mnist' is both a pretrained tag of nin and a file or folder in "
                                         r"the current directory; write './fashion_mnist'"):
        zoo.load("nin", "torch", weights="fashion_mnist")


@needs_flax
@pytest.mark.flax
def test_a_path_is_never_a_tag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fashion_mnist").mkdir()
    for path in ("./fashion_mnist", Path("fashion_mnist")):  # unmistakably the folder: read as a Flax checkpoint
        with pytest.raises(ValueError, match="fashion_mnist is not a readable Orbax checkpoint"):
            zoo.load("nin", "torch", weights=path)


@needs_torch
def test_final_move_refuses_an_output_that_appeared_meanwhile(tmp_path, monkeypatch):
    src = _write("safetensors", tmp_path / "a.safetensors")
    import zoo.io.io_torch as io

    real = io.write

    def racing_write(weights, spec, path):
        real(weights, spec, path)
        (tmp_path / "b.pt").write_bytes(b"the other conversion's output")

    monkeypatch.setattr(io, "write", racing_write)
    # before: both reported success and the last one silently replaced the other's file
    with pytest.raises(ConversionError, match=r"b.pt appeared while this conversion ran"):
        conversion.convert(src, tmp_path / "b.pt")
    assert (tmp_path / "b.pt").read_bytes() == b"the other conversion's output"
    assert _zoo_files(tmp_path) == []


@needs_torch
def test_pt_byte_flip_in_tensor_data_is_caught(tmp_path):
    path = _write("torch", tmp_path / "a.pt")
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 1000)
    data = bytearray(path.read_bytes())
    at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 100
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ConversionError, match=r"fails its CRC32 check: the file is corrupt"):
        conversion.read(path)


def _first_kernel(f) -> str:
    """The name of the first 4-D dataset (a conv kernel) in a Keras .weights.h5, whatever its layers are called."""
    import h5py

    found = []
    f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim == 4 else None)
    assert found, "no conv kernel in the file"
    return found[0]


@needs_keras
@pytest.mark.keras
@pytest.mark.parametrize("dtype", ["int32", "uint8", "bool", "complex64", "float16", "float64"])
def test_weights_h5_of_another_dtype_is_refused_not_cast(dtype, tmp_path):
    import h5py

    path = _write("keras", tmp_path / "a.weights.h5")
    with h5py.File(path, "a") as f:
        name = _first_kernel(f)
        old = f[name][()]
        del f[name]
        f.create_dataset(name, data=old.astype(dtype))
    with pytest.raises(ConversionError, match=rf"{re.escape(name)} is {dtype}; Keras weights files hold "
                                              rf"float32, and the zoo casts nothing silently"):
        conversion.inspect(path)


def test_nonfinite_input_propagates_in_every_framework(framework):
    """The policy: NaN in an input gives NaN logits for that image, in every framework (as torch does).
    Before: Keras on TensorFlow gave finite logits (its max pool skips NaN)."""
    model = zoo.load("nin", framework, **dict(widths=(8, 16, 16)))
    x = np.random.default_rng(0).standard_normal((3, 1, 67, 67)).astype(np.float32)
    x[0, 0, 30, 30] = np.nan
    x[1, 0, 5, 60] = np.inf
    out = zoo.predict(model, x, layout="NCHW")
    assert np.isnan(out[0]).all(), out[0]
    assert not np.isfinite(out[1]).any(), out[1]
    assert np.isfinite(out[2]).all()


def test_empty_batch_gives_empty_logits(framework):
    model = zoo.load("nin", framework, widths=(8, 16, 16))
    assert zoo.predict(model, np.zeros((0, 1, 67, 67), np.float32), layout="NCHW").shape == (0, 10)


@needs_torch
def test_nan_weights_refused_by_set_weights_and_load_dict():
    w = zoo.init_weights(SPEC)
    w["blocks.2.conv1.weight"][0, 0, 0, 0] = np.nan
    model = zoo.load(SPEC, "torch")
    with pytest.raises(zoo.WeightsError, match=r"NaN or Inf in 1 tensor\(s\): blocks.2.conv1.weight \(1 values\)"):
        zoo.set_weights(model, w)
    with pytest.raises(zoo.WeightsError, match="NaN or Inf"):
        zoo.load(SPEC, "torch", weights=w)
    zoo.set_weights(model, w, allow_nonfinite=True)  # on request


# --------------------------------------------------------------------------- unbounded time and memory

def test_min_input_size_matches_a_search_of_every_size():
    """ModelSpec.min_input_size (a bisection) against trying every size from 1 up, on random stacks of convs
    and pools, each padded up to what PyTorch allows."""
    from zoo.spec import AdaptivePool, Conv, Flatten, Pool, Seq

    rng = np.random.default_rng(0)
    for _ in range(200):
        children, channels = [], 1
        for i in range(int(rng.integers(1, 5))):
            out = 3 if i == 3 else 4
            children.append((f"conv{i}", Conv(channels, out, int(rng.integers(1, 12)), int(rng.integers(1, 5)),
                                              int(rng.integers(0, 4)))))
            channels = out
            if rng.random() < 0.6:
                size = int(rng.integers(1, 6))
                children.append((f"pool{i}", Pool(str(rng.choice(["max", "avg"])), size, int(rng.integers(1, 4)),
                                                  int(rng.integers(0, size // 2 + 1)),
                                                  ceil_mode=bool(rng.random() < 0.3))))
        children[-1:] = children[-1:] if channels == 3 else [*children[-1:], ("head", Conv(channels, 3, 1))]
        children += [("gap", AdaptivePool(1)), ("flatten", Flatten())]
        spec = zoo.ModelSpec("random", "test", 1, 3, Seq(*children), input_size=16384)
        n = 1
        while spec.fits((n, n)) is not None:
            n += 1
        assert spec.min_input_size == n, spec


@pytest.mark.parametrize("edit, message", [
    (lambda d: next(_nodes(d, "Conv")).update(kernel_size=10**7),
     "kernel_size must be an int or (h, w), each in [1, 512], got 10000000"),
    (lambda d: next(_nodes(d, "Pool")).update(stride=10**7),
     "pool stride must be an int or (h, w), each in [1, 512], got 10000000"),
    (lambda d: [c.update(in_channels=30000, out_channels=30000) for c in list(_nodes(d, "Conv"))[3:6]],
     "parameters, over the limit"),
    (lambda d: d.update(input_size=[30000, 30000]), "each in [1, 16384]"),
    (lambda d: d.update(name=5), "name and family must be strings"),
], ids=["kernel", "pool_stride", "widths", "input_size", "name"])
def test_spec_from_a_file_is_bounded_before_any_allocation(edit, message):
    d = SPEC.to_dict()
    edit(d)
    # the limit's message, not a size search: before, a kernel of 1e7 never finished (min_input_size
    # searched sizes one by one)
    with pytest.raises(zoo.SpecError, match=re.escape(message)):
        zoo.ModelSpec.from_json(json.dumps(d))


def test_spec_with_no_layers_is_a_spec_error():
    """Found by the fuzz harness's spec edits: before, an IndexError escaped from a file's empty body."""
    with pytest.raises(zoo.SpecError):
        zoo.ModelSpec.from_json(json.dumps({**SPEC.to_dict(), "body": {"seq": []}}))


def test_deeply_nested_spec_json_is_a_spec_error():
    with pytest.raises(zoo.SpecError, match="RecursionError"):  # before: RecursionError escaped
        zoo.ModelSpec.from_json("[" * 30_000 + "]" * 30_000)
    nested = {"seq": [["a", {"seq": []}]]}
    for _ in range(100):  # deep, but valid JSON: the tree's own limit
        nested = {"seq": [["a", nested]]}
    with pytest.raises(zoo.SpecError, match="too large"):
        zoo.ModelSpec.from_dict({**SPEC.to_dict(), "body": nested})


@needs_torch
def test_expanded_pt_tensor_refused_before_copying(tmp_path):
    import torch

    sd = {k: torch.from_numpy(v) for k, v in zoo.init_weights(SPEC).items()}
    sd["blocks.0.conv0.weight"] = torch.zeros(1).expand(40000, 40000)
    torch.save(sd, tmp_path / "x.pt")
    assert (tmp_path / "x.pt").stat().st_size < 100_000
    # before: 6 GB in 3 s, copying before any check
    with pytest.raises(ConversionError, match=r"has 4 bytes of data for 6,400,000,000 \(an expanded"):
        conversion.read(tmp_path / "x.pt")


@needs_keras
@pytest.mark.keras
def test_keras_archive_with_huge_widths_or_a_zip_bomb_refused(tmp_path):
    path = _write("keras_archive", tmp_path / "a.keras")
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    config = json.loads(members["config.json"])
    container, key, as_text = spec_location(config)  # wherever the Keras model keeps its spec
    spec = json.loads(container[key]) if as_text else container[key]
    for conv in list(_nodes(spec, "Conv"))[3:6]:
        conv.update(in_channels=30000, out_channels=30000)
    container[key] = json.dumps(spec) if as_text else spec
    with zipfile.ZipFile(tmp_path / "wide.keras", "w") as z:
        for name, data in members.items():
            z.writestr(name, json.dumps(config) if name == "config.json" else data)
    with pytest.raises(ConversionError, match=r"parameters, over the limit of 500,000,000"):
        conversion.read(tmp_path / "wide.keras")
    with zipfile.ZipFile(tmp_path / "bomb.keras", "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, bytes(2**27) if name == "model.weights.h5" else data)
    with pytest.raises(ConversionError, match=r"declares 134,217,728 bytes from .* compressed \(a zip bomb\?\)"):
        conversion.read(tmp_path / "bomb.keras")


def test_verification_probe_is_bounded():
    big = dataclasses.replace(SPEC, input_size=(16000, 16000))
    from zoo.conversion.convert import probe_size  # a function of the spec alone

    assert probe_size(SPEC) == (96, 96)
    assert probe_size(big) == (67, 67)  # before: 14 GB for a 30,000 input
    # a spec whose linear layer takes a fixed size: only its nominal (non-square) input fits
    from op_specs import flatten_spec

    assert probe_size(flatten_spec((11, 7))) == (11, 7)
    with pytest.raises(ConversionError, match=r"verification would need activations of over 33,554,432 values even "
                                              r"at this spec's smallest input that fits .*--no-verify"):
        probe_size(flatten_spec((3000, 3000)))


def test_fifo_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "x.pt")

    def blocked(signum, frame):  # before: open() waited for a writer forever
        raise AssertionError("reading the FIFO blocked")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(60)
    try:
        with pytest.raises(ConversionError, match="is not a regular file"):
            conversion.read(tmp_path / "x.pt")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------- write errors and leftovers

@pytest.mark.parametrize("fmt, name", [("torch", "out.pt"), ("safetensors", "out.safetensors"), ("flax", "out")])
def test_parent_is_a_file(fmt, name, tmp_path):
    if not _has("torch") or (fmt == "flax" and not _has("flax")):
        pytest.skip("framework missing")
    src = _write("safetensors", tmp_path / "a.safetensors")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConversionError, match=r"file is a file, not a folder"):
        conversion.convert(src, tmp_path / "file" / name)


@pytest.mark.parametrize("fmt, name", [("torch", "out.pt"), ("safetensors", "out.safetensors"), ("flax", "out"),
                                       ("keras", "out.weights.h5"), ("onnx", "out.onnx"), ("hf", "out")])
def test_full_disk_is_one_line_no_hang_no_leftovers(fmt, name, tmp_path):
    """`ulimit -f` as a full disk. Before: tracebacks (torch, safetensors), and Flax hung forever."""
    need = {"torch": ("torch",), "safetensors": ("torch",), "flax": ("flax",), "keras": ("keras",),
            "onnx": ("onnx", "onnxruntime"), "hf": ()}[fmt]
    if not _has(*need):
        pytest.skip("framework missing")
    spec = zoo.get_spec("resnet18" if fmt == "hf" else "nin")  # what a Hugging Face folder can hold; nin: 8 MB
    src = _write("safetensors", tmp_path / "a.safetensors", spec)
    r = _cli("convert", str(src), str(tmp_path / name), "--no-verify", "--to", fmt, timeout=240, max_file_kib=195)
    errors = [line for line in r.stderr.splitlines() if line.startswith("zoo: error:")]
    assert r.returncode == 2 and len(errors) == 1 and errors[0].startswith("zoo: error: could not write"), \
        r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]  # Orbax's late 'Event loop is closed' ones included
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    if not _has("torch"):
        pytest.skip("torch missing")
    src = _write("safetensors", tmp_path / "a.safetensors")
    script = textwrap.dedent(f"""
        import sys, time
        import zoo.io.io_safetensors as io
        real = io.write
        def slow(weights, spec, path):
            real(weights, spec, path)
            print("written", flush=True)
            time.sleep(60)
        io.write = slow
        from zoo import cli
        sys.exit(cli.main(["convert", {str(src)!r}, {str(tmp_path / "b.safetensors")!r}]))
    """)
    p = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "written"
    assert _zoo_files(tmp_path)  # the temporary is there
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    # before: the .NAME.partial-PID temporary stayed forever
    assert p.returncode == 130 and "interrupted" in err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.safetensors"]


def test_sigterm_between_the_files_of_a_folder_leaves_nothing(tmp_path):
    """A Hugging Face folder is two files: a signal after the weights, before config.json, leaves no folder."""
    src = _write("safetensors", tmp_path / "a.safetensors", zoo.get_spec("resnet18"))
    script = textwrap.dedent(f"""
        import sys, time
        import zoo.io.io_hf as io
        real = io.save_file
        def slow(*args, **kwargs):
            real(*args, **kwargs)
            print("weights written", flush=True)
            time.sleep(60)
        io.save_file = slow
        from zoo import cli
        sys.exit(cli.main(["convert", {str(src)!r}, {str(tmp_path / "out")!r}, "--to", "hf", "--no-verify"]))
    """)
    p = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "weights written"
    assert _zoo_files(tmp_path)  # the temporary folder is there
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted" in err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.safetensors"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    if not _has("torch"):
        pytest.skip("torch missing")
    src = _write("safetensors", tmp_path / "a.safetensors")
    dead = subprocess.Popen(["true"])
    dead.wait()
    old = time.time() - 3600
    stale = tmp_path / f".zoo-{dead.pid}-0123abcd.partial.pt"
    stale.write_bytes(b"left by a killed run")
    os.utime(stale, (old, old))
    alive = tmp_path / f".zoo-{os.getppid()}-0123abcd.partial.pt"  # a live process's: kept
    alive.write_bytes(b"in use")
    os.utime(alive, (old, old))
    # a dead PID's young temporary may be a live writer's on another machine sharing this folder: kept
    young = tmp_path / f".zoo-{dead.pid}-4567cdef.partial.pt"
    young.write_bytes(b"another machine's")
    conversion.convert(src, tmp_path / "b.pt")
    assert not stale.exists() and alive.exists() and young.exists()


@needs_torch
def test_small_errors_are_one_line(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ConversionError, match=r"is not a PyTorch checkpoint: it is empty \(0 bytes\)"):
        conversion.read(tmp_path / "empty.pt")  # before: IndexError
    src = _write("safetensors", tmp_path / "a.safetensors")
    with pytest.raises(ConversionError, match="not a valid UTF-8 file name"):
        conversion.convert(src, tmp_path / "b\udcff.safetensors")
    with pytest.raises(ConversionError, match=r"'\.' names a folder, not an output file"):
        conversion.convert(src, Path("."), dst_format="torch")  # before: PosixPath('.') has an empty name
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        zoo.summary("nin", batch_size=0)  # before: ZeroDivisionError


@needs_torch
def test_pt_that_is_not_a_pickle_says_what_it_is(tmp_path):
    _write("safetensors", tmp_path / "renamed.pt")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(1600))
    for name, what in [("renamed.pt", "it is a safetensors file"), ("random.pt", "1,600 bytes of unknown content")]:
        with pytest.raises(ConversionError) as e:
            conversion.read(tmp_path / name)
        msg = str(e.value).replace(str(tmp_path), "")
        assert what in msg and "pickle" not in msg and "weights_only=False" not in msg


@needs_torch
def test_malicious_pickle_never_relays_weights_only_false(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"blocks.0.conv0.weight": Evil()}, f)
    with pytest.raises(ConversionError, match="refused: it pickles Python objects") as e:
        conversion.read(tmp_path / "evil.pt")
    assert "weights_only" not in str(e.value).replace("weights_only=True", "") and "\n" not in str(e.value)


def test_one_line_keeps_the_whole_reason():
    from zoo.io.checkpoint import one_line

    e = ValueError("Layer 'x' expected 2 variables,\nbut received 3 variables during loading.\nExpected: ['a', 'b']")
    assert one_line(e) == ("ValueError: Layer 'x' expected 2 variables, but received 3 variables during loading. "
                           "Expected: ['a', 'b']")


@needs_torch
def test_long_legal_output_name_is_accepted(tmp_path):
    src = _write("safetensors", tmp_path / "a.safetensors")
    name = "n" * (250 - len(".pt")) + ".pt"  # before: refused, the temporary's name was longer than 255 bytes
    conversion.convert(src, tmp_path / name, verify=False)
    assert (tmp_path / name).exists()


@needs_torch
@pytest.mark.parametrize("dst", ["b.weights.h5", "b.keras", "b_flax"])
def test_dtype_float16_to_a_float32_format_says_so(dst, tmp_path):
    src = _write("safetensors", tmp_path / "a.safetensors")
    with pytest.raises(ConversionError, match=r"files hold float32 weights only; --dtype float16 is possible for "
                                              r"\.pt and \.safetensors outputs"):
        conversion.convert(src, tmp_path / dst, dtype="float16")


@needs_torch
def test_final_move_without_hard_links_still_exclusive(tmp_path, monkeypatch):
    src = _write("safetensors", tmp_path / "a.safetensors")

    def no_links(a, b):
        raise PermissionError("hard links not supported here")

    monkeypatch.setattr(os, "link", no_links)
    conversion.convert(src, tmp_path / "b.pt", verify=False)
    assert conversion.read(tmp_path / "b.pt").spec == SPEC and _zoo_files(tmp_path) == []


@needs_keras
@pytest.mark.keras
def test_plain_keras_weights_file_still_reads(tmp_path):
    zoo.load(SPEC, "keras", weights=zoo.init_weights(SPEC, 1)).save_weights(tmp_path / "plain.weights.h5")
    ckpt = conversion.read(tmp_path / "plain.weights.h5")
    assert "inferred" in ckpt.spec_origin and ckpt.spec.param_shapes() == SPEC.param_shapes()


def test_train_batch_size_zero_is_an_argument_error(capsys):
    from zoo import cli

    # before: ZeroDivisionError in the trainer
    assert cli.main(["train", "nin", "--out", "unused", "--batch-size", "0"]) == 2
    assert capsys.readouterr().err.strip() == "zoo: error: --batch-size must be at least 1, got 0"
