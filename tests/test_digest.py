"""The zoo's SHA-256 beside the weights (zoo_sha256): from format version 2 on it covers the spec and the format
version as well as the tensors, in every format that carries one (.safetensors, .onnx, .weights.h5, Orbax);
files of version 1 (the shipped weights among them) still read, their digest covering the tensors only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY, random_weights
from fuzz_cases import _edit_onnx

import zoo
from zoo import conversion
from zoo.conversion import FORMATS, ConversionError
from zoo.io.checkpoint import DIGEST_KEY, digest
from zoo.io.formats import function

SPEC = zoo.get_spec("resnet18", **TINY["resnet18"])
NAMES = {"safetensors": "m.safetensors", "onnx": "m.onnx", "keras": "m.weights.h5", "flax": "m_flax"}
PACKAGES = {"safetensors": "safetensors", "onnx": "onnxruntime", "keras": "keras", "flax": "orbax.checkpoint"}
# Edits of the spec's JSON that still make a valid spec of the same tensors: another model, the same weights.
EDITS = {"activation": ('"kind": "relu"', '"kind": "sigmoid"'), "pool": ('"kind": "max"', '"kind": "avg"'),
         "batchnorm_eps": ('"eps": 1e-05', '"eps": 0.1'), "name": ('"name": "resnet18"', '"name": "resnet34"')}


def _stored_spec(fmt, path) -> str:
    if fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            return f.metadata()["spec"]
    if fmt == "onnx":
        import onnx

        return next(p.value for p in onnx.load(str(path)).metadata_props if p.key == "spec")
    if fmt == "keras":
        import h5py

        with h5py.File(path, "r") as f:
            return f.attrs["zoo_spec"]
    return json.loads((path / "_CHECKPOINT_METADATA").read_text())["custom_metadata"]["zoo_spec"]


def _replace_spec(fmt, path, text) -> None:
    """The file as it is, but for the spec's JSON in its metadata (its digest kept)."""
    if fmt == "safetensors":
        from safetensors import safe_open
        from safetensors.numpy import save_file

        with safe_open(str(path), "np") as f:
            meta, w = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        save_file(w, str(path), metadata={**meta, "spec": text})
    elif fmt == "onnx":
        _edit_onnx(path, lambda proto: next(p for p in proto.metadata_props if p.key == "spec").__setattr__("value",
                                                                                                          text))
    elif fmt == "keras":
        import h5py

        with h5py.File(path, "a") as f:
            f.attrs["zoo_spec"] = text
    else:
        meta = path / "_CHECKPOINT_METADATA"
        d = json.loads(meta.read_text())
        d["custom_metadata"]["zoo_spec"] = text
        meta.write_text(json.dumps(d))


@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("fmt", sorted(NAMES))
def test_an_edited_spec_fails_the_digest(fmt, edit, tmp_path):
    pytest.importorskip(PACKAGES[fmt])
    path = tmp_path / NAMES[fmt]
    function(FORMATS[fmt], "writer")(random_weights(SPEC, 0), SPEC, path)
    old, new = EDITS[edit]
    text = _stored_spec(fmt, path)
    assert old in text
    _replace_spec(fmt, path, text.replace(old, new, 1))
    # An .onnx's graph is compared with its spec first: an edit that changes the graph is caught there too.
    caught = "its tensors and spec do not match the SHA-256 stored beside them" + \
        ("|its graph is not the one the zoo writes" if fmt == "onnx" and edit != "name" else "")
    with pytest.raises(ConversionError, match=caught):
        conversion.read(path)
    with pytest.raises(ConversionError, match=caught):
        zoo.load("resnet18", "onnx" if fmt == "onnx" else "torch", weights=path)


def test_a_version_1_file_reads_with_its_tensors_only_digest(tmp_path):
    """As multizoo wrote them before version 2, and as the shipped weights are (the manifest hashes their files)."""
    from safetensors.numpy import save_file

    w = random_weights(SPEC, 0)
    meta = {"format": "multizoo.canonical", "format_version": "1", "model": SPEC.name, "spec": SPEC.to_json(),
            DIGEST_KEY: digest(w, version="1")}
    save_file(w, str(tmp_path / "v1.safetensors"), metadata=meta)
    ckpt = conversion.read(tmp_path / "v1.safetensors")
    assert ckpt.spec == SPEC and all(np.array_equal(ckpt.weights[k], w[k]) for k in w)
    assert "zoo canonical file, format version 1, SHA-256 of its tensors checked (version 1's does not cover the " \
           "spec)" in ckpt.notes
    save_file(w, str(tmp_path / "v3.safetensors"), metadata={**meta, "format_version": "3"})
    with pytest.raises(ConversionError, match=r"has zoo format version '3'; this zoo reads versions 1, 2: upgrade"):
        conversion.read(tmp_path / "v3.safetensors")
