"""onnxruntime's ways to run a zoo model's ONNX graph, and OpenVINO's on the same graph, for `zoo bench`.

Each entry of `alternatives` takes a batch (numpy, NCHW) and returns a function that runs
the model once on it and returns numpy logits; building the session (or compiling, for
OpenVINO) happens before that function is returned and is not timed.

The rows that change a session option build an `OnnxModel` with those options and call it
through `zoo.predict`, as the default does, so that the option is the only difference.
OpenVINO (rows only when the `openvino` package is installed) reads the same .onnx file and
compiles it for the batch's shape, in float32: on CPUs with bfloat16 units (AMX, AVX512-BF16)
its default inference precision is bfloat16, whose logits differ from float32 by about 1e-2.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

import zoo
from zoo.frameworks.onnx_model import INPUT, OUTPUT, OnnxModel, session_options

LAYOUT = "NCHW"


def describe() -> str:
    text = f"onnxruntime {ort.__version__} on {ort.get_device()}, {os.cpu_count()} logical CPUs"
    if importlib.util.find_spec("openvino") is not None:
        import openvino

        text += f"; openvino {openvino.__version__.split('-')[0]}"
    return text


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    """onnxruntime's float32 MatMul, in a session with the zoo's options."""
    a, b = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in "ab")
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    feed = {"a": np.ones((n, n), np.float32), "b": np.ones((n, n), np.float32)}
    sess.run(None, feed)  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def _with_options(model, options: ort.SessionOptions):
    """The zoo model with other session options, called as the default is."""
    other = OnnxModel(model.spec, zoo.get_weights(model), options=options)
    return lambda x: (lambda: zoo.predict(other, x))


def _options(disable: str | None = None, parallel: bool = False, **kw) -> ort.SessionOptions:
    opts = session_options(**kw)
    if disable:
        opts.add_session_config_entry("optimization.disable_specified_optimizers", disable)
    if parallel:  # branches (Inception, DenseNet concatenations) may then run at the same time
        opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    return opts


def _session(proto: onnx.ModelProto, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), options or session_options(),
                                providers=["CPUExecutionProvider"])


def _session_run(model):
    def make(x):
        sess = model.session(tuple(x.shape[2:]))
        return lambda: sess.run([OUTPUT], {INPUT: x})[0]
    return make


def _io_binding(model):
    """Input bound once, output written into an array allocated once."""
    def make(x):
        sess = model.session(tuple(x.shape[2:]))
        out = np.empty((len(x), model.spec.num_classes), np.float32)
        binding = sess.io_binding()
        binding.bind_cpu_input(INPUT, x)
        binding.bind_ortvalue_output(OUTPUT, ort.OrtValue.ortvalue_from_numpy(out))

        def run():
            sess.run_with_iobinding(binding)
            return out.copy()
        return run
    return make


def _saved_and_reloaded(model):
    """The graph as onnxruntime optimised it (level all), written to a file and loaded with
    optimisation off, as a deployment that skips the optimisation at start-up does."""
    def make(x):
        with tempfile.TemporaryDirectory() as folder:
            opts = session_options()
            opts.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
            _session(model.to_onnx(tuple(x.shape[2:])), opts)
            sess = ort.InferenceSession(opts.optimized_model_filepath, session_options(level="none"),
                                        providers=["CPUExecutionProvider"])
        return lambda: sess.run([OUTPUT], {INPUT: x})[0]
    return make


def nhwc_input(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph taking [B, H, W, C]: a Transpose to NCHW first, left to onnxruntime to fold."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    b, c, h, w = (d.dim_param or d.dim_value for d in g.input[0].type.tensor_type.shape.dim)
    nchw = f"{INPUT}_nchw"
    for node in g.node:
        node.input[:] = [nchw if name == INPUT else name for name in node.input]
    g.node.insert(0, helper.make_node("Transpose", [INPUT], [nchw], name=nchw, perm=[0, 3, 1, 2]))
    g.input[0].CopyFrom(helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [b, h, w, c]))
    return out


def _nhwc(model):
    def make(x):
        sess = _session(nhwc_input(model.to_onnx(tuple(x.shape[2:]))))
        xt = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # the caller holds NHWC images
        return lambda: sess.run([OUTPUT], {INPUT: xt})[0]
    return make


def _openvino(model, hint: str, split: bool = False):
    """OpenVINO on the zoo's .onnx file, compiled for this batch's shape in float32. With `split`,
    the batch is cut into the hint's optimal number of requests (as far as it divides evenly), run
    at the same time: what the THROUGHPUT hint is for."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    def make(x):
        core = ov.Core()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.onnx")
            onnx.save(model.to_onnx(tuple(x.shape[2:])), path)
            graph = core.read_model(path)
        config = {hints.performance_mode: getattr(hints.PerformanceMode, hint), hints.inference_precision: ov.Type.f32}
        requests = 1
        if split:
            probe = core.compile_model(graph, "CPU", config)
            most = probe.get_property(props.optimal_number_of_infer_requests)
            requests = max(n for n in range(1, most + 1) if len(x) % n == 0)
        graph.reshape({INPUT: [len(x) // requests, *x.shape[1:]]})
        compiled = core.compile_model(graph, "CPU", config)
        if requests == 1:
            request = compiled.create_infer_request()
            return lambda: request.infer({INPUT: x}, share_inputs=True)[0]
        queue = ov.AsyncInferQueue(compiled, requests)
        chunks = np.split(x, requests)
        out = np.empty((len(x), model.spec.num_classes), np.float32)
        step = len(x) // requests

        def done(request, i):
            out[i * step:(i + 1) * step] = request.get_output_tensor(0).data

        queue.set_callback(done)

        def run():
            for i, chunk in enumerate(chunks):
                queue.start_async({INPUT: chunk}, userdata=i, share_inputs=True)
            queue.wait_all()
            return out.copy()
        return run
    return make


def alternatives(model) -> dict:
    """name -> make(x) -> run(); the first is the zoo's default call, as the README shows it."""
    cpus = os.cpu_count() or 1
    runs = {
        "zoo.predict(model, x)": lambda x: (lambda: zoo.predict(model, x)),
        "session.run, zoo's session": _session_run(model),
        "IO binding, zoo's session": _io_binding(model),
        "optimisation level basic": _with_options(model, _options(level="basic")),
        "optimisation level extended": _with_options(model, _options(level="extended")),
        "level all without NCHWc layout": _with_options(model, _options(disable="NchwcTransformer")),
        "1 intra-op thread": _with_options(model, _options(threads=1)),
        f"{cpus} intra-op threads (logical CPUs)": _with_options(model, _options(threads=cpus)),
        "no spinning": _with_options(model, _options(spinning=False)),
        "parallel execution mode": _with_options(model, _options(parallel=True)),
        "optimised model saved, reloaded": _saved_and_reloaded(model),
        "NHWC input (Transpose in graph)": _nhwc(model),
    }
    if importlib.util.find_spec("openvino") is not None:
        runs.update({
            "OpenVINO, LATENCY hint": _openvino(model, "LATENCY"),
            "OpenVINO, THROUGHPUT hint": _openvino(model, "THROUGHPUT"),
            "OpenVINO, THROUGHPUT, batch split": _openvino(model, "THROUGHPUT", split=True),
        })
    return runs
