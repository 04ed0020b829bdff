"""`zoo predict` on real-world image files: transparency, aspect ratio, and images unlike Fashion-MNIST."""

from __future__ import annotations

import numpy as np
import pytest

from zoo import data, pretrained
from zoo.evaluate import DOMAIN_RANGES, domain_ranges, load_images, unlike_training

Image = pytest.importorskip("PIL.Image", reason="predict: Pillow not installed (pip install '.[data]')")
HAVE_DATA = (data.DEFAULT_DIR / data.FILES[("train", "images")][0]).exists()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="Debian's dataset-fashion-mnist is not installed")


def _save(tmp_path, name: str, array_or_image) -> str:
    im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    path = str(tmp_path / name)
    im.save(path)
    return path


def _garment() -> np.ndarray:
    """A test image (a trouser), or without the data set a light rectangle on black."""
    if HAVE_DATA:
        return data.load_fashion_mnist("test")[0][2]
    a = np.zeros((28, 28), np.uint8)
    a[2:26, 9:19] = 200
    return a


def _cutout(garment: np.ndarray, dark_on_light: bool = True) -> Image.Image:
    """The garment as a product cutout: opaque where it is, transparent (and RGB black) around it."""
    gray = 255 - garment if dark_on_light else garment
    rgba = np.zeros((*garment.shape, 4), np.uint8)
    rgba[..., :3] = gray[..., None]
    rgba[..., 3] = np.where(garment > 0, 255, 0)
    rgba[garment == 0, :3] = 0
    return Image.fromarray(rgba, "RGBA")


def test_transparent_cutout_is_composited_as_a_product_photo(tmp_path):
    """Transparent pixels become white (a product photo's background), then black by 'auto' inversion: exactly the
    garment; before, the alpha channel was dropped and the transparent black made a blank image."""
    garment = _garment()
    got = load_images([_save(tmp_path, "cutout.png", _cutout(garment))])[0]
    np.testing.assert_array_equal(got, garment)
    assert unlike_training(got[None]) == [[]]
    # light on a transparent background, with invert='no': composited on black
    light = load_images([_save(tmp_path, "light.png", _cutout(garment, dark_on_light=False))], invert="no")[0]
    np.testing.assert_array_equal(light, garment)


def _disc(h: int, w: int, diameter: int) -> np.ndarray:
    """A black disc centred on a white h x w canvas."""
    y, x = np.mgrid[:h, :w]
    return np.where((y - h / 2 + 0.5) ** 2 + (x - w / 2 + 0.5) ** 2 <= (diameter / 2) ** 2, 0, 255).astype(np.uint8)


def _box(a: np.ndarray) -> tuple[int, int]:
    """(height, width) of the box around the pixels > 127."""
    rows, cols = np.flatnonzero((a > 127).any(1)), np.flatnonzero((a > 127).any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_non_square_images_keep_their_aspect_ratio(tmp_path):
    """A disc 80 px wide on a 100 x 200 canvas stays round: padded with the border's white (black once inverted),
    not squashed to 22 x 11 pixels as before."""
    path = _save(tmp_path, "wide.png", _disc(100, 200, 80))
    padded = load_images([path])[0]
    assert _box(padded) in ((11, 11), (12, 12), (11, 12), (12, 11)), _box(padded)  # 80 * 28 / 200 = 11.2
    assert padded[:6].max() == 0 and padded[-6:].max() == 0  # padding: white, inverted
    tall = load_images([_save(tmp_path, "tall.png", _disc(200, 100, 80))])[0]  # padded left and right
    assert np.abs(tall.T.astype(int) - padded).max() <= 1  # PIL rounds rows and columns a little differently
    cropped = load_images([path], fit="crop")[0]  # the centre 100 x 100: 80 * 28 / 100 = 22.4
    assert _box(cropped) in ((22, 22), (23, 23), (22, 23), (23, 22)), _box(cropped)
    with pytest.raises(ValueError, match="fit must be 'pad' or 'crop', got 'squash'"):
        load_images([path], fit="squash")


def test_manifest_records_the_fit():
    _, cfg = pretrained.resolve("nin", "fashion_mnist")
    assert cfg.fit == "pad"
    entry = {k: v for k, v in cfg.__dict__.items() if k != "fit"}  # a manifest entry written before the field
    assert pretrained.PretrainedCfg(**entry).fit == "pad"


def _out_of_domain() -> dict[str, np.ndarray | Image.Image]:
    rng = np.random.default_rng(0)
    mostly_white = np.full((256, 256), 255, np.uint8)
    mostly_white[120:136, 100:156] = 90  # a thin gray bar
    squares = (np.arange(256)[:, None] // 32 + np.arange(256)[None] // 32) % 2
    icon = np.full((400, 400), 255, np.uint8)
    icon[180:220, 185:215] = 0  # 40 x 30 pixels on a 400 x 400 canvas
    return {"noise": rng.integers(0, 256, (256, 256), dtype=np.uint8),
            "noise_rgb": rng.integers(0, 256, (300, 200, 3), dtype=np.uint8),
            "mostly_white": mostly_white,
            "white": np.full((64, 64), 250, np.uint8),
            "gradient": np.tile(np.linspace(0, 255, 256).astype(np.uint8), (256, 1)),
            "checkerboard": (squares * 255).astype(np.uint8),
            "small_icon": icon,
            "gray_portrait": _disc(300, 240, 150) // 2 + 64}  # a dark oval on mid-gray


def test_out_of_domain_images_are_flagged(tmp_path):
    paths = [_save(tmp_path, f"{k}.png", v) for k, v in _out_of_domain().items()]
    reasons = unlike_training(load_images(paths))
    assert all(reasons), {p: r for p, r in zip(paths, reasons) if not r}
    assert reasons[0][0].startswith("border mean 12") and "(training images: 0-60.64)" in reasons[0][0]


@needs_data
def test_ranges_are_the_training_sets_and_rarely_flag_test_images():
    """The stored ranges are measured again on the 60,000 training images (statistics only, about 2 s), and
    flag 40 of the 10,000 test images (0.40%): the false-alarm rate the comment in zoo/evaluate.py states."""
    assert domain_ranges(data.load_fashion_mnist("train")[0]) == DOMAIN_RANGES
    flagged = sum(bool(r) for r in unlike_training(data.load_fashion_mnist("test")[0]))
    assert flagged == 40, flagged


@needs_data
def test_predict_command_states_the_domain_and_warns(tmp_path, capsys):
    pytest.importorskip("torch")
    from zoo.cli import main

    images, labels = data.load_fashion_mnist("test")
    cutout = _save(tmp_path, "cutout.png", _cutout(images[2]))  # a trouser, classified as one
    noise = _save(tmp_path, "noise.png", _out_of_domain()["noise"])
    assert main(["predict", "nin", "--weights", "fashion_mnist", cutout, noise, "--top", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("nin fashion_mnist knows Fashion-MNIST: 28 x 28 grayscale product photos")
    assert lines[1].startswith(f"{cutout}: {data.LABELS[labels[2]]} 0.") and data.LABELS[labels[2]] == "Trouser"
    assert lines[2].startswith(f"{noise}: ")
    assert lines[3].startswith(f"  warning: {noise} is unlike the training images (border mean 12")
    assert lines[3].endswith("): its labels mean little") and len(lines) == 4


def test_exif_orientation_is_applied(tmp_path):
    """A photo stored rotated with EXIF Orientation 8 (view it turned 90 degrees clockwise) is read upright:
    before, it was read as stored, sideways."""
    upright = _garment()
    exif = Image.Exif()
    exif[0x0112] = 8  # Orientation
    stored = Image.fromarray(np.rot90(upright, -1).copy())  # turned clockwise; the reader turns it back
    path = str(tmp_path / "rotated.png")
    stored.save(path, exif=exif)
    np.testing.assert_array_equal(load_images([path])[0], load_images([_save(tmp_path, "upright.png", upright)])[0])


def test_huge_and_elongated_images_are_bounded(tmp_path, monkeypatch):
    """A 1 x 80,000 image is padded after downscaling (it built an 80,000^2 array, 6.4 GB, before); an image over
    MAX_PIXELS is refused from its header (a 20,000^2 PNG ended in Pillow's DecompressionBombError)."""
    from zoo import evaluate

    line = np.zeros((1, 80_000), np.uint8)
    line[0, 30_000:50_000] = 255
    got = load_images([_save(tmp_path, "line.png", line)], invert="no")[0]
    assert got.shape == (28, 28) and got[:13].max() == 0 and got[14:].max() == 0 and got[13, 12:17].min() > 0
    monkeypatch.setattr(evaluate, "MAX_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"big\.png is 40 x 30 pixels, more than the 1,000 read; downscale it$"):
        load_images([_save(tmp_path, "big.png", np.zeros((30, 40), np.uint8))])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's own bomb check, at open
    with pytest.raises(ValueError, match=r"bomb\.png has more than 1,000 pixels, the most read; downscale it$"):
        load_images([_save(tmp_path, "bomb.png", np.zeros((30, 40), np.uint8))])


def test_only_the_listed_decoders_are_used(tmp_path):
    """Pillow hands an EPS file to Ghostscript (a program of its own) and knows dozens of formats: only PNG,
    JPEG, BMP, GIF and WebP are decoded."""
    eps = tmp_path / "x.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n%%EOF\n")
    with pytest.raises(ValueError, match=r"x\.png: it is not a PNG, JPEG, BMP, GIF or WEBP image"):
        load_images([str(eps)])


def test_only_regular_files_are_read(tmp_path):
    """A FIFO named x.png blocked `zoo predict` forever; a folder gave a traceback-free but vague error."""
    import os

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"x\.png: it is not a regular file \(a FIFO, socket or device\?\)"):
        load_images([str(fifo)])
    with pytest.raises(ValueError, match="it is a folder; an image is a regular file"):
        load_images([str(tmp_path)])
