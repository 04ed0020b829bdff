"""The fuzzing harness: seeded mutants and crafted hostile files of every format, run through
`zoo inspect`, `zoo convert` and `zoo.load`, each under a time and memory bound.

Design:
- A worker process (`python tests/fuzz_cases.py --worker torch,flax,keras`) imports the frameworks once, then caps
  its address space (RLIMIT_AS: what it uses after the imports plus MEMORY_BUDGET) and runs cases
  sent as JSON lines on stdin. Each case is built in a fresh folder, each operation runs under
  signal.alarm(CASE_SECONDS) (a Python-level timeout); the supervisor (`run_cases`) kills the
  worker when a case takes longer than HARD_SECONDS (a hang in C code), records it, and starts
  another worker.
- A case is (format, kind, seed). Kinds: 'truncate', 'flip', 'zero' (bytes), 'header' (the
  format's own header: zip local headers, the safetensors JSON header, HDF5 superblock and
  attributes, Orbax metadata), 'spec' (the spec the file carries, with absurd or malformed
  values), and 'crafted:NAME' (the hostile files of CRAFTED).
- Each operation's outcome is one of:
    ok            success, and every tensor read back equals the seed file's (or the spec edit was sane)
    error         a one-line error (CLI: exit 2 and one stderr line 'zoo: error: ...'; API: a
                  ValueError, TypeError, OSError or ImportError whose message is one line)
    wrong         success with tensors that differ from the seed file's: silent damage
    bad-error     a traceback, an exception of another type, or a message over several lines
    timeout       the operation ran past CASE_SECONDS
    leftover      a file or folder was left behind or changed (besides a successful output)
    hang          the worker stopped answering (killed after HARD_SECONDS) or died (memory)
  and the harness wants only 'ok' and 'error'.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

CASE_SECONDS = 30
HARD_SECONDS = 90
MEMORY_BUDGET = 3 * 2**30  # bytes of address space a case may add to the worker's
FORMATS = ("torch", "safetensors", "flax", "keras", "keras_archive", "onnx")
NAMES = {"torch": "m.pt", "safetensors": "m.safetensors", "flax": "m_flax", "keras": "m.weights.h5",
         "keras_archive": "m.keras", "onnx": "m.onnx"}
DESTINATIONS = ("safetensors", "torch", "keras", "flax", "keras_archive", "onnx")
KINDS = ("truncate", "flip", "zero", "header", "spec")
SPEC_ARGS = dict(widths=(8, 16, 16), input_size=96)

# Paths into the spec dictionary (ModelSpec.to_dict) of SPEC_ARGS's NiN
_BODY = ("body", "seq")
CONV0 = (*_BODY, 0, 1, "seq", 0, 1)  # blocks.0.conv0
POOL0 = (*_BODY, 1, 1)  # pools.0
BLOCK1 = (*_BODY, 2, 1, "seq")  # blocks.1
DROPOUT = (*_BODY, 6, 1)  # dropouts.2
WIDE = {"in_channels": 30000, "out_channels": 30000}  # a dict value updates the node

# Absurd or malformed values for the spec a file carries: (JSON path, value)
SPEC_EDITS = [
    ((*CONV0, "kernel_size"), 10**7), ((*CONV0, "stride"), 10**7),
    ((*CONV0, "stride"), 0), ((*POOL0, "size"), 10**7),
    ((*POOL0, "stride"), 10**7), ((*BLOCK1, 2, 1), WIDE),
    (("input_size",), [30000, 30000]), (("input_size",), 10**9), (("name",), 5), (("in_channels",), -1),
    (_BODY, []), ((*_BODY, 0, 1), "x"), (("num_classes",), 10**12), ((*DROPOUT, "rate"), 7.5),
    ((*POOL0, "kind"), "median"), ((*CONV0, "kernel_size"), 3.5),
    ((*CONV0, "padding"), -4), ((*POOL0, "padding"), 10**6), ((*CONV0, "op"), "Conv3D"),
    ((*_BODY, 8), ["join", {"parallel": "add", "branches": []}]), ((*BLOCK1, 0, 1, "groups"), 2),
    ((*_BODY, 4, 1, "seq", 0, 1, "stride"), 2), ((*POOL0, "kind"), "avg"),  # sane: fine if it reads
]
NESTED = "[" * 30_000 + "]" * 30_000  # deep JSON: RecursionError in json.loads
GARBAGE_SPECS = [NESTED, "{", "null", "[]", '{"name": "nin"}', "\ud800" * 3, "1e999", '{"stages": [1, 2]}']


def spec():
    import zoo

    return zoo.get_spec("nin", **SPEC_ARGS)


def base_weights():
    import zoo

    return zoo.init_weights(spec(), seed=1)


def write_seed(fmt: str, folder: Path, spec_=None, weights=None) -> Path:
    from zoo.io.formats import FORMATS as F
    from zoo.io.formats import function

    path = Path(folder) / NAMES[fmt]
    function(F[fmt], "writer")(weights if weights is not None else base_weights(), spec_ or spec(), path)
    return path


# --------------------------------------------------------------------------- mutations

def _files(path: Path) -> list[Path]:
    """A file, or a folder's files in an order that does not depend on the random names Orbax gives
    its data files (so that a seed picks the same file in every run, but among files of equal size)."""
    if not path.is_dir():
        return [path]
    files = [p for p in path.rglob("*") if p.is_file()]
    return sorted(files, key=lambda p: (re.sub(r"[0-9a-f]{32}", "#", str(p.relative_to(path))), p.stat().st_size,
                                        str(p)))


def _mutate_bytes(path: Path, kind: str, rng: random.Random) -> str:
    target = rng.choice(_files(path))
    data = bytearray(target.read_bytes())
    rel = target.relative_to(path) if path.is_dir() else target.name
    if not data:
        target.unlink()
        return f"deleted empty {rel}"
    if kind == "truncate":
        cut = rng.randrange(len(data))
        target.write_bytes(bytes(data[:cut]))
        return f"{rel} truncated to {cut} of {len(data)} bytes"
    if kind == "flip":
        spots = [rng.randrange(len(data)) for _ in range(rng.choice((1, 1, 2, 8)))]
        for i in spots:
            data[i] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
        return f"{rel}: bits flipped at {spots}"
    start = rng.randrange(len(data))
    n = rng.choice((4, 16, 256))
    data[start:start + n] = bytes(len(data[start:start + n]))
    target.write_bytes(bytes(data))
    return f"{rel}: {n} bytes zeroed at {start}"


def _set(d, keys, value):
    for k in keys[:-1]:
        d = d[k]
    if isinstance(value, dict) and isinstance(d[keys[-1]], dict):
        d[keys[-1]].update(value)
    else:
        d[keys[-1]] = value


def _datasets(f) -> list[str]:
    """Every dataset in an HDF5 file, by name, in file order: the Keras layers' names are not assumed."""
    import h5py

    found = []
    f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
    return found


def _first_kernel(f) -> str:
    return next(n for n in _datasets(f) if f[n].ndim == 4)


def _edited_spec(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.25:
        text = rng.choice(GARBAGE_SPECS)
        return text, f"spec replaced by {text[:20]!r}"
    d = spec().to_dict()
    keys, value = rng.choice(SPEC_EDITS)
    _set(d, keys, value)
    return json.dumps(d), f"spec {'.'.join(map(str, keys))} = {value!r}"


def _with_spec(fmt: str, path: Path, text: str) -> None:
    """Rewrite `path` (a seed file) so that the spec it carries is `text`."""
    if fmt == "torch":
        import torch

        obj = torch.load(path, weights_only=True)
        obj["zoo_spec"] = text
        torch.save(obj, path)
    elif fmt == "safetensors":
        from safetensors import safe_open
        from safetensors.numpy import save_file

        with safe_open(str(path), "np") as f:
            meta, w = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        save_file(w, str(path), metadata={**meta, "spec": text})
    elif fmt == "keras":
        import h5py

        with h5py.File(path, "a") as f:
            f.attrs["zoo_spec"] = text
    elif fmt == "flax":
        meta = path / "_CHECKPOINT_METADATA"
        d = json.loads(meta.read_text())
        d["custom_metadata"] = {"zoo_spec": text}
        meta.write_text(json.dumps(d))
    elif fmt == "keras_archive":
        _rewrite_zip(path, {"config.json": lambda b: _keras_config(b, text)})
    elif fmt == "onnx":  # protobuf strings are UTF-8: a lone surrogate becomes '?'
        text = text.encode("utf-8", "replace").decode()
        _edit_onnx(path, lambda proto: next(p for p in proto.metadata_props if p.key == "spec").__setattr__("value",
                                                                                                          text))


def _edit_onnx(path: Path, change) -> None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    change(proto)
    path.write_bytes(proto.SerializeToString())


def _is_spec(value) -> bool:
    return isinstance(value, dict) and "body" in value and "in_channels" in value


def spec_location(obj):
    """(container, key, kept as JSON text) of the spec inside a Keras archive's config, wherever the Keras
    model keeps it (a dictionary, or the spec's JSON as a string); None when there is none."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        if _is_spec(value):
            return obj, key, False
        if isinstance(value, str) and value.startswith("{") and '"body"' in value:
            try:
                if _is_spec(json.loads(value)):
                    return obj, key, True
            except ValueError:
                pass
        found = spec_location(value)
        if found is not None:
            return found
    return None


def _keras_config(raw: bytes, text: str) -> bytes:
    c = json.loads(raw)
    container, key, as_text = spec_location(c)
    try:
        container[key] = text if as_text else json.loads(text)
    except (ValueError, RecursionError):
        container[key] = text
    return json.dumps(c).encode()


def _rewrite_zip(path: Path, edits: dict, compress: int = zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path) as z:
        members = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w", compress) as z:
        for name, data in members:
            z.writestr(name, edits[name](data) if name in edits else data)


def _header(fmt: str, path: Path, rng: random.Random) -> str:
    if fmt in ("torch", "keras_archive"):  # a zip local header's CRC, sizes or name length
        data = bytearray(path.read_bytes())
        heads = [i for i in range(len(data) - 4) if data[i:i + 4] == b"PK\x03\x04"]
        at = rng.choice(heads)
        field, width = rng.choice([(14, 4), (18, 4), (22, 4), (26, 2), (8, 2)])
        data[at + field:at + field + width] = rng.choice([b"\xff" * width, bytes(width), rng.randbytes(width)])
        path.write_bytes(bytes(data))
        return f"zip local header at {at}: field at +{field} overwritten"
    if fmt == "safetensors":
        data = path.read_bytes()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        name = rng.choice([k for k in header if k != "__metadata__"])
        edit = rng.choice(["shape", "dtype", "offsets", "length"])
        if edit == "shape":
            header[name]["shape"] = rng.choice([[10**9, 10**9], [0], [-1], [30000, 30000, 3, 3]])
        elif edit == "dtype":
            header[name]["dtype"] = rng.choice(["I32", "U8", "BOOL", "F8_E4M3", "C64", "F64", "XX"])
        elif edit == "offsets":
            header[name]["data_offsets"] = rng.choice([[0, 10**12], [5, 3], [0, 4]])
        else:
            body = json.dumps(header).encode()
            path.write_bytes(rng.choice([10**15, 2, 0]).to_bytes(8, "little") + body + data[8 + n:])
            return "safetensors header length edited"
        body = json.dumps(header).encode()
        path.write_bytes(len(body).to_bytes(8, "little") + body + data[8 + n:])
        return f"safetensors header: {name} {edit} edited"
    if fmt == "keras":
        import h5py
        import numpy as np

        with h5py.File(path, "a") as f:
            name = rng.choice(_datasets(f))
            group, v = f[name].parent, name.rpartition("/")[2]
            old = group[v][()]
            del group[v]
            dtype = rng.choice([np.int32, np.uint8, np.bool_, np.complex64, np.float16, np.float64])
            edit = rng.choice(["dtype", "shape", "extra"])
            if edit == "dtype":
                group.create_dataset(v, data=old.astype(dtype))
            elif edit == "shape":
                group.create_dataset(v, data=np.zeros((3,) + old.shape, np.float32))
            else:
                group.create_dataset(v, data=old)
                group.create_dataset(v + "_extra", data=old)
            return f"HDF5 dataset {name}: {edit} edited"
    if fmt == "onnx":
        return _onnx_header(path, rng)
    # flax: Orbax metadata files
    target = rng.choice([p for p in _files(path) if p.name in ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt")]
                        or _files(path))
    if target.name.startswith("_") and rng.random() < 0.7:
        d = json.loads(target.read_text())
        text = json.dumps(d)
        text = text.replace("float32", rng.choice(["int32", "bool", "float64", "bogus"]), 1) if rng.random() < 0.5 \
            else text.replace("[", "[99999, ", 1)
        target.write_text(text)
        return f"Orbax {target.name} edited"
    target.unlink()
    return f"Orbax {target.relative_to(path)} deleted"


def _onnx_header(path: Path, rng: random.Random) -> str:
    """An edit of the ModelProto's own fields: a tensor's dims, type, data or storage; the opset; an op; an
    attribute."""
    from onnx import TensorProto, helper

    what = []

    def change(proto):
        edit = rng.choice(["dims", "dtype", "data", "external", "opset", "op", "attribute"])
        t = rng.choice(list(proto.graph.initializer))
        if edit == "dims":
            t.dims[:] = rng.choice([[10**9, 10**9], [0], [-1], [30000, 30000, 3, 3], list(t.dims)[::-1] + [1]])
        elif edit == "dtype":
            t.data_type = rng.choice([TensorProto.INT32, TensorProto.UINT8, TensorProto.BOOL, TensorProto.STRING,
                                      TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.COMPLEX64, 999])
        elif edit == "data":
            t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data) + 1)] + rng.randbytes(rng.choice((0, 4, 7)))
        elif edit == "external":
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            for key, value in (("location", rng.choice(["/etc/passwd", "../m.onnx", "m.onnx", "none.bin", "", "."])),
                               ("offset", rng.choice(["0", "-4", str(10**12), "x"])),
                               ("length", rng.choice(["16", str(10**15), "-1", "0"]))):
                t.external_data.add(key=key, value=value)
        elif edit == "opset":
            proto.opset_import[0].version = rng.choice([1, 9, 29, 10**6, -5])
        elif edit == "op":
            node = rng.choice(list(proto.graph.node))
            node.op_type, node.domain = rng.choice([("LSTM", ""), ("Loop", ""), ("Foo", ""), ("", ""),
                                                    ("Conv", "com.example"), (node.op_type, "ai.onnx.ml")])
        else:
            node = rng.choice([n for n in proto.graph.node if n.attribute])
            attr = rng.choice(list(node.attribute))
            value = rng.choice([[10**6, 10**6], [0, 0], [-3, -3, -3, -3], [5000] * 4])
            del node.attribute[list(node.attribute).index(attr)]
            node.attribute.append(helper.make_attribute(attr.name, value))
            t = node
        what.append(f"{edit} of {t.name}")

    _edit_onnx(path, change)
    return f"ONNX {what[0]} edited"


def _zip_bomb(path: Path) -> None:
    """A .keras whose weights member declares gigabytes, deflated to almost nothing."""
    with zipfile.ZipFile(path) as z:
        members = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            if name == "model.weights.h5":
                with z.open(name, "w", force_zip64=True) as f:
                    chunk = bytes(2**24)
                    for _ in range(16):  # 256 MiB of zeros, about 256 KB compressed
                        f.write(chunk)
            else:
                z.writestr(name, data)


def _crafted(fmt: str, name: str, folder: Path) -> Path:
    """The hostile files the issue lists, each as the named format."""
    import numpy as np

    path = Path(folder) / NAMES[fmt]
    w = base_weights()
    if name == "empty":
        if fmt == "flax":
            path.mkdir()
        else:
            path.write_bytes(b"")
    elif name == "random":
        if fmt == "flax":
            path.mkdir()
            (path / "_METADATA").write_bytes(random.Random(7).randbytes(300))
        else:
            path.write_bytes(random.Random(7).randbytes(1600))
    elif name == "other_format":  # a file of another format under this one's name
        other = {"torch": "safetensors", "safetensors": "torch", "keras": "keras_archive", "keras_archive": "torch",
                 "flax": "keras", "onnx": "torch"}[fmt]
        src = write_seed(other, folder)
        if fmt == "flax":
            path.mkdir()
            shutil.move(src, path / "_METADATA")
        else:
            src.rename(path)
    elif name == "fifo":
        if fmt == "flax":
            path.mkdir()
            os.mkfifo(path / "_CHECKPOINT_METADATA")
        else:
            os.mkfifo(path)
    elif name == "nonpreset":  # a spec no preset describes: must survive, or be refused
        from zoo.spec import ModelSpec

        d = spec().to_dict()
        _set(d, (*POOL0, "kind"), "avg")
        write_seed(fmt, folder, ModelSpec.from_dict(d), w)
    elif name == "nonfinite":
        w = dict(w)
        w["blocks.1.conv0.weight"] = w["blocks.1.conv0.weight"].copy()
        w["blocks.1.conv0.weight"][0, 0, 0, 0] = np.nan
        write_seed(fmt, folder, weights=w)
    elif name.startswith("spec:"):
        write_seed(fmt, folder)
        d = spec().to_dict()
        if name == "spec:nested":
            text = NESTED
        else:
            keys, value = SPEC_EDITS[int(name[5:])]
            _set(d, keys, value)
            text = json.dumps(d)
        _with_spec(fmt, path, text)
    elif name == "expanded" and fmt == "torch":  # 1.6 KB claiming gigabytes through a stride-0 view
        import torch

        sd = {k: torch.from_numpy(v) for k, v in w.items()}
        sd["blocks.0.conv0.weight"] = torch.zeros(1).expand(40000, 40000)
        torch.save(sd, path)
    elif name in ("meta", "nested", "int", "float8", "sparse") and fmt == "torch":
        import torch

        sd = {k: torch.from_numpy(v) for k, v in w.items()}
        k = "blocks.0.conv0.weight"
        sd[k] = {"meta": lambda: torch.empty(8, 1, 11, 11, device="meta"),
                 "nested": lambda: torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)]),
                 "int": lambda: torch.zeros(8, 1, 11, 11, dtype=torch.int32),
                 "float8": lambda: torch.zeros(8, 1, 11, 11).to(torch.float8_e4m3fn),
                 "sparse": lambda: torch.zeros(8, 1, 11, 11).to_sparse()}[name]()
        torch.save(sd, path)
    elif name == "float8" and fmt == "safetensors":
        import torch
        from safetensors.torch import save_file

        save_file({k: torch.from_numpy(v).to(torch.float8_e4m3fn) for k, v in w.items()}, str(path))
    elif name in ("int32", "uint8", "bool", "complex64", "float16", "float64") and fmt == "keras":
        write_seed(fmt, folder)
        import h5py

        with h5py.File(path, "a") as f:
            kernel = _first_kernel(f)
            old = f[kernel][()]
            del f[kernel]
            f.create_dataset(kernel, data=old.astype(name))
    elif name == "external" and fmt == "keras":
        write_seed(fmt, folder)
        import h5py

        (Path(folder) / "ext.bin").write_bytes(bytes(8 * 11 * 11 * 4))
        with h5py.File(path, "a") as f:
            kernel = _first_kernel(f)
            shape = f[kernel].shape
            del f[kernel]
            f.create_dataset(kernel, shape=shape, dtype="float32", external=[(str(Path(folder) / "ext.bin"), 0,
                                                                                4 * int(np.prod(shape)))])
    elif name == "wide_config" and fmt == "keras_archive":
        write_seed(fmt, folder)
        d = spec().to_dict()
        for i in range(3):
            _set(d, (*BLOCK1, 2 * i, 1), WIDE)
        _with_spec(fmt, path, json.dumps(d))
    elif name in ("counter", "counter_float") and fmt in ("torch", "safetensors"):  # torch's BatchNorm counters
        import torch

        sd = {k: torch.from_numpy(v) for k, v in w.items()}
        sd["blocks.0.conv0.num_batches_tracked"] = torch.tensor(7) if name == "counter" else torch.tensor(7.0)
        if fmt == "torch":
            torch.save(sd, path)
        else:
            from safetensors.torch import save_file

            save_file(sd, str(path))
    elif name == "zip_bomb" and fmt == "keras_archive":
        write_seed(fmt, folder)
        _zip_bomb(path)
    elif fmt == "onnx" and name in ONNX_CRAFTED:
        _crafted_onnx(name, path, folder)
    elif name == "big_input" :
        write_seed(fmt, folder)
        d = spec().to_dict()
        d["input_size"] = [30000, 30000]
        _with_spec(fmt, path, json.dumps(d))
    else:
        raise KeyError(f"no crafted case {name!r} for {fmt}")
    return path


ONNX_CRAFTED = ("external_ok", "external_absolute", "external_parent", "external_symlink", "external_past_end",
                "external_fifo", "lstm", "custom_domain", "opset3", "opset99", "torch_export", "huge_padding")


def _crafted_onnx(name: str, path: Path, folder: Path) -> None:
    """Hostile .onnx files: external data out of the folder or past its file, ops and opsets the zoo does not
    read, a graph that would allocate gigabytes; and two good ones (external data beside it, torch's export)."""
    import onnx
    from onnx import helper

    if name == "torch_export":  # the zoo's torch model, as torch.onnx.export writes it: canonical names
        import torch

        model = _torch_model()
        with contextlib.redirect_stderr(io.StringIO()):
            torch.onnx.export(model, torch.zeros(1, 1, 96, 96), str(path), dynamo=False)
        return
    write_seed("onnx", folder)
    if name.startswith("external_"):
        proto = onnx.load(str(path))
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="m.onnx.data", size_threshold=0)
        data = Path(folder) / "m.onnx.data"
        outside = Path(folder).parent / f"{Path(folder).name}-outside.data"
        location, offset = None, None
        if name == "external_absolute":
            location = str(data)
        elif name == "external_parent":
            location = f"../{Path(folder).name}/m.onnx.data"
        elif name == "external_symlink":
            shutil.copy(data, outside)  # the harness's root holds it; the case's folder holds a link to it
            (Path(folder) / "link.data").symlink_to(outside)
            location = "link.data"
        elif name == "external_past_end":
            offset = data.stat().st_size - 8
        elif name == "external_fifo":
            os.mkfifo(Path(folder) / "fifo.data")
            location = "fifo.data"

        def change(proto):
            for t in proto.graph.initializer:
                for e in t.external_data:
                    if e.key == "location" and location is not None:
                        e.value = location
                    if e.key == "offset" and offset is not None and t.name == "blocks.0.conv0.weight":
                        e.value = str(offset)

        _edit_onnx(path, change)
    elif name in ("opset3", "opset99"):
        _edit_onnx(path, lambda proto: proto.opset_import[0].__setattr__("version", int(name[5:])))
    elif name == "lstm":
        _edit_onnx(path, lambda proto: proto.graph.node.append(helper.make_node("LSTM", ["input", "w", "r"], ["y"],
                                                                                hidden_size=4)))
    elif name == "custom_domain":
        def change(proto):
            node = next(n for n in proto.graph.node if n.op_type == "Relu")
            node.domain = "com.example"
            proto.opset_import.append(helper.make_opsetid("com.example", 1))

        _edit_onnx(path, change)
    elif name == "huge_padding":
        def change(proto):
            conv = next(n for n in proto.graph.node if n.op_type == "Conv")
            next(a for a in conv.attribute if a.name == "pads").ints[:] = [5000] * 4

        _edit_onnx(path, change)


def _torch_model():
    import zoo

    return zoo.load(spec(), "torch", weights=base_weights()).eval()


CRAFTED = {
    "torch": ["empty", "random", "other_format", "fifo", "nonpreset", "nonfinite", "expanded", "meta", "nested",
              "int", "float8", "sparse", "big_input", "spec:nested", "spec:0", "spec:5", "counter", "counter_float"],
    "safetensors": ["empty", "random", "other_format", "fifo", "nonpreset", "nonfinite", "float8", "big_input",
                    "spec:nested", "spec:0", "counter", "counter_float"],
    "flax": ["empty", "random", "other_format", "fifo", "nonpreset", "nonfinite", "big_input", "spec:nested",
             "spec:0"],
    "keras": ["empty", "random", "other_format", "fifo", "nonpreset", "nonfinite", "int32", "uint8", "bool",
              "complex64", "float16", "float64", "external", "big_input", "spec:nested", "spec:0"],
    "keras_archive": ["empty", "random", "other_format", "fifo", "nonpreset", "nonfinite", "wide_config", "zip_bomb",
                      "big_input", "spec:nested", "spec:0"],
    "onnx": ["empty", "random", "other_format", "fifo", "nonpreset", "nonfinite", "big_input", "spec:nested", "spec:0",
             *ONNX_CRAFTED],
}


def make_case(fmt: str, kind: str, seed: int, folder: Path) -> tuple[Path, str]:
    """Build one case's input in `folder`; returns (path, what was done)."""
    rng = random.Random(f"{fmt}/{kind}/{seed}")
    if kind.startswith("crafted:"):
        return _crafted(fmt, kind[8:], folder), kind
    path = write_seed(fmt, folder)
    if kind == "spec":
        text, what = _edited_spec(rng)
        _with_spec(fmt, path, text)
        return path, what
    if kind == "header":
        return path, _header(fmt, path, rng)
    return path, _mutate_bytes(path, kind, rng)


def corpus(per_kind: int, formats=FORMATS) -> list[tuple[str, str, int]]:
    """Cases: every crafted file of every format, and `per_kind` seeded mutants of each kind."""
    cases = [(f, f"crafted:{name}", 0) for f in formats for name in CRAFTED[f]]
    cases += [(f, kind, seed) for f in formats for kind in KINDS for seed in range(per_kind)]
    return cases


# --------------------------------------------------------------------------- the worker

class CaseTimeout(Exception):
    pass


def _snapshot(folder: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _expected(kind: str):
    """The tensors a case's file should read as, when it reads at all: the seed's, but for crafted edits."""
    w = base_weights()
    if kind == "crafted:nonfinite":
        import numpy as np

        w["blocks.1.conv0.weight"][0, 0, 0, 0] = np.nan
    return w


def _same(path: Path, fmt: str | None, kind: str, src: Path | None = None, src_fmt: str | None = None) -> bool:
    """The file's tensors equal the expected ones (NaN equal to NaN); for a conversion, its spec is the source's."""
    import numpy as np

    from zoo import conversion

    back = conversion.read(path, fmt)
    base = _expected(kind)
    same = set(back.weights) == set(base) and all(
        back.weights[k].dtype == base[k].dtype and np.array_equal(back.weights[k], base[k], equal_nan=True)
        for k in base)
    if same and src is not None:
        a, _ = conversion.resolve_spec(conversion.read(src, src_fmt))
        b, _ = conversion.resolve_spec(back)
        same = a.layers() == b.layers() and a.input_size == b.input_size
    return same


def _one_line_error(e: BaseException) -> bool:
    return isinstance(e, (ValueError, TypeError, OSError, ImportError)) and "\n" not in str(e) and bool(str(e))


def run_cli(argv) -> tuple[int, list[str], str]:
    """`zoo ARGV` in this process: (exit status, stderr's lines, what escaped main, if anything: a bug)."""
    from zoo import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc, escaped = cli.main(argv), ""
        except BaseException as e:  # noqa: BLE001 - anything escaping main is a bug
            if isinstance(e, CaseTimeout):
                raise
            rc, escaped = -1, f"escaped main: {type(e).__name__}: {str(e)[:300]}"
    return rc, err.getvalue().strip().splitlines(), escaped


def run_op(op: str, fmt: str, kind: str, path: Path, case_dir: Path, dst_fmt: str) -> tuple[str, str]:

    before = _snapshot(case_dir)
    out_path = case_dir / ("out_" + NAMES[dst_fmt])
    detail = ""
    signal.alarm(CASE_SECONDS)
    try:
        if op == "load":
            import zoo

            try:
                zoo.load("nin", "torch", weights=path)
                outcome = "ok"
            except Exception as e:
                outcome = "error" if _one_line_error(e) else "bad-error"
                detail = f"{type(e).__name__}: {e}"
        else:
            argv = ["inspect", str(path)] if op == "inspect" else ["convert", str(path), str(out_path)]
            if op == "convert" and fmt == "flax":
                argv[1:1] = ["--from", "flax"]
            rc, lines, escaped = run_cli(argv)
            detail = escaped or detail
            if rc == 0:
                outcome = "ok"
            elif rc == 2 and len(lines) == 1 and lines[0].startswith("zoo: error: "):
                outcome, detail = "error", lines[0]
            else:
                outcome, detail = "bad-error", detail or "\n".join(lines)[-600:]
        signal.alarm(0)
        if outcome == "ok":  # correct output: the tensors read back equal the seed file's
            src_fmt = "flax" if fmt == "flax" else None
            try:
                if op == "convert":
                    good = _same(out_path, dst_fmt, kind, path, src_fmt)
                else:
                    good = _same(path, src_fmt, kind)
            except Exception as e:
                good, detail = False, f"read back failed: {e}"
            if not good:
                outcome = "wrong"
    except CaseTimeout:
        outcome, detail = "timeout", f"over {CASE_SECONDS} s"
    finally:
        signal.alarm(0)
    after = _snapshot(case_dir)
    if outcome == "ok" and op == "convert":
        after = {k: v for k, v in after.items() if not (k == out_path.name or k.startswith(out_path.name + "/"))}
    if after != before:
        changed = sorted(set(after) ^ set(before)) or sorted(k for k in after if after[k] != before.get(k))
        outcome, detail = "leftover", f"changed on disk: {changed[:5]}; was {outcome} {detail}"
    if out_path.exists():
        shutil.rmtree(out_path) if out_path.is_dir() else out_path.unlink()
    return outcome, detail[:500]


# The frameworks each format needs (its own, and torch for `zoo.load(..., 'torch')` and for verification
# of the formats torch reads).
FRAMEWORKS = {"torch": ("torch",), "safetensors": ("torch",), "flax": ("flax",), "keras": ("keras",),
              "keras_archive": ("keras",), "onnx": ("onnx",)}


def frameworks(formats) -> tuple[str, ...]:
    return tuple(fw for fw in ("torch", "flax", "keras", "onnx") if any(fw in FRAMEWORKS[f]
                                                                        for f in ("torch", *formats)))


def worker(fws=("torch", "flax", "keras")) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    warnings.simplefilter("ignore")
    import numpy as np  # noqa: F401
    import torch  # noqa: F401

    if "keras" in fws:
        import h5py  # noqa: F401
        import keras  # noqa: F401
    if "flax" in fws:
        import orbax.checkpoint  # noqa: F401
        from flax import nnx  # noqa: F401
    if "onnx" in fws:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

    import zoo
    from zoo import conversion  # noqa: F401

    for fw in fws:  # warm each framework once, so a case's time is its own
        zoo.predict(zoo.load("nin", fw, **SPEC_ARGS), np.zeros((1, 1, 96, 96), np.float32), layout="NCHW")

    def on_alarm(signum, frame):
        raise CaseTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + MEMORY_BUDGET, resource.RLIM_INFINITY))
    root = Path(tempfile.mkdtemp(prefix="zoo-fuzz-"))
    print(json.dumps({"ready": True, "root": str(root)}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        fmt, kind, seed, ops, dsts = req["fmt"], req["kind"], req["seed"], req["ops"], req["dsts"]
        case_dir = root / f"case{seed}-{kind.replace(':', '_')}-{fmt}"
        case_dir.mkdir()
        results = []
        try:
            path, what = make_case(fmt, kind, seed, case_dir)
        except Exception as e:
            print(json.dumps({"build_error": f"{type(e).__name__}: {e}"}), flush=True)
            shutil.rmtree(case_dir, ignore_errors=True)
            continue
        for i, op in enumerate(ops):
            dst = dsts[(seed + i + FORMATS.index(fmt)) % len(dsts)]
            if dst == fmt:
                dst = dsts[(dsts.index(dst) + 1) % len(dsts)]
            outcome, detail = run_op(op, fmt, kind, path, case_dir, dst)
            results.append({"op": op, "dst": dst if op == "convert" else None, "outcome": outcome, "detail": detail})
        shutil.rmtree(case_dir, ignore_errors=True)
        if case_dir.exists():  # a FIFO or read-only leftovers: remove by hand
            subprocess.run(["rm", "-rf", str(case_dir)], check=False)
        print(json.dumps({"what": what, "results": results}), flush=True)
    shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- the supervisor

class Worker:
    def __init__(self, fws=("torch", "flax", "keras")):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", ",".join(fws)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        ready = self._read(300)
        if ready is None:
            raise RuntimeError("the fuzz worker did not start")
        self.root = Path(ready["root"])

    def _read(self, timeout: float):
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def run(self, case, ops, dsts=DESTINATIONS):
        fmt, kind, seed = case
        self.proc.stdin.write(json.dumps({"fmt": fmt, "kind": kind, "seed": seed, "ops": ops, "dsts": list(dsts)})
                              + "\n")
        self.proc.stdin.flush()
        return self._read(HARD_SECONDS * len(ops))

    def close(self):
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        with contextlib.suppress(Exception):
            self.proc.wait(30)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_cases(cases, ops=("inspect", "convert", "load"), log=None, formats=FORMATS) -> list[dict]:
    """Run each case through `ops` in a worker; a hang or death is a result, and the next case gets a new worker.

    Conversions write the `formats` given (each case's own excepted), and the worker imports only the
    frameworks they need."""
    dsts = [d for d in DESTINATIONS if d in formats]
    return supervise(cases, lambda: Worker(frameworks(formats)), list(ops), dsts, "?", log)


def supervise(cases, new_worker, ops, dsts, hung_op: str, log=None) -> list[dict]:
    """Each case in a worker from `new_worker()`, which is replaced after a hang or a death (both are results)."""
    results, w = [], None
    try:
        for case in cases:
            w = w or new_worker()
            t = time.perf_counter()
            reply = w.run(case, ops, dsts)
            if reply is None:  # hung past HARD_SECONDS, or died (memory, signal)
                code = w.proc.poll()
                w.proc.kill()
                w.proc.wait()
                subprocess.run(["rm", "-rf", str(w.root)], check=False)  # its cases' folders, FIFOs included
                w = None
                reply = {"what": "?", "results": [{"op": hung_op, "outcome": "hang",
                                                   "detail": f"worker exit status {code}"}]}
            if "build_error" in reply:
                raise RuntimeError(f"{case}: the harness could not build the case: {reply['build_error']}")
            row = {"fmt": case[0], "kind": case[1], "seed": case[2], "seconds": time.perf_counter() - t, **reply}
            results.append(row)
            if log:
                log(row)
    finally:
        if w:
            w.close()
    return results


# =========================================================================== training run folders
#
# A case is ('run', kind, seed): a torch run of LeNet (ReLU) on 64 images, stopped after epoch 1 of 2, copied and
# then damaged, or a folder of the user's files; each goes through `zoo train lenet_relu --out DIR --resume`.
# Kinds: 'truncate', 'flip', 'zero' (checkpoint.npz's bytes), 'meta' (its JSON metadata edited), 'array' (its
# arrays edited), 'runfile' (run.json edited), and 'crafted:NAME' (RUN_CRAFTED: foreign folders, links).
# Outcomes as above: 'ok' is a run that finished right (checkpoint at epoch 2, metrics.jsonl [1, 2], its weights
# exported, no temporaries, nothing outside the run folder touched); 'error' changed nothing at all.

RUN_FMT = "run"
RUN_MODEL, RUN_ARGS = "lenet_relu", ["--epochs", "2", "--batch-size", "32", "--limit", "64", "--seed", "3"]
RUN_KINDS = ("truncate", "flip", "zero", "meta", "array", "runfile")
EVERY = 1000  # seeds from here on take each edit of a kind's list in turn
_NAN = float("nan")
# (JSON path into the checkpoint's metadata, new value; DELETE removes the key)
DELETE = object()
RUN_META_EDITS = [
    (("epoch",), 99), (("epoch",), 0), (("epoch",), -1), (("epoch",), "1"), (("epoch",), 1.0), (("epoch",), None),
    (("epoch",), 2), (("epoch",), True), (("epoch",), DELETE), (("history",), {}), (("history",), []),
    (("history",), [None]), (("history",), DELETE), (("history", 0, "epoch"), 2), (("history", 0, "test_acc"), "x"),
    (("run",), []), (("run",), DELETE), (("run", "framework"), "tf"), (("run", "framework"), 5),
    (("run", "framework"), "flax"), (("run", "limit"), 0), (("run", "limit"), 32), (("run", "limit"), "64"),
    (("run", "limit"), DELETE), (("run", "recipe"), []), (("run", "recipe", "peak_lr"), _NAN),
    (("run", "recipe", "peak_lr"), 1e308), (("run", "recipe", "epochs"), 10**9), (("run", "recipe", "batch_size"), 0),
    (("run", "recipe", "extra"), 1), (("run", "recipe", "seed"), DELETE), (("run", "spec"), "x"),
    (("run", "spec", "name"), 5), (("run", "spec", "body"), []),
    (("zoo_checkpoint",), 99), (("zoo_checkpoint",), DELETE),
]
RUN_META_GARBAGE = [b"[1]", b"{", b"\xff\xfe", b"null", NESTED.encode(), b""]
RUN_ARRAY_EDITS = ["nan_weight", "inf_slot", "slot_shape", "rng_garbage", "rng_float", "no_scheduler", "extra_key",
                   "float64_weight", "step_count", "scalar_weight", "object_array", "huge_header", "compressed"]
RUN_FILE_EDITS = ["missing", "list", "garbage", "version", "lr", "limit", "framework", "spec", "empty", "nested"]
RUN_CRAFTED = ["foreign", "foreign_json", "foreign_link", "link_checkpoint", "link_metrics", "link_curves",
               "link_weights", "empty_npz", "random_npz", "pickle_npz", "folder_npz", "missing_out", "out_is_file",
               "no_checkpoint", "fifo_npz"]


def _seed_run(folder: Path) -> Path:
    """The seed run folder, trained once per worker: epoch 1 of 2 done."""
    import zoo
    from zoo import training
    from zoo.frameworks import torch_train

    out = folder / "seed_run"
    recipe = training.Recipe(input_size=28, epochs=2, batch_size=32, peak_lr=1e-3, seed=3)
    torch_train.train(zoo.get_spec(RUN_MODEL), recipe, out, limit=64, progress=False, stop_after=1)
    return out


def _pick(seed: int, n: int, rng: random.Random) -> int:
    """Seeds from EVERY on take the edits of a list in turn; others draw one."""
    return (seed - EVERY) % n if seed >= EVERY else rng.randrange(n)


def _run_meta_edit(out: Path, seed: int, rng: random.Random) -> str:
    import numpy as np

    from zoo import training

    meta, arrays = training.read_checkpoint(out)
    i = _pick(seed, len(RUN_META_EDITS) + len(RUN_META_GARBAGE), rng)
    if i < len(RUN_META_EDITS):
        keys, value = RUN_META_EDITS[i]
        d = meta
        for k in keys[:-1]:
            d = d[k]
        if value is DELETE:
            d.pop(keys[-1], None)
        else:
            d[keys[-1]] = value
        raw, what = json.dumps(meta).encode(), f"metadata {'/'.join(map(str, keys))} = {str(value)[:40]}"
    else:
        raw = RUN_META_GARBAGE[i - len(RUN_META_EDITS)]
        what = f"metadata replaced by {raw[:20]!r}"
    _write_npz(out / training.CHECKPOINT, {**arrays, training.META_KEY: np.frombuffer(raw, np.uint8)})
    return what


def _write_npz(path: Path, arrays: dict, compress: bool = False) -> None:
    import numpy as np

    with open(path, "wb") as f:
        (np.savez_compressed if compress else np.savez)(f, **arrays)


def _run_array_edit(out: Path, seed: int, rng: random.Random) -> str:
    import numpy as np

    from zoo import training

    path = out / training.CHECKPOINT
    edit = RUN_ARRAY_EDITS[_pick(seed, len(RUN_ARRAY_EDITS), rng)]
    meta, a = training.read_checkpoint(out)
    a[training.META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    weight = rng.choice(sorted(k for k in a if k.startswith("model/")))
    slot = rng.choice(sorted(k for k in a if k.startswith("optimizer/") and a[k].ndim))
    if edit == "nan_weight":
        a[weight].reshape(-1)[0] = np.nan
    elif edit == "inf_slot":
        a[slot].reshape(-1)[-1] = np.inf
    elif edit == "slot_shape":
        a[slot] = np.zeros((3, 2), np.float32)
    elif edit == "rng_garbage":
        a["rng/torch"] = np.frombuffer(rng.randbytes(a["rng/torch"].size), np.uint8)
    elif edit == "rng_float":
        a["rng/torch"] = a["rng/torch"].astype(np.float32)
    elif edit == "no_scheduler":
        del a["scheduler/last_epoch"]
    elif edit == "extra_key":
        a["model/extra.weight"] = np.zeros(3, np.float32)
    elif edit == "float64_weight":
        a[weight] = a[weight].astype(np.float64)
    elif edit == "step_count":
        a["scheduler/last_epoch"] = np.asarray(rng.choice((0, 1, 3, -5, 2**40)))
    elif edit == "scalar_weight":
        a[weight] = np.float32(1)
    elif edit == "object_array":
        a[weight] = np.array([{"x": 1}], dtype=object)  # np.savez pickles it
    if edit == "huge_header":  # an entry whose header claims 10^12 floats
        _write_npz(path, a)
        header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }"
        header = header + " " * (-(len(header) + 11) % 64) + "\n"
        body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(16)
        with zipfile.ZipFile(path, "a") as z:
            z.writestr("model/huge.npy", body)
    else:
        _write_npz(path, a, compress=edit == "compressed")
    return f"arrays: {edit} ({weight if 'weight' in edit else slot})"


def _run_file_edit(out: Path, seed: int, rng: random.Random) -> str:
    path = out / "run.json"
    edit = RUN_FILE_EDITS[_pick(seed, len(RUN_FILE_EDITS), rng)]
    d = json.loads(path.read_text())
    if edit == "missing":
        path.unlink()
        return "run.json removed"
    text = {"list": "[1, 2]", "garbage": "{not json", "empty": "", "nested": NESTED}.get(edit)
    if text is None:
        if edit == "version":
            d["zoo_run"] = 2
        elif edit == "lr":
            d["recipe"]["peak_lr"] = 0.5
        elif edit == "limit":
            d["limit"] = 32
        elif edit == "framework":
            d["framework"] = "flax"
        elif edit == "spec":
            d["spec"]["num_classes"] = 7
        text = json.dumps(d)
    path.write_text(text)
    return f"run.json: {edit}"


def _run_crafted(name: str, seed_run: Path, case_dir: Path) -> tuple[Path, str]:
    import numpy as np

    out, outside = case_dir / "run", case_dir / "outside"
    outside.mkdir()
    if name.startswith("foreign"):
        mine = outside / "mine"
        mine.mkdir()
        for f in ("weights.safetensors", "metrics.jsonl", "curves.png", "checkpoint.npz") + (
                ("checkpoint.json",) if name == "foreign_json" else ()):
            (mine / f).write_text(f"the user's {f}\n")
        if name == "foreign_link":
            out.symlink_to(mine)
        else:
            shutil.move(mine, out)
        return out, name
    if name == "missing_out":
        return out, name
    if name == "out_is_file":
        out.write_text("notes")
        return out, name
    shutil.copytree(seed_run, out, symlinks=True)
    npz = out / "checkpoint.npz"
    if name.startswith("link_"):
        target = {"checkpoint": npz, "metrics": out / "metrics.jsonl", "curves": out / "curves.png",
                  "weights": out / "weights.safetensors"}[name[5:]]
        kept = outside / target.name
        if target.exists():
            shutil.move(target, kept)
        else:
            kept.write_text("the user's own file\n")
        target.symlink_to(kept)
    elif name == "empty_npz":
        npz.write_bytes(b"")
    elif name == "random_npz":
        npz.write_bytes(random.Random(name).randbytes(4096))
    elif name == "pickle_npz":
        with open(npz, "wb") as f:
            np.save(f, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    elif name == "folder_npz":
        npz.unlink()
        npz.mkdir()
    elif name == "fifo_npz":
        npz.unlink()
        os.mkfifo(npz)
    elif name == "no_checkpoint":
        npz.unlink()
    return out, name


def make_run_case(kind: str, seed: int, seed_run: Path, case_dir: Path) -> tuple[Path, str]:
    """Build one run-folder case in `case_dir`; returns (the --out path, what was done)."""
    rng = random.Random(f"{RUN_FMT}/{kind}/{seed}")
    if kind.startswith("crafted:"):
        return _run_crafted(kind[8:], seed_run, case_dir)
    out = case_dir / "run"
    (case_dir / "outside").mkdir()
    shutil.copytree(seed_run, out, symlinks=True)
    if kind == "meta":
        return out, _run_meta_edit(out, seed, rng)
    if kind == "array":
        return out, _run_array_edit(out, seed, rng)
    if kind == "runfile":
        return out, _run_file_edit(out, seed, rng)
    return out, _mutate_bytes(out / "checkpoint.npz", kind, rng)


def run_corpus(per_kind: int) -> list[tuple[str, str, int]]:
    """Every crafted run folder, every edit of each list once, and `per_kind` x 2 seeded mutants of each kind."""
    cases = [(RUN_FMT, f"crafted:{name}", 0) for name in RUN_CRAFTED]
    cases += [(RUN_FMT, kind, seed) for kind in RUN_KINDS for seed in range(2 * per_kind)]
    for kind, n in (("meta", len(RUN_META_EDITS) + len(RUN_META_GARBAGE)), ("array", len(RUN_ARRAY_EDITS)),
                    ("runfile", len(RUN_FILE_EDITS))):
        cases += [(RUN_FMT, kind, EVERY + i) for i in range(n)]
    return cases


def _run_finished(out: Path) -> str:
    """'' when `out` holds the finished run, else what is wrong with it."""
    from zoo import training

    if training.checkpoint_epoch(out) != 2:
        return f"checkpoint epoch {training.checkpoint_epoch(out)}"
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    if epochs != [1, 2]:
        return f"metrics.jsonl epochs {epochs}"
    if not (out / "weights.safetensors").is_file() or (out / "weights.safetensors").is_symlink():
        return "no weights.safetensors"
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    return f"temporaries left: {leftovers}" if leftovers else ""


def run_resume(kind: str, out: Path, case_dir: Path) -> tuple[str, str]:
    """`zoo train lenet_relu --out OUT --resume` on one case: (outcome, detail)."""
    before, outside = _snapshot(case_dir), _snapshot(case_dir / "outside")
    signal.alarm(CASE_SECONDS)
    try:
        rc, raw, detail = run_cli(["train", RUN_MODEL, "--out", str(out), "--resume"])
        signal.alarm(0)
        lines = [line for line in raw if not line.startswith(("resumed", "epoch ")) and "%|" not in line]
        if rc == 0:
            wrong = _run_finished(out)
            outcome, detail = ("wrong", wrong) if wrong else ("ok", "")
        elif rc == 2 and len(lines) == 1 and lines[0].startswith("zoo: error: ") and "allow_pickle" not in lines[0]:
            outcome, detail = "error", lines[0]
        else:
            outcome, detail = "bad-error", detail or "\n".join(raw)[-600:]
    except CaseTimeout:
        outcome, detail = "timeout", f"over {CASE_SECONDS} s"
    finally:
        signal.alarm(0)
    changed = _snapshot(case_dir / "outside") != outside if outcome == "ok" else _snapshot(case_dir) != before
    if changed:
        outcome, detail = "leftover", f"changed on disk; was {outcome} {detail}"
    return outcome, detail[:500]


def run_worker() -> None:
    """The worker for run-folder cases (`python tests/fuzz_cases.py --run-worker`): torch only."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    warnings.simplefilter("ignore")
    import torch  # noqa: F401

    def on_alarm(signum, frame):
        raise CaseTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    root = Path(tempfile.mkdtemp(prefix="zoo-fuzz-run-"))
    seed_run = _seed_run(root)
    vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + MEMORY_BUDGET, resource.RLIM_INFINITY))
    print(json.dumps({"ready": True, "root": str(root)}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        kind, seed = req["kind"], req["seed"]
        case_dir = root / f"case{seed}-{kind.replace(':', '_')}"
        case_dir.mkdir()
        try:
            out, what = make_run_case(kind, seed, seed_run, case_dir)
        except Exception as e:
            print(json.dumps({"build_error": f"{type(e).__name__}: {e}"}), flush=True)
            shutil.rmtree(case_dir, ignore_errors=True)
            continue
        outcome, detail = run_resume(kind, out, case_dir)
        subprocess.run(["rm", "-rf", str(case_dir)], check=False)  # FIFOs and links too
        print(json.dumps({"what": what, "results": [{"op": "resume", "dst": None, "outcome": outcome,
                                                     "detail": detail}]}), flush=True)
    shutil.rmtree(root, ignore_errors=True)


class RunWorker(Worker):
    def __init__(self):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, __file__, "--run-worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        ready = self._read(300)
        if ready is None:
            raise RuntimeError("the run-folder fuzz worker did not start")
        self.root = Path(ready["root"])


def run_folder_cases(cases, log=None) -> list[dict]:
    """Run each run-folder case through `zoo train --resume` in a RunWorker (a hang or death is a result)."""
    return supervise(cases, RunWorker, ["resume"], [], "resume", log)


# --------------------------------------------------------------------------- ONNX graph edits (issue 19)
# Edits of a zoo-written .onnx's graph, its weights and metadata untouched (the digest still holds): each makes the
# graph compute something else than its spec, or something onnxruntime cannot run. tests/test_onnx_files.py
# runs each through zoo.load and zoo convert; `graph_edit_case` makes them, and random ones, for the harness.

def _node(proto, op_type: str, index: int = 0):
    return [n for n in proto.graph.node if n.op_type == op_type][index]


def _attr(node, name: str, value) -> None:
    from onnx import helper

    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def _swap_conv_weights(proto) -> None:  # two 3x3 convolutions of the same shape
    a, b = _node(proto, "Conv", 1), _node(proto, "Conv", 2)
    a.input[1], b.input[1] = b.input[1], a.input[1]


def _mul_before_logits(proto) -> None:
    import numpy as np
    from onnx import helper, numpy_helper

    last = next(n for n in proto.graph.node if n.output[0] == proto.graph.output[0].name)
    proto.graph.initializer.append(numpy_helper.from_array(np.array(2, np.float32), "two"))
    proto.graph.node.insert(len(proto.graph.node) - 1, helper.make_node("Mul", [last.input[0], "two"], ["doubled"]))
    last.input[0] = "doubled"


def _duplicate_initializer(proto) -> None:  # onnxruntime takes the first of two equal names
    import numpy as np
    from onnx import numpy_helper

    t = next(t for t in proto.graph.initializer if t.name == "conv1.weight")
    proto.graph.initializer.insert(0, numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(3), t.name))


def _constant_shadowing(proto) -> None:
    from onnx import helper, numpy_helper

    t = next(t for t in proto.graph.initializer if t.name == "conv1.weight")
    value = numpy_helper.from_array(-numpy_helper.to_array(t), t.name)
    proto.graph.node.insert(0, helper.make_node("Constant", [], [t.name], value=value))


def _cycle(proto) -> None:
    proto.graph.node[0].input[0] = proto.graph.node[3].output[0]


def _undefined_input(proto) -> None:
    proto.graph.node[2].input[0] = "nowhere"


def _two_default_opsets(proto) -> None:
    from onnx import helper

    proto.opset_import.append(helper.make_opsetid("ai.onnx", 13))


ONNX_GRAPH_EDITS = {  # name -> edit of a zoo-written ResNet-18 (tests/conftest.py TINY) in place
    "swap_conv_weights": _swap_conv_weights,
    "stride": lambda p: _attr(_node(p, "Conv", 0), "strides", [1, 1]),
    "relu_to_sigmoid": lambda p: setattr(_node(p, "Relu", 0), "op_type", "Sigmoid"),
    "mul_before_logits": _mul_before_logits,
    "batchnorm_epsilon": lambda p: _attr(_node(p, "BatchNormalization", 0), "epsilon", 0.1),
    "duplicate_initializer": _duplicate_initializer,
    "constant_shadowing": _constant_shadowing,
    "gemm_transB_0": lambda p: _attr(_node(p, "Gemm"), "transB", 0),
    "gemm_alpha_2": lambda p: _attr(_node(p, "Gemm"), "alpha", 2.0),
    "cycle": _cycle,
    "undefined_input": _undefined_input,
    "two_default_opsets": _two_default_opsets,
    "ir_version_99": lambda p: setattr(p, "ir_version", 99),
}

# Random edits: one node of the graph changed as an editor of the file could (its op, an attribute, its inputs).
_OP_SWAPS = {"Relu": "Sigmoid", "Sigmoid": "Relu", "MaxPool": "AveragePool", "AveragePool": "MaxPool", "Add": "Mul",
             "GlobalAveragePool": "GlobalMaxPool", "Identity": "Relu"}


def _random_graph_edit(proto, rng: random.Random) -> str:
    from onnx import AttributeProto, helper

    node = rng.choice(list(proto.graph.node))
    where = f"{node.op_type} {node.name or node.output[0]}"
    ints = [a for a in node.attribute if a.type in (AttributeProto.INT, AttributeProto.INTS)]
    floats = [a for a in node.attribute if a.type == AttributeProto.FLOAT]
    choices = ["op"] * (node.op_type in _OP_SWAPS) + ["int"] * bool(ints) + ["float"] * bool(floats) + \
        ["inputs"] * (len(node.input) > 1) + ["drop"] * (len(node.input) >= 1) + ["attribute"]
    how = rng.choice(choices)
    if how == "op":
        node.op_type = _OP_SWAPS[node.op_type]
        return f"{where}: op {node.op_type}"
    if how == "int":
        a = rng.choice(ints)
        value = helper.get_attribute_value(a)
        if isinstance(value, list):
            i = rng.randrange(len(value))
            value[i] += rng.choice((-1, 1))
        else:
            value += rng.choice((-1, 1))
        _attr(node, a.name, value)
        return f"{where}: {a.name}={value}"
    if how == "float":
        a = rng.choice(floats)
        _attr(node, a.name, a.f * rng.choice((0.5, 2.0, 100.0)))
        return f"{where}: {a.name} scaled"
    if how == "inputs":
        i, j = rng.sample(range(len(node.input)), 2)
        node.input[i], node.input[j] = node.input[j], node.input[i]
        return f"{where}: inputs {i} and {j} swapped"
    if how == "drop":  # its consumers read its first input instead
        for other in proto.graph.node:
            for k, name in enumerate(other.input):
                if name == node.output[0]:
                    other.input[k] = node.input[0]
        for out in proto.graph.output:
            if out.name == node.output[0]:
                return f"{where}: not dropped (it makes the graph's output)"
        proto.graph.node.remove(node)
        return f"{where}: dropped"
    name = rng.choice(("strides", "pads", "dilations", "group", "alpha", "epsilon", "axis", "ceil_mode"))
    _attr(node, name, 2.0 if name in ("alpha", "epsilon") else 2 if name in ("group", "axis", "ceil_mode") else [2, 2])
    return f"{where}: attribute {name} added"


def graph_edit_cases(random_edits: int = 12) -> list[str]:
    """'unedited' (the control: every operation succeeds), the named edits, then `random_edits` seeded random ones
    ('random:SEED')."""
    return ["unedited", *sorted(ONNX_GRAPH_EDITS), *(f"random:{i}" for i in range(random_edits))]


def make_graph_edit_case(case: str, folder: Path) -> tuple[Path, str]:
    """A zoo-written ResNet-18 (tests/conftest.py TINY) in `folder`, its graph edited by `case`."""
    import onnx
    from conftest import TINY, random_weights

    import zoo

    spec_ = zoo.get_spec("resnet18", **TINY["resnet18"])
    path = write_seed("onnx", folder, spec_, random_weights(spec_, 0))
    proto = onnx.load(str(path))
    if case == "unedited":
        what = "as written"
    elif case.startswith("random:"):
        what = _random_graph_edit(proto, random.Random(f"onnx-graph/{case}"))
    else:
        ONNX_GRAPH_EDITS[case](proto)
        what = case
    path.write_bytes(proto.SerializeToString())
    return path, what


def _ort_logits(path: Path, x):
    """What onnxruntime computes running the file as it is (None: it cannot)."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except Exception:
        return None


def _agrees(got, want) -> bool:
    import numpy as np

    return want is not None and got.shape == want.shape and \
        float(np.abs(got.astype(np.float64) - want).max()) <= 1e-4 * max(1.0, float(np.abs(want).max()))


def run_graph_edit_case(case: str, folder: Path) -> list[dict]:
    """One edited file through `zoo inspect`, `zoo convert` (to .safetensors) and zoo.load: each outcome 'ok' or
    'error' as in `run_op`, but a conversion or load that succeeds must compute what onnxruntime computes running
    the file itself on a probe (else 'wrong'); each operation under signal.alarm(CASE_SECONDS)."""
    import numpy as np

    def on_alarm(signum, frame):
        raise CaseTimeout()

    from conftest import TINY

    import zoo

    path, what = make_graph_edit_case(case, folder)
    spec_ = zoo.get_spec("resnet18", **TINY["resnet18"])
    x = np.random.default_rng(0).standard_normal((2, spec_.in_channels, *spec_.input_size)).astype(np.float32)
    want = _ort_logits(path, x)
    out = folder / "out.safetensors"
    results = []
    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        for op in ("inspect", "convert", "load"):
            results.append(_graph_edit_op(op, case, what, path, out, x, want))
    finally:
        signal.signal(signal.SIGALRM, previous)
    return results


def _graph_edit_op(op: str, case: str, what: str, path: Path, out: Path, x, want) -> dict:
    import zoo

    outcome, detail = "ok", ""
    signal.alarm(CASE_SECONDS)
    try:
        if op == "load":
            try:
                got = zoo.predict(zoo.load("resnet18", "onnx", weights=path), x)
            except Exception as e:
                outcome = "error" if _one_line_error(e) else "bad-error"
                detail = f"{type(e).__name__}: {str(e)[:300]}"
        else:
            argv = ["inspect", str(path)] if op == "inspect" else ["convert", str(path), str(out)]
            rc, lines, escaped = run_cli(argv)
            detail = escaped or detail
            if rc == 2 and len(lines) == 1 and lines[0].startswith("zoo: error: "):
                outcome, detail = "error", lines[0]
            elif rc != 0:
                outcome, detail = "bad-error", detail or "\n".join(lines)[-600:]
            elif op == "convert":
                got = zoo.predict(zoo.load("resnet18", "onnx", weights=out), x)
        signal.alarm(0)
        if outcome == "ok" and op != "inspect" and not _agrees(got, want):
            outcome, detail = "wrong", "its logits are not what onnxruntime computes running the file"
    except CaseTimeout:
        outcome, detail = "timeout", f"over {CASE_SECONDS} s"
    finally:
        signal.alarm(0)
        if out.exists():
            out.unlink()
    return {"case": case, "what": what, "op": op, "outcome": outcome, "detail": detail[:500]}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else ("torch", "flax", "keras"))
    elif sys.argv[1:2] == ["--run-worker"]:
        run_worker()
