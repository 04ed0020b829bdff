"""Train a zoo model on Fashion-MNIST with Flax NNX and optax: seeded, resumable, logged, plotted.

    zoo train nin --framework flax --out runs/nin-fmnist          # --resume continues it

Any spec with one input channel and ten classes trains: the optimizer updates the parameters
(nnx.Param) only; BatchNorm's running statistics (nnx.BatchStat) are updated by the training
steps' forward passes, as in PyTorch, and are saved in the checkpoints with the rest.

The run folder gets `metrics.jsonl` (one line per epoch), `checkpoint.npz` +
`checkpoint.json` (after every epoch), `curves.png`, and at the end the trained
weights in canonical form (`weights.safetensors`, recipe and accuracy in its metadata).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from zoo import data
from zoo._progress import bar
from zoo.frameworks import flax_model
from zoo.spec import ModelSpec, init_weights


@dataclass(frozen=True)
class Recipe:
    input_size: int = 75  # 28x28 upsampled; 96 trains 1.7x slower here for little gain
    epochs: int = 15
    batch_size: int = 128
    peak_lr: float = 1e-3  # AdamW, one-cycle (cosine) schedule
    warmup: float = 0.3  # share of the steps spent rising to peak_lr
    clip_norm: float = 1.0  # global gradient norm; without BN, early large steps kill the last ReLUs
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    flip: bool = True  # random horizontal flips
    shift: int = 2  # random translation by up to this many (original) pixels
    seed: int = 0
    mean: float = data.MEAN
    std: float = data.STD


class Trainer:
    def __init__(self, spec: ModelSpec, recipe: Recipe, train_set, test_set):
        if spec.in_channels != 1 or spec.num_classes != 10:
            raise ValueError(f"Fashion-MNIST has 1 channel and 10 classes; {spec.name} takes {spec.in_channels} "
                             f"channel(s) and gives {spec.num_classes} classes (set in_channels=1, num_classes=10)")
        spec.check_input((None, recipe.input_size, recipe.input_size, 1), "NHWC")
        self.spec, self.recipe = spec, recipe
        self.train_x, self.train_y = train_set
        self.test_x, self.test_y = test_set
        self.steps_per_epoch = len(self.train_x) // recipe.batch_size
        total = max(1, recipe.epochs * self.steps_per_epoch)
        self.schedule = optax.cosine_onecycle_schedule(total, recipe.peak_lr, recipe.warmup, div_factor=25.0,
                                                       final_div_factor=1e3)
        self.model = flax_model.build(spec, init_weights(spec, recipe.seed))
        tx = optax.chain(optax.clip_by_global_norm(recipe.clip_norm),
                         optax.adamw(self.schedule, weight_decay=recipe.weight_decay))
        self.optimizer = nnx.Optimizer(self.model, tx, wrt=nnx.Param)
        r = jnp.asarray(data.resize_matrix(28, recipe.input_size), jnp.float32)
        self._prep = lambda x: ((jnp.einsum("oh,nhw,pw->nop", r, x.astype(jnp.float32) / 255.0, r)
                                 - recipe.mean) / recipe.std)[..., None]  # [B, S, S, 1]
        self._forward = nnx.jit(lambda m, x: m(self._prep(x)))  # compiled once, reused every epoch
        self.epoch = 0
        self.history: list[dict] = []

    # ---- jitted steps: preprocessing runs inside, so the host only slices uint8 arrays

    def _train_step(self):
        prep, smoothing = self._prep, self.recipe.label_smoothing

        @nnx.jit
        def step(model, optimizer, x, y, key):
            def loss_fn(m):  # BatchNorm's running statistics, updated in m, come back with the model
                logits = m(prep(x), rngs=nnx.Rngs(dropout=key))
                targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), smoothing)
                return optax.softmax_cross_entropy(logits, targets).mean(), logits

            (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
            optimizer.update(model, grads)
            return loss, (logits.argmax(-1) == y).mean()

        return step

    def _augment(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        r = self.recipe
        if r.flip:
            flip = rng.random(len(x)) < 0.5
            x = np.where(flip[:, None, None], x[:, :, ::-1], x)
        if r.shift:
            padded = np.pad(x, ((0, 0), (r.shift, r.shift), (r.shift, r.shift)))
            dy, dx = rng.integers(0, 2 * r.shift + 1, (2, len(x)))
            rows = dy[:, None] + np.arange(28)[None]
            cols = dx[:, None] + np.arange(28)[None]
            x = padded[np.arange(len(x))[:, None, None], rows[:, :, None], cols[:, None, :]]
        return x

    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch: int = 500) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) in inference mode: dropout off, BatchNorm on its running statistics."""
        self.model.eval()
        loss = correct = 0.0
        for i in range(0, len(images), batch):
            logits = self._forward(self.model, jnp.asarray(images[i:i + batch]))
            y = jnp.asarray(labels[i:i + batch])
            loss += float(optax.softmax_cross_entropy_with_integer_labels(logits, y).sum())
            correct += float((logits.argmax(-1) == y).sum())
        self.model.train()
        return loss / len(images), correct / len(images)

    def run(self, out: Path, progress: bool = True, stop_after: int | None = None) -> list[dict]:
        """Train to the recipe's last epoch (or `stop_after`), checkpointing after each."""
        r = self.recipe
        step = self._train_step()
        self.model.train()
        key = jax.random.key(r.seed)
        while self.epoch < min(r.epochs, stop_after or r.epochs):
            rng = np.random.default_rng([r.seed, self.epoch])
            order = rng.permutation(len(self.train_x))
            t0, seen = time.perf_counter(), 0
            with bar(self.steps_per_epoch * r.batch_size, f"epoch {self.epoch + 1}/{r.epochs}", progress) as b:
                for i in range(self.steps_per_epoch):
                    idx = order[i * r.batch_size:(i + 1) * r.batch_size]
                    x = self._augment(self.train_x[idx], rng)
                    k = jax.random.fold_in(key, self.epoch * self.steps_per_epoch + i)
                    loss, acc = step(self.model, self.optimizer, jnp.asarray(x), jnp.asarray(self.train_y[idx]), k)
                    seen += len(idx)
                    b.update(len(idx))  # the bar's rate is in images/s
                    if progress and (i % 10 == 9 or i == self.steps_per_epoch - 1):  # float() waits for the step
                        b.set_postfix_str(f"loss {float(loss):.3f}, acc {float(acc):.3f}", refresh=False)
            train_seconds = time.perf_counter() - t0
            test_loss, test_acc = self.evaluate(self.test_x, self.test_y)
            self.epoch += 1
            record = {"epoch": self.epoch, "train_loss": float(loss), "train_acc": float(acc),
                      "test_loss": test_loss, "test_acc": test_acc,
                      "lr": float(self.schedule(self.epoch * self.steps_per_epoch - 1)),
                      "seconds": round(train_seconds, 1), "images_per_s": round(seen / train_seconds, 1)}
            self.history.append(record)
            if progress:
                print(f"epoch {self.epoch}/{r.epochs}: test accuracy {test_acc:.4f}, test loss {test_loss:.4f}, "
                      f"{record['images_per_s']:.0f} img/s", file=sys.stderr)
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            self.save(out)
        return self.history

    # ---- checkpoints: plain arrays (no pickle) and JSON, each replaced atomically

    def _flat(self) -> dict[str, nnx.Variable]:
        out = {}
        for prefix, obj in (("model", self.model), ("optimizer", self.optimizer)):
            for path, var in nnx.to_flat_state(nnx.state(obj)):
                out[prefix + "/" + "/".join(map(str, path))] = var
        return out

    def save(self, out: Path) -> None:
        arrays = {k: np.asarray(v.get_value()) for k, v in self._flat().items()}
        tmp = out / ".checkpoint.partial.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, out / "checkpoint.npz")
        state = {"epoch": self.epoch, "history": self.history, "recipe": dataclasses.asdict(self.recipe),
                 "spec": self.spec.to_dict()}
        (out / ".checkpoint.partial.json").write_text(json.dumps(state, indent=1))
        os.replace(out / ".checkpoint.partial.json", out / "checkpoint.json")

    def load(self, out: Path) -> None:
        state = json.loads((out / "checkpoint.json").read_text())
        if state["recipe"] != dataclasses.asdict(self.recipe) or ModelSpec.from_dict(state["spec"]) != self.spec:
            raise ValueError(f"{out} was trained with another recipe or spec: {state['recipe']}; "
                             f"resume with the same options, or start a new --out folder")
        with np.load(out / "checkpoint.npz", allow_pickle=False) as saved:
            flat = self._flat()
            if set(saved.files) != set(flat):
                raise ValueError(f"{out}/checkpoint.npz does not match this model and optimizer")
            for k, var in flat.items():
                var.set_value(jnp.asarray(saved[k]))
        self.epoch, self.history = state["epoch"], state["history"]


def plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (last batch)")
    a.plot(epochs, [h["test_loss"] for h in history], "o-", label="test")
    a.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    b.plot(epochs, [h["train_acc"] for h in history], "o-", label="train (last batch)")
    b.plot(epochs, [h["test_acc"] for h in history], "o-", label="test")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(spec: ModelSpec, recipe: Recipe, out: Path, *, resume: bool = False, data_root=None,
          limit: int | None = None, progress: bool = True, stop_after: int | None = None) -> Trainer:
    """Train, checkpointing every epoch; `limit` trains and tests on the first images only (for tests)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    train_set = data.load_fashion_mnist("train", data_root)
    test_set = data.load_fashion_mnist("test", data_root)
    if limit:
        train_set, test_set = (train_set[0][:limit], train_set[1][:limit]), (test_set[0][:limit], test_set[1][:limit])
    trainer = Trainer(spec, recipe, train_set, test_set)
    if resume and (out / "checkpoint.json").exists():
        trainer.load(out)
        if progress:
            print(f"resumed {out} after epoch {trainer.epoch}", file=sys.stderr)
    trainer.run(out, progress, stop_after)
    plot(trainer.history, out / "curves.png")
    return trainer
