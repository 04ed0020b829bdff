"""One training recipe for every framework: the recipe as data, the batches, the learning rates, the
run folder. No framework is imported here; `zoo/frameworks/{torch,flax,keras}_train.py` carry it out.

    recipe = Recipe(input_size=32, epochs=20, optimizer='sgd', peak_lr=0.1, weight_decay=5e-4)
    for x, y in epoch_batches(images, labels, recipe, epoch=0):   # float32 [B, 1, S, S], int32 [B]
        ...

Every framework sees the same batches for a given seed and epoch: shuffling, flips and shifts are
drawn here with NumPy, from `numpy.random.default_rng([seed, epoch])`, and the images resized and
normalised by `zoo.data.preprocess`. Under data parallelism each of `world` processes (or devices)
takes its contiguous share of the same global batch, so one step sees the same images whatever the
number of devices.

The optimizer's arithmetic is PyTorch's, which each framework's own tools implement:

    sgd:    g += weight_decay * w;  buf = momentum * buf + g;  w -= lr * (g + momentum * buf)   (Nesterov)
    adamw:  w -= lr * weight_decay * w;  Adam with bias correction, eps added to sqrt(v_hat)

with the gradients first clipped to a global norm of `clip_norm`, and the learning rate of step k
(counted from 0) the k-th entry of `lr_table`: a one-cycle cosine schedule, rising from
peak_lr / 25 to peak_lr over the first `warmup` share of the steps, then falling to peak_lr / 25e3.
The loss is the mean cross-entropy against labels smoothed by `label_smoothing`.

A run folder holds `run.json` (what the run is: framework, spec, recipe, data subset; written once, it marks
the folder as the zoo's), `checkpoint.npz` (after every epoch: the arrays and, as one more array, the epoch and
history they belong to; one file, replaced whole), `metrics.jsonl` (the checkpoint's history, one line per
epoch), `curves.png`, and at the end `weights.safetensors`. `--resume` takes the run from run.json; a folder
without it is never written into. A run whose loss or weights stop being finite stops, keeping its last
checkpoint (`Diverged`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo import data
from zoo._checks import nonfinite_tensors
from zoo.spec import MAX_INPUT_SIZE

OPTIMIZERS = ("sgd", "adamw")
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_EPOCHS = 10_000
MAX_STEPS = 10**8  # of a run: its learning-rate table takes 8 bytes a step


@dataclass(frozen=True)
class Recipe:
    input_size: int = 75  # 28x28 resized (bilinear) to this side
    epochs: int = 15
    batch_size: int = 128  # the global batch, split evenly over data-parallel devices
    optimizer: str = "adamw"  # 'sgd' (Nesterov momentum, L2 weight decay) or 'adamw' (decoupled decay)
    peak_lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    warmup: float = 0.3  # share of the steps spent rising to peak_lr
    clip_norm: float = 1.0  # global gradient norm; 0 turns clipping off
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    flip: bool = True  # random horizontal flips
    shift: int = 2  # random translation by up to this many (original, 28x28) pixels
    seed: int = 0  # of the initial weights, the batches' order and augmentation, and dropout
    mean: float = data.MEAN
    std: float = data.STD

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v, kind = getattr(self, f.name), type(f.default)
            if kind in (bool, str):
                ok = isinstance(v, kind)
            else:  # an int is a number too, but a bool is neither
                ok = isinstance(v, int if kind is int else (int, float)) and not isinstance(v, bool)
            if not ok:
                raise ValueError(f"{f.name} must be {'a number' if kind is float else 'an ' + kind.__name__}, "
                                 f"got {v!r}")
            if kind is float and not abs(v) <= FLOAT32_MAX:  # every framework trains in float32; NaN fails too
                raise ValueError(f"{f.name} must be a finite number (a float32), got {v!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for k in ("input_size", "epochs", "batch_size"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be at least 1, got {getattr(self, k)}")
        if self.epochs > MAX_EPOCHS or self.input_size > MAX_INPUT_SIZE:
            raise ValueError(f"epochs must be at most {MAX_EPOCHS} and input_size at most {MAX_INPUT_SIZE}: {self}")
        if not self.peak_lr > 0 or not 0 <= self.warmup < 1 or not self.clip_norm >= 0 or not self.weight_decay >= 0:
            raise ValueError(f"peak_lr must be > 0, warmup in [0, 1), clip_norm and weight_decay >= 0: {self}")
        if not abs(self.peak_lr * self.weight_decay) <= FLOAT32_MAX:
            raise ValueError(f"peak_lr x weight_decay ({self.peak_lr:g} x {self.weight_decay:g}) overflows float32")
        if self.shift < 0 or not 0 <= self.label_smoothing < 1 or not 0 <= self.momentum < 1:
            raise ValueError(f"shift must be >= 0, label_smoothing and momentum in [0, 1): {self}")
        if not self.std > 0 or not 0 <= self.seed < 2**32:
            raise ValueError(f"std must be > 0 and seed in [0, 2**32): {self}")

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        """A recipe from its dict; keys a recipe does not have are refused by name."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown recipe option(s) {', '.join(sorted(unknown))}")
        return cls(**d)


def default_recipe(model: str) -> Recipe:
    """The recipe of the model's shipped Fashion-MNIST weights (`zoo train MODEL` retrains them), else
    Recipe() at the model's nominal input size."""
    from zoo import pretrained
    from zoo._registry import get_spec

    entry = pretrained.manifest().get(f"{model}.fashion_mnist")
    if entry:
        return Recipe.from_dict(entry.recipe)
    size = get_spec(model).input_size
    h, w = (size, size) if isinstance(size, int) else size
    return Recipe(input_size=max(h, w))


def steps_per_epoch(n_images: int, recipe: Recipe) -> int:
    """Full batches only: the last partial batch of each epoch is dropped (its images come in later epochs)."""
    steps = n_images // recipe.batch_size
    if steps < 1:
        raise ValueError(f"{n_images} training images make no batch of {recipe.batch_size}: lower --batch-size")
    return steps


def lr_table(recipe: Recipe, steps: int) -> np.ndarray:
    """float32 [steps]: the learning rate of each step of the whole run (one-cycle, cosine)."""
    if steps > MAX_STEPS:
        raise ValueError(f"the run would take {steps:,} steps, more than {MAX_STEPS:,}: fewer --epochs or a larger "
                         f"--batch-size")
    peak, start = recipe.peak_lr, recipe.peak_lr / 25.0
    end = start / 1e3
    rise = int(recipe.warmup * steps)
    k = np.arange(steps, dtype=np.float64)
    up = (k < rise)
    t = np.where(up, k / max(1, rise), (k - rise) / max(1, steps - 1 - rise))
    a, b = np.where(up, start, peak), np.where(up, peak, end)
    out = (b + (a - b) * (1 + np.cos(np.pi * t)) / 2).astype(np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"the learning rates of peak_lr {peak:g} are not finite in float32: lower --lr")
    return out


def augment(x: np.ndarray, rng: np.random.Generator, recipe: Recipe) -> np.ndarray:
    """uint8 [B, 28, 28]: random horizontal flips, then random shifts (zero padding) by up to `shift`."""
    if recipe.flip:
        flip = rng.random(len(x)) < 0.5
        x = np.where(flip[:, None, None], x[:, :, ::-1], x)
    if recipe.shift:
        s, (h, w) = recipe.shift, x.shape[1:]
        padded = np.pad(x, ((0, 0), (s, s), (s, s)))
        dy, dx = rng.integers(0, 2 * s + 1, (2, len(x)))
        rows = dy[:, None] + np.arange(h)[None]
        cols = dx[:, None] + np.arange(w)[None]
        x = padded[np.arange(len(x))[:, None, None], rows[:, :, None], cols[:, None, :]]
    return x


def check_split(recipe: Recipe, devices: int | None) -> None:
    """The global batch must split evenly over the data-parallel devices."""
    if recipe.batch_size % (devices or 1):
        raise ValueError(f"the batch of {recipe.batch_size} does not split over {devices} devices: "
                         f"choose a --batch-size divisible by {devices}")


def check_torch_devices(devices: int | None, world: int) -> None:
    """PyTorch trains on the processes that torchrun starts, not on a --devices count."""
    if devices not in (None, world):
        raise ValueError(f"--devices {devices}: PyTorch trains on as many processes as torchrun starts ({world} here); "
                         f"run `torchrun --nproc-per-node {devices} -m zoo train ...` instead")


def epoch_batches(images: np.ndarray, labels: np.ndarray, recipe: Recipe, epoch: int, rank: int = 0,
                  world: int = 1):
    """The epoch's training batches, (float32 [B/world, 1, S, S], int32 [B/world]), this rank's share."""
    check_split(recipe, world)
    rng = np.random.default_rng([recipe.seed, epoch])
    order = rng.permutation(len(images))
    b, share = recipe.batch_size, recipe.batch_size // world
    for i in range(steps_per_epoch(len(images), recipe)):
        idx = order[i * b:(i + 1) * b]
        x = augment(images[idx], rng, recipe)  # the whole batch's draws, so every rank's rng stays in step
        mine = slice(rank * share, (rank + 1) * share)
        yield (data.preprocess(x[mine], recipe.input_size, recipe.mean, recipe.std),
               labels[idx][mine].astype(np.int32))


def eval_batches(images: np.ndarray, labels: np.ndarray, recipe: Recipe, batch: int = 500):
    for i in range(0, len(images), batch):
        yield (data.preprocess(images[i:i + batch], recipe.input_size, recipe.mean, recipe.std),
               labels[i:i + batch].astype(np.int32))


def smoothed_cross_entropy(logits: np.ndarray, labels: np.ndarray, smoothing: float) -> float:
    """The recipe's loss in NumPy (float64): what every framework's loss must equal."""
    z = logits.astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    k = z.shape[-1]
    target = np.full(z.shape, smoothing / k)
    target[np.arange(len(z)), labels] += 1 - smoothing
    return float(-(target * logp).sum(-1).mean())


# ---- the run folder
#
# run.json, written once when the run starts, marks the folder as the zoo's and holds what the run is (the
# framework, the spec, the recipe and the data subset): nothing in a folder without it is ever replaced.
# checkpoint.npz is one file, replaced whole after every epoch: the arrays, and the metadata (the run, the epoch
# and the history) as one more array, so the weights and the epoch they belong to cannot part. metrics.jsonl is
# the checkpoint's history, written after it; SIGINT and SIGTERM wait until both are written.

RUN_FILE, CHECKPOINT, METRICS = "run.json", "checkpoint.npz", "metrics.jsonl"
META_KEY = "zoo/meta"  # the checkpoint's metadata: JSON, as a uint8 array
RUN_VERSION = 1
TRAINERS = ("torch", "flax", "keras")
MAX_CHECKPOINT_ARRAYS = 100_000


class CheckpointError(ValueError):
    """A run folder or checkpoint that cannot be resumed. The message says why and what to do."""


class Diverged(ValueError):
    """The loss or the weights became NaN or Inf: the run stopped, its last good checkpoint kept."""


@dataclass(frozen=True)
class Run:
    """What a run folder trains: the same on every resume."""

    framework: str
    spec: object  # zoo.spec.ModelSpec
    recipe: Recipe
    limit: int | None = None  # only the first `limit` train and test images

    def to_dict(self) -> dict:
        return {"framework": self.framework, "spec": self.spec.to_dict(), "recipe": dataclasses.asdict(self.recipe),
                "limit": self.limit}

    @classmethod
    def from_dict(cls, d, where: str) -> Run:
        """A run from its dict, every field checked; errors name `where` (the file)."""
        from zoo.spec import ModelSpec

        if not isinstance(d, dict):
            raise CheckpointError(f"{where}: the run is {type(d).__name__}, not a JSON object")
        missing = [k for k in ("framework", "spec", "recipe", "limit") if k not in d]
        if missing:
            raise CheckpointError(f"{where}: the run lacks {', '.join(missing)}")
        if d["framework"] not in TRAINERS:
            raise CheckpointError(f"{where}: framework {d['framework']!r} is not one of {', '.join(TRAINERS)}")
        limit = d["limit"]
        if limit is not None and (type(limit) is not int or limit < 1):
            raise CheckpointError(f"{where}: limit must be null or an integer >= 1, got {limit!r}")
        if not isinstance(d["recipe"], dict):
            raise CheckpointError(f"{where}: the recipe is {type(d['recipe']).__name__}, not a JSON object")
        try:
            recipe = Recipe.from_dict(d["recipe"])
            spec = ModelSpec.from_dict(d["spec"])
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError) as e:
            raise CheckpointError(f"{where}: {_text(e)}") from None
        return cls(d["framework"], spec, recipe, limit)

    def differences(self, other: Run, mine: str = "the run's") -> list[str]:
        """'option VALUE (the run's: VALUE)' for each way `other` differs from this run."""
        out = [f"--framework {other.framework} ({mine}: {self.framework})"] * (other.framework != self.framework)
        a, b = dataclasses.asdict(self.recipe), dataclasses.asdict(other.recipe)
        out += [f"{_option(k)} {b[k]} ({mine}: {a[k]})" for k in a if a[k] != b[k]]
        if other.limit != self.limit:
            out.append(f"--limit {other.limit} ({mine}: {self.limit})")
        if other.spec != self.spec:
            a, b = self.spec.to_dict(), other.spec.to_dict()
            keys = [k for k in a if a.get(k) != b.get(k)] or ["its layers"]
            out.append(f"the model ({other.spec.name}, differing in {', '.join(keys)}; {mine}: {self.spec.name})")
        return out


def _option(field: str) -> str:
    return {"peak_lr": "--lr"}.get(field, "--" + field.replace("_", "-"))


def _text(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, KeyError) or not text:
        text = f"{type(e).__name__} {text}".strip()
    return text[:300]


def check_out(out: str | os.PathLike, resume: bool) -> Path:
    """Refuse an --out that cannot be this run's folder, before any work: a file, a folder of other files,
    a run without --resume, or --resume where there is no run."""
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise FileExistsError(f"{out} is a file (or a broken link); --out names a run folder")
    if resume:
        if not out.is_dir():
            raise CheckpointError(f"{out} does not exist, so there is no run to resume; leave out --resume to "
                                  f"start one")
        if not (out / RUN_FILE).is_file() and _earlier_zoos_run(out):
            raise CheckpointError(f"{out} holds a run of an earlier zoo (checkpoint.json beside checkpoint.npz, no "
                                  f"{RUN_FILE}), whose two files this zoo no longer trusts to agree: it cannot be "
                                  f"resumed; nothing in it was changed; start a new run with another --out")
        if not (out / RUN_FILE).is_file():
            raise CheckpointError(f"{out} is not a zoo run folder (it has no {RUN_FILE}): nothing in it was "
                                  f"changed; choose another --out for a new run")
    elif out.is_dir() and any(out.iterdir()):
        if (out / RUN_FILE).is_file():
            raise FileExistsError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        raise FileExistsError(f"{out} holds other files; choose a new or empty --out folder for the run")
    return out


def _earlier_zoos_run(out: Path) -> bool:
    """Whether `out` holds the checkpoint.json of an earlier zoo's run (its two-file checkpoint)."""
    try:
        meta = json.loads((out / "checkpoint.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and {"epoch", "history", "recipe", "spec"} <= set(meta)


def read_run(out: Path) -> Run:
    """The run that `out`'s run.json describes (checked)."""
    path = out / RUN_FILE
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} cannot be read ({_text(e)}); the run cannot be resumed") from None
    if not isinstance(d, dict) or d.get("zoo_run") != RUN_VERSION:
        raise CheckpointError(f"{path} is not a zoo run file of version {RUN_VERSION}; the run cannot be resumed")
    return Run.from_dict({k: v for k, v in d.items() if k != "zoo_run"}, str(path))


def open_run(out: str | os.PathLike, resume: bool, trainer: Loop, limit: int | None = None) -> Path:
    """The run folder of `trainer` (with `limit`): made, with its run.json, for a new run; for --resume checked
    to hold the same run. Nothing is written into a folder that is not the zoo's."""
    trainer.limit = limit
    out = check_out(out, resume)
    run = trainer.run_info()
    if resume:
        differ = read_run(out).differences(run)
        if differ:
            raise CheckpointError(f"{out} holds another run: {'; '.join(differ)}. Resume it with its own options "
                                  f"(`--resume` alone takes them from the folder), or choose another --out")
        return out
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / RUN_FILE, json.dumps({"zoo_run": RUN_VERSION, **run.to_dict()}, indent=1))
    return out


def write_text(path: Path, text: str) -> None:
    """Replace `path` whole (never writing through a link that stands there), leaving no temporary behind."""
    from zoo.io.checkpoint import atomic_output

    with atomic_output(path, force=True, is_previous=_replaceable) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _replaceable(path: Path) -> bool:
    return path.is_symlink() or path.is_file()


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM wait until the block is done, then interrupt (KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got = []
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if got:
        raise KeyboardInterrupt(f"interrupted by signal {got[0]}")


def save_checkpoint(out: Path, arrays: dict[str, np.ndarray], run: Run, epoch: int, history: list[dict]) -> None:
    """The checkpoint, then metrics.jsonl (its history), each replaced whole; SIGINT and SIGTERM wait for both."""
    from zoo.io.checkpoint import atomic_output

    meta = {"zoo_checkpoint": RUN_VERSION, "run": run.to_dict(), "epoch": epoch, "history": history}
    with signals_held():
        with atomic_output(out / CHECKPOINT, force=True, is_previous=_replaceable) as tmp:
            with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a name
                np.savez(f, **arrays, **{META_KEY: np.frombuffer(json.dumps(meta).encode(), np.uint8)})
        write_metrics(out, history)


def write_metrics(out: Path, history: list[dict]) -> None:
    write_text(out / METRICS, "".join(json.dumps(h) + "\n" for h in history))


def read_checkpoint(out: Path) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(meta, arrays) of the checkpoint in `out`, None when there is none. Only plain arrays are read (no
    pickle), each no larger than the file holds; anything else is a CheckpointError naming the problem."""
    path = out / CHECKPOINT
    if not (path.exists() or path.is_symlink()):
        return None
    arrays = _read_npz(path)
    raw = arrays.pop(META_KEY, None)
    if raw is None:
        raise CheckpointError(f"{path} holds no zoo metadata: it was not written by this zoo; "
                              f"the run cannot be resumed (start a new one with another --out)")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: its metadata is not JSON ({_text(e)}): the file is damaged") from None
    if not isinstance(meta, dict) or meta.get("zoo_checkpoint") != RUN_VERSION:
        raise CheckpointError(f"{path}: its metadata is not that of a zoo checkpoint of version {RUN_VERSION}")
    return meta, arrays


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    damaged = f"{path} is damaged or not a zoo checkpoint"
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file; the run cannot be resumed")
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                raise CheckpointError(f"{damaged} (not a zip archive, as .npz files are)")
        out = {}
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
            if len(members) > MAX_CHECKPOINT_ARRAYS:
                raise CheckpointError(f"{damaged} ({len(members)} entries)")
            for info in members:
                name = info.filename.removesuffix(".npy")
                if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy") or name in out:
                    raise CheckpointError(f"{damaged} (entry {info.filename!r} is not a stored .npy array)")
                with z.open(info) as member:
                    out[name] = _read_npy(member, info, damaged)
        return out
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError, KeyError, RuntimeError,
            NotImplementedError, zlib.error) as e:
        raise CheckpointError(f"{damaged} ({type(e).__name__}{': ' + _text(e) if 'pickle' not in str(e) else ''})"
                              f"; the run cannot be resumed from it") from None


def _read_npy(f, info: zipfile.ZipInfo, damaged: str) -> np.ndarray:
    from numpy.lib import format as npy

    version = npy.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = npy.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = npy.read_array_header_2_0(f)
    else:
        raise CheckpointError(f"{damaged} ({info.filename}: .npy version {version})")
    if dtype.hasobject or dtype.kind not in "biuf":
        raise CheckpointError(f"{damaged} ({info.filename} holds {dtype} values, not numbers)")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > info.file_size:  # before allocating: a header may claim any shape
        raise CheckpointError(f"{damaged} ({info.filename} claims {shape}, more than its {info.file_size} bytes)")
    a = np.frombuffer(f.read(nbytes), dtype)
    if a.size != math.prod(shape) or f.read(1):  # reading to the end checks the entry's CRC-32
        raise CheckpointError(f"{damaged} ({info.filename} is not the size its header says)")
    return a.reshape(shape, order="F" if fortran else "C").copy()


def checkpoint_epoch(out: Path) -> int | None:
    """The epoch of the checkpoint in `out`, None when there is none or it cannot be read."""
    try:
        found = read_checkpoint(Path(out))
    except (CheckpointError, OSError):
        return None
    epoch = found[0].get("epoch") if found else None
    return epoch if type(epoch) is int else None


def check_history(path: Path, meta: dict, recipe: Recipe) -> tuple[int, list[dict]]:
    """The checkpoint's (epoch, history), checked: 1 <= epoch <= the recipe's epochs, one record per epoch."""
    for k in ("epoch", "history"):
        if k not in meta:
            raise CheckpointError(f"{path}: its metadata lacks {k!r}: the file is damaged")
    epoch, history = meta["epoch"], meta["history"]
    if type(epoch) is not int or not 1 <= epoch <= recipe.epochs:
        raise CheckpointError(f"{path}: epoch {epoch!r} is not one of the run's 1 to {recipe.epochs}")
    if not isinstance(history, list) or len(history) != epoch:
        raise CheckpointError(f"{path}: its history is not a list of {epoch} epoch record(s), as its epoch says")
    for i, h in enumerate(history):
        if not isinstance(h, dict) or h.get("epoch") != i + 1 or not all(
                type(h.get(k)) in (int, float) for k in RECORD_NUMBERS):
            raise CheckpointError(f"{path}: history entry {i} is not the record of epoch {i + 1}")
    return epoch, history


def check_state(out: Path, saved: dict[str, np.ndarray], mine: dict[str, np.ndarray]) -> None:
    """The saved arrays are the trainer's own: the same names, shapes and dtypes, and finite."""
    where = out / CHECKPOINT if out.is_dir() else out
    if set(saved) != set(mine):
        raise CheckpointError(f"{where} does not match this model and optimizer "
                              f"(differs in {', '.join(sorted(set(saved) ^ set(mine))[:5])})")
    for k, v in mine.items():
        if saved[k].shape != np.shape(v) or saved[k].dtype != np.asarray(v).dtype:
            raise CheckpointError(f"{where}: {k} is {saved[k].dtype} {saved[k].shape}, this run needs "
                                  f"{np.asarray(v).dtype} {np.shape(v)}")
    bad = nonfinite_tensors({k: v for k, v in saved.items() if v.dtype.kind == "f"})
    if bad:
        raise CheckpointError(f"{where} holds NaN or Inf in {', '.join(bad[:5])}: it cannot be resumed; "
                              f"start a new run (with another --out)")


RECORD_NUMBERS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images_per_s")


def epoch_record(epoch: int, train_loss: float, train_acc: float, test: tuple[float, float], lr: float,
                 seconds: float, images: int) -> dict:
    """One line of metrics.jsonl: the epoch's mean training loss and accuracy (on the augmented batches,
    dropout on), the test split's in inference mode, the last step's learning rate, and the speed."""
    return {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test[0],
            "test_acc": test[1], "lr": lr, "seconds": round(seconds, 1), "images_per_s": round(images / seconds, 1)}


def log_epoch(record: dict, epochs: int, progress: bool) -> None:
    if progress:
        print(f"epoch {record['epoch']}/{epochs}: test accuracy {record['test_acc']:.4f}, test loss "
              f"{record['test_loss']:.4f}, {record['images_per_s']:.0f} img/s", file=sys.stderr)


def plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((a, "loss", "cross-entropy"), (b, "acc", "accuracy")):
        ax.plot(epochs, [h["train_" + key] for h in history], "o-", label="train (epoch mean)")
        ax.plot(epochs, [h["test_" + key] for h in history], "o-", label="test")
        ax.set(xlabel="epoch", ylabel=title, title=key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    from zoo.io.checkpoint import atomic_output

    try:
        with atomic_output(path, force=True, is_previous=_replaceable) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)


def load_data(data_root=None, limit: int | None = None):
    train_set = data.load_fashion_mnist("train", data_root)
    test_set = data.load_fashion_mnist("test", data_root)
    if limit:
        train_set, test_set = (train_set[0][:limit], train_set[1][:limit]), (test_set[0][:limit], test_set[1][:limit])
    return train_set, test_set


def check_spec(spec, recipe: Recipe) -> None:
    if spec.in_channels != 1 or spec.num_classes != 10:
        raise ValueError(f"Fashion-MNIST has 1 channel and 10 classes; {spec.name} takes {spec.in_channels} "
                         f"channel(s) and gives {spec.num_classes} classes (set in_channels=1, num_classes=10)")
    spec.check_input((None, 1, recipe.input_size, recipe.input_size), "NCHW")


class Loop:
    """The epoch loop that the PyTorch and Flax trainers share (Keras runs its own `model.fit`).

    A trainer gives `step(x, y, k) -> (loss, correct)` (device values; read once per epoch),
    `evaluate(images, labels) -> (loss, accuracy)`, `state() -> dict` and `load_state(dict)`.
    """

    framework = ""

    def __init__(self, spec, recipe: Recipe, train_set, test_set, rank: int = 0, world: int = 1):
        check_spec(spec, recipe)
        self.spec, self.recipe = spec, recipe
        self.train_x, self.train_y = train_set
        self.test_x, self.test_y = test_set
        self.rank, self.world = rank, world
        self.steps_per_epoch = steps_per_epoch(len(self.train_x), recipe)
        self.lrs = lr_table(recipe, recipe.epochs * self.steps_per_epoch)
        self.epoch, self.history = 0, []
        self.limit = None  # set by open_run: the data subset, part of the run

    def evaluate_set(self, images, labels) -> tuple[float, float]:
        loss = correct = 0.0
        for x, y in eval_batches(images, labels, self.recipe):
            batch_loss, batch_correct = self.evaluate(x, y)
            loss, correct = loss + batch_loss * len(y), correct + batch_correct
        return loss / len(images), correct / len(images)

    def run_info(self) -> Run:
        return Run(self.framework, self.spec, self.recipe, self.limit)

    def run(self, out: Path, progress: bool = True, stop_after: int | None = None) -> list[dict]:
        """Train to the recipe's last epoch (or `stop_after`), checkpointing after each."""
        import time

        from zoo._progress import bar

        r, main = self.recipe, self.rank == 0
        while self.epoch < min(r.epochs, stop_after or r.epochs):
            t0, losses, correct = time.perf_counter(), [], []
            with bar(self.steps_per_epoch * r.batch_size, f"epoch {self.epoch + 1}/{r.epochs}", progress and main) as b:
                for i, (x, y) in enumerate(epoch_batches(self.train_x, self.train_y, r, self.epoch, self.rank,
                                                         self.world)):
                    loss, right = self.step(x, y, self.epoch * self.steps_per_epoch + i)
                    losses.append(loss)
                    correct.append(right)
                    b.update(r.batch_size)  # the bar's rate is in images/s (all devices')
                    if i % 20 == 19 or i == self.steps_per_epoch - 1:  # float() waits for the device
                        if not math.isfinite(float(loss)):
                            self.diverged(out, losses)
                        if progress and main:
                            b.set_postfix_str(f"loss {float(loss):.3f}", refresh=False)
            seconds = time.perf_counter() - t0
            train_loss, train_acc = self.epoch_means(losses, correct)
            self.end_epoch(out, losses, train_loss, train_acc, seconds, progress)
        return self.history

    def end_epoch(self, out: Path, losses: list, train_loss: float, train_acc: float, seconds: float,
                  progress: bool) -> None:
        """After the steps of epoch `self.epoch` (their losses): test, record, checkpoint, log; stop a run
        whose loss or weights are no longer finite."""
        if not all(math.isfinite(float(v)) for v in losses):
            self.diverged(out, losses)
        state = self.state()
        if nonfinite_tensors({k: v for k, v in state.items() if np.asarray(v).dtype.kind == "f"}):
            self.diverged(out, losses)
        test = self.evaluate_set(self.test_x, self.test_y)
        n = self.steps_per_epoch
        record = epoch_record(self.epoch + 1, train_loss, train_acc, test, float(self.lrs[(self.epoch + 1) * n - 1]),
                              seconds, n * self.recipe.batch_size)
        self.epoch += 1
        self.history.append(record)
        if self.rank == 0:
            log_epoch(record, self.recipe.epochs, progress)
            save_checkpoint(out, state, self.run_info(), self.epoch, self.history)

    def diverged(self, out: Path, losses: list) -> None:
        """Raise Diverged, naming the first step whose loss is not finite (else the epoch whose weights are not)."""
        values = [float(v) for v in losses]
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        e = self.epoch + 1
        where = (f"epoch {e}, step {bad + 1} of {self.steps_per_epoch} (the loss is {values[bad]})" if bad is not None
                 else f"epoch {e} (its loss was finite, but the weights are not after its last step)")
        kept = f"the checkpoint of epoch {self.epoch} in {out} is kept" if self.epoch else "no epoch was complete"
        r = self.recipe
        raise Diverged(f"training diverged at {where}; {kept}. The run is stopped: start it again with a lower --lr "
                       f"(it was {r.peak_lr:g}) or --clip-norm (it was {r.clip_norm:g}), in a new --out")

    def epoch_means(self, losses, correct) -> tuple[float, float]:
        """Mean loss over the epoch's steps, and accuracy over its images (this rank's share of them)."""
        return float(np.mean([float(v) for v in losses])), float(sum(float(v) for v in correct)) / (
            len(correct) * self.recipe.batch_size // self.world)

    def expected_state(self) -> dict[str, np.ndarray]:
        """Arrays of the shapes and dtypes that a checkpoint of this trainer holds (its own state, by default)."""
        return self.state()

    def steps_taken(self, arrays: dict[str, np.ndarray]) -> list[int]:
        """The optimizer's step counts in a checkpoint's arrays (each must equal its epochs' steps)."""
        return []

    def resume(self, out: Path, progress: bool = True) -> None:
        """Continue from the checkpoint in `out` (opened by `open_run`, so the run is this trainer's); a run
        folder without one starts at epoch 1. A checkpoint that does not fit is refused."""
        path = out / CHECKPOINT
        found = read_checkpoint(out)
        if found is None:
            if progress and self.rank == 0:
                print(f"{out}: no epoch was complete yet; starting at epoch 1", file=sys.stderr)
            return
        meta, arrays = found
        if "run" not in meta:
            raise CheckpointError(f"{path}: its metadata lacks 'run': the file is damaged")
        differ = Run.from_dict(meta["run"], str(path)).differences(self.run_info(), "the checkpoint's")
        if differ:
            raise CheckpointError(f"{path} is not the checkpoint of the run in {out / RUN_FILE} (which has "
                                  f"{'; '.join(differ)}); the run cannot be resumed")
        epoch, history = check_history(path, meta, self.recipe)
        check_state(out, arrays, self.expected_state())
        steps = self.steps_taken(arrays)
        if any(k != epoch * self.steps_per_epoch for k in steps):
            raise CheckpointError(f"{path}: its optimizer took {steps} steps, not the "
                                  f"{epoch * self.steps_per_epoch} of {epoch} epoch(s): the file is damaged")
        try:
            self.load_state(arrays)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
            raise CheckpointError(f"{path} does not load into the {self.framework} trainer ({_text(e)}); the run "
                                  f"cannot be resumed") from None
        self.epoch, self.history = epoch, history
        if self.rank == 0:
            write_metrics(out, history)  # what an interruption after the checkpoint left behind
            if progress:
                print(f"resumed {out} after epoch {self.epoch}", file=sys.stderr)
