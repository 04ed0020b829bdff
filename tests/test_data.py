"""The Fashion-MNIST loader, on small IDX files the tests write, and the shared preprocessing."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util

import numpy as np
import pytest

from zoo import data


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def small_set(tmp_path, monkeypatch):
    """Ten 28x28 images per split in the real file names, with their hashes registered."""
    rng = np.random.default_rng(0)
    files = {}
    for split in ("train", "test"):
        images = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
        labels = np.arange(10, dtype=np.uint8)
        for kind, arr in (("images", images), ("labels", labels)):
            name = data.FILES[(split, kind)][0]
            raw = gzip.compress(_idx(arr))
            (tmp_path / name).write_bytes(raw)
            files[(split, kind)] = (name, hashlib.sha256(raw).hexdigest())
        files[(split, "arrays")] = (images, labels)
    monkeypatch.setattr(data, "FILES", {k: v for k, v in files.items() if k[1] != "arrays"})
    return tmp_path, files


def test_loads_and_checks_hashes(small_set):
    root, files = small_set
    images, labels = data.load_fashion_mnist("test", root)
    np.testing.assert_array_equal(images, files[("test", "arrays")][0])
    np.testing.assert_array_equal(labels, files[("test", "arrays")][1])
    assert images.dtype == np.uint8 and images.shape == (10, 28, 28)


def test_environment_variable_overrides_default(small_set, monkeypatch):
    root, _ = small_set
    monkeypatch.setenv(data.ENV_VAR, str(root))
    assert data.load_fashion_mnist("train")[0].shape == (10, 28, 28)


def test_hash_mismatch_is_refused(small_set):
    root, _ = small_set
    name = data.FILES[("train", "labels")][0]
    raw = gzip.compress(_idx(np.full(10, 3, np.uint8)))
    (root / name).write_bytes(raw)
    with pytest.raises(data.DatasetError, match=rf"{name} has SHA-256 {hashlib.sha256(raw).hexdigest()}, expected"):
        data.load_fashion_mnist("train", root)


def test_missing_files_name_the_install_command(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "DEFAULT_DIR", tmp_path)
    with pytest.raises(data.DatasetError, match=r"missing\. Install the data set with `sudo apt-get install "
                                                r"dataset-fashion-mnist`, or point ZOO_FASHION_MNIST_DIR"):
        data.load_fashion_mnist("test")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        data.load_fashion_mnist("validation", tmp_path)


def test_missing_files_name_the_folder_given(tmp_path, monkeypatch):
    """A folder passed as root= (`--data`) or in the environment variable is named, not the install hint."""
    missing = tmp_path / "nonexistent"
    with pytest.raises(data.DatasetError, match=rf"^the folder you gave \({missing}\) does not exist: pass the "
                                                r"folder that holds Fashion-MNIST's four IDX files"):
        data.load_fashion_mnist("test", missing)
    with pytest.raises(data.DatasetError, match=rf"^the folder you gave \({tmp_path}\) holds no t10k-images"):
        data.load_fashion_mnist("test", tmp_path)
    monkeypatch.setenv(data.ENV_VAR, str(missing))
    with pytest.raises(data.DatasetError, match=rf"^ZOO_FASHION_MNIST_DIR={missing} does not exist: set "
                                                r"ZOO_FASHION_MNIST_DIR to the folder"):
        data.load_fashion_mnist("test")


def test_cli_names_the_data_folder(tmp_path, capsys):
    from zoo.cli import main

    assert main(["evaluate", "nin", "--weights", "fashion_mnist", "--data", str(tmp_path / "nonexistent")]) == 2
    err = capsys.readouterr().err
    assert f"the folder you gave ({tmp_path / 'nonexistent'}) does not exist" in err and "apt-get" not in err


def test_truncated_and_foreign_idx():
    good = _idx(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(data.DatasetError, match="truncated or corrupt"):
        data.read_idx(good[:-5])
    with pytest.raises(data.DatasetError, match="not an IDX file of unsigned bytes"):
        data.read_idx(b"\x89PNG\r\n\x1a\n" + good)


def test_resize_matrix_is_bilinear():
    r = data.resize_matrix(28, 75)
    np.testing.assert_allclose(r.sum(axis=1), 1.0)
    img = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    x = data.preprocess(img, 75, mean=0.0, std=1.0)
    assert x.shape == (3, 1, 75, 75) and x.dtype == np.float32
    const = data.preprocess(np.full((1, 28, 28), 51, np.uint8), 75, mean=0.0, std=1.0)
    np.testing.assert_allclose(const, 0.2, atol=1e-7)
    if importlib.util.find_spec("torch"):  # same as PyTorch's bilinear, align_corners=False
        import torch

        want = torch.nn.functional.interpolate(torch.from_numpy(img[:, None] / 255.0), size=(75, 75),
                                               mode="bilinear", align_corners=False).numpy()
        np.testing.assert_allclose(x, want, atol=1e-6)


@pytest.mark.skipif(not (data.DEFAULT_DIR / data.FILES[("test", "images")][0]).exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_test_split():
    images, labels = data.load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28)
    assert np.bincount(labels).tolist() == [1000] * 10
