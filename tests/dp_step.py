"""One training step, data parallel or not, for tests/test_data_parallel.py: writes the weights after it.

    python tests/dp_step.py FRAMEWORK CASE.json OUT.npz [DEVICES]                  # flax, keras: JAX devices
    torchrun --nproc-per-node 2 tests/dp_step.py torch CASE.json OUT.npz           # torch: one process per device

CASE.json holds the model, its spec overrides, the recipe, and how many training images to take.
Dropout is off, so that the step is deterministic; the first batch of epoch 0 is the step's.
"""

from __future__ import annotations

import importlib
import json
import sys

import numpy as np


def main(framework: str, case_file: str, out: str, devices: int = 1) -> None:
    import zoo
    from zoo import data, training

    case = json.loads(open(case_file).read())
    spec = zoo.get_spec(case["model"], **case["overrides"])
    recipe = training.Recipe(**case["recipe"])
    images, labels = data.load_fashion_mnist("train")
    subset = images[:case["images"]], labels[:case["images"]]
    module = importlib.import_module(f"zoo.frameworks.{framework}_train")
    if framework == "torch":
        rank, world = module.distributed()
        trainer = module.Trainer(spec, recipe, subset, subset, dropout=False, rank=rank, world=world)
        x, y = next(training.epoch_batches(*subset, recipe, 0, rank, world))
    else:
        rank = 0
        trainer = module.Trainer(spec, recipe, subset, subset, dropout=False, devices=devices)
        x, y = next(training.epoch_batches(*subset, recipe, 0))
    trainer.step(x, y, 0)
    if rank == 0:
        np.savez(out, **trainer.weights())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:]))
