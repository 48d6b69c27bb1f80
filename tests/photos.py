"""Small ImageFolders of real photographs (crops of scikit-image's sample photos) for tests that
need real pictures.

Each class is one photograph: random crops of different sizes and aspect ratios, saved in the
formats and modes users' folders hold (RGB JPEG, grey PNG, RGBA PNG, palette GIF, TIFF), so a
classifier can learn the classes and the download stage's decoding meets every path it has.
Everything is made from a seed: the same call, the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

# Class name → scikit-image's file (shipped inside the package: no download).
PHOTOS = {"astronaut": "astronaut.png", "cat": "chelsea.png", "coffee": "coffee.png"}


def photo(name: str) -> Image.Image:
    """A class's whole photograph, RGB (astronaut 512×512, cat 451×300, coffee 600×400 pixels)."""
    import skimage

    with Image.open(Path(skimage.data_dir) / PHOTOS[name]) as img:
        return img.convert("RGB")


def _crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop (40–100 % of the width, aspect ratio 0.6–1.6), scaled so its longer side is
    48–200 px."""
    w = int(img.width * rng.uniform(0.4, 1.0))
    h = min(img.height, max(8, int(w * rng.uniform(0.6, 1.6))))
    left, top = int(rng.integers(0, img.width - w + 1)), int(rng.integers(0, img.height - h + 1))
    crop = img.crop((left, top, left + w, top + h))
    scale = rng.uniform(48, 200) / max(w, h)
    return crop.resize(
        (max(8, round(w * scale)), max(8, round(h * scale))), Image.Resampling.BILINEAR
    )


def _rgba(img: Image.Image) -> Image.Image:
    """`img` with a soft transparent edge (opaque centre), as cut-out product photos have."""
    yy, xx = np.mgrid[0 : img.height, 0 : img.width]
    edge = np.minimum(np.minimum(xx, img.width - 1 - xx), np.minimum(yy, img.height - 1 - yy))
    alpha = np.clip(edge * 255 // max(1, min(img.size) // 6), 0, 255).astype(np.uint8)
    out = img.convert("RGBA")
    out.putalpha(Image.fromarray(alpha, "L"))
    return out


# (suffix, how to save) in turn: the formats and modes of a real folder.
SAVERS: list[tuple[str, Callable[[Image.Image, Path], None]]] = [
    (".jpg", lambda img, path: img.save(path, "JPEG", quality=90)),
    (".png", lambda img, path: img.convert("L").save(path, "PNG")),
    (".png", lambda img, path: _rgba(img).save(path, "PNG")),
    (
        ".gif",
        lambda img, path: img.convert("P", palette=Image.Palette.ADAPTIVE, colors=128).save(
            path, "GIF"
        ),
    ),
    (".tiff", lambda img, path: img.save(path, "TIFF")),
]


def make_photo_folder(root: Path, per_class: int = 60, seed: int = 0) -> Path:
    """Write an ImageFolder at `root` (root/<class>/<n><suffix>, `per_class` pictures per class);
    returns `root`."""
    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        whole = photo(name)
        for i in range(per_class):
            suffix, save = SAVERS[i % len(SAVERS)]
            save(_crop(whole, rng), folder / f"{i:03d}{suffix}")
    return Path(root)


def held_out(root: Path, per_class: int = 3, seed: int = 1) -> list[tuple[Path, str]]:
    """A few extra pictures, never in a `make_photo_folder` folder (crops of the mirrored
    photographs), written to `root` as RGB PNG; returns (path, class name) for each."""
    rng = np.random.default_rng(seed)
    Path(root).mkdir(parents=True, exist_ok=True)
    out = []
    for name in PHOTOS:
        mirrored = photo(name).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for i in range(per_class):
            path = Path(root) / f"{name}-{i}.png"
            _crop(mirrored, rng).save(path, "PNG")
            out.append((path, name))
    return out


def save(img: Image.Image, path: Path, *args: object, **kwargs: object) -> Path:
    """`img` saved at `path` (its folders made), Pillow's format and options passed through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, *args, **kwargs)
    return path
