"""Fashion-MNIST from its four original IDX files, and the preprocessing every framework shares.

    >>> images, labels = load_fashion_mnist('test')        # uint8 [10000, 28, 28], uint8 [10000]
    >>> x = preprocess(images[:8], size=75, mean=MEAN, std=STD)   # float32 [8, 1, 75, 75]

The files come from Debian's package `dataset-fashion-mnist` by default; the
argument `root` or the environment variable ZOO_FASHION_MNIST_DIR points elsewhere.
Each file is checked against its known SHA-256 before it is read.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "ZOO_FASHION_MNIST_DIR"
INSTALL_HINT = "sudo apt-get install dataset-fashion-mnist"

# SHA-256 of the original gzipped IDX files (as Zalando publishes them and Debian ships them).
FILES = {
    ("train", "images"): ("train-images-idx3-ubyte.gz",
                          "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
    ("train", "labels"): ("train-labels-idx1-ubyte.gz",
                          "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    ("test", "images"): ("t10k-images-idx3-ubyte.gz",
                          "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte.gz",
                          "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
}
LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = 0.2860, 0.3530  # of the 60,000 training images, pixels scaled to [0, 1]
LICENSE = "MIT (Fashion-MNIST, Zalando SE, 2017)"


class DatasetError(FileNotFoundError):
    """Missing, damaged or unexpected dataset files."""


def _root(root: str | os.PathLike | None) -> Path:
    return Path(root or os.environ.get(ENV_VAR) or DEFAULT_DIR)


def _missing(root, folder: Path, name: str) -> str:
    """Why `name` is not in `folder`, naming where that folder came from."""
    if root:
        given, fix = f"the folder you gave ({folder})", "pass"
    elif os.environ.get(ENV_VAR):
        given, fix = f"{ENV_VAR}={folder}", f"set {ENV_VAR} to"
    else:
        return (f"Fashion-MNIST file {folder / name} is missing. Install the data set with `{INSTALL_HINT}`, "
                f"or point {ENV_VAR} (or root=, --data) at a folder holding {name}")
    what = "does not exist" if not folder.exists() else f"holds no {name}"
    return f"{given} {what}: {fix} the folder that holds Fashion-MNIST's four IDX files ({name}, ...)"


def read_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Parse an IDX file's bytes (unsigned bytes only, as Fashion-MNIST's): [N] labels or [N, H, W] images."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DatasetError(f"{name} is not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape))
    if len(data) != header + size:
        raise DatasetError(f"{name}: the header says {shape} ({header + size} bytes) but the file has "
                           f"{len(data)} bytes: truncated or corrupt")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None,
                       check_hash: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of the 'train' (60,000) or 'test' (10,000) split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = _root(root)
    arrays = []
    for kind in ("images", "labels"):
        name, sha = FILES[(split, kind)]
        path = folder / name
        if not path.is_file():
            raise DatasetError(_missing(root, folder, name))
        raw = path.read_bytes()
        if check_hash and hashlib.sha256(raw).hexdigest() != sha:
            raise DatasetError(f"{path} has SHA-256 {hashlib.sha256(raw).hexdigest()}, expected {sha}: "
                               f"a damaged or different file; reinstall it (`{INSTALL_HINT}`)")
        arrays.append(read_idx(gzip.decompress(raw) if name.endswith(".gz") else raw, str(path)))
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{folder}: images {images.shape} and labels {labels.shape} do not pair up")
    return images, labels


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] bilinear interpolation with half-pixel centres (PyTorch's align_corners=False).

    Resizing an image is then `R @ img @ R.T`; upsampling needs no antialiasing.
    """
    scale = n_in / n_out
    src = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    r = np.zeros((n_out, n_in))
    r[np.arange(n_out), lo] += 1 - frac
    r[np.arange(n_out), hi] += frac
    return r


def preprocess(images: np.ndarray, size: int, mean: float = MEAN, std: float = STD) -> np.ndarray:
    """uint8 [N, H, W] -> float32 [N, 1, size, size]: bilinear resize, scale to [0, 1], normalise."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"expected grayscale images [N, H, W], got shape {images.shape}")
    rh, rw = resize_matrix(images.shape[1], size), resize_matrix(images.shape[2], size)
    x = rh @ (images.astype(np.float64) / 255.0) @ rw.T  # two matmuls: a three-operand einsum took 170x longer
    return ((x - mean) / std).astype(np.float32)[:, None]
