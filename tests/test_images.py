"""One picture as the model sees it (pipeline.core.images): every mode and format, torchvision's
resize and center crop, large JPEGs decoded at a reduced scale.

Real files made by Pillow or cut from scikit-image's photographs, no mocks; torchvision is the
reference, pixel for pixel. (A folder of pictures as a dataset: test_folders.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage
from helpers import REPO
from photos import photo, save
from PIL import Image
from torchvision.transforms.v2 import functional as F

from pipeline.core import images


def reference(img: Image.Image, channels: int, size: int) -> np.ndarray:
    """torchvision's Resize(size) + CenterCrop(size) of `img` converted to L or RGB, as uint8
    C×H×W."""
    out = np.asarray(
        F.center_crop(F.resize(img.convert("L" if channels == 1 else "RGB"), size), size)
    )
    return out[None] if channels == 1 else out.transpose(2, 0, 1)


@pytest.mark.parametrize(
    "name", ["astronaut.png", "chelsea.png", "coffee.png", "camera.png", "coins.png"]
)
def test_prepare_equals_torchvision_resize_and_center_crop(name: str) -> None:
    whole = Image.open(Path(skimage.data_dir) / name)
    # Odd sizes and aspect ratios on purpose: the truncated longer side and the crop offsets
    # (Python's round, half to even) are where a reimplementation drifts by a pixel. Exact equality:
    # the same Pillow calls.
    for img in (
        whole,
        whole.crop((0, 0, 301, 97)),
        whole.crop((3, 5, 100, 300)),
        whole.crop((0, 0, 33, 33)),
    ):
        for channels in (1, 3):
            for size in (1, 7, 28, 32, 37, 64, 224, 333):
                assert np.array_equal(
                    images.prepare(img, channels, size), reference(img, channels, size)
                ), size
    assert images.prepare(whole, 3, 32).flags.c_contiguous
    with pytest.raises(images.ImageError, match="too elongated"):
        images.prepare(Image.new("L", (100_000, 1)), 1, 224)


@pytest.mark.parametrize(
    "suffix,fmt,options",
    [
        (".png", "PNG", {}),
        (".bmp", "BMP", {}),
        (".tiff", "TIFF", {}),
        (".tif", "TIFF", {"compression": "tiff_lzw"}),
        (".ppm", "PPM", {}),
        (".webp", "WEBP", {"lossless": True}),
        (".webp", "WEBP", {"quality": 90}),
        (".jpg", "JPEG", {"quality": 95}),
        (".jpeg", "JPEG", {"progressive": True, "quality": 95}),
        (".gif", "GIF", {}),
    ],
)
def test_every_format_reads_as_torchvision_prepares_it(
    tmp_path: Path, suffix: str, fmt: str, options: dict
) -> None:
    img = photo("coffee").crop((50, 20, 350, 220))  # 300×200: less than twice 128, so no JPEG draft
    path = save(img, tmp_path / f"picture{suffix}", fmt, **options)
    with Image.open(path) as stored:
        assert np.array_equal(images.read(path, 3, 128), reference(stored, 3, 128))
    assert (
        np.abs(images.read(path, 3, 128).astype(int) - reference(img, 3, 128)).mean() < 4
    )  # still the photo


def grey(values: list[list[float]], dtype: str) -> Image.Image:
    return Image.fromarray(np.array(values, dtype=dtype))


def exif(orientation: int) -> dict[str, Any]:
    tags = Image.Exif()
    tags[0x0112] = orientation  # how to turn the stored picture to show it
    return {"exif": tags.tobytes(), "quality": 95}


def palette() -> Image.Image:
    img = Image.fromarray(
        np.array([[0, 0], [2, 2]], np.uint8), "P"
    )  # top: colour 0, bottom: colour 2 (green)
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    return img


W, G, CLEAR, JPEG = [255, 255, 255], [0, 255, 0], {"transparency": 0}, {"quality": 95}
HALVES = (
    np.repeat([[0, 255]], 32, axis=0).repeat(32, axis=1).astype(np.uint8)
)  # 32×64: left dark, right bright
# (mode as stored, picture, file name, channels, expected C×H×W at its shorter side, tolerance, save
# options)
MODES = [
    ("L", grey([[0, 90], [180, 255]], "uint8"), "l.png", 3, [[[0, 90], [180, 255]]] * 3, 0),
    (
        "RGB",
        Image.new("RGB", (2, 2), (200, 10, 30)),
        "rgb.png",
        1,
        [[[(200 * 299 + 10 * 587 + 30 * 114) // 1000] * 2] * 2],
        1,
    ),
    (
        "RGBA",
        Image.fromarray(np.array([[[200, 0, 0, 0]] * 2, [[200, 0, 0, 128]] * 2], np.uint8), "RGBA"),
        "rgba.png",
        3,
        np.array([[W, W], [[227, 127, 127]] * 2]).transpose(2, 0, 1),
        1,
    ),  # over white: a·colour + (1 − a)·255
    (
        "LA",
        Image.fromarray(np.array([[[40, 0]] * 2, [[40, 255]] * 2], np.uint8), "LA"),
        "la.png",
        1,
        [[[255, 255], [40, 40]]],
        0,
    ),
    ("P", palette(), "p.png", 3, np.array([[[0, 0, 0]] * 2, [G] * 2]).transpose(2, 0, 1), 0),
    ("P", palette(), "pt.png", 3, np.array([[W, W], [G, G]]).transpose(2, 0, 1), 0, CLEAR),
    ("P", palette(), "pt.gif", 3, np.array([[W, W], [G, G]]).transpose(2, 0, 1), 0, CLEAR),
    (
        "CMYK",
        Image.new("CMYK", (8, 8), (0, 255, 0, 0)),
        "cmyk.jpg",
        3,
        np.full((3, 8, 8), 255) * [[[1]], [[0]], [[1]]],
        3,
        JPEG,
    ),
    (
        "I;16",
        grey([[0, 257, 32896, 65535]] * 4, "uint16"),
        "deep.png",
        1,
        [[[0, 1, 128, 255]] * 4],
        0,
    ),  # /257, not clipped
    ("I", grey([[0, 257, 65535, 32896]] * 4, "int32"), "i.tiff", 1, [[[0, 1, 255, 128]] * 4], 0),
    ("F", grey([[0.0, 0.5, 1.0, 0.25]] * 4, "float32"), "f.tiff", 1, [[[0, 128, 255, 64]] * 4], 0),
    (
        "F",
        grey([[-10.0, 0.0, 10.0, 30.0]] * 4, "float32"),
        "wide.tiff",
        1,
        [[[0, 64, 128, 255]] * 4],
        0,
    ),  # own range
    ("1", Image.fromarray(np.array([[False, True]] * 2)), "bits.png", 1, [[[0, 255], [0, 255]]], 0),
    # EXIF orientation 6: turn clockwise (the dark left on top), 8: anticlockwise, 3: upside down.
    # Unturned, the centre crop would hold half of each side in every row; a JPEG's ringing stays
    # far below the tolerance.
    ("L", Image.fromarray(HALVES), "turned6.jpg", 1, [np.rot90(HALVES, -1)[16:48]], 40, exif(6)),
    ("L", Image.fromarray(HALVES), "turned8.jpg", 1, [np.rot90(HALVES, 1)[16:48]], 40, exif(8)),
    ("L", Image.fromarray(HALVES), "turned3.jpg", 1, [np.rot90(HALVES, 2)[:, 16:48]], 40, exif(3)),
]


@pytest.mark.parametrize(
    "mode,img,name,channels,expected,tolerance,options",
    [(*m, {})[:7] for m in MODES],
    ids=[m[2] for m in MODES],
)
def test_every_mode_converts(
    tmp_path: Path,
    mode: str,
    img: Image.Image,
    name: str,
    channels: int,
    expected: list,
    tolerance: int,
    options: dict,
) -> None:
    path = save(img, tmp_path / name, **options)
    assert Image.open(path).mode == mode
    out = images.read(path, channels, min(img.size))
    assert np.abs(out.astype(int) - np.asarray(expected)).max() <= tolerance, out.tolist()


def test_a_big_jpeg_is_decoded_at_a_reduced_scale(tmp_path: Path) -> None:
    path = save(photo("astronaut").resize((4000, 3000)), tmp_path / "big.jpg", quality=90)
    with Image.open(path) as img:
        assert img.draft("RGB", (64, 64)) and img.size == (500, 375)  # libjpeg's 1/8 scale
    out = images.read(path, 3, 64)
    assert (
        out.shape == (3, 64, 64)
        and out.dtype == np.uint8
        and images.read(path, 1, 64).shape == (1, 64, 64)
    )
    # Not pixel-equal to torchvision's full decode (libjpeg's scaled IDCT), but the same picture:
    assert np.abs(out.astype(int) - reference(Image.open(path), 3, 64)).mean() < 3


def test_the_module_does_not_import_torch() -> None:
    code = (
        "import sys, pipeline.core.images; "
        "print([m for m in ('torch', 'torchvision') if m in sys.modules])"
    )
    assert (
        subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True
        ).stdout
        == "[]\n"
    )
