"""Image decoding: every PIL mode users meet ends up as uint8 with the channels asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvtool.data.images import decode, image_size_of, is_image_file, open_image
from cvtool.errors import BadImageError


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def test_grey_to_one_and_three_channels(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = save(Image.fromarray(values, mode="L"), tmp_path / "grey.png")
    grey, original = decode(path, 1, None)
    rgb, _ = decode(path, 3, None)
    assert original == (4, 3)
    assert grey.shape == (3, 4, 1) and grey.dtype == np.uint8
    np.testing.assert_array_equal(grey[..., 0], values)
    assert rgb.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], values)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[0, 0] = (200, 100, 50, 255)
    pixels[1, 1] = (10, 20, 30, 0)  # fully transparent: its colour is kept
    path = save(Image.fromarray(pixels, mode="RGBA"), tmp_path / "rgba.png")
    rgb, _ = decode(path, 3, None)
    np.testing.assert_array_equal(rgb[0, 0], (200, 100, 50))
    np.testing.assert_array_equal(rgb[1, 1], (10, 20, 30))
    grey, _ = decode(path, 1, None)
    assert grey.shape == (2, 2, 1)
    assert abs(int(grey[0, 0, 0]) - round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)) <= 1


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (3, 1))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (253 * 3))
    img.putdata([0, 1, 2])
    path = save(img, tmp_path / "palette.png", transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    assert open_image(path).mode == "RGBA"
    rgb, _ = decode(path, 3, None)
    np.testing.assert_array_equal(rgb[0], [(0, 0, 0), (255, 0, 0), (0, 0, 255)])
    grey, _ = decode(path, 1, None)
    assert grey[0, 1, 0] == pytest.approx(0.299 * 255, abs=1)
    assert grey[0, 2, 0] == pytest.approx(0.114 * 255, abs=1)


@pytest.mark.parametrize("cmyk, rgb", [
    ((0, 255, 255, 0), (255, 0, 0)),
    ((255, 0, 255, 0), (0, 255, 0)),
    ((0, 0, 0, 255), (0, 0, 0)),
    ((0, 0, 0, 0), (255, 255, 255)),
])
def test_cmyk_jpeg(tmp_path: Path, cmyk: tuple, rgb: tuple) -> None:
    path = save(Image.new("CMYK", (8, 8), cmyk), tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    decoded, _ = decode(path, 3, None)
    assert np.abs(decoded.reshape(-1, 3).astype(int) - np.array(rgb)).max() <= 8
    grey, _ = decode(path, 1, None)
    expected = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    assert abs(float(grey.mean()) - expected) <= 8


def test_sixteen_bit_png(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    grey, _ = decode(path, 1, None)
    np.testing.assert_array_equal(grey[0, :, 0], [0, 1, 128, 255])
    rgb, _ = decode(path, 3, None)
    np.testing.assert_array_equal(rgb[0, 3], (255, 255, 255))


def test_one_bit(tmp_path: Path) -> None:
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    path = save(img, tmp_path / "bits.png")
    grey, _ = decode(path, 1, None)
    np.testing.assert_array_equal(grey[0, :, 0], [0, 255])
    rgb, _ = decode(path, 3, None)
    np.testing.assert_array_equal(rgb[0, 1], (255, 255, 255))


@pytest.mark.parametrize("values, expected", [
    ([[0.0, 0.5, 1.0]], [0, 128, 255]),  # [0, 1] floats are scaled
    ([[0.0, 100.0, 255.0]], [0, 100, 255]),  # larger floats are taken as 0..255
])
def test_float_tiff(tmp_path: Path, values: list, expected: list) -> None:
    path = save(Image.fromarray(np.array(values, np.float32), mode="F"), tmp_path / "float.tif")
    assert Image.open(path).mode == "F"
    grey, _ = decode(path, 1, None)
    np.testing.assert_array_equal(grey[0, :, 0], expected)
    rgb, _ = decode(path, 3, None)
    np.testing.assert_array_equal(rgb[0, :, 1], expected)


def test_resize_gives_square(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (20, 10), (30, 60, 90)), tmp_path / "wide.png")
    arr, original = decode(path, 3, 12)
    assert arr.shape == (12, 12, 3) and original == (20, 10)
    np.testing.assert_array_equal(arr[5, 5], (30, 60, 90))
    grey, _ = decode(path, 1, 7)
    assert grey.shape == (7, 7, 1)
    assert image_size_of(path) == (20, 10)


def test_bad_images_name_the_reason(tmp_path: Path) -> None:
    good = save(Image.new("RGB", (16, 16), (1, 2, 3)), tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    reasons = {}
    for name in ("empty.png", "text.jpg", "cut.png", "missing.png"):
        with pytest.raises(BadImageError) as info:
            decode(tmp_path / name, 3, None)
        assert name in str(info.value)
        reasons[name] = info.value.reason
    assert reasons["empty.png"] == "empty file"
    assert reasons["text.jpg"] == "not a recognised image format"
    assert reasons["missing.png"] == "file not found"
    assert reasons["cut.png"]


def test_image_extensions() -> None:
    assert all(is_image_file(Path(f"a{ext}")) for ext in (".png", ".JPG", ".jpeg", ".JPEG", ".bmp", ".webp", ".tif"))
    assert not is_image_file(Path("labels.csv"))
