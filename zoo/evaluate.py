"""Evaluate pretrained weights on Fashion-MNIST, and classify image files, in any framework.

    zoo evaluate nin --weights fashion_mnist --framework keras
    zoo predict nin --weights fashion_mnist shirt.png boot.jpg
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import numpy as np

from zoo import data
from zoo._progress import bar
from zoo.api import load, predict
from zoo.pretrained import PretrainedCfg, cfg_for


def logits(model, images: np.ndarray, cfg: PretrainedCfg, batch: int = 500, progress: bool = False) -> np.ndarray:
    """Logits [N, classes] for uint8 images [N, 28, 28], preprocessed as the weights' metadata says;
    `progress` shows a bar on stderr."""
    out = []
    with bar(len(images), "evaluate", progress) as b:
        for i in range(0, len(images), batch):
            x = data.preprocess(images[i:i + batch], cfg.input_size, cfg.mean, cfg.std)
            out.append(predict(model, x, layout="NCHW"))
            if out[-1].shape[1] != cfg.num_classes:
                raise ValueError(f"the model gives {out[-1].shape[1]} logits but its pretrained entry names "
                                 f"{cfg.num_classes} classes")
            b.update(len(x))
    return np.concatenate(out)


def evaluate(name: str, tag: str, framework: str, data_root=None,
             limit: int | None = None, progress: bool = False) -> tuple[float, np.ndarray, np.ndarray]:
    """(test accuracy, logits, labels) on the 10,000 test images, or on the first `limit` of them;
    `progress` shows a bar on stderr."""
    cfg = cfg_for(name, tag)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 image, got {limit}")
    images, labels = data.load_fashion_mnist("test", data_root)
    images, labels = images[:limit], labels[:limit]
    out = logits(load(name, framework, weights=tag), images, cfg, progress=progress)
    return float((out.argmax(1) == labels).mean()), out, labels


# What the Fashion-MNIST weights know, printed by `zoo predict` (and said in the README).
DOMAIN = ("Fashion-MNIST: 28 x 28 grayscale product photos of one garment, shoe or bag, centred and filling "
          "the frame, light on black; any other picture still gets one of its 10 labels")

# Simple statistics of a 28 x 28 uint8 image as the model sees it (after `load_images`), and the range of each
# on the 60,000 Fashion-MNIST training images: their 0.05th and 99.95th percentiles, measured with
# `domain_ranges(data.load_fashion_mnist('train')[0])` and rounded outwards to 2 decimals
# (tests/test_predict_images.py measures them again). An image outside any range is reported as unlike the
# training data: 40 of the 10,000 test images (0.40%) are, their false-alarm rate (measured by the same test).
DOMAIN_RANGES = {
    "border mean": (0.0, 60.64),  # the outer ring of pixels: black around a centred garment
    "mean": (10.21, 170.99),  # mean intensity
    "near-black fraction": (0.13, 0.91),  # share of pixels <= 16
    "extent": (22.0, 28.0),  # long side, in pixels, of the box around the pixels > 32: garments fill the frame
    "roughness": (6.59, 55.1),  # mean |difference| of neighbouring pixels: high for noise and texture
}


def image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics of DOMAIN_RANGES, each an array [N], for uint8 images [N, 28, 28]."""
    a = np.asarray(images, np.float64)
    ring = np.concatenate([a[:, 0], a[:, -1], a[:, 1:-1, 0], a[:, 1:-1, -1]], axis=1)
    fg = a > 32

    def span(mask):  # [N, L] -> length from the first to the last True, 0 when none
        first, last = mask.argmax(1), mask.shape[1] - mask[:, ::-1].argmax(1)
        return np.where(mask.any(1), last - first, 0)

    return {"border mean": ring.mean(1), "mean": a.mean((1, 2)), "near-black fraction": (a <= 16).mean((1, 2)),
            "extent": np.maximum(span(fg.any(2)), span(fg.any(1))).astype(np.float64),
            "roughness": (np.abs(np.diff(a, axis=1)).mean((1, 2)) + np.abs(np.diff(a, axis=2)).mean((1, 2))) / 2}


def domain_ranges(images: np.ndarray, q: float = 0.0005) -> dict[str, tuple[float, float]]:
    """Each statistic's (q, 1 - q) quantiles over `images`, rounded outwards to 2 decimals."""
    return {k: (float(np.floor(np.quantile(v, q) * 100) / 100), float(np.ceil(np.quantile(v, 1 - q) * 100) / 100))
            for k, v in image_stats(images).items()}


def unlike_training(images: np.ndarray, ranges=None) -> list[list[str]]:
    """Per image, the statistics outside the training images' ranges, e.g.
    'border mean 126.6 (training images: 0-60.64)'."""
    ranges = ranges or DOMAIN_RANGES
    stats = image_stats(images)
    return [[f"{k} {stats[k][i]:.4g} (training images: {lo:g}-{hi:g})" for k, (lo, hi) in ranges.items()
             if not lo <= stats[k][i] <= hi] for i in range(len(images))]


MAX_PIXELS = 50_000_000  # an image file's pixels, read from its header before decoding: a 48-megapixel photo fits


def load_images(paths, invert: str = "auto", fit: str = "pad") -> np.ndarray:
    """uint8 [N, 28, 28] grayscale from PNG/JPEG files, made like Fashion-MNIST's images.

    The EXIF orientation is applied, so a photo stored rotated is read upright.
    Transparent pixels become the background: white, as in the product photos Fashion-MNIST was made
    from, so that 'auto' inverts them to black like the data set's (black with `invert='no'`).
    A non-square image is made square keeping its aspect ratio: `fit='pad'` pads it with its border's
    colour (median), as Fashion-MNIST's own images were made; 'crop' keeps its centre square.
    Fashion-MNIST shows light garments on black; `invert='auto'` inverts an image whose
    border is light (a product photo on white), 'yes' and 'no' force it.
    Only regular files of at most MAX_PIXELS pixels are read.
    """
    if fit not in ("pad", "crop"):
        raise ValueError(f"fit must be 'pad' or 'crop', got {fit!r}")
    return np.stack([load_image(p, invert, fit) for p in paths])


IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")  # Pillow's names of the formats `zoo predict` decodes


def load_image(path, invert: str = "auto", fit: str = "pad") -> np.ndarray:
    """One image file as `load_images` reads it: uint8 [28, 28]; ValueError naming the file when it can't."""
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:
        raise ImportError("reading images needs Pillow: pip install 'multizoo[data]'") from None
    try:
        # Only these decoders: Pillow would hand an EPS file to Ghostscript, a program of its own
        with _open_regular(path) as f, Image.open(f, formats=IMAGE_FORMATS) as im:
            w, h = im.size  # from the header: nothing is decoded yet
            if w * h > MAX_PIXELS:
                raise ValueError(f"{path} is {w} x {h} pixels, more than the {MAX_PIXELS:,} read; downscale it")
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                bg = 0 if invert == "no" else 255
                im = Image.alpha_composite(Image.new("RGBA", im.size, (bg, bg, bg, 255)), im.convert("RGBA"))
            a = _fit(np.asarray(im.convert("L"), np.uint8), fit)
    except Image.DecompressionBombError:
        raise ValueError(f"{path} has more than {MAX_PIXELS:,} pixels, the most read; downscale it") from None
    except UnidentifiedImageError:
        raise ValueError(f"cannot read {path}: it is not a {', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]} "
                         f"image") from None
    except FileNotFoundError:
        raise ValueError(f"cannot read {path}: it does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read {path} as an image: {e}") from None
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if invert == "yes" or (invert == "auto" and border.mean() > 127):
        a = 255 - a
    return a


def _open_regular(path):
    """`path` opened for reading, refused unless a regular file: a FIFO would block, a device never end.
    Opened without blocking and checked on the open file, as the ONNX reader does."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device?)"
            raise ValueError(f"cannot read {path}: it is {kind}; an image is a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _fit(a: np.ndarray, fit: str) -> np.ndarray:
    """uint8 [H, W] -> [28, 28], keeping the aspect ratio. 'pad' downscales first and pads after, so a
    1 x 80,000 image makes no 80,000 x 80,000 square (3 GB, before)."""
    from PIL import Image

    h, w = a.shape
    if fit == "crop" and h != w:
        n = min(h, w)
        a = a[(h - n) // 2:(h - n) // 2 + n, (w - n) // 2:(w - n) // 2 + n]
    if fit == "crop" or h == w:
        return np.asarray(Image.fromarray(a).resize((28, 28), Image.BILINEAR), np.uint8)
    n = max(h, w)
    sh, sw = max(1, round(h * 28 / n)), max(1, round(w * 28 / n))
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    small = np.asarray(Image.fromarray(a).resize((sw, sh), Image.BILINEAR), np.uint8)
    top, left = (28 - sh) // 2, (28 - sw) // 2
    return np.pad(small, ((top, 28 - sh - top), (left, 28 - sw - left)), constant_values=int(np.median(border)))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (label, softmax probability), the most probable first
    unlike: list[str]  # the statistics outside the training images' ranges; empty when it looks like them
    error: str = ""  # why the file could not be read (predict_files(errors='report')); then `top` is empty


def _read_images(paths, load_one, errors: str) -> tuple[list, dict[str, str]]:
    """([(path, image)], {path: why it could not be read}); with errors='raise' the first failure raises."""
    read, failed = [], {}
    for p in paths:
        try:
            read.append((p, load_one(p)))
        except ValueError as e:
            if errors != "report":
                raise
            failed[str(p)] = str(e)
    return read, failed


def predict_files(name: str, tag: str, framework: str, paths, top: int = 3, invert: str = "auto",
                  errors: str = "raise") -> list[Prediction]:
    """The top classes by softmax probability for each image file, and how it is unlike the training images.
    An unreadable image raises ValueError, or with `errors='report'` gets a Prediction holding only its `error`."""
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be at least 1 class, got {top!r}")
    cfg = cfg_for(name, tag)
    model = load(name, framework, weights=tag)
    read, failed = _read_images(paths, lambda p: load_image(p, invert, cfg.fit), errors)
    good = {}
    if read:
        images = np.stack([a for _, a in read])
        probs = softmax(logits(model, images, cfg).astype(np.float64))
        good = {str(p): Prediction(str(p), [(cfg.label_names[j], float(row[j])) for j in np.argsort(-row)[:top]],
                                   unlike) for (p, _), row, unlike in zip(read, probs, unlike_training(images))}
    return [good.get(str(p)) or Prediction(str(p), [], [], failed[str(p)]) for p in paths]


# ----------------------------------------------------------------------------- Hugging Face folders

# timm's defaults for what a pretrained_cfg leaves out (timm.data: IMAGENET_DEFAULT_MEAN/STD, PretrainedCfg)
TIMM_DEFAULTS = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_pct": 0.875,
                 "interpolation": "bicubic"}
_RESAMPLE = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST", "lanczos": "LANCZOS"}


@dataclass(frozen=True)
class FolderCfg:
    """A Hugging Face folder's preprocessing, as its config.json's pretrained_cfg gives it (timm's defaults for
    what it leaves out), and its label names (`class N` where it names none)."""

    input_size: tuple[int, int, int]  # channels, height, width
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    interpolation: str
    label_names: tuple[str, ...]

    def describe(self) -> str:
        c, h, w = self.input_size
        return (f"{len(self.label_names)} classes; images resized ({self.interpolation}) to {self.resize_to()} on "
                f"the shorter side, centre-cropped to {h}x{w}, normalised with mean {list(self.mean)}, std "
                f"{list(self.std)}, as its config.json says")

    def resize_to(self) -> int:
        """The shorter side's length before the centre crop (timm: floor(size / crop_pct))."""
        return int(np.floor(min(self.input_size[1:]) / self.crop_pct))


def folder_cfg(weights, num_classes: int) -> FolderCfg:
    """The preprocessing of a Hugging Face folder or hf-hub id, each field checked."""
    from zoo.io import io_hf, source

    folder = source(weights)
    config = io_hf.read_config(folder)
    cfg = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else {}
    merged = {**TIMM_DEFAULTS, **{k: cfg[k] for k in TIMM_DEFAULTS if k in cfg}}
    where = f"{folder / io_hf.CONFIG}: pretrained_cfg"
    size = cfg.get("input_size", [3, 224, 224])
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and 1 <= v <= 4096 for v in size)):
        raise ValueError(f"{where}.input_size is {size!r}; it must be [channels, height, width]")
    c = size[0]
    for key in ("mean", "std"):
        v = merged[key]
        if not (isinstance(v, (list, tuple)) and len(v) == c and all(isinstance(x, (int, float)) for x in v)
                and (key == "mean" or all(x > 0 for x in v))):
            raise ValueError(f"{where}.{key} is {v!r}; it must be {c} number(s){', each > 0' if key == 'std' else ''}")
    if not isinstance(merged["crop_pct"], (int, float)) or not 0.1 <= merged["crop_pct"] <= 1.0:
        raise ValueError(f"{where}.crop_pct is {merged['crop_pct']!r}; it must be a number in [0.1, 1]")
    if merged["interpolation"] not in _RESAMPLE:
        raise ValueError(f"{where}.interpolation is {merged['interpolation']!r}; known: {', '.join(_RESAMPLE)}")
    labels = config.get("label_names", cfg.get("label_names"))
    if labels is None:
        labels = [f"class {i}" for i in range(num_classes)]
    if not (isinstance(labels, list) and len(labels) == num_classes and all(isinstance(n, str) for n in labels)):
        raise ValueError(f"{folder / io_hf.CONFIG}: label_names must be {num_classes} strings, one a class")
    return FolderCfg(tuple(size), tuple(map(float, merged["mean"])), tuple(map(float, merged["std"])),
                     float(merged["crop_pct"]), merged["interpolation"], tuple(labels))


def load_image_as(path, cfg: FolderCfg) -> np.ndarray:
    """One image file preprocessed as timm evaluates: float32 [C, H, W] (EXIF orientation applied; RGB, or
    grayscale for one channel; shorter side resized to size / crop_pct, centre crop, normalised)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    c, h, w = cfg.input_size
    try:
        with _open_regular(path) as f, Image.open(f, formats=IMAGE_FORMATS) as im:
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise ValueError(f"{path} is {im.size[0]} x {im.size[1]} pixels, more than the {MAX_PIXELS:,} read")
            im = ImageOps.exif_transpose(im).convert("RGB" if c == 3 else "L")
            # as torchvision's Resize(int) and CenterCrop compute sizes and offsets (timm's eval transform)
            short, (iw, ih) = cfg.resize_to(), im.size
            size = (short, int(short * ih / iw)) if iw <= ih else (int(short * iw / ih), short)
            im = im.resize(size, getattr(Image, _RESAMPLE[cfg.interpolation]))
            left, top = int(round((im.size[0] - w) / 2.0)), int(round((im.size[1] - h) / 2.0))
            a = np.asarray(im.crop((left, top, left + w, top + h)), np.float32) / 255.0
    except UnidentifiedImageError:
        raise ValueError(f"cannot read {path}: it is not a {', '.join(IMAGE_FORMATS)} image") from None
    except FileNotFoundError:
        raise ValueError(f"cannot read {path}: it does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read {path} as an image: {e}") from None
    a = a.reshape(h, w, -1).transpose(2, 0, 1)
    if a.shape[0] != c:
        raise ValueError(f"the config's input_size asks for {c} channels; only 1 (grayscale) and 3 (RGB) are read")
    return (a - np.asarray(cfg.mean, np.float32)[:, None, None]) / np.asarray(cfg.std, np.float32)[:, None, None]


def predict_folder_files(name: str, weights, framework: str, paths, top: int = 3, errors: str = "raise"
                         ) -> tuple[FolderCfg, list[Prediction]]:
    """`predict_files` for weights in a Hugging Face folder (or hf-hub id): its pretrained_cfg preprocesses."""
    model = load(name, framework, weights=weights)
    from zoo.api import spec_of

    cfg = folder_cfg(weights, spec_of(model).num_classes)
    read, failed = _read_images(paths, lambda p: load_image_as(p, cfg), errors)
    good = {}
    if read:
        probs = softmax(predict(model, np.stack([a for _, a in read]), layout="NCHW").astype(np.float64))
        good = {str(p): Prediction(str(p), [(cfg.label_names[j], float(row[j])) for j in np.argsort(-row)[:top]], [])
                for (p, _), row in zip(read, probs)}
    return cfg, [good.get(str(p)) or Prediction(str(p), [], [], failed[str(p)]) for p in paths]


def is_folder_weights(weights) -> bool:
    """A Hugging Face folder or an hf-hub id (their config.json preprocesses), not a tag or a run's file."""
    from pathlib import Path

    from zoo.io import io_hf

    return io_hf.is_hub_id(weights) or (isinstance(weights, (str, os.PathLike)) and io_hf.is_folder(Path(weights)))
