"""Training speed of each framework, side by side: the same model, recipe and batches, on this machine.

    python -m zoo.train_bench resnet18_d2l --input-size 32 --frameworks torch flax keras[jax]

Each framework trains in a process of its own (so that no other framework's thread pools run
beside it), one after the other, in `--rounds` rounds whose order rotates: a slow spell of the
machine then falls on every framework. A process builds the trainer, takes `--warmup` steps
(compilation), then times `--steps` steps of the real pipeline (`zoo.training.epoch_batches`:
augmentation and preprocessing included) and waits for the last one. The table gives each
framework's median images/s over the rounds, its spread (max / min - 1) and its ratio to the fastest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD_PREFIX = "zoo-train-bench: "


def _child(args) -> None:
    import importlib

    import zoo
    from zoo import data, training

    spec = zoo.get_spec(args.model, input_size=args.input_size)
    base = training.default_recipe(args.model)
    recipe = training.Recipe.from_dict({**base.__dict__, "input_size": args.input_size, "batch_size": args.batch_size,
                                        "epochs": 1})
    images, labels = data.load_fashion_mnist("train")
    n = (args.warmup + args.steps) * args.batch_size
    subset = images[:n], labels[:n]
    module = importlib.import_module(f"zoo.frameworks.{args.child.split('[')[0]}_train")
    trainer = module.Trainer(spec, recipe, subset, subset)
    batches = training.epoch_batches(*subset, recipe, 0)
    for k in range(args.warmup):
        loss, _ = trainer.step(*next(batches), k)
    float(loss)
    t0 = time.perf_counter()
    for k in range(args.warmup, args.warmup + args.steps):  # the batches' preprocessing is timed too, as in training
        loss, _ = trainer.step(*next(batches), k)
    float(loss)  # waits for the last step
    seconds = time.perf_counter() - t0
    print(CHILD_PREFIX + json.dumps({"images_per_s": args.steps * args.batch_size / seconds}), flush=True)


def _run_child(framework: str, args) -> float:
    env = dict(os.environ)
    if framework.startswith("keras["):
        env["KERAS_BACKEND"] = framework[6:-1]
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cmd = [sys.executable, "-m", "zoo.train_bench", args.model, "--child", framework, "--input-size",
           str(args.input_size), "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup",
           str(args.warmup)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line[len(CHILD_PREFIX):] for line in done.stdout.splitlines() if line.startswith(CHILD_PREFIX)]
    if done.returncode or not lines:
        raise RuntimeError(f"{framework} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])["images_per_s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.train_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--frameworks", nargs="+", default=["torch", "flax", "keras"],
                   help="torch, flax, keras (its KERAS_BACKEND) or keras[BACKEND]")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="also write the measurements here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        p.error(f"--json {args.json}: its folder does not exist (checked now, not after the measurements)")
    rates: dict[str, list[float]] = {fw: [] for fw in args.frameworks}
    for r in range(args.rounds):
        order = args.frameworks[r % len(args.frameworks):] + args.frameworks[:r % len(args.frameworks)]
        for fw in order:
            rates[fw].append(_run_child(fw, args))
            print(f"round {r + 1}/{args.rounds}: {fw} {rates[fw][-1]:.0f} img/s", file=sys.stderr, flush=True)
    best = max(statistics.median(v) for v in rates.values())
    print(f"{args.model}, input {args.input_size}, batch {args.batch_size}, {args.steps} timed steps, "
          f"{args.rounds} rounds")
    print(f"{'framework':<18}{'img/s (median)':>16}{'spread':>9}{'x fastest':>11}")
    for fw, v in rates.items():
        m = statistics.median(v)
        print(f"{fw:<18}{m:>16.0f}{max(v) / min(v) - 1:>8.0%}{m / best:>11.2f}")
    if args.json:
        from zoo.bench import _machine, write_json

        write_json(args.json, {"model": args.model, "input_size": args.input_size, "batch_size": args.batch_size,
                               "machine": _machine(), "images_per_s": rates})
    return 0


if __name__ == "__main__":
    sys.exit(main())
