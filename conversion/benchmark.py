"""Where the time of a conversion goes: `python -m zoo.conversion.benchmark [--model NAME] [--repeat N]`.

For each direction between the three frameworks' own formats it runs, each in a
fresh process (so that no import is already warm):
  bare     python startup plus importing the zoo and the two frameworks, nothing else;
  convert  `zoo convert MODEL IN OUT --no-verify`, the whole process;
  verify   the same with verification (both models built and run on a probe).
`convert - bare` is the zoo's own reading, transposing and writing. Medians of N runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zoo
from zoo.io.formats import FORMATS, function

FILES = {"torch": "{}.pt", "flax": "{}_flax", "keras": "{}.weights.h5"}  # each framework's own format
IMPORTS = {"torch": "import torch", "flax": "import jax, flax.nnx, orbax.checkpoint", "keras": "import keras"}


def _wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="nin", help="a registered model, at its defaults (default: nin)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    spec = zoo.get_spec(args.model)
    weights = zoo.init_weights(spec, 0)
    files = {fmt: name.format(args.model) for fmt, name in FILES.items()}
    py = sys.executable
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for fmt, name in files.items():
            function(FORMATS[fmt], "writer")(weights, spec, tmp / name)
        for src in files:
            for dst in files:
                if src == dst:
                    continue
                out = tmp / f"out_{files[dst]}"
                convert = [py, "-m", "zoo.cli", "convert", args.model, str(tmp / files[src]), str(out), "--force"]
                bare = [py, "-c", f"import zoo.conversion; {IMPORTS[src]}; {IMPORTS[dst]}"]
                runs = {"bare": [], "convert": [], "verify": []}
                for _ in range(args.repeat):
                    runs["bare"].append(_wall(bare))
                    runs["convert"].append(_wall(convert + ["--no-verify"]))
                    runs["verify"].append(_wall(convert))
                med = {k: statistics.median(v) for k, v in runs.items()}
                rows.append((f"{src} -> {dst}", med["bare"], med["convert"], med["verify"]))
                print(f"  {rows[-1][0]} done", file=sys.stderr)
    print(f"{args.model} ({spec.num_params:,} parameters, {sum(w.nbytes for w in weights.values()) / 2**20:.1f} MiB), "
          f"median of {args.repeat}, seconds")
    print(f"{'direction':<18}{'bare':>8}{'convert':>9}{'ours':>8}{'ours %':>8}{'verify':>8}")
    for name, bare, conv, ver in rows:
        ours = conv - bare
        print(f"{name:<18}{bare:>8.2f}{conv:>9.2f}{ours:>8.2f}{100 * ours / conv:>7.0f}%{ver:>8.2f}")
    print("bare: python + imports of zoo and both frameworks; ours = convert - bare (reading, transposing, "
          "building the writer's model, writing)")


if __name__ == "__main__":
    main()
