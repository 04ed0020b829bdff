"""Train a zoo model on Fashion-MNIST with PyTorch: `torch.optim`, `LambdaLR`, and DDP under torchrun.

    zoo train resnet18_d2l --framework torch --out runs/r18
    torchrun --nproc-per-node 2 -m zoo train resnet18_d2l --framework torch --out runs/r18-ddp

The recipe (`zoo.training.Recipe`) is carried out with PyTorch's own tools: `torch.optim.SGD`
(Nesterov, `weight_decay`) or `torch.optim.AdamW`, `clip_grad_norm_`, `LambdaLR` over the recipe's
learning-rate table, `cross_entropy(label_smoothing=)`.

Under torchrun (WORLD_SIZE > 1) the model is wrapped in `DistributedDataParallel` (gloo on CPUs,
NCCL on GPUs): each process takes its share of every global batch and DDP averages the gradients,
so a step equals the single-process step on the whole batch, except for BatchNorm: each process
normalises with its own share's statistics (not synchronised), and the running statistics that are
kept are rank 0's (DDP broadcasts rank 0's buffers before every forward).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo import training
from zoo.frameworks import torch_model
from zoo.spec import Conv, ModelSpec, init_weights
from zoo.training import Recipe

FRAMEWORK = "torch"


def optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    # lr=1.0: LambdaLR multiplies it by the table's entry of each step
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=1.0, momentum=recipe.momentum, nesterov=True,
                               weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=1.0, weight_decay=recipe.weight_decay)


def training_memory_format(spec: ModelSpec) -> torch.memory_format:
    """NCHW for a network with grouped convolutions that are not depthwise (ResNeXt, RegNet), channels_last (the
    model's default) for the others.

    In channels_last, oneDNN's float32 training steps of a tiny RegNetY left the float64 steps by 6e-6
    (relative) after one SGD step and 3.7e-3 after five (a BatchNorm's running variance; the first step's
    difference is in a grouped convolution's weight gradient); the same steps in NCHW stay within 8e-8 and
    2.4e-7, as Flax's do (tests/test_training.py). Depthwise networks (MobileNet, EfficientNet) keep
    channels_last: their steps agree in it, and NCHW trained MobileNetV3-small at 0.61x the speed. Measured
    here, one training step at 64 px: RegNetY-400MF (batch 32) in NCHW at 0.78x of its channels_last speed,
    ResNeXt-50 (batch 16) at 1.01x."""
    grouped = any(isinstance(op, Conv) and 1 < op.groups < op.in_channels for op in spec.ops().values())
    return torch.contiguous_format if grouped else torch.channels_last


class Trainer(training.Loop):
    framework = FRAMEWORK

    def __init__(self, spec: ModelSpec, recipe: Recipe, train_set, test_set, *, dropout: bool = True,
                 weights: dict[str, np.ndarray] | None = None, rank: int = 0, world: int = 1, device=None,
                 dtype: torch.dtype = torch.float32):
        super().__init__(spec, recipe, train_set, test_set, rank, world)
        torch.manual_seed(recipe.seed)  # dropout's masks
        self.device = torch.device(device or "cpu")
        self.model = torch_model.build(spec, init_weights(spec, recipe.seed) if weights is None else weights,
                                       memory_format=training_memory_format(spec))
        self.dtype = dtype  # torch.float64: the reference that the tests hold every framework's steps to
        self.model.to(self.device, dtype).train()
        self.dropout = dropout
        self.net = self.model
        if world > 1:
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=None if self.device.type == "cpu"
                                                           else [self.device])
        self.optimizer = optimizer(self.model.parameters(), recipe)
        lrs = self.lrs.astype(np.float64)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda k: lrs[min(k, len(lrs) - 1)])

    def _modes(self, train: bool) -> None:
        self.model.train(train)
        if train and not self.dropout:
            for m in self.model.modules():
                if isinstance(m, nn.Dropout):
                    m.eval()

    def step(self, x: np.ndarray, y: np.ndarray, k: int):
        """One optimizer step on this process's share of batch k (k counts from 0 over the run)."""
        self._modes(True)
        x, y = torch.from_numpy(x).to(self.device, self.dtype), torch.from_numpy(y).long().to(self.device)
        logits = self.net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.recipe.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.recipe.clip_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), (logits.detach().argmax(-1) == y).sum()

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        self.model.eval()
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(x).to(self.device, self.dtype))
            y = torch.from_numpy(y).long().to(self.device)
            return float(F.cross_entropy(logits, y)), int((logits.argmax(-1) == y).sum())

    def weights(self) -> dict[str, np.ndarray]:
        return torch_model.get_weights(self.model)

    # ---- checkpoints: the model's canonical weights, the optimizer's buffers, the scheduler's and RNG's state

    def state(self) -> dict[str, np.ndarray]:
        out = {"model/" + k: v for k, v in self.weights().items()}
        names = {id(p): n for n, p in self.model.named_parameters()}
        for p, st in self.optimizer.state.items():
            for k, v in st.items():
                out[f"optimizer/{names[id(p)]}/{k}"] = v.detach().cpu().numpy()
        out["scheduler/last_epoch"] = np.asarray(self.scheduler.last_epoch)
        out["rng/torch"] = torch.get_rng_state().numpy()
        return out

    SLOTS = {"sgd": ("momentum_buffer",), "adamw": ("step", "exp_avg", "exp_avg_sq")}  # what torch.optim keeps

    def expected_state(self) -> dict[str, np.ndarray]:
        """What `state()` holds after a step (torch.optim makes its slots at the first one)."""
        out = {"model/" + k: v for k, v in self.weights().items()}
        for name, p in self.model.named_parameters():
            for slot in self.SLOTS[self.recipe.optimizer]:
                shape = () if slot == "step" else tuple(p.shape)  # AdamW counts its steps in a float32 scalar
                out[f"optimizer/{name}/{slot}"] = np.zeros(shape, np.float32)
        out["scheduler/last_epoch"] = np.asarray(self.scheduler.last_epoch)
        out["rng/torch"] = torch.get_rng_state().numpy()
        return out

    def steps_taken(self, arrays: dict[str, np.ndarray]) -> list[int]:
        return [int(arrays["scheduler/last_epoch"])]

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        torch_model.set_weights(self.model, {k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
        params = dict(self.model.named_parameters())
        for key, v in arrays.items():
            if key.startswith("optimizer/"):
                name, slot = key[len("optimizer/"):].rsplit("/", 1)
                self.optimizer.state[params[name]][slot] = torch.from_numpy(np.array(v)).to(
                    self.device if v.ndim else "cpu")
        self.scheduler.last_epoch = int(arrays["scheduler/last_epoch"])
        self.scheduler._last_lr = [float(self.lrs[min(self.scheduler.last_epoch, len(self.lrs) - 1)])]
        for group in self.optimizer.param_groups:
            group["lr"] = self.scheduler._last_lr[0]
        torch.set_rng_state(torch.from_numpy(np.array(arrays["rng/torch"])))


def distributed() -> tuple[int, int]:
    """(rank, world) under torchrun, after joining its process group; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def train(spec: ModelSpec, recipe: Recipe, out, *, resume: bool = False, data_root=None, limit: int | None = None,
          progress: bool = True, stop_after: int | None = None, devices: int | None = None) -> Trainer:
    """Train, checkpointing every epoch; `limit` trains and tests on the first images only (for tests)."""
    rank, world = distributed()
    training.check_torch_devices(devices, world)
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    trainer = Trainer(spec, recipe, *training.load_data(data_root, limit), rank=rank, world=world, device=device)
    if rank == 0:
        out = training.open_run(out, resume, trainer, limit)
    else:
        out, trainer.limit = Path(out), limit
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has checked and made the folder
    if resume:
        trainer.resume(out, progress)
    trainer.run(out, progress, stop_after)
    if rank == 0:
        training.plot(trainer.history, out / "curves.png")
    return trainer
