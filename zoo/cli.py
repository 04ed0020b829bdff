"""The `zoo` command line.

    zoo list                                             # every model: family, params, GFLOPs, input
    zoo list 'nin*'
    zoo summary nin --framework keras --input-size 224
    zoo summary nin_imagenet --set num_classes=100
    zoo convert nin model.pt model.weights.h5            # any format to any other, verified
    zoo convert --from torch --to keras IN OUT
    zoo inspect model.pt
    zoo diff nin torch keras                             # layer by layer: where two runs part
    zoo diff nin model.pt model.weights.h5               # each file in its own framework
    zoo bench                                            # inference speed, side by side with alternatives
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import shlex
import sys
import warnings
from pathlib import Path

import zoo
from zoo import bench
from zoo.diff import SideFailed


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. num_classes=100), got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(
            f"{key}: {value!r} is not a Python literal (e.g. 100 or (8, 16, 16))") from None


def _size(text: str) -> int | tuple[int, int]:
    try:
        parts = [int(n) for n in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a side or HxW (e.g. 96 or 96x128), got {text!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def _list(pattern: str) -> None:
    names = zoo.list_models(pattern)
    if not names:
        raise ValueError(f"no model matches {pattern!r}; `zoo list` shows them all")
    tags = {}
    for key in zoo.list_pretrained():
        model, tag = key.split(".", 1)
        tags.setdefault(model, []).append(tag)
    rows = [("Model", "Family", "Params", "GFLOPs", "Input", "Classes", "Pretrained")]
    for name in names:
        spec = zoo.get_spec(name)
        h, w = spec.input_size
        rows.append((name, spec.family, f"{spec.num_params:,}", f"{spec.flops() / 1e9:.3g}",
                     f"{spec.in_channels}x{h}x{w}", str(spec.num_classes), ", ".join(tags.get(name, ["-"]))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(wd) if i < 2 or i == 6 else c.rjust(wd)
                        for i, (c, wd) in enumerate(zip(r, widths))).rstrip())
    print("GFLOPs of one image at its nominal input (C x H x W); params without BatchNorm statistics; "
          "Pretrained: the tags of shipped weights (zoo.load(name, framework, pretrained=True) loads the first)")


def version() -> str:
    """The installed distribution's version, or zoo.__version__ in a checkout run without installing."""
    from importlib import metadata

    try:
        return metadata.version("multizoo")
    except metadata.PackageNotFoundError:
        return zoo.__version__


STATE_DICT_KEY_HELP = "the entry of a .pt training checkpoint to take the state_dict from, where it holds several " \
                      "(e.g. model_ema)"
WEIGHTS_HELP = ("pretrained tag (e.g. fashion_mnist), or the weights.safetensors of a `zoo train` run; predict "
                "also takes a Hugging Face folder or hf-hub:ORG/NAME (its config.json says how to preprocess)")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `zoo` parser and its subcommands' parsers, by name."""
    p = argparse.ArgumentParser(prog="zoo", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"zoo {version()} (multizoo)")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="registered models: family, parameters, GFLOPs and input")
    ls.add_argument("pattern", nargs="?", default="*", help="shell wildcards, e.g. 'nin*' (default: all)")
    s = sub.add_parser("summary", help="every layer's output shape and parameter count")
    s.add_argument("model")
    s.add_argument("--framework", "-f", choices=list(zoo.FRAMEWORKS),
                   help="run the layers in this framework (default: shapes from the spec)")
    s.add_argument("--input-size", type=int, help="square input side (default: the spec's nominal size)")
    s.add_argument("--batch-size", type=int, default=1)
    s.add_argument("--set", type=_override, action="append", default=[], metavar="KEY=VALUE",
                   help="spec override, repeatable (e.g. --set num_classes=100)")
    c = sub.add_parser("convert", help="convert a weight file to another format, and verify it",
                       description="Convert weights between PyTorch (.pt, .pth), canonical .safetensors, Flax "
                                   "(Orbax directory), Keras (.weights.h5) and Keras archives (.keras).")
    c.add_argument("paths", nargs="+", metavar="[MODEL] IN OUT",
                   help="the model name is optional: the spec comes from the file or its shapes")
    c.add_argument("--from", dest="src_format", help="source format or framework, when the suffix does not say")
    c.add_argument("--to", dest="dst_format", help="destination format or framework")
    c.add_argument("--set", type=_override, action="append", default=[], metavar="KEY=VALUE",
                   help="spec override, repeatable (needs MODEL)")
    c.add_argument("--dtype", help="cast to this dtype (float32, float16, bfloat16); default: keep")
    c.add_argument("--force", action="store_true", help="overwrite an existing output")
    c.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip running source and destination on a probe input")
    c.add_argument("--allow-nonfinite", action="store_true", help="convert weights holding NaN or Inf")
    c.add_argument("--state-dict-key", metavar="KEY",
                   help=STATE_DICT_KEY_HELP)
    i = sub.add_parser("inspect", help="what a weight file holds and which model it fits")
    i.add_argument("path")
    i.add_argument("--format", help="the file's format, when the suffix does not say")
    i.add_argument("--model", help="the model to fit it to (default: any registered one)")
    i.add_argument("--state-dict-key", metavar="KEY",
                   help=STATE_DICT_KEY_HELP)
    d = sub.add_parser("diff", help="run a model two ways layer by layer; show where they part",
                       description="Run MODEL two ways on the same seeded random NCHW input and compare every "
                                   "layer's output: each side is a framework (torch, flax, keras, onnx, "
                                   "keras[BACKEND]), 'reference' (the float64 NumPy reference) or a weight file in "
                                   "any format (run in its own framework, or --runner). Exit status 1 when a layer "
                                   "diverges.")
    d.add_argument("model")
    d.add_argument("a", metavar="A", help="framework, 'reference' or weight file")
    d.add_argument("b", metavar="B", help="framework, 'reference' or weight file")
    d.add_argument("--weights", help="for framework sides: pretrained tag or weight file (default: the file "
                                     "side's weights, else the seeded initial weights)")
    d.add_argument("--set", type=_override, action="append", default=[], metavar="KEY=VALUE",
                   help="spec override, repeatable (e.g. --set num_classes=10)")
    d.add_argument("--input-size", type=_size, help="input side, or HxW (default: the spec's nominal size)")
    d.add_argument("--batch", type=int, default=2)
    d.add_argument("--seed", type=int, default=0, help="of the input (and of the initial weights)")
    d.add_argument("--tol", type=float, default=1e-5,
                   help="a layer diverges when max |a - b| > TOL x max(1, max|a|) (default 1e-5)")
    d.add_argument("--runner", help="run weight files in this framework, or 'reference' (float64), instead "
                                    "of their own")
    t = sub.add_parser("train", help="train a model on Fashion-MNIST in torch, flax or keras, from one recipe")
    t.add_argument("model")
    t.add_argument("--framework", "-f", choices=TRAINERS,
                   help="the trainer's framework (default torch, the fastest on a CPU here)")
    t.add_argument("--out", required=True, help="run folder: metrics, checkpoints, curves, weights")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last epoch, with the options it was started with")
    t.add_argument("--devices", type=int, help="flax, keras (JAX backend): data parallel over this many devices; "
                                               "torch: start it under torchrun instead")
    t.add_argument("--epochs", type=int)
    t.add_argument("--input-size", type=int)
    t.add_argument("--batch-size", type=int, help="the global batch, split over the devices")
    t.add_argument("--optimizer", choices=("sgd", "adamw"))
    t.add_argument("--lr", type=float, dest="peak_lr", help="peak learning rate of the one-cycle schedule")
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--clip-norm", type=float, help="clip the gradients to this global norm (0: no clipping)")
    t.add_argument("--seed", type=int)
    t.add_argument("--limit", type=int, help="use only the first N train and test images (smoke runs)")
    t.add_argument("--data", help="folder of the four IDX files (default: Debian's dataset-fashion-mnist)")
    t.add_argument("--set", type=_override, action="append", default=[], metavar="KEY=VALUE")
    e = sub.add_parser("evaluate", help="test accuracy of pretrained weights on Fashion-MNIST")
    e.add_argument("model")
    e.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    e.add_argument("--framework", "-f", default="torch", choices=list(zoo.FRAMEWORKS))
    e.add_argument("--data", help="folder of the four IDX files (default: Debian's dataset-fashion-mnist)")
    e.add_argument("--limit", type=int, help="only the first N test images (a quick check)")
    pr = sub.add_parser("predict", help="top classes, with softmax probabilities, for PNG/JPEG images")
    pr.add_argument("model")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    pr.add_argument("--framework", "-f", default="torch", choices=list(zoo.FRAMEWORKS))
    pr.add_argument("--top", type=int, default=3)
    pr.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                    help="Fashion-MNIST is light-on-dark; 'auto' inverts images with a light border")
    b = sub.add_parser("bench", help="inference throughput per framework, side by side with its alternatives",
                       description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(b)
    return p, sub.choices


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options may stand anywhere after the command, before, between or after the positionals:
    `zoo convert nin --from torch --to keras IN OUT` and `zoo convert nin IN OUT --from torch` alike."""
    parser, commands = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in commands:
        # Plain parsing would give the first positional group everything before the first option,
        # and report the paths after it as unrecognized.
        args = commands[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
        return args
    return parser.parse_args(argv)  # no command, --help, or an unknown command: argparse says which


TRAINERS = ["torch", "flax", "keras"]
RECIPE_OPTIONS = ("epochs", "input_size", "batch_size", "optimizer", "peak_lr", "weight_decay", "clip_norm", "seed")


def _train(args) -> None:
    for k in ("epochs", "input_size", "batch_size", "limit", "devices"):  # before: --batch-size 0 divided by zero
        if getattr(args, k) is not None and getattr(args, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(args, k)}")
    from zoo import training
    from zoo._frameworks import quiet_import

    # everything that needs no framework first: a mistyped option or a wrong --out costs no framework import
    out = training.check_out(args.out, args.resume)
    run = _train_run(args, out)
    training.check_spec(run.spec, run.recipe)
    training.check_split(run.recipe, args.devices)
    if run.framework == "torch":
        training.check_torch_devices(args.devices, int(os.environ.get("WORLD_SIZE", "1")))
    if args.resume and _complete(out, run):
        return

    if args.devices and args.devices > 1 and run.framework in ("flax", "keras") and "jax" not in sys.modules:
        # XLA makes this many host devices when it starts (a GPU machine's devices are unaffected)
        flag = f"--xla_force_host_platform_device_count={args.devices}"
        if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    trainer_module = quiet_import(f"zoo.frameworks.{run.framework}_train")
    trainer = trainer_module.train(run.spec, run.recipe, out, resume=args.resume, data_root=args.data,
                                   limit=run.limit, devices=args.devices)
    if trainer.rank:
        return
    from zoo import pretrained

    path = pretrained.export_run(trainer, out)
    print(f"test accuracy {trainer.history[-1]['test_acc']:.4f}; weights in {path}; curves in {out}/curves.png")


def _train_run(args, out: Path):
    """The run that `zoo train` asks for: from the options, or with --resume from the run folder, where the
    options given again must agree with the run's."""
    from zoo.training import CheckpointError, Recipe, Run, default_recipe, read_run

    chosen = {k: getattr(args, k) for k in RECIPE_OPTIONS if getattr(args, k) is not None}
    if not args.resume:
        recipe = Recipe.from_dict({**dataclasses.asdict(default_recipe(args.model)), **chosen})
        return Run(args.framework or "torch", _train_spec(args.model, recipe.input_size, dict(args.set)), recipe,
                   args.limit)
    run = read_run(out)
    differ = [f"the model {args.model} (the run's: {run.spec.name})"] * (args.model != run.spec.name)
    if not differ:
        recipe = Recipe.from_dict({**dataclasses.asdict(run.recipe), **chosen})
        spec = _train_spec(args.model, recipe.input_size, dict(args.set)) if args.set else run.spec
        differ = run.differences(Run(args.framework or run.framework, spec, recipe,
                                     run.limit if args.limit is None else args.limit))
    if differ:
        raise CheckpointError(f"{out} holds a run started with other options: {'; '.join(differ)}. `--resume` "
                              f"alone continues it as it was started; for another recipe choose another --out")
    return run


def _train_spec(model: str, size: int, overrides: dict):
    """The model's spec for training at `size`; too small a size is refused naming the minimum."""
    try:
        return zoo.get_spec(model, **{**overrides, "input_size": size})
    except ValueError:
        nominal = zoo.get_spec(model, **overrides)
        nominal.check_input((1, nominal.in_channels, size, size), "NCHW")  # says the minimum, where there is one
        raise


def _complete(out: Path, run) -> bool:
    """Whether the run in `out` is complete (its last epoch checkpointed, its weights exported): then say so."""
    from zoo import training

    found = training.read_checkpoint(out)
    if found is None or found[0].get("epoch") != run.recipe.epochs or not (out / "weights.safetensors").is_file():
        return False
    history = found[0].get("history")
    acc = history[-1].get("test_acc") if isinstance(history, list) and history and isinstance(history[-1], dict) \
        else None
    said = f", test accuracy {acc:.4f}" if isinstance(acc, float) else ""
    print(f"{out}: the run is complete ({run.recipe.epochs} of {run.recipe.epochs} epochs{said}); weights in "
          f"{out / 'weights.safetensors'}")
    return True


def _interrupted(args, argv: list[str]) -> str:
    """What Ctrl-C left behind: nothing, except for `zoo train`, whose checkpoints stay and can be resumed."""
    if args.command != "train":
        return "zoo: interrupted; no output was written"
    from zoo import training

    out = Path(args.out)
    if not (out / training.RUN_FILE).is_file():
        return "zoo: interrupted before the run started; nothing was written"
    again = ["zoo", "train", args.model, "--out", args.out, "--resume"]
    again += ["--data", args.data] if args.data else []
    again += ["--devices", str(args.devices)] if args.devices else []
    epoch = training.checkpoint_epoch(out)
    if epoch:
        kept = f"kept the checkpoint of epoch {epoch} (the last complete one) in {out}"
    else:
        kept = f"no epoch was complete, so {out} holds no checkpoint yet"
    return f"zoo: interrupted; {kept}. Resume with: {shlex.join(again)}"


def _check_model_name(args) -> None:
    """A mistyped model name is said first, with the closest name, before any file is read or framework imported."""
    name = getattr(args, "model", None)
    if args.command == "convert":
        name = args.paths[0] if len(args.paths) == 3 else None
    if name is not None and name not in zoo.list_models():
        zoo.get_spec(name)  # raises UnknownModelError: "unknown model 'nim'. Did you mean 'nin'? ..."


_PACKAGE = os.path.dirname(os.path.abspath(zoo.__file__))
_framework_warning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """The zoo's own warnings as one line, `zoo: warning: ...`; others as Python shows them."""
    if issubclass(category, UserWarning) and os.path.abspath(filename).startswith(_PACKAGE):
        print(f"zoo: warning: {message}", file=sys.stderr if file is None else file)
    else:
        _framework_warning(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    """The `zoo` program (argv None: sys.argv), or one command of it called from Python (an exit status)."""
    program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        _check_model_name(args)
        if args.command == "list":
            _list(args.pattern)
        elif args.command == "summary":
            zoo.summary(args.model, framework=args.framework, input_size=args.input_size,
                        batch_size=args.batch_size, **dict(args.set))
        elif args.command == "convert":
            from zoo import conversion

            if len(args.paths) not in (2, 3):
                raise ValueError(f"convert takes [MODEL] IN OUT, got {len(args.paths)} paths")
            first = args.paths[0]
            if len(args.paths) == 2 and first in zoo.list_models() and not os.path.exists(first):
                raise ValueError(f"convert takes [MODEL] IN OUT: {first!r} is a model name and {args.paths[1]!r} "
                                 f"the input, so the output is missing (e.g. zoo convert {first} "
                                 f"{args.paths[1]} model.safetensors)")
            model, src, dst = ([None] + args.paths)[-3:]
            report = conversion.convert(src, dst, model=model, overrides=dict(args.set), dtype=args.dtype,
                                        src_format=args.src_format, dst_format=args.dst_format,
                                        verify=args.verify, force=args.force, allow_nonfinite=args.allow_nonfinite,
                                        state_dict_key=args.state_dict_key)
            print(report)
            print(f"wrote {dst}")
        elif args.command == "evaluate":
            from zoo.evaluate import evaluate

            acc, out, labels = evaluate(args.model, args.weights, args.framework, args.data, args.limit,
                                        progress=True)
            print(f"{args.model} {args.weights} in {args.framework}: test accuracy {acc:.4f} "
                  f"({int(round(acc * len(labels)))}/{len(labels)})")
        elif args.command == "predict":
            from zoo.evaluate import DOMAIN, is_folder_weights, predict_files, predict_folder_files

            if args.top < 1:
                raise ValueError(f"--top must be at least 1, got {args.top}")
            if is_folder_weights(args.weights):  # a Hugging Face folder: its config.json's preprocessing
                cfg, results = predict_folder_files(args.model, args.weights, args.framework, args.images, args.top,
                                                    errors="report")
                print(f"{args.model} {args.weights}: {cfg.describe()}")
            else:
                results = predict_files(args.model, args.weights, args.framework, args.images, args.top,
                                        args.invert, errors="report")  # weights, model, options refused first
                print(f"{args.model} {args.weights} knows {DOMAIN}")
            for r in results:
                if r.error:
                    print(f"zoo: error: {r.error}", file=sys.stderr)
                    continue
                print(f"{r.path}: " + ", ".join(f"{label} {p:.3f}" for label, p in r.top))
                if r.unlike:
                    print(f"  warning: {r.path} is unlike the training images ({'; '.join(r.unlike)}): "
                          f"its labels mean little")
            failed = sum(bool(r.error) for r in results)
            if failed:
                print(f"zoo: error: {failed} of {len(results)} images could not be read", file=sys.stderr)
                return 2
        elif args.command == "train":
            _train(args)
        elif args.command == "bench":
            bench.run(args)
        elif args.command == "inspect":
            from zoo import conversion

            print(conversion.inspect(args.path, args.format, args.model, args.state_dict_key))
        elif args.command == "diff":
            rows = zoo.diff(args.model, args.a, args.b, weights=args.weights, input_size=args.input_size,
                            batch=args.batch, seed=args.seed, tol=args.tol, runner=args.runner,
                            overrides=dict(args.set))
            print(rows)
            return 1 if rows.diverged else 0
    except KeyboardInterrupt:
        print(_interrupted(args, argv), file=sys.stderr)
        if program and args.command == "train" and "tensorflow" in sys.modules:
            # The checkpoints are on disk (each written atomically). Interpreter shutdown would take seconds
            # and print a FAILED_PRECONDITION line as TensorFlow finalizes Keras' data iterator: the program
            # skips it (a caller's process, main(argv), goes on).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130
    except (ValueError, TypeError, KeyError, ImportError, OSError, SideFailed, bench.BenchError) as e:
        print(f"zoo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
