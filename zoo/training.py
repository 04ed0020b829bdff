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

A run folder holds `metrics.jsonl` (one line per epoch), `checkpoint.npz` + `checkpoint.json`
(after every epoch, each replaced atomically), `curves.png`, and at the end `weights.safetensors`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo import data

OPTIMIZERS = ("sgd", "adamw")


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
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for k in ("input_size", "epochs", "batch_size"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be at least 1, got {getattr(self, k)}")
        if not self.peak_lr > 0 or not 0 <= self.warmup < 1 or self.clip_norm < 0 or self.weight_decay < 0:
            raise ValueError(f"peak_lr must be > 0, warmup in [0, 1), clip_norm and weight_decay >= 0: {self}")
        if self.shift < 0 or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"shift must be >= 0 and label_smoothing in [0, 1): {self}")

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
    peak, start = recipe.peak_lr, recipe.peak_lr / 25.0
    end = start / 1e3
    rise = int(recipe.warmup * steps)
    out = np.empty(steps)
    for k in range(steps):
        if k < rise:
            t, a, b = k / rise, start, peak
        else:
            t, a, b = (k - rise) / max(1, steps - 1 - rise), peak, end
        out[k] = b + (a - b) * (1 + math.cos(math.pi * t)) / 2
    return out.astype(np.float32)


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


def open_run(out: str | os.PathLike, resume: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; --out names a run folder")
    if out.exists() and any(out.iterdir()) and not resume:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def checkpoint_meta(framework: str, spec, recipe: Recipe, epoch: int, history: list[dict]) -> dict:
    return {"framework": framework, "epoch": epoch, "history": history, "recipe": dataclasses.asdict(recipe),
            "spec": spec.to_dict()}


def save_checkpoint(out: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Plain arrays (no pickle) and JSON, each written beside and then moved over the last one."""
    tmp = out / ".checkpoint.partial.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, out / "checkpoint.npz")
    (out / ".checkpoint.partial.json").write_text(json.dumps(meta, indent=1))
    os.replace(out / ".checkpoint.partial.json", out / "checkpoint.json")


def load_checkpoint(out: Path, framework: str, spec, recipe: Recipe) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(meta, arrays) of the run in `out`, checked to be this framework's, spec's and recipe's; None if none."""
    from zoo.spec import ModelSpec

    if not (out / "checkpoint.json").is_file():
        return None
    meta = json.loads((out / "checkpoint.json").read_text())
    if meta.get("framework", "flax") != framework:  # runs before the other trainers were Flax's
        raise ValueError(f"{out} holds a {meta['framework']} run; resume it with --framework {meta['framework']}")
    if meta["recipe"] != dataclasses.asdict(recipe) or ModelSpec.from_dict(meta["spec"]) != spec:
        raise ValueError(f"{out} was trained with another recipe or spec: {meta['recipe']}; "
                         f"resume with the same options, or start a new --out folder")
    with np.load(out / "checkpoint.npz", allow_pickle=False) as saved:
        arrays = {k: saved[k] for k in saved.files}
    return meta, arrays


def check_state(out: Path, saved: dict[str, np.ndarray], mine: dict[str, np.ndarray]) -> None:
    if set(saved) != set(mine):
        raise ValueError(f"{out}/checkpoint.npz does not match this model and optimizer "
                         f"(differs in {sorted(set(saved) ^ set(mine))[:5]})")
    for k, v in mine.items():
        if saved[k].shape != np.shape(v):
            raise ValueError(f"{out}/checkpoint.npz: {k} has shape {saved[k].shape}, this run needs {np.shape(v)}")


def epoch_record(epoch: int, train_loss: float, train_acc: float, test: tuple[float, float], lr: float,
                 seconds: float, images: int) -> dict:
    """One line of metrics.jsonl: the epoch's mean training loss and accuracy (on the augmented batches,
    dropout on), the test split's in inference mode, the last step's learning rate, and the speed."""
    return {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test[0],
            "test_acc": test[1], "lr": lr, "seconds": round(seconds, 1), "images_per_s": round(images / seconds, 1)}


def log_epoch(out: Path, record: dict, epochs: int, progress: bool) -> None:
    if progress:
        print(f"epoch {record['epoch']}/{epochs}: test accuracy {record['test_acc']:.4f}, test loss "
              f"{record['test_loss']:.4f}, {record['images_per_s']:.0f} img/s", file=sys.stderr)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


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
    tmp = path.with_name("." + path.name + ".partial.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


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

    def evaluate_set(self, images, labels) -> tuple[float, float]:
        loss = correct = 0.0
        for x, y in eval_batches(images, labels, self.recipe):
            batch_loss, batch_correct = self.evaluate(x, y)
            loss, correct = loss + batch_loss * len(y), correct + batch_correct
        return loss / len(images), correct / len(images)

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
                    if progress and main and (i % 20 == 19 or i == self.steps_per_epoch - 1):  # float() waits
                        b.set_postfix_str(f"loss {float(loss):.3f}", refresh=False)
            seconds = time.perf_counter() - t0
            train_loss, train_acc = self.epoch_means(losses, correct)
            test = self.evaluate_set(self.test_x, self.test_y)
            self.epoch += 1
            record = epoch_record(self.epoch, train_loss, train_acc, test,
                                  float(self.lrs[self.epoch * self.steps_per_epoch - 1]), seconds,
                                  self.steps_per_epoch * r.batch_size)
            self.history.append(record)
            if main:
                log_epoch(out, record, r.epochs, progress)
                save_checkpoint(out, self.state(), checkpoint_meta(self.framework, self.spec, r, self.epoch,
                                                                   self.history))
        return self.history

    def epoch_means(self, losses, correct) -> tuple[float, float]:
        """Mean loss over the epoch's steps, and accuracy over its images (this rank's share of them)."""
        return float(np.mean([float(v) for v in losses])), float(sum(float(v) for v in correct)) / (
            len(correct) * self.recipe.batch_size // self.world)

    def resume(self, out: Path, progress: bool = True) -> None:
        found = load_checkpoint(out, self.framework, self.spec, self.recipe)
        if found is None:
            return
        meta, arrays = found
        mine = self.state()  # the model's part is checked here; the optimizer's slots may not exist yet
        check_state(out, {k: v for k, v in arrays.items() if k.startswith("model/")},
                    {k: v for k, v in mine.items() if k.startswith("model/")})
        self.load_state(arrays)
        self.epoch, self.history = meta["epoch"], meta["history"]
        if progress and self.rank == 0:
            print(f"resumed {out} after epoch {self.epoch}", file=sys.stderr)
