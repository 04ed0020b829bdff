"""Evaluate pretrained weights on Fashion-MNIST, and classify image files, in any framework.

    zoo evaluate nin --weights fashion_mnist --framework keras
    zoo predict nin --weights fashion_mnist shirt.png boot.jpg
"""

from __future__ import annotations

import numpy as np

from zoo import data
from zoo.api import load, predict
from zoo.pretrained import PretrainedCfg, resolve


def logits(model, images: np.ndarray, cfg: PretrainedCfg, batch: int = 500) -> np.ndarray:
    """Logits [N, classes] for uint8 images [N, 28, 28], preprocessed as the weights' metadata says."""
    out = [predict(model, data.preprocess(images[i:i + batch], cfg.input_size, cfg.mean, cfg.std), layout="NCHW")
           for i in range(0, len(images), batch)]
    return np.concatenate(out)


def evaluate(name: str, tag: str, framework: str, data_root=None,
             limit: int | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """(test accuracy, logits, labels) on the 10,000 test images, or on the first `limit` of them."""
    _, cfg = resolve(name, tag)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 image, got {limit}")
    images, labels = data.load_fashion_mnist("test", data_root)
    images, labels = images[:limit], labels[:limit]
    out = logits(load(name, framework, weights=tag), images, cfg)
    return float((out.argmax(1) == labels).mean()), out, labels


def load_images(paths, invert: str = "auto") -> np.ndarray:
    """uint8 [N, 28, 28] grayscale from PNG/JPEG files, resized like Fashion-MNIST.

    Fashion-MNIST shows light garments on black; `invert='auto'` inverts an image whose
    border is light (a product photo on white), 'yes' and 'no' force it.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImportError("reading images needs Pillow: pip install 'multizoo[data]'") from None
    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                a = np.asarray(im.convert("L").resize((28, 28), Image.BILINEAR), np.uint8)
        except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read {p} as an image (PNG or JPEG): {e}") from None
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        if invert == "yes" or (invert == "auto" and border.mean() > 127):
            a = 255 - a
        out.append(a)
    return np.stack(out)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_files(name: str, tag: str, framework: str, paths, top: int = 3, invert: str = "auto"):
    """[(path, [(label, probability), ...]), ...]: the top classes by softmax probability."""
    _, cfg = resolve(name, tag)
    probs = softmax(logits(load(name, framework, weights=tag), load_images(paths, invert), cfg).astype(np.float64))
    return [(p, [(cfg.label_names[j], float(row[j])) for j in np.argsort(-row)[:top]]) for p, row in zip(paths, probs)]
