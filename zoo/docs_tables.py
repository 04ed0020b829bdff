"""The docs' tables of measurements, rendered from the benchmarks' JSON so that they cannot drift from it.

A generated table stands between two markers in a Markdown page; the first names its kind and the JSON
files it is made from, NAME for `bench/NAME.json` beside the page (docs/bench/ for docs/speed.md):

    <!-- bench:inference nin -->
    (generated: do not edit)
    <!-- /bench -->

  inference    `zoo bench ... --json docs/bench/NAME.json`: its tables, as `zoo bench --markdown` prints them
  onnxruntime  several such files (one model each): a row per model and case, each framework's default
               call as a multiple of onnxruntime's speed, and the fastest
  training     `python -m zoo.train_bench MODEL ... --json docs/bench/NAME.json`: a row per file, images/s
               per framework (the fastest in bold, the others as a multiple of it)
  agreement    `pytest --errors-json docs/bench/NAME.json` (a file per Keras backend): per family, the worst
               error relative to the float64 reference's scale, per framework
  sources      the same files: a row per other library's file checked (timm's, keras-hub's) and model
  steps        the same files: the training steps against float64 PyTorch, per model and optimizer

    python -m zoo.docs_tables docs/speed.md docs/training.md     # rewrite the tables from their JSON
    python -m zoo.docs_tables --check docs/*.md                  # exit 1 where a table differs from its JSON
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path

MARKED = re.compile(r"^<!-- bench:(?P<kind>\w+)(?P<names>(?: [\w.-]+)+) -->\n(?P<body>.*?)^<!-- /bench -->$",
                    re.S | re.M)


class TablesError(ValueError):
    """A marker names an unknown kind or a JSON file that is missing or not of that kind."""


def inference(files: list[dict]) -> str:
    """`zoo bench`'s own Markdown tables, file after file."""
    from zoo.bench import format_results

    return "\n".join(format_results(f["results"], f["machine"], markdown=True).rstrip() for f in files)


def onnxruntime(files: list[dict]) -> str:
    """Per model and case: onnxruntime's images/s, each framework's default as a multiple of it (with its 90%
    interval where the JSON has one; `x?` where that interval is too wide to trust), the fastest."""
    from zoo.bench import steady

    targets = list(dict.fromkeys(r["target"] for f in files for r in f["results"] if r["framework"] != "onnx"))
    lines = ["| model | input | batch | onnxruntime img/s | " + " | ".join(targets) + " | fastest |",
             "|---" * (len(targets) + 5) + "|"]
    for f in files:
        by_target = {r["target"]: r for r in f["results"]}
        onnx = next((r for r in f["results"] if r["framework"] == "onnx"), None)
        if onnx is None:
            raise TablesError("an onnxruntime table needs each file's onnx run: zoo bench MODEL --frameworks ... onnx")
        for i, case in enumerate(onnx["cases"]):
            ort = next(iter(case["rows"].values()))  # the onnx framework's default
            speeds, cells = {"onnx": 1.0}, []
            for target in targets:
                res = by_target.get(target)
                row = next(iter(res["cases"][i]["rows"].values()), {}) if res else {}
                ratio, interval = row.get("vs_onnxruntime"), row.get("vs_onnxruntime_interval")
                if ratio is not None and interval is not None and not steady((ratio, *interval)):
                    cells.append(f"x? [{interval[0]:.2f}-{interval[1]:.2f}]")  # unsteady: no figure, no winner
                    continue
                cells.append("" if ratio is None else f"x{ratio:.2f}" + (
                    "" if interval is None else f" [{interval[0]:.2f}-{interval[1]:.2f}]"))
                if ratio is not None:
                    speeds[target] = ratio
            fastest = max(speeds, key=speeds.get)
            lines.append(f"| {onnx['model']} | {case['size']}x{case['size']} | {case['batch']} | "
                         f"{ort['images_per_s']:,.0f} | " + " | ".join(cells) + f" | {fastest} |")
    return "\n".join(lines)


def training(files: list[dict]) -> str:
    """A row per train_bench file: the median images/s per framework, the fastest in bold; the machines below."""
    frameworks = list(dict.fromkeys(fw for f in files for fw in f["images_per_s"]))
    lines = ["| model, input | " + " | ".join(frameworks) + " |", "|---" * (len(frameworks) + 1) + "|"]
    for f in files:
        medians = {fw: statistics.median(rates) for fw, rates in f["images_per_s"].items()}
        best = max(medians.values())
        rounds = max(len(rates) for rates in f["images_per_s"].values())
        cells = ["" if fw not in medians else f"**{medians[fw]:.0f}**" if medians[fw] == best else
                 f"{medians[fw]:.0f} (x{medians[fw] / best:.2f})" for fw in frameworks]
        side = f"{f['input_size']} x {f['input_size']}"
        lines.append(f"| {f['model']}, {side} ({rounds} rounds) | " + " | ".join(cells) + " |")
    machines = list(dict.fromkeys(f["machine"] for f in files))  # each file's own; ratios hold within a row only
    return "\n".join(lines) + "\n\nMachine: " + "; ".join(machines)


# the frameworks' columns of the agreement tables, in this order (others after them)
COLUMNS = ("torch", "flax", "keras[tensorflow]", "keras[jax]", "keras[torch]", "onnx")


def _errors(files: list[dict]) -> tuple[list[dict], list[str]]:
    """Every file's rows, and the frameworks among them in COLUMNS' order."""
    rows = [row for f in files for row in f["errors"]]
    present = {row["framework"] for row in rows}
    return rows, [fw for fw in COLUMNS if fw in present] + sorted(present - set(COLUMNS))


def _table(head: list[str], frameworks: list[str], groups: dict[tuple, dict[str, str]]) -> str:
    """A Markdown table: a row per group (its key's cells, then a cell per framework); a framework without a
    cell in any row has no column."""
    frameworks = [fw for fw in frameworks if any(fw in cells for cells in groups.values())]
    lines = ["| " + " | ".join(head + frameworks) + " |", "|---" * (len(head) + len(frameworks)) + "|"]
    for key, cells in groups.items():
        lines.append("| " + " | ".join([*key, *(cells.get(fw, "") for fw in frameworks)]) + " |")
    return "\n".join(lines)


def _worst_rel(groups: dict[tuple, dict[str, float]]) -> dict[tuple, dict[str, str]]:
    return {key: {fw: f"{v:.1e}" for fw, v in worst.items()} for key, worst in groups.items()}


def agreement(files: list[dict]) -> str:
    """`pytest --errors-json` files (one per Keras backend): per family, the worst relative error (max abs /
    max |reference|) over the checks of its presets, per framework."""
    from zoo import _registry

    family = {name: _registry.get_spec(name).family for name in _registry.list_models()}
    rows, frameworks = _errors(files)
    groups: dict[tuple, dict[str, float]] = {(f,): {} for f in dict.fromkeys(family.values())}
    for row in rows:
        model = row["preset"].split(" (")[0]  # "alexnet_d2l (full size)"
        if model in family:
            worst = groups[(family[model],)]
            worst[row["framework"]] = max(worst.get(row["framework"], 0.0), row["max_rel"])
    return _table(["family"], frameworks, _worst_rel({k: v for k, v in groups.items() if v}))


def sources(files: list[dict]) -> str:
    """The same files' checks of other libraries' files ("timm .pth:resnet18"): a row per source and model."""
    rows, frameworks = _errors(files)
    groups: dict[tuple, dict[str, float]] = {}
    for row in sorted(rows, key=lambda r: r["preset"]):
        source, colon, model = row["preset"].rpartition(":")
        if colon and source and " " in source:
            worst = groups.setdefault((source, f"`{model}`"), {})
            worst[row["framework"]] = max(worst.get(row["framework"], 0.0), row["max_rel"])
    return _table(["source", "model"], frameworks, _worst_rel(groups))


def steps(files: list[dict]) -> str:
    """The same files' training checks ("train nin/sgd, 5 steps"): per model and optimizer, the worst normalised
    error after one step and after five, per framework."""
    rows, frameworks = _errors(files)
    found = [(m, row) for row in rows if (m := re.fullmatch(r"train (\S+)/(\S+), (\d+) steps?", row["preset"]))]
    frameworks = [fw for fw in frameworks if any(row["framework"] == fw for _, row in found)]
    cases = list(dict.fromkeys((m[1], m[2]) for m, _ in found))
    counts = sorted({int(m[3]) for m, _ in found})
    worst: dict[tuple, float] = {}
    for m, row in found:
        key = (m[1], m[2], int(m[3]), row["framework"])
        worst[key] = max(worst.get(key, 0.0), row["max_rel"])
    groups = {(f"`{model}`, {opt}",): {fw: " / ".join(f"{worst[model, opt, n, fw]:.1e}"
                                                       if (model, opt, n, fw) in worst else "-" for n in counts)
                                      for fw in frameworks} for model, opt in cases}
    return _table([f"model, optimizer: {' / '.join(map(str, counts))} steps"], frameworks, groups)


KINDS = {"inference": (inference, "results"), "onnxruntime": (onnxruntime, "results"),
         "training": (training, "images_per_s"), "agreement": (agreement, "errors"), "sources": (sources, "errors"),
         "steps": (steps, "errors")}


def render(page: Path) -> str:
    """The page's text with every marked table rendered from its JSON."""
    text = page.read_text()

    def table(m: re.Match) -> str:
        kind, names = m["kind"], m["names"].split()
        if kind not in KINDS:
            raise TablesError(f"{page}: unknown table kind {kind!r}; known: {', '.join(KINDS)}")
        make, key = KINDS[kind]
        files = []
        for name in names:
            path = page.parent / "bench" / f"{name}.json"
            if not path.is_file():
                raise TablesError(f"{page}: {path} is missing; write it with the benchmark's --json "
                                  f"(python -m zoo.docs_tables --help)")
            data = json.loads(path.read_text())
            if key not in data:
                raise TablesError(f"{path}: not the JSON of a {kind} table (it has no {key!r})")
            files.append(data)
        try:
            body = make(files)
        except (KeyError, IndexError, TypeError) as e:
            raise TablesError(f"{page}: the JSON of `bench:{kind} {' '.join(names)}` lacks {e} (not written by "
                              f"the benchmark this kind reads?)") from None
        return f"<!-- bench:{kind} {' '.join(names)} -->\n{body}\n<!-- /bench -->"
    return MARKED.sub(table, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.docs_tables", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("pages", nargs="+", type=Path, help="Markdown pages")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 where a table differs from its JSON")
    args = p.parse_args(argv)
    stale = []
    for page in args.pages:
        try:
            text = render(page)
        except (TablesError, OSError, json.JSONDecodeError) as e:
            p.exit(2, f"{p.prog}: error: {e}\n")
        if text != page.read_text():
            stale.append(str(page))
            if not args.check:  # a whole page or none: written beside it, then renamed over it
                tmp = page.with_name(f".{page.name}.partial-{os.getpid()}")
                tmp.write_text(text)
                os.replace(tmp, page)
    if stale:
        print(("differ from their JSON: " if args.check else "rewritten: ") + ", ".join(stale))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
