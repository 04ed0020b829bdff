"""`zoo bench`: inference throughput of a zoo model, side by side with each framework's alternatives.

For each framework, in a process of its own (so that imports don't interfere):
  * every way of running the model that the framework offers (`zoo/frameworks/<fw>_bench.py`),
    on the same random batch, for each batch size x input size;
  * warm-up (compilation included) excluded; then `rounds` rounds in which each alternative,
    in turn, runs for at least `min_time` seconds; the median round gives images/s, and the
    process's CPU time per call is kept beside the wall time. Taking turns spreads any slowdown
    of the machine over all alternatives alike;
  * each alternative's speed relative to the zoo's default call (the first row): the median of
    the ratios within each round, with a 90% bootstrap interval (`ratio_stats`); a ratio whose
    interval is wider than UNSTEADY_WIDTH of it is marked unsteady (`x?`) instead; its achieved
    GFLOP/s (FLOPs counted from the spec), and the framework's float32 matmul rate, measured in
    the same process, as the ceiling;
  * the largest difference of its logits from the default's, so a fast but wrong path shows;
  * where onnxruntime is installed, one common yardstick: the zoo's ONNX model on the same
    weights (the onnx framework's default) is one more row of every other framework, taking its
    turns in the same rounds in a process of its own (`Guest`: two thread pools never share a
    process), and each row's speed over its speed is kept; a last table gives, for each
    framework, its default and its fastest alternative as multiples of onnxruntime's speed.
    Before each turn the bench pauses SETTLE_S, so that a pool still spinning goes to sleep.
Then, in fresh processes, the time to first prediction: the framework's bare import, and
`zoo.load` to the first output (compilation included) on top of it.

    zoo bench                                   # nin; torch, flax, keras, onnx
    zoo bench resnet18 --cases 1x224 32x224     # any model of the zoo
    zoo bench --frameworks torch --cases 32x224 --rounds 9
    zoo bench --frameworks keras[jax]           # Keras on another backend
    zoo bench --frameworks flax flax@xla-onednn # a runtime setting only an environment variable reaches
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import zoo
from zoo._frameworks import FRAMEWORKS, quiet_import

CASES = ((1, 96), (32, 96), (1, 224), (32, 224))  # (batch, input size)
# A speed ratio is the median over rounds of the two alternatives' time ratios within each round (they
# take turns, so a slow spell of the machine touches both); its interval is a 90% bootstrap interval of
# that median. A ratio whose interval is wider than this fraction of it is not steady, and not printed.
# A slow round, or a machine whose speed drifts, widens no interval: the ratios within rounds stay.
UNSTEADY_WIDTH = 0.20
# Older JSON (no intervals): a time per call that varied by more than this between rounds (slowest /
# fastest - 1) marked its ratios unsteady.
UNSTABLE_SPREAD = 0.25
BOOTSTRAP = 2000  # resamples of the rounds
# A pause between two alternatives' turns: thread pools that spin after their work (OpenMP's in torch,
# onnxruntime's, Eigen's in XLA) go idle before the next alternative starts, so pools do not fight.
SETTLE_S = 0.05


class BenchError(RuntimeError):
    """A framework's benchmark process failed."""


# What "the framework's bare import" is, for time to first prediction.
BARE_IMPORTS = {"torch": "import torch", "flax": "import jax, flax.nnx", "keras": "import keras",
                "onnx": "import onnx, onnxruntime"}
# The row every framework is also compared against, when onnxruntime is installed: the zoo's ONNX
# model on the same weights, in the same rounds, run and timed in a process of its own (`Guest`).
REFERENCE = "onnxruntime (zoo default, own process)"


# Runtime settings that only an environment variable reaches (each library reads it once, when it starts),
# so each is a target of its own, `flax@xla-onednn`, measured in its own process against the same onnxruntime
# row as the plain target: name -> (the targets it applies to, the environment it sets). XLA_FLAGS given by
# the user are kept, the variant's flags after them.
VARIANTS = {
    "xla-onednn": (("flax", "keras[jax]"), {"XLA_FLAGS": "--xla_cpu_use_onednn=true"}),
    "xla-onednn-calls": (("flax", "keras[jax]"), {"XLA_FLAGS": "--xla_cpu_experimental_onednn_custom_call=true"}),
    "xla-xnnpack": (("flax", "keras[jax]"), {"XLA_FLAGS": "--xla_cpu_use_xnnpack=true"}),
    "omp-passive": (("torch", "keras[torch]"), {"OMP_WAIT_POLICY": "PASSIVE"}),
    "tf-no-onednn": (("keras", "keras[tensorflow]"), {"TF_ENABLE_ONEDNN_OPTS": "0"}),
}


def _target(text: str) -> tuple[str, dict[str, str]]:
    """'keras[jax]' -> ('keras', {'KERAS_BACKEND': 'jax'}); 'torch' -> ('torch', {});
    'flax@xla-onednn' -> ('flax', {'XLA_FLAGS': ...})."""
    base, _, variant = text.partition("@")
    name, _, rest = base.partition("[")
    if name not in FRAMEWORKS or (rest and (name != "keras" or not rest.endswith("]"))):
        raise ValueError(f"unknown framework {text!r}; choose from {', '.join(FRAMEWORKS)} or keras[BACKEND], "
                         f"each optionally @VARIANT")
    env = {"KERAS_BACKEND": rest[:-1]} if rest else {}
    if variant:
        if variant not in VARIANTS or base not in VARIANTS[variant][0]:
            known = ", ".join(f"{v} ({'/'.join(on)})" for v, (on, _) in VARIANTS.items())
            raise ValueError(f"{text!r}: no variant {variant!r} for {base}; the variants: {known}")
        for key, value in VARIANTS[variant][1].items():
            env[key] = f"{os.environ[key]} {value}" if key == "XLA_FLAGS" and os.environ.get(key) else value
    return name, env


def _case(text: str) -> tuple[int, int]:
    try:
        batch, size = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a case is BATCHxSIZE, e.g. 32x224; got {text!r}") from None
    return batch, size


# --------------------------------------------------------------------------- in a framework's process

def _time(run, min_time: float) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) per call, over a stretch of at least min_time."""
    calls, start, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        run()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls, (time.process_time() - cpu) / calls


def ratio_stats(base: list[float], times: list[float], seed: int = 0) -> tuple[float, float, float]:
    """How many times faster than `base` one alternative is, from their per-round times: (median of the
    per-round ratios base / time, and the 5th and 95th percentiles of that median over bootstrap
    resamples of the rounds). Deterministic: the resamples are seeded."""
    ratios = np.asarray(base, np.float64) / np.asarray(times, np.float64)
    picks = np.random.default_rng(seed).integers(0, len(ratios), (BOOTSTRAP, len(ratios)))
    medians = np.median(ratios[picks], axis=1)
    return float(np.median(ratios)), float(np.percentile(medians, 5)), float(np.percentile(medians, 95))


def steady(stats) -> bool:
    """Whether a (ratio, low, high) is steady enough to print: its interval within UNSTEADY_WIDTH of it."""
    ratio, low, high = stats
    return bool(ratio > 0 and (high - low) / ratio <= UNSTEADY_WIDTH)


class Guest:
    """onnxruntime in a process of its own, beside a framework's process and driven by it turn by turn: the
    framework's own thread pool and onnxruntime's never share a process. The guest times itself (wall and
    CPU time of its process), so the pipe between the two costs nothing in the figures. The guest runs the
    zoo's default session: the zoo's ONNX model on the framework model's weights, as `zoo.predict` calls it.

    Protocol, a JSON line each way: {"case": "x.npy"} -> {"first_call_s", "out": "out.npy"} (the first call
    and a warm-up); {"time": min_time} -> {"wall", "cpu"}; the guest ends when its input closes."""

    def __init__(self, model, layout: str):
        self.layout, self.folder = layout, tempfile.TemporaryDirectory(prefix="zoo-bench-")
        weights = os.path.join(self.folder.name, "weights.npz")
        np.savez(weights, **zoo.get_weights(model))
        with open(os.path.join(self.folder.name, "spec.json"), "w") as f:
            f.write(zoo.spec_of(model).to_json())
        self.proc = subprocess.Popen([sys.executable, "-m", "zoo.bench", "--guest", self.folder.name],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _ask(self, message: dict) -> dict:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"the onnxruntime guest process ended (exit {self.proc.wait()}; its error is above)")
        return json.loads(line)

    def make(self, x: np.ndarray):
        """make(x) -> run(), as a framework's alternatives: run() is the guest's output on x; run.timed(t)
        one turn of at least t seconds there. The transpose to NCHW is done here, untimed: an onnxruntime
        user holds NCHW images."""
        path = os.path.join(self.folder.name, "x.npy")
        np.save(path, np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.layout == "NHWC" else x)
        answer = self._ask({"case": path})
        out = np.load(answer["out"])

        def run():
            return out
        run.first_call_s = answer["first_call_s"]
        run.timed = lambda min_time: tuple(self._ask({"time": min_time})[k] for k in ("wall", "cpu"))
        return run

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.folder.cleanup()


def serve_guest(folder: str) -> None:
    """The guest's side of `Guest`: reads its requests from stdin, answers on stdout."""
    from zoo.spec import ModelSpec

    with open(os.path.join(folder, "spec.json")) as f:
        spec = ModelSpec.from_json(f.read())
    with np.load(os.path.join(folder, "weights.npz"), allow_pickle=False) as w:
        model = zoo.load(spec, "onnx", weights=dict(w))
    run = None
    for line in sys.stdin:
        message = json.loads(line)
        if "case" in message:
            run = functools.partial(zoo.predict, model, np.load(message["case"]))
            t = time.perf_counter()
            out = run()
            first = time.perf_counter() - t
            _time(run, 0.1)  # warm-up
            np.save(os.path.join(folder, "out.npy"), out)
            answer = {"first_call_s": first, "out": os.path.join(folder, "out.npy")}
        else:
            wall, cpu = _time(run, message["time"])
            answer = {"wall": wall, "cpu": cpu}
        print(json.dumps(answer), flush=True)


def _turn(run, min_time: float) -> tuple[float, float]:
    """One alternative's turn: timed here, or in the guest's process for the guest's row."""
    return run.timed(min_time) if hasattr(run, "timed") else _time(run, min_time)


def measure(framework: str, model_name: str, cases, rounds: int, min_time: float,
            only: list[str] | None = None, seed: int = 0) -> dict:
    """Every alternative of one framework on every case; runs in that framework's process."""
    bench = quiet_import(f"zoo.frameworks.{framework}_bench")
    model = zoo.load(model_name, framework, seed=seed)
    spec = zoo.spec_of(model)
    # the framework's rows are also timed against onnxruntime's: the onnx framework's own default,
    # or an extra row, when onnxruntime is installed
    guest = None
    if framework != "onnx" and all(importlib.util.find_spec(p) for p in FRAMEWORKS["onnx"].packages):
        guest = Guest(model, bench.LAYOUT)
    result = {"framework": framework, "describe": bench.describe(), "matmul_gflops": bench.matmul_gflops(),
              "model": model_name, "cases": [],
              "onnxruntime_row": REFERENCE if guest else "zoo.predict(model, x)" if framework == "onnx" else None}
    rng = np.random.default_rng(seed)
    try:
        for batch, size in cases:
            x = rng.standard_normal((batch, spec.in_channels, size, size), dtype=np.float32)
            if bench.LAYOUT == "NHWC":
                x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            flops = spec.flops((size, size)) * batch
            runs, rows, default_out = {}, {}, None
            alternatives = bench.alternatives(model)
            kept = [name for i, name in enumerate(alternatives)  # the first, the default, always stays
                    if not only or not i or any(text in name for text in only)]
            makes = {name: alternatives[name] for name in kept}
            if guest:
                makes[REFERENCE] = guest.make
            for name, make in makes.items():
                try:
                    run = make(x)
                    t = time.perf_counter()
                    out = run()  # the first call compiles, where there is compiling to do
                    first = getattr(run, "first_call_s", time.perf_counter() - t)
                    _turn(run, min_time / 2)  # warm-up
                except Exception as e:  # reported in the table, e.g. torch.compile without a C++ compiler
                    rows[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
                    continue
                out = np.asarray(out)
                default_out = out if default_out is None else default_out
                runs[name] = run
                rows[name] = {"first_call_s": first, "max_abs_diff": float(np.abs(out - default_out).max()),
                              "times": [], "cpu_times": []}
            for r in range(rounds):
                names = list(runs)
                names = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
                for name in names:
                    time.sleep(SETTLE_S)
                    wall, cpu = _turn(runs[name], min_time)
                    rows[name]["times"].append(wall)
                    rows[name]["cpu_times"].append(cpu)
            default = rows[next(iter(rows))].get("times")
            ort_times = rows.get(result["onnxruntime_row"], {}).get("times")
            for row in rows.values():
                if "times" in row:
                    summarise(row, batch, flops, default, ort_times)
            result["cases"].append({"batch": batch, "size": size, "flops": flops, "rows": rows})
            print(f"  {framework}: {batch}x{size} done", file=sys.stderr, flush=True)
    finally:
        if guest:
            guest.close()
    return result


def summarise(row: dict, batch: int, flops: int, default: list[float] | None, ort_times: list[float] | None) -> None:
    """A row's figures from its per-round `times` (kept in the JSON): medians, and its speed relative to the
    default and to onnxruntime, each the median of per-round ratios with its interval."""
    times, cpu = row["times"], row["cpu_times"]
    row["seconds"] = statistics.median(times)
    row["cpu_seconds"] = statistics.median(cpu)  # this process's CPU time per call: / seconds = cores kept busy
    row["spread"] = max(times) / min(times) - 1
    row["images_per_s"] = batch / row["seconds"]
    row["gflops"] = flops / row["seconds"] / 1e9
    for key, base in (("vs_default", default), ("vs_onnxruntime", ort_times)):
        stats = ratio_stats(base, times) if base else None
        row[key] = stats[0] if stats else None
        row[f"{key}_interval"] = list(stats[1:]) if stats else None


def _is_steady(row: dict, key: str, *others: dict) -> bool:
    """The row's ratio `key` is steady: by its interval, or, in JSON written before intervals, by the raw
    spread of its and the others' times."""
    interval = row.get(f"{key}_interval")
    if interval is not None:
        return steady((row[key], *interval))
    return max(r.get("spread", 0.0) for r in (row, *others)) <= UNSTABLE_SPREAD


def _interval(row: dict, key: str) -> str:
    interval = row.get(f"{key}_interval")
    return "" if interval is None else f" [{interval[0]:.2f}-{interval[1]:.2f}]"


def first_prediction(framework: str, model_name: str) -> dict:
    """In a fresh process: the bare framework import, then zoo.load to the first output."""
    t0 = time.perf_counter()
    exec(BARE_IMPORTS[framework], {})
    t1 = time.perf_counter()
    model = zoo.load(model_name, framework)
    spec = zoo.spec_of(model)
    x = np.zeros((1, spec.in_channels, *spec.input_size), np.float32)
    t2 = time.perf_counter()
    zoo.predict(model, x, layout="NCHW")
    t3 = time.perf_counter()
    return {"bare_import_s": t1 - t0, "load_s": t2 - t1, "first_predict_s": t3 - t2}


# --------------------------------------------------------------------------- the driver

def _worker(args: list[str], env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-m", "zoo.bench", *args]
    quiet = {"TF_CPP_MIN_LOG_LEVEL": "2"}  # TensorFlow's start-up notices, unless the user set a level
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**quiet, **os.environ, **env})
    if proc.returncode:
        raise BenchError(f"the benchmark's worker failed (exit {proc.returncode}; its error is above): {' '.join(cmd)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}, Python {platform.python_version()}"


def format_results(results: list[dict], machine: str, markdown: bool = False) -> str:
    """The side-by-side tables: a block per framework, a column group per case."""
    lines = [f"Machine: {machine}", ""]
    for res in results:
        cases = res["cases"]
        settings = "".join(f"; {k}={v}" for k, v in res.get("environment", {}).items())
        lines.append(f"{res['target']}: {res['describe']}{settings}; float32 matmul 2048x2048: "
                     f"{res['matmul_gflops']:.0f} GFLOP/s")
        head = ["alternative"] + [f"b{c['batch']} {c['size']}x{c['size']}: img/s, x default, GFLOP/s" for c in cases]
        body, default, unsteady = [], next(iter(cases[0]["rows"])), []
        for name in cases[0]["rows"]:
            cells = [name + (" [default]" if name == default else " [reference]" if name == _guest(res) else "")]
            for c in cases:
                row = c["rows"][name]
                if "error" in row:
                    cells.append("failed: " + row["error"])
                    continue
                spread = max(row.get("spread", 0.0), c["rows"][default].get("spread", 0.0))
                if "vs_default_interval" not in row and spread > UNSTABLE_SPREAD:  # JSON written before intervals
                    ratio = f"x? (unsteady {spread:.0%})"
                    unsteady.append(f"{name}, b{c['batch']} {c['size']}x{c['size']}")
                elif row["vs_default"] is None:
                    ratio = "  n/a"
                elif name == default:
                    ratio = "x1.00"
                elif not _is_steady(row, "vs_default", c["rows"][default]):
                    ratio = f"x? (unsteady{_interval(row, 'vs_default')})"
                    unsteady.append(f"{name}, b{c['batch']} {c['size']}x{c['size']}")
                else:
                    ratio = f"x{row['vs_default']:.2f}{_interval(row, 'vs_default')}"
                cells.append(f"{row['images_per_s']:.1f}  {ratio}  "
                             f"{row['gflops']:.1f}" + ("" if row["max_abs_diff"] < 1e-3 else
                                                        f"  (differs by {row['max_abs_diff']:.1e})"))
            body.append(cells)
        lines += ["", *_table(head, body, markdown), ""] if markdown else _table(head, body, markdown)
        if unsteady:
            old = "interval" not in str(cases[0]["rows"][default])  # JSON written before intervals
            why = (f"times per call varied by more than {UNSTABLE_SPREAD:.0%} between rounds" if old else
                   f"the 90% interval of the per-round ratios is wider than {UNSTEADY_WIDTH:.0%} of the ratio")
            lines.append(f"unsteady: {why} in {len(unsteady)} cell(s) ({'; '.join(unsteady[:4])}"
                         f"{' ...' if len(unsteady) > 4 else ''}), so their ratios are not given: the machine was "
                         f"busy. Rerun on an idle machine, with more --rounds.")
        if _guest(res):
            ratios = [f"b{c['batch']} {c['size']}x{c['size']} {_vs_onnxruntime(c, default, res)}" for c in cases]
            lines.append(f"{_guest(res)}: the zoo's ONNX model on the same weights, timed here in the same rounds; "
                         f"the default's speed / onnxruntime's: {', '.join(ratios)}")
        first = res.get("first")
        if first:
            lines.append(f"time to first prediction ({res['model']}, batch 1, {res['nominal']}): bare import "
                         f"{first['bare_import_s']:.2f} s, then zoo.load {first['load_s']:.2f} s + first call "
                         f"{first['first_predict_s']:.2f} s = {first['load_s'] + first['first_predict_s']:.2f} s")
        lines.append("")
    if any(res.get("onnxruntime_row") for res in results):
        lines += _against_onnxruntime(results, markdown)
    return "\n".join(lines)


def _vs_onnxruntime(case: dict, name: str, res: dict) -> str:
    """'x0.87': the row's speed over onnxruntime's in the same rounds; 'x?' when either was unsteady."""
    row, ort_row = case["rows"][name], case["rows"].get(res.get("onnxruntime_row"), {})
    if row.get("vs_onnxruntime") is None or "error" in ort_row:
        return "n/a"
    if not _is_steady(row, "vs_onnxruntime", ort_row):
        return f"x? (unsteady{_interval(row, 'vs_onnxruntime') or ''})"
    return f"x{row['vs_onnxruntime']:.2f}{_interval(row, 'vs_onnxruntime')}"


def _guest(res: dict) -> str | None:
    """The name of the onnxruntime row timed in another framework's process (None in onnx's own)."""
    row = res.get("onnxruntime_row")
    return row if row and row != next(iter(res["cases"][0]["rows"])) else None


def _against_onnxruntime(results: list[dict], markdown: bool) -> list[str]:
    """One table: each framework's default and its fastest alternative, as multiples of onnxruntime."""
    cases = results[0]["cases"]
    head = ["framework"] + [f"b{c['batch']} {c['size']}x{c['size']}: img/s, x onnxruntime" for c in cases]
    body = []
    for res in results:
        if not res.get("onnxruntime_row"):
            continue
        default = next(iter(res["cases"][0]["rows"]))
        body.append([f"{res['target']}: {default} [default]"] + [
            f"{c['rows'][default]['images_per_s']:.1f}  {_vs_onnxruntime(c, default, res)}"
            if "error" not in c["rows"][default] else "failed" for c in res["cases"]])
        cells = [f"{res['target']}: fastest alternative"]
        for c in res["cases"]:
            timed = {name: row for name, row in c["rows"].items() if name != _guest(res) and "error" not in row}
            if not timed:
                cells.append("failed")
                continue
            best = max(timed, key=lambda name: timed[name]["images_per_s"])
            cells.append(f"{timed[best]['images_per_s']:.1f}  {_vs_onnxruntime(c, best, res)}  "
                         f"({'the default' if best == default else best})")
        body.append(cells)
    guests = sorted({_guest(res) for res in results if _guest(res)})
    return [f"Against onnxruntime ({', '.join(guests) or 'its own default'}: the zoo's ONNX model on the same weights, "
            f"timed in each framework's process in the same rounds; x1.20 = 1.2 times onnxruntime's speed):",
            *([""] if markdown else []), *_table(head, body, markdown), ""]


def _table(head: list[str], body: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in body]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="nin")
    p.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), metavar="FW",
                   help="torch, flax, keras, onnx, or keras[BACKEND] (default: all four), each optionally @VARIANT, "
                        "a runtime setting from VARIANTS: " + ", ".join(VARIANTS))
    p.add_argument("--cases", nargs="+", type=_case, default=None, metavar="BxS",
                   help="batch x input size (default: 1x96 32x96 1x224 32x224 where the model takes them, "
                        "else 1 and 32 at its nominal size)")
    p.add_argument("--only", nargs="+", metavar="TEXT",
                   help="measure only the alternatives whose names contain one of these (the default is always kept)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per alternative; medians are reported")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds each alternative runs in a round")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    p.add_argument("--json", metavar="FILE", help="also write every measurement to FILE")
    p.add_argument("--no-first-prediction", dest="first_prediction", action="store_false",
                   help="skip the time to first prediction (two fresh processes per framework)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--first", help=argparse.SUPPRESS)
    p.add_argument("--guest", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> None:
    if args.worker:
        print(json.dumps(measure(args.worker, args.model, args.cases, args.rounds, args.min_time, args.only)))
        return
    if args.first:
        print(json.dumps(first_prediction(args.first, args.model)))
        return
    if args.guest:
        serve_guest(args.guest)
        return
    spec = zoo.get_spec(args.model)  # an unknown model fails here, before any process starts
    if args.rounds < 1 or args.min_time <= 0:
        raise ValueError("--rounds must be at least 1 and --min-time above 0")
    if args.cases is None:
        args.cases = [c for c in CASES if spec.fits((c[1], c[1])) is None] or \
            [(b, spec.input_size[0]) for b in (1, 32)]
    for batch, size in args.cases:
        if batch < 1:
            raise ValueError(f"case {batch}x{size}: the batch must be at least 1")
        if spec.fits((size, size)) is not None:
            raise ValueError(f"case {batch}x{size}: {args.model} does not take {size}x{size} input "
                             f"(its minimum is {spec.min_input_size}, its nominal size "
                             f"{spec.input_size[0]}x{spec.input_size[1]})")
    targets = [(text, *_target(text)) for text in args.frameworks]  # all checked before the first starts
    for text, framework, env in targets:
        packages = FRAMEWORKS[framework].packages + tuple(env.get("KERAS_BACKEND", "").split())  # keras[jax]: jax
        missing = [p for p in packages if importlib.util.find_spec(p) is None]
        if missing:
            raise ValueError(f"{text}: {', '.join(missing)} not installed; "
                             f"pip install 'multizoo[{FRAMEWORKS[framework].extra}]' or drop it from --frameworks")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise ValueError(f"--json {args.json}: its folder does not exist (checked now, not after the measurements)")
    cases = [f"{b}x{s}" for b, s in args.cases]
    only = ["--only", *args.only] if args.only else []
    results = []
    per_alternative = args.rounds * len(cases) * args.min_time * 1.5  # the warm-up: half a stretch per case
    print(f"zoo bench: {len(targets)} framework(s) x {len(cases)} case(s) x {args.rounds} rounds of at least "
          f"{args.min_time:g} s: about {per_alternative:.0f} s per alternative (each framework has several), "
          f"plus imports and compiling; each framework's table is printed as soon as it is measured",
          file=sys.stderr, flush=True)
    machine = _machine()
    for text, framework, env in targets:
        started = time.perf_counter()
        print(f"{text} ...", file=sys.stderr, flush=True)
        res = _worker([args.model, "--worker", framework, "--cases", *cases, "--rounds", str(args.rounds),
                       "--min-time", str(args.min_time), *only], env)
        if args.first_prediction:
            res["first"] = _worker([args.model, "--first", framework], env)
        res["target"], res["nominal"] = text, "x".join(map(str, spec.input_size))
        res["environment"] = {k: v for k, v in env.items() if k != "KERAS_BACKEND"}  # a variant's settings
        results.append(res)
        if len(targets) > 1:  # the whole table, every framework side by side, follows at the end
            print(format_results([res], machine, args.markdown), file=sys.stderr)
            print(f"{text}: measured in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    print(format_results(results, machine, args.markdown))
    if args.json:
        write_json(args.json, {"machine": machine, "results": results})


def write_json(path: str | Path, data: dict) -> None:
    """A bench's JSON, whole or not at all (zoo.io.checkpoint.atomic_output: a previous one is replaced)."""
    from zoo.io.checkpoint import atomic_output

    with atomic_output(Path(path), force=True, is_previous=Path.is_file) as tmp:  # never over a folder
        tmp.write_text(json.dumps(data, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    run(p.parse_intermixed_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
