"""Train a zoo model on Fashion-MNIST with Keras 3: `model.fit`, on TensorFlow, JAX or PyTorch.

    KERAS_BACKEND=jax zoo train nin --framework keras --out runs/nin-keras     # --resume continues it
    KERAS_BACKEND=jax zoo train nin --framework keras --devices 2 --out runs/nin-dp

The recipe (`zoo.training.Recipe`) is carried out with Keras' own tools: `model.compile` with
`CategoricalCrossentropy(from_logits=True, label_smoothing=)` on one-hot labels and a metric counting
the right predictions, then `model.fit` over a `keras.utils.PyDataset` of the recipe's batches, with a
callback that tests, logs and checkpoints after every epoch (a Keras user's own callbacks run beside it;
it puts `test_loss` and `test_acc` into the epoch's logs for them). `Trainer.step` is one
`train_on_batch`, the train step that `fit` runs.

Keras' own optimizers do not do PyTorch's arithmetic (its SGD keeps the learning rate inside the
momentum buffer and decays weights decoupled; its Adam adds epsilon to sqrt(v) before the bias
correction), so two small `keras.optimizers.Optimizer` subclasses do, `TorchSGD` and `TorchAdamW`
(the formulas are in `zoo.training`); on the torch backend each updates every tensor at once, in place
(`zoo.frameworks.keras_torch_ops`, torch.optim's foreach form), as Keras' own torch optimizers do.
Clipping is the base optimizer's `global_clipnorm` (PyTorch divides by the norm + 1e-6, Keras by the
norm alone: a relative 1e-6 / norm apart), and the learning rate `TableSchedule`, the recipe's table
indexed by the optimizer's iteration count.

The batches are a function of their index in the run (`Batches`), not of when Keras asks for them:
it peeks at the first ones to trace the model, TensorFlow's tf.data prefetches from another thread,
and an epoch's end callbacks run after the next epoch's iterator exists. Keras' epochs are windows of
`steps_per_epoch` on that one sequence. A checkpoint holds the canonical weights, the optimizer's slots
and iteration count, and each Dropout's seed generator state, so a resumed run continues exactly
(measured: bit for bit, on each backend).

Data parallel (`devices` > 1) is Keras' `keras.distribution.DataParallel`, on the JAX backend only:
the model and optimizer state are replicated, each global batch is sharded over the devices, and the
train step is one jitted function over the sharded batch. Its batch means are global means (XLA adds
the all-reduce), so BatchNorm's statistics are synchronised across devices and a step equals the
one-device step on the same batch (measured: within float rounding, for NiN and a ResNet with
BatchNorm). The distribution is set only around the trainer's own calls (`Distribution.scope`), so
other models in the process are unaffected.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from zoo import training
from zoo.frameworks import keras_model
from zoo.spec import ModelSpec, init_weights
from zoo.training import Recipe

FRAMEWORK = "keras"


# ---- the optimizer: PyTorch's arithmetic in Keras' Optimizer API


@keras.saving.register_keras_serializable(package="zoo")
class TableSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate of step k (the optimizer's iterations, from 0): table[min(k, n - 1)]."""

    def __init__(self, table):
        self.table = np.asarray(table, np.float32)

    def __call__(self, step):
        return ops.take(ops.convert_to_tensor(self.table), ops.minimum(step, len(self.table) - 1))

    def get_config(self):
        return {"table": self.table.tolist()}


@keras.saving.register_keras_serializable(package="zoo")
class TorchSGD(keras.optimizers.Optimizer):
    """PyTorch's SGD with Nesterov momentum and L2 weight decay:
    g += wd * w;  buf = momentum * buf + g;  w -= lr * (g + momentum * buf)."""

    def __init__(self, learning_rate, momentum: float = 0.9, weight_decay: float = 0.0, name="torch_sgd", **kwargs):
        super().__init__(learning_rate, name=name, **kwargs)  # the base's weight_decay is decoupled: not used
        self.momentum, self.decay = momentum, weight_decay

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.slots = {"momentum": [self.add_variable_from_reference(v, "momentum") for v in var_list]}

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        buf = self.slots["momentum"][self._get_variable_index(variable)]
        g = gradient + variable * self.decay
        new_buf = buf * self.momentum + g  # a zero buffer makes the first step's buf = g, as PyTorch starts it
        self.assign(buf, new_buf)
        self.assign(variable, variable - (g + new_buf * self.momentum) * lr)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if keras.backend.backend() != "torch":
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        from zoo.frameworks import keras_torch_ops  # every tensor at once, in place (torch.optim's foreach form)

        bufs = [self.slots["momentum"][self._get_variable_index(v)].value for v in trainable_variables]
        keras_torch_ops.sgd_step([v.value for v in trainable_variables], grads, bufs, float(learning_rate),
                                 self.momentum, self.decay)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "weight_decay": self.decay}


@keras.saving.register_keras_serializable(package="zoo")
class TorchAdamW(keras.optimizers.Optimizer):
    """PyTorch's AdamW: w -= lr * wd * w, then Adam with bias correction and eps added to sqrt(v_hat)."""

    def __init__(self, learning_rate, weight_decay: float = 0.0, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, name="torch_adamw", **kwargs):
        super().__init__(learning_rate, name=name, **kwargs)
        self.decay, self.beta_1, self.beta_2, self.epsilon = weight_decay, beta_1, beta_2, epsilon

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.slots = {k: [self.add_variable_from_reference(v, k) for v in var_list] for k in ("m", "v")}

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        i = self._get_variable_index(variable)
        m, v = self.slots["m"][i], self.slots["v"][i]
        new_m = m + (gradient - m) * (1 - self.beta_1)
        new_v = v * self.beta_2 + ops.square(gradient) * (1 - self.beta_2)
        self.assign(m, new_m)
        self.assign(v, new_v)
        # 1 - beta^t as -expm1(t log beta): exact to float32 rounding even where 1 - beta^t is small
        t = ops.cast(self.iterations + 1, variable.dtype)
        correction_1 = -ops.expm1(t * math.log(self.beta_1))
        correction_2 = -ops.expm1(t * math.log(self.beta_2))
        denominator = ops.sqrt(new_v) / ops.sqrt(correction_2) + self.epsilon
        self.assign(variable, variable * (1 - lr * self.decay) - (lr / correction_1) * new_m / denominator)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if keras.backend.backend() != "torch":
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        from zoo.frameworks import keras_torch_ops  # every tensor at once, in place (torch.optim's foreach form)

        slots = [[self.slots[k][self._get_variable_index(v)].value for v in trainable_variables] for k in ("m", "v")]
        keras_torch_ops.adamw_step([v.value for v in trainable_variables], grads, *slots, float(learning_rate),
                                   int(self.iterations.value) + 1, self.decay, self.beta_1, self.beta_2, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "weight_decay": self.decay, "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


def optimizer(recipe: Recipe, lrs: np.ndarray) -> keras.optimizers.Optimizer:
    common = dict(learning_rate=TableSchedule(lrs), weight_decay=recipe.weight_decay,
                  global_clipnorm=recipe.clip_norm or None)
    if recipe.optimizer == "sgd":
        return TorchSGD(momentum=recipe.momentum, **common)
    return TorchAdamW(**common)


@keras.saving.register_keras_serializable(package="zoo")
class Correct(keras.metrics.Sum):
    """The number of right predictions (argmax of the logits = the one-hot label's), summed since the last reset."""

    def __init__(self, name="correct", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        right = ops.equal(ops.argmax(y_pred, axis=-1), ops.argmax(y_true, axis=-1))
        return super().update_state(ops.cast(right, self.dtype))


# ---- the data


def keras_batch(x: np.ndarray, y: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """An NCHW float32 batch and its int labels as Keras takes them: NHWC images, one-hot float32 labels."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.eye(classes, dtype=np.float32)[y]


class Batches(keras.utils.PyDataset):
    """The training batches of epochs [first, last) as one sequence: item j is batch j % n of epoch first + j // n.

    `model.fit` takes it with `steps_per_epoch=n`, so Keras reads it with one iterator through the run.
    Each item depends on its index only; reading in order costs one batch each, another order restarts
    its epoch's batches (Keras' peeks at the first ones, and its prefetching past the end).
    """

    def __init__(self, images, labels, recipe: Recipe, first: int, last: int, classes: int):
        super().__init__()
        self.images, self.labels, self.recipe, self.first, self.classes = images, labels, recipe, first, classes
        self.n = training.steps_per_epoch(len(images), recipe)
        self.length = self.n * (last - first)
        self._lock = threading.Lock()  # tf.data may ask from another thread
        self._next = None  # (epoch, index, the epoch's batch generator at that index)

    def __len__(self):
        return self.length

    def __getitem__(self, j):
        if not 0 <= j < self.length:
            raise IndexError(j)
        epoch, i = self.first + j // self.n, j % self.n
        with self._lock:
            if self._next is None or self._next[:2] != (epoch, i):
                batches = training.epoch_batches(self.images, self.labels, self.recipe, epoch)
                for _ in range(i):
                    next(batches)
                self._next = (epoch, i, batches)
            x, y = next(self._next[2])
            self._next = (epoch, i + 1, self._next[2])
        return keras_batch(x, y, self.classes)


# ---- data parallel


def data_parallel(devices: int | None):
    """Keras' DataParallel over the first `devices` devices (JAX backend), or None for one device."""
    if not devices or devices == 1:
        return None
    if keras.backend.backend() != "jax":
        raise ValueError(f"--devices {devices}: Keras' DataParallel needs the JAX backend (KERAS_BACKEND=jax); "
                         f"this process runs Keras on {keras.backend.backend()}")
    found = keras.distribution.list_devices()
    if len(found) < devices:
        raise ValueError(f"--devices {devices}: Keras sees {len(found)} device(s) ({', '.join(found)}); on a CPU, "
                         f"start Python with XLA_FLAGS=--xla_force_host_platform_device_count={devices}")
    return keras.distribution.DataParallel(devices=found[:devices])


# ---- the trainer


class Trainer(training.Loop):
    """The model compiled with the recipe; `run` trains it with `model.fit`, `step` takes one step of it."""

    framework = FRAMEWORK

    def __init__(self, spec: ModelSpec, recipe: Recipe, train_set, test_set, *, dropout: bool = True,
                 weights: dict[str, np.ndarray] | None = None, devices: int | None = None):
        super().__init__(spec, recipe, train_set, test_set)
        training.check_split(recipe, devices)
        self.devices = devices or 1
        self.distribution = data_parallel(devices)
        with self._scope():  # the variables are made with the distribution's (replicated) layout
            self.model = keras_model.build(spec, init_weights(spec, recipe.seed) if weights is None else weights)
            self._dropouts = [layer for layer in self.model.layers if isinstance(layer, keras.layers.Dropout)]
            self._seed_dropout(recipe.seed)
            if not dropout:
                for layer in self._dropouts:
                    layer.rate = 0.0
            self.model.compile(optimizer=optimizer(recipe, self.lrs), metrics=[Correct()],
                               loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                                         label_smoothing=recipe.label_smoothing))
            self.model.optimizer.build(self.model.trainable_variables)  # its slots exist for state() from the start

    def _scope(self):
        return self.distribution.scope() if self.distribution else contextlib.nullcontext()

    def _seed_dropout(self, seed: int) -> None:
        """Each Dropout's seed generator as `SeedGenerator(s)` makes it, s from the recipe's seed and the layer's
        place: Keras draws an unseeded generator's seed at random, and on PyTorch an unseeded Dropout takes
        torch's global generator instead of its own (so a checkpoint of its state would not resume it)."""
        for i, layer in enumerate(self._dropouts):
            first = int(np.random.SeedSequence([seed, i]).generate_state(1)[0] % 2**31)
            layer.seed_generator._initial_seed = first
            layer.seed_generator.state.assign(np.array([first, 0]).astype(layer.seed_generator.state.dtype))

    def step(self, x: np.ndarray, y: np.ndarray, k: int):
        """One optimizer step on batch k (NCHW); the learning rate follows the optimizer's own count of steps."""
        with self._scope():
            logs = self.model.train_on_batch(*keras_batch(x, y, self.spec.num_classes), return_dict=True)
        return logs["loss"], int(logs["correct"])

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """Mean cross-entropy (no smoothing) and the number of right predictions, in inference mode."""
        pad = -len(x) % self.devices  # a sharded batch splits evenly over the devices
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        with self._scope():
            logits = keras_model.predict(self.model, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))[:len(y)]
        return training.smoothed_cross_entropy(logits, y, 0.0), int((logits.argmax(-1) == y).sum())

    def weights(self) -> dict[str, np.ndarray]:
        return keras_model.get_weights(self.model)

    def run(self, out: Path, progress: bool = True, stop_after: int | None = None, callbacks=()) -> list[dict]:
        """Train with `model.fit` to the recipe's last epoch (or `stop_after`), checkpointing after each;
        `callbacks` are Keras callbacks, run after the trainer's own."""
        last = min(self.recipe.epochs, stop_after or self.recipe.epochs)
        if self.epoch >= last:
            return self.history
        batches = Batches(self.train_x, self.train_y, self.recipe, self.epoch, last, self.spec.num_classes)
        interrupt = Interrupt()
        main = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
        before = signal.signal(signal.SIGINT, interrupt) if main else None
        try:
            with self._scope():
                self.model.fit(batches, epochs=last, initial_epoch=self.epoch, steps_per_epoch=self.steps_per_epoch,
                               shuffle=False, verbose=0,
                               callbacks=[EpochEnd(self, Path(out), progress, interrupt), *callbacks])
        finally:
            if main:
                signal.signal(signal.SIGINT, before)
        return self.history

    def fit_epoch_end(self, out: Path, logs: dict, losses: list, seconds: float, progress: bool) -> None:
        """After fit's epoch `self.epoch` (its steps' running mean losses): `Loop.end_epoch`, and the test
        split's loss and accuracy into the epoch's logs, for the callbacks after this one."""
        n = self.steps_per_epoch * self.recipe.batch_size
        self.end_epoch(out, losses, float(logs["loss"]), float(logs["correct"]) / n, seconds, progress)
        logs.update(test_loss=self.history[-1]["test_loss"], test_acc=self.history[-1]["test_acc"])

    # ---- checkpoints: canonical weights, the optimizer's slots (Keras layout) and count, the dropout seeds

    def _variables(self) -> dict[str, keras.Variable]:
        opt = self.model.optimizer  # built on the model's trainable variables, its slots in their order
        out = {f"optimizer/{v.path}/{slot}": s for slot, slots in opt.slots.items()
               for v, s in zip(self.model.trainable_variables, slots, strict=True)}
        out["optimizer/iterations"] = opt.iterations
        out.update({f"rng/{layer.name}": layer.seed_generator.state for layer in self._dropouts})
        return out

    def state(self) -> dict[str, np.ndarray]:
        out = {"model/" + k: v for k, v in self.weights().items()}
        out.update({k: ops.convert_to_numpy(v) for k, v in self._variables().items()})
        return out

    def steps_taken(self, arrays: dict[str, np.ndarray]) -> list[int]:
        return [int(arrays["optimizer/iterations"])]

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        variables = self._variables()  # (names, shapes and dtypes checked by Loop.resume)
        with self._scope():
            keras_model.set_weights(self.model, {k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
            for k, v in variables.items():
                v.assign(np.asarray(arrays[k]).astype(v.dtype))


class Interrupt:
    """SIGINT's handler during `model.fit`: KeyboardInterrupt at once, and again at the end of the next batch
    (EpochEnd), should the first be lost: in CI, once, a Ctrl-C raised while TensorFlow ran Keras' data
    pipeline was swallowed and training went on to the next epoch."""

    def __init__(self):
        self.asked = False

    def __call__(self, signum, frame):
        self.asked = True
        raise KeyboardInterrupt


class EpochEnd(keras.callbacks.Callback):
    """The trainer's callback in `model.fit`: a progress bar per epoch, then `Trainer.end_epoch`."""

    def __init__(self, trainer: Trainer, out: Path, progress: bool, interrupt: Interrupt | None = None):
        super().__init__()
        self.trainer, self.out, self.progress, self.interrupt = trainer, out, progress, interrupt

    def on_epoch_begin(self, epoch, logs=None):
        from zoo._progress import bar

        r = self.trainer.recipe
        self.t0, self.losses = time.perf_counter(), []
        self.bar = bar(self.trainer.steps_per_epoch * r.batch_size, f"epoch {epoch + 1}/{r.epochs}", self.progress)

    def on_train_batch_end(self, batch, logs=None):
        if self.interrupt is not None and self.interrupt.asked:
            raise KeyboardInterrupt("interrupted (Ctrl-C)")
        self.bar.update(self.trainer.recipe.batch_size)  # in images/s
        self.losses.append(logs["loss"])  # the epoch's mean so far: not finite from the first step that is not
        if batch % 20 == 19:  # float() waits for the device
            if not math.isfinite(float(logs["loss"])):
                self.bar.close()
                self.trainer.diverged(self.out, self.losses)
            if self.progress:
                self.bar.set_postfix_str(f"loss {float(logs['loss']):.3f}", refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.t0
        self.bar.close()
        self.trainer.fit_epoch_end(self.out, logs, self.losses, seconds, self.progress)


def train(spec: ModelSpec, recipe: Recipe, out, *, resume: bool = False, data_root=None, limit: int | None = None,
          progress: bool = True, stop_after: int | None = None, devices: int | None = None, callbacks=()) -> Trainer:
    """Train, checkpointing every epoch; `limit` trains and tests on the first images only (for tests);
    `callbacks`: Keras callbacks for `model.fit`."""
    trainer = Trainer(spec, recipe, *training.load_data(data_root, limit), devices=devices)  # checks, before files
    out = training.open_run(out, resume, trainer, limit)
    if resume:
        trainer.resume(out, progress)
    trainer.run(out, progress, stop_after, callbacks)
    training.plot(trainer.history, out / "curves.png")
    return trainer
