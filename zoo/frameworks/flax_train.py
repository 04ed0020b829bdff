"""Train a zoo model on Fashion-MNIST with Flax NNX and optax, on one device or data parallel over several.

    zoo train nin --framework flax --out runs/nin-fmnist                # --resume continues it
    zoo train nin --framework flax --devices 2 --out runs/nin-dp        # over the visible JAX devices

The recipe (`zoo.training.Recipe`) is carried out with optax: `clip_by_global_norm`, then
`add_decayed_weights` + `sgd(nesterov=True)` (PyTorch's SGD with weight decay) or `adamw`, with the
recipe's learning-rate table as the schedule; `smooth_labels` + `softmax_cross_entropy`. The optimizer
updates the parameters (nnx.Param) only; BatchNorm's running statistics (nnx.BatchStat) are updated by
the training steps' forward passes, as in PyTorch.

With `devices` > 1 the global batch is sharded over a one-axis `jax.sharding.Mesh` ('data') and the
model and optimizer state replicated; the step is the same jitted function, partitioned by XLA. Its
batch means are over the global batch, so BatchNorm's statistics are synchronised across devices and
a step equals the one-device step on the same batch. On a CPU, `zoo train --devices N` asks XLA for N
host devices (`--xla_force_host_platform_device_count`), before JAX starts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from zoo import training
from zoo.frameworks import flax_model
from zoo.spec import ModelSpec, init_weights
from zoo.training import Recipe

FRAMEWORK = "flax"


def transform(recipe: Recipe, lrs: np.ndarray) -> optax.GradientTransformation:
    table = jnp.asarray(lrs)

    def schedule(count):
        return table[jnp.minimum(count, len(lrs) - 1)]

    clip = [optax.clip_by_global_norm(recipe.clip_norm)] if recipe.clip_norm else []
    if recipe.optimizer == "sgd":
        return optax.chain(*clip, optax.add_decayed_weights(recipe.weight_decay),
                           optax.sgd(schedule, momentum=recipe.momentum, nesterov=True))
    return optax.chain(*clip, optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=recipe.weight_decay))


def mesh_of(devices: int | None):
    """A one-axis mesh over the first `devices` JAX devices, or None for one device."""
    if not devices or devices == 1:
        return None
    found = jax.devices()
    if len(found) < devices:
        raise ValueError(f"--devices {devices}: JAX sees {len(found)} device(s) ({found[0].platform}); on a CPU, "
                         f"start Python with XLA_FLAGS=--xla_force_host_platform_device_count={devices}")
    return jax.sharding.Mesh(np.array(found[:devices]), ("data",))


class Trainer(training.Loop):
    framework = FRAMEWORK

    def __init__(self, spec: ModelSpec, recipe: Recipe, train_set, test_set, *, dropout: bool = True,
                 weights: dict[str, np.ndarray] | None = None, devices: int | None = None):
        super().__init__(spec, recipe, train_set, test_set)
        self.model = flax_model.build(spec, init_weights(spec, recipe.seed) if weights is None else weights)
        self.optimizer = nnx.Optimizer(self.model, transform(recipe, self.lrs), wrt=nnx.Param)
        self.dropout = dropout
        self._train_mode()
        self.key = jax.random.key(recipe.seed)
        self.mesh = mesh_of(devices)
        training.check_split(recipe, devices)
        self._batch = self._replicated = None
        if self.mesh is not None:
            P, named = jax.sharding.PartitionSpec, jax.sharding.NamedSharding
            self._batch, self._replicated = named(self.mesh, P("data")), named(self.mesh, P())
            for obj in (self.model, self.optimizer):
                nnx.update(obj, jax.device_put(nnx.state(obj), self._replicated))
        self._step, self._eval = self._compile()

    def _compile(self):
        smoothing = self.recipe.label_smoothing

        @nnx.jit
        def step(model, optimizer, x, y, key):
            def loss_fn(m):  # BatchNorm's running statistics, updated in m, come back with the model
                logits = m(x, rngs=nnx.Rngs(dropout=key))
                targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), smoothing)
                return optax.softmax_cross_entropy(logits, targets).mean(), logits

            (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
            optimizer.update(model, grads)
            return loss, (logits.argmax(-1) == y).sum()

        @nnx.jit
        def evaluate(model, x, y):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits.argmax(-1) == y).sum()

        return step, evaluate

    def _train_mode(self) -> None:
        self.model.train()  # BatchNorm on batch statistics, dropout on, unless the trainer turned it off
        if not self.dropout:
            self.model.set_attributes(nnx.Dropout, deterministic=True, raise_if_not_found=False)

    def _put(self, x: np.ndarray, y: np.ndarray):
        x = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC
        if self._batch is None:
            return jnp.asarray(x), jnp.asarray(y)
        return jax.device_put(x, self._batch), jax.device_put(y, self._batch)

    def step(self, x: np.ndarray, y: np.ndarray, k: int):
        """One optimizer step on batch k (k counts from 0 over the run)."""
        self._train_mode()
        x, y = self._put(x, y)
        return self._step(self.model, self.optimizer, x, y, jax.random.fold_in(self.key, k))

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        self.model.eval()
        try:
            loss, correct = self._eval(self.model, *self._put(x, y)) if len(y) % self._shards() == 0 else \
                self._eval(self.model, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(y))
        finally:
            self._train_mode()
        return float(loss), int(correct)

    def _shards(self) -> int:
        return 1 if self.mesh is None else self.mesh.size

    def weights(self) -> dict[str, np.ndarray]:
        return flax_model.get_weights(self.model)

    # ---- checkpoints: canonical weights, and optax's state under its nnx paths

    def _optimizer_state(self) -> dict[str, nnx.Variable]:
        return {"optimizer/" + "/".join(map(str, path)): var
                for path, var in nnx.to_flat_state(nnx.state(self.optimizer, nnx.optimizer.OptState))}

    def state(self) -> dict[str, np.ndarray]:
        out = {"model/" + k: v for k, v in self.weights().items()}
        out.update({k: np.asarray(v.get_value()) for k, v in self._optimizer_state().items()})
        return out

    def steps_taken(self, arrays: dict[str, np.ndarray]) -> list[int]:
        return [int(v) for k, v in arrays.items() if k.startswith("optimizer/") and k.endswith("/count")]

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        flax_model.set_weights(self.model, {k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
        for k, var in self._optimizer_state().items():  # (names and shapes checked by Loop.resume)
            var.set_value(jnp.asarray(arrays[k]))
        if self.mesh is not None:
            for obj in (self.model, self.optimizer):
                nnx.update(obj, jax.device_put(nnx.state(obj), self._replicated))


def train(spec: ModelSpec, recipe: Recipe, out, *, resume: bool = False, data_root=None, limit: int | None = None,
          progress: bool = True, stop_after: int | None = None, devices: int | None = None) -> Trainer:
    """Train, checkpointing every epoch; `limit` trains and tests on the first images only (for tests)."""
    trainer = Trainer(spec, recipe, *training.load_data(data_root, limit), devices=devices)  # checks, before files
    out = training.open_run(out, resume, trainer, limit)
    if resume:
        trainer.resume(out, progress)
    trainer.run(out, progress, stop_after)
    training.plot(trainer.history, out / "curves.png")
    return trainer
