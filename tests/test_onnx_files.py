""".onnx files: the zoo's own, torch.onnx.export's (read, matched to their spec and verified against their own
graph), and hostile or broken ones, each refused with the message that says why. (Every format pair with
ONNX, for every family: tests/test_conversion.py; mutants and crafted files: tests/fuzz_cases.py.)"""

from __future__ import annotations

import re
import warnings

import fuzz_cases
import numpy as np
import pytest
from conftest import TINY, random_weights

import zoo
from zoo import conversion
from zoo.conversion import FORMATS, ConversionError
from zoo.io.formats import function

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from zoo.io import io_onnx  # noqa: E402  (needs onnx)

pytestmark = pytest.mark.onnx
NIN = zoo.get_spec("nin", **TINY["nin"])


def _zoo_file(path, spec=NIN, seed=0):
    w = random_weights(spec, seed)
    function(FORMATS["onnx"], "writer")(w, spec, path)
    return path, w


def _export(module, x, path, **options):
    """torch.onnx.export's legacy exporter, the one that needs no onnxscript (its deprecation warning silenced)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, x, str(path), dynamo=False, **options)
    return path


def _resnet(seed=5):
    """The zoo's torch ResNet-18 (tiny): its state_dict keys are torchvision's, as a torchvision user's model has."""
    spec = zoo.get_spec("resnet18", **TINY["resnet18"])
    weights = random_weights(spec, seed) if seed is not None else zoo.init_weights(spec)
    return spec, weights, zoo.load(spec, "torch", weights=weights).eval()


def _edit(path, change):
    proto = onnx.load(str(path), load_external_data=False)
    change(proto)
    onnx.save(proto, str(path))
    return path


def _foreign(proto):
    """The zoo's file as a file from elsewhere: without its metadata."""
    del proto.metadata_props[:]


# --------------------------------------------------------------------------- files of torch.onnx.export

def test_seed_post_nin_exported_by_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from test_conversion import _d2l_nin

    torch.manual_seed(0)
    d2l = _d2l_nin(num_classes=7)
    path = _export(d2l, torch.randn(1, 1, 96, 96), tmp_path / "d2l.onnx")  # batch fixed at 1, as exported
    report = conversion.convert(path, tmp_path / "nin.safetensors")
    text = str(report)
    assert report.spec.name == "nin" and report.spec.num_classes == 7, text
    assert "recognised foreign keys: d2l NiN class (seed post, keys net.N.M.*)" in text
    assert re.search(r"ONNX opset \d+, IR version \d+, written by pytorch [\w.+]+; input 'input.1' \[1, 1, 96, 96\], "
                     r"batch fixed at 1", text), text
    assert "verified: onnxruntime, the file's own graph (source) vs torch (destination) on a [2, 1, 96, 96] " \
           "probe" in text
    x = torch.randn(3, 1, 96, 96)
    with torch.no_grad():
        want = d2l(x).numpy()
    model = zoo.load("nin", "onnx", weights=path)  # through zoo.io, as any file
    np.testing.assert_allclose(zoo.predict(model, x.numpy()), want, rtol=1e-4, atol=1e-5)
    conversion.convert(path, tmp_path / "zoo.onnx")  # onnx -> onnx: now the zoo's graph, with its spec
    back = conversion.read(tmp_path / "zoo.onnx")
    assert back.spec == report.spec
    assert "zoo ONNX file, format version 2, SHA-256 of its tensors and spec checked" in back.notes


@pytest.mark.parametrize("options", [{"do_constant_folding": False}, {"training": "PRESERVE"}],
                         ids=["no_folding", "preserve"])
def test_torchvision_resnet_exported_by_torch(options, tmp_path):
    """The two ways to export that keep BatchNorm's tensors; a dynamic batch; the spec (width) from the shapes."""
    torch = pytest.importorskip("torch")
    if "training" in options:
        options = {"training": torch.onnx.TrainingMode.PRESERVE}
    spec, w, model = _resnet()
    path = _export(model, torch.randn(1, 3, 32, 32), tmp_path / "resnet.onnx", input_names=["image"],
                   dynamic_axes={"image": {0: "batch"}}, **options)
    ckpt = conversion.read(path)
    assert sorted(ckpt.weights) == sorted(w) and all(np.array_equal(ckpt.weights[k], w[k]) for k in w)
    report = conversion.convert(path, tmp_path / "resnet.pt")
    assert report.spec == zoo.get_spec("resnet18", **TINY["resnet18"]), str(report)
    assert report.spec_origin == "inferred from the tensor shapes: resnet18 with width=4"
    assert "input 'image' [batch, 3, 32, 32], dynamic batch" in str(report)
    assert "vs torch (destination) on a [2, 3, 32, 32] probe" in str(report)


def test_equal_tensors_stored_once_are_read_through_identity_nodes(tmp_path):
    """A fresh model's BatchNorm statistics (zeros, ones) equal other tensors: torch's exporter stores each
    value once and names the others through Identity nodes; every canonical tensor is still read."""
    torch = pytest.importorskip("torch")
    spec, w, model = _resnet(seed=None)
    path = _export(model, torch.randn(1, 3, 32, 32), tmp_path / "fresh.onnx", do_constant_folding=False)
    held = {t.name for t in onnx.load(str(path)).graph.initializer}
    assert "layer1.0.bn1.running_mean" not in held  # an Identity of another zero tensor
    ckpt = conversion.read(path)
    assert sorted(ckpt.weights) == sorted(w) and all(np.array_equal(ckpt.weights[k], w[k]) for k in w)
    assert any(re.fullmatch(r"\d+ tensor\(s\) read through Identity or Constant nodes \(.*\); torch.onnx.export "
                            r"stores equal tensors once", n) for n in ckpt.notes), ckpt.notes


def test_weights_in_constant_nodes_of_a_file_without_metadata(tmp_path):
    """Some tools keep weights in Constant nodes; a file without the zoo's metadata is read as a foreign one (names,
    then the spec from the shapes), and its integer constants and other glue are no weights."""
    from onnx import helper

    path, w = _zoo_file(tmp_path / "m.onnx")

    def change(proto):
        del proto.metadata_props[:]
        t = next(t for t in proto.graph.initializer if t.name == "blocks.1.conv0.weight")
        proto.graph.node.insert(0, helper.make_node("Constant", [], [t.name], value=t))
        proto.graph.initializer.remove(t)

    _edit(path, change)
    ckpt = conversion.read(path)
    assert sorted(ckpt.weights) == sorted(w) and all(np.array_equal(ckpt.weights[k], w[k]) for k in w)
    assert "1 tensor(s) read through Identity or Constant nodes (blocks.1.conv0.weight); torch.onnx.export stores " \
           "equal tensors once" in ckpt.notes
    assert conversion.resolve_spec(ckpt)[0] == NIN
    report = conversion.convert(path, tmp_path / "out.pt")
    assert report.spec_origin == "inferred from the tensor shapes: nin with widths=(8, 16, 16)"


def test_folded_batchnorm_says_how_to_export_again(tmp_path):
    torch = pytest.importorskip("torch")
    _, _, model = _resnet()
    path = _export(model, torch.randn(1, 3, 32, 32), tmp_path / "folded.onnx")  # eval mode, constant folding on
    hint = ("Its weights named onnx::Conv_193, onnx::Conv_194, onnx::Conv_196, ... are how torch.onnx.export "
            "(dynamo=False) names a convolution into which its constant folding merged the BatchNorm after it (in "
            "eval mode): the BatchNorm tensors are gone, so no zoo model fits. Export again with "
            "do_constant_folding=False (or training=torch.onnx.TrainingMode.PRESERVE)")
    with pytest.raises(ConversionError) as e:
        conversion.convert(path, tmp_path / "out.pt")
    msg = str(e.value)
    assert "no registered model has these tensor names" in msg and msg.endswith(hint), msg
    assert "resnet18: the file lacks 100 of its tensors (conv1.weight, bn1.weight, ...) and has 40 it does not " \
           "(onnx::Conv_193, onnx::Conv_194, ...)" in msg  # which tensors did not match
    with pytest.raises(ConversionError, match=re.escape(hint)):
        zoo.load("resnet18", "torch", weights=path)
    assert hint in conversion.inspect(path)
    assert not (tmp_path / "out.pt").exists()


def _small_foreign(path, conv_bias="conv1.bias", fc_weight_shape=(5, 4), **gemm):
    """conv1 (7x7), ReLU, global pool, fc: written by hand as another exporter might."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    tensors = {"conv1.weight": (4, 3, 7, 7), conv_bias: (4,), "fc.weight": fc_weight_shape, "fc.bias": (5,)}
    nodes = [helper.make_node("Conv", ["x", "conv1.weight", conv_bias], ["c"], kernel_shape=[7, 7]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="fc", **{"transB": 1, **gemm})]
    model = _graph(nodes, [("", 18)], initializers=[
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in tensors.items()])
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32]))
    onnx.save(model, str(path))
    return path


def test_a_foreign_grouped_conv_is_refused_with_the_way_round(tmp_path):
    """A depthwise conv in another project's graph: refused by name with what to convert instead, not read
    as an ungrouped conv of other weights."""
    from onnx import helper

    path = _small_foreign(tmp_path / "grouped.onnx")
    model = onnx.load(str(path))
    model.graph.node[0].attribute.append(helper.make_attribute("group", 4))
    onnx.save(model, str(path))
    with pytest.raises(ConversionError, match="^" + re.escape(
            f"{path}: Conv node c has group=4: grouped and dilated convolutions are not read from another "
            f"project's .onnx yet (the zoo's own .onnx files of such models read); convert the PyTorch checkpoint "
            f"instead (zoo convert MODEL model.pt out.onnx)") + "$"):
        conversion.read(path)


def test_weights_in_another_layout_are_refused(tmp_path):
    path = _small_foreign(tmp_path / "tf_style.onnx", fc_weight_shape=(4, 5), transB=0)
    with pytest.raises(ConversionError, match="^" + re.escape(
            f"{path}: Gemm node fc has transB=0; the zoo's layers have transB=1, as PyTorch's exporter writes them, "
            f"so its weights would not mean the same in a zoo model") + "$"):
        conversion.read(path)


def test_batchnorm_merged_by_the_dynamo_exporter_says_how_to_export_again(tmp_path):
    """torch.onnx.export(dynamo=True)'s optimizer merges BatchNorm into the convolution too, naming the new bias
    after the weight (written here by hand: the dynamo exporter needs onnxscript)."""
    _small_foreign(tmp_path / "merged.onnx", conv_bias="conv1.weight_bias")
    hint = ("Its biases named conv1.weight_bias are how torch.onnx.export(dynamo=True) names a convolution into which "
            "its optimizer merged the BatchNorm after it: the BatchNorm tensors are gone, so no zoo model fits. Export "
            "again with optimize=False (or with dynamo=False, do_constant_folding=False)")
    with pytest.raises(ConversionError, match=re.escape(hint) + "$"):
        conversion.convert(tmp_path / "merged.onnx", tmp_path / "out.pt")


def test_a_foreign_graph_read_as_the_wrong_spec_is_caught(tmp_path):
    """Same tensors as the seed post's NiN, other pools: the shapes say nin, the file's own graph says otherwise."""
    torch = pytest.importorskip("torch")
    from test_conversion import _d2l_nin

    torch.manual_seed(0)
    net = _d2l_nin(num_classes=5)
    for i in (1, 3, 5):
        net.net[i] = torch.nn.AvgPool2d(3, 2)
    path = _export(net, torch.randn(1, 1, 96, 96), tmp_path / "avgpool.onnx")
    with pytest.raises(ConversionError, match=r"^verification failed: outputs differ by .*; nothing was written$"):
        conversion.convert(path, tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avgpool.onnx"]


def test_load_an_onnx_file_in_every_framework(framework, tmp_path):
    path, w = _zoo_file(tmp_path / "nin.onnx")
    model = zoo.load("nin", framework, weights=path)
    assert all(np.array_equal(v, w[k]) for k, v in zoo.get_weights(model).items())


# --------------------------------------------------------------------------- external data

def _external(path, location="m.onnx.data"):
    """The zoo's file with every initializer kept in `location`, as the dynamo exporter writes them."""
    proto = onnx.load(str(path))
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=0)
    return path


def test_external_data_inside_the_folder_reads(tmp_path):
    path, w = _zoo_file(tmp_path / "m.onnx")
    _external(path)
    assert (tmp_path / "m.onnx.data").stat().st_size > 0
    ckpt = conversion.read(path)
    assert "zoo ONNX file, format version 2, SHA-256 of its tensors and spec checked" in ckpt.notes
    assert all(np.array_equal(ckpt.weights[k], w[k]) for k in w) and sorted(ckpt.weights) == sorted(w)
    report = conversion.convert(path, tmp_path / "out.onnx")  # verified against its own graph, data read in
    assert "onnxruntime, the file's own graph (source)" in str(report)


def _relocate(location, offset=None):
    def change(proto):
        for t in proto.graph.initializer:
            if t.name == "blocks.0.conv0.weight":
                for e in t.external_data:
                    if e.key == "location":
                        e.value = location
                    if e.key == "offset" and offset is not None:
                        e.value = str(offset)
    return change


@pytest.mark.parametrize("case", ["absolute", "parent", "symlink", "past_end", "missing", "folder"])
def test_external_data_outside_the_folder_or_the_file_is_refused(case, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    path, _ = _zoo_file(folder / "m.onnx")
    _external(path)
    data = folder / "m.onnx.data"
    outside = tmp_path / "secret.data"
    outside.write_bytes(data.read_bytes())
    where = f"{path}: tensor blocks.0.conv0.weight keeps its data in"
    if case == "absolute":
        _edit(path, _relocate(str(outside)))
        expected = f"{where} {str(outside)!r}, an absolute path; refused: external data must lie in the model's folder"
    elif case == "parent":
        _edit(path, _relocate("../secret.data"))
        expected = f"{where} '../secret.data', which leaves the model's folder; refused: external data must lie in it"
    elif case == "symlink":
        (folder / "link.data").symlink_to(outside)
        _edit(path, _relocate("link.data"))
        expected = (f"{where} 'link.data', which resolves to {outside.resolve()}, outside the model's folder (a "
                    f"symbolic link?); refused: external data must lie in it")
    elif case == "past_end":
        size = data.stat().st_size
        _edit(path, _relocate("m.onnx.data", offset=size - 100))
        expected = (f"{where} 'm.onnx.data' at bytes {size - 100:,} to {size - 100 + 8 * 11 * 11 * 4:,}, past its "
                    f"end ({size:,} bytes): truncated, or not this model's data")
    elif case == "folder":  # was "[Errno 21] Is a directory: 6", naming a file descriptor
        (folder / "sub").mkdir()
        _edit(path, _relocate("sub"))
        expected = (f"{where} 'sub', which resolves to {(folder / 'sub').resolve()}, a folder; refused: external data "
                    f"is a regular file beside the model")
    else:
        _edit(path, _relocate("gone.data"))
        expected = f"{where} 'gone.data', which cannot be read beside the model (No such file or directory): " \
                   f"copy it into {folder}"
    for read in (conversion.read, conversion.inspect, lambda p: zoo.load("nin", "torch", weights=p)):
        with pytest.raises(ConversionError, match=f"^{re.escape(expected)}$"):
            read(path)


# --------------------------------------------------------------------------- broken and hostile files

@pytest.mark.parametrize("case", ["empty", "truncated", "garbage", "flipped_weight", "no_graph", "damaged_tag",
                                  "damaged_digest_key"])
def test_broken_file(case, tmp_path):
    path, _ = _zoo_file(tmp_path / "m.onnx")
    data = bytearray(path.read_bytes())
    if case == "empty":
        path.write_bytes(b"")
        expected = f"{path} is empty (0 bytes), not an ONNX model"
    elif case == "truncated":
        path.write_bytes(data[: len(data) // 2])
        expected = f"{path} is not a readable ONNX file (truncated or corrupt?): DecodeError: Error parsing message"
    elif case == "garbage":
        path.write_bytes(b"\xff" * 16 + data[16:])
        expected = f"{path} is not a readable ONNX file (truncated or corrupt?): DecodeError: Error parsing message"
    elif case == "no_graph":  # protobuf that parses (unknown fields are allowed), as some random bytes do
        path.write_bytes(b"\x08\x08")
        expected = f"{path} is not a readable ONNX file (truncated or corrupt?): it holds no graph"
    elif case.startswith("damaged"):  # a flipped bit in the metadata must not make it a foreign file, unchecked
        key, new = ("format", "multizoo.caNonical") if case == "damaged_tag" else ("zoo_sha256", "zoo_sha056")
        at = data.index(key.encode() if case == "damaged_digest_key" else b"multizoo.canonical")
        data[at: at + len(new)] = new.encode()
        path.write_bytes(bytes(data))
        expected = (f"{path}: its zoo metadata is damaged (format 'multizoo.caNonical' instead of "
                    f"'multizoo.canonical'); copy or write it again" if case == "damaged_tag" else
                    f"{path}: its zoo metadata lacks the SHA-256 of its tensors (zoo_sha256): the file is damaged; "
                    f"copy or write it again")
    else:
        at = data.index(np.float32(random_weights(NIN, 0)["blocks.2.conv1.weight"][0, 0, 0, 0]).tobytes())
        data[at] ^= 0x10
        path.write_bytes(bytes(data))
        expected = f"{path}: its tensors and spec do not match the SHA-256 stored beside them ("
    with pytest.raises(ConversionError) as e:
        conversion.convert(path, tmp_path / "out.pt")
    assert str(e.value).startswith(expected), str(e.value)
    assert not (tmp_path / "out.pt").exists()


def test_a_graph_that_would_ask_for_gigabytes_is_refused_before_it_runs(tmp_path):
    """Weights intact (digest fine), the first convolution padded by 5000 on each side: 2 x 8 x 2554 x 2554
    values on the probe, which shape inference finds before onnxruntime would allocate them."""
    path, _ = _zoo_file(tmp_path / "m.onnx")

    def pad(proto):
        conv = next(n for n in proto.graph.node if n.op_type == "Conv")
        next(a for a in conv.attribute if a.name == "pads").ints[:] = [5000] * 4

    _edit(path, pad)
    with pytest.raises(ConversionError, match="its graph is not the one the zoo writes for its spec"):
        conversion.read(path)  # a zoo file: its graph is compared with the spec's, without running it
    _edit(path, _foreign)  # a file from elsewhere: its graph runs, bounded
    expected = (f"{path}: on a [2, 1, 224, 224] input its graph makes blocks.0.conv0/Conv:1 of shape [2, 8, 2554, "
                f"2554], over 33,554,432 values; refused (a zoo model of this size makes none so large)")
    with pytest.raises(ConversionError, match=f"^{re.escape(expected)}$"):
        conversion.convert(path, tmp_path / "out.pt")


def test_a_graph_whose_input_size_the_spec_does_not_take(tmp_path):
    path, _ = _zoo_file(tmp_path / "m.onnx")

    def resize(proto):
        for d in proto.graph.input[0].type.tensor_type.shape.dim[2:]:
            d.dim_value = 20

    _edit(path, _foreign)
    _edit(path, resize)
    with pytest.raises(ConversionError, match=r"^the source file's graph takes 20x20 inputs \(batch 2\), at which nin "
                                              r"does not run \(.+\); check that the file holds this model, or pass "
                                              r"--no-verify / verify=False to skip the verification$"):
        conversion.convert(path, tmp_path / "out.pt")


def test_an_onnx_file_named_pt_is_named_as_such(tmp_path):
    path, _ = _zoo_file(tmp_path / "m.onnx")
    path.rename(tmp_path / "m.pt")
    with pytest.raises(ConversionError, match=re.escape("m.pt is not a PyTorch checkpoint: it is an ONNX model "
                                                        "(protobuf).")):
        conversion.read(tmp_path / "m.pt")


def _graph(nodes, opsets, inputs=("x",), initializers=()):
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
                              list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    return model


def test_ops_outside_the_zoo_are_refused_by_name(tmp_path):
    from onnx import helper

    lstm = _graph([helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=4),
                   helper.make_node("Relu", ["y"], ["z"])], [("", 17)], inputs=("x", "w", "r"))
    custom = _graph([helper.make_node("Conv", ["x", "w"], ["y"]),
                     helper.make_node("FancyConv", ["y"], ["z"], domain="com.example"),
                     helper.make_node("FancyConv", ["z"], ["u"], domain="com.example")],
                    [("", 17), ("com.example", 1)], inputs=("x", "w"))
    for name, model, ops in [("lstm", lstm, "LSTM (1)"), ("custom", custom, "com.example.FancyConv (2)")]:
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, str(path))
        expected = (f"{path}: its graph holds ops the zoo does not read: {ops}. The zoo reads convolutional networks "
                    f"of Add, AveragePool, BatchNormalization, Clip, Concat, Conv, Flatten, Gemm, GlobalAveragePool, "
                    f"HardSigmoid, HardSwish, Identity, MaxPool, Mul, ReduceMean, Relu, Sigmoid, Slice (and the glue "
                    f"torch.onnx.export writes "
                    f"around them); this is another kind of model")
        with pytest.raises(ConversionError, match=f"^{re.escape(expected)}$"):
            conversion.read(path)


@pytest.mark.parametrize("opset", [3, 99])
def test_an_opset_outside_what_runs_is_refused(opset, tmp_path):
    import onnxruntime

    path, _ = _zoo_file(tmp_path / "m.onnx")
    _edit(path, lambda proto: proto.opset_import[0].__setattr__("version", opset))
    newest = io_onnx.newest_opset()
    runs = f"the zoo reads opsets 10 to {newest}, the newest that onnxruntime {onnxruntime.__version__} runs"
    if opset == 3:
        expected = (f"{path} uses ONNX opset 3; {runs} (10 is the first with the pools and slices of the zoo's "
                    f"graphs): export it again with a newer opset, e.g. torch.onnx.export(..., opset_version=17)")
    else:
        expected = (f"{path} uses ONNX opset 99; {runs}: upgrade onnxruntime (pip install -U onnxruntime), or export "
                    f"it again with an older opset, e.g. torch.onnx.export(..., opset_version=17)")
    with pytest.raises(ConversionError, match=f"^{re.escape(expected)}$"):
        conversion.convert(path, tmp_path / "out.pt")
    assert newest >= 17


# --------------------------------------------------------------------------- the command line, as typed

@pytest.mark.flax
def test_cli_as_a_user_types_it(tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("flax")
    from zoo.cli import main

    monkeypatch.chdir(tmp_path)
    function(FORMATS["torch"], "writer")(random_weights(NIN, 0), NIN, tmp_path / "model.pt")
    assert main(["convert", "nin", "model.pt", "model.onnx"]) == 0
    out = capsys.readouterr().out
    assert "torch -> onnx: nin" in out and "verified: torch (source) vs onnx (destination)" in out
    assert out.rstrip().endswith("wrote model.onnx")
    assert main(["inspect", "model.onnx"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model.onnx: onnx format, 24 tensors") and "zoo ONNX file, format version 2" in out
    assert "ONNX opset 17, IR version 8, written by multizoo; input 'input' [batch, 1, 224, 224], dynamic batch" in out
    assert f"fits: nin (family nin), {NIN.num_params:,} parameters" in out

    (tmp_path / "exported").mkdir()
    monkeypatch.chdir(tmp_path / "exported")
    _, _, model = _resnet()
    _export(model, torch.randn(1, 3, 32, 32), tmp_path / "exported" / "model.onnx", do_constant_folding=False)
    assert main(["convert", "resnet18", "model.onnx", "flax_ckpt/"]) == 0
    out = capsys.readouterr().out
    assert "onnx -> flax: resnet18" in out and "spec: inferred from the tensor shapes: resnet18 with width=4" in out
    assert "verified: onnxruntime, the file's own graph (source) vs flax (destination) on a [2, 3, 32, 32]" in out
    assert (tmp_path / "exported" / "flax_ckpt").is_dir()


# --------------------------------------------------------------------------- graphs edited after they were written

@pytest.mark.parametrize("origin", ["zoo", "foreign"])
@pytest.mark.parametrize("edit", sorted(fuzz_cases.ONNX_GRAPH_EDITS))
def test_a_graph_edited_after_it_was_written_is_refused_by_load_as_by_convert(edit, origin, tmp_path):
    """The weights and metadata untouched, the graph computes something else (or nothing onnxruntime runs):
    zoo.load used to read the initializers and run the spec, ignoring the graph; zoo convert refused."""
    spec = zoo.get_spec("resnet18", **TINY["resnet18"])
    path, _ = _zoo_file(tmp_path / "m.onnx", spec)
    if origin == "foreign":
        _edit(path, _foreign)
    _edit(path, fuzz_cases.ONNX_GRAPH_EDITS[edit])
    expected = "its graph is not the one the zoo writes for its spec" if origin == "zoo" else ""
    if edit == "two_default_opsets":
        expected = "declares the ONNX opset 2 times"
    with pytest.raises(ConversionError, match=expected) as e:
        zoo.load("resnet18", "onnx", weights=path)
    assert "\n" not in str(e.value)
    with pytest.raises(ConversionError, match=expected):
        conversion.convert(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
