"""One picture file as the model sees it: opened safely, converted to its channels, resized and
cropped as torchvision does.

The same function turns a user's pictures into training data (core.folders), and any picture into
the model's input (`predict`, the served MLflow model). NumPy and Pillow only: every decoding worker
imports this module, and one importing torch would pay seconds for nothing.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.core.errors import first_line

MAX_PIXELS = (
    64 * 1024 * 1024
)  # 8k × 8k: far beyond any classifier's input; refused from the header, before decoding
SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)  # torchvision's + GIF


class ImageError(Exception):
    """A picture that cannot be used; the message is the short reason shown in the skip list."""


def open_image(path: Path) -> Image.Image:
    """A picture opened lazily (header only; `load` decodes). Raises ImageError for a zero-byte
    file, one Pillow cannot identify, or one over MAX_PIXELS (from the header; Pillow's bomb
    warning/error too)."""
    try:
        if os.stat(path).st_size == 0:
            raise ImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter(
                "error", Image.DecompressionBombWarning
            )  # a reason in the list, not a warning
            img = Image.open(path)
    except UnidentifiedImageError:
        raise ImageError("not a picture Pillow can read") from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as exc:
        raise ImageError(f"cannot be opened ({first_line(exc)})") from None
    if img.width * img.height > MAX_PIXELS:
        img.close()
        raise ImageError(f"{img.width}×{img.height} pixels is too large: over 64 megapixels")
    return img


def _convert(img: Image.Image, channels: int) -> Image.Image:
    """`img` in mode L (`channels` 1) or RGB (3); what is transparent shows a white background.
    16-bit greyscale (and mode I within 0..65535) is divided by 257, so 65535 → 255; float within
    [0, 1] multiplied by 255; any other 32-bit or float picture stretched from its own
    minimum..maximum."""
    mode = img.mode
    try:
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            v = np.asarray(img)
            if mode.startswith("I;16") or (mode == "I" and v.min() >= 0 and v.max() <= 65535):
                v = (v.astype(np.uint32) + 128) // 257  # round(v / 257) in integers
            else:
                v = np.nan_to_num(v.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
                lo, hi = (
                    (0.0, 1.0)
                    if mode == "F" and v.min() >= 0 and v.max() <= 1
                    else (float(v.min()), float(v.max()))
                )
                v = np.rint((v - lo) * (255.0 / (hi - lo if hi > lo else 1.0)))
            img = Image.fromarray(v.astype(np.uint8), "L")
        elif mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
            img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
        if img.mode not in ("1", "L", "P", "RGB"):
            img = img.convert(
                "RGB"
            )  # CMYK, YCbCr, LAB…: Pillow converts those to RGB, not all of them to L
        return img.convert("L" if channels == 1 else "RGB")
    except ValueError as exc:
        raise ImageError(f"colour mode {mode} cannot be converted ({first_line(exc)})") from None


def prepare(img: Image.Image, channels: int, size: int) -> np.ndarray:
    """A loaded picture as uint8 C×H×W, C = `channels` (1 or 3), H = W = `size` pixels: EXIF
    orientation applied, converted (palette, transparency over white, CMYK, 1-bit, 16/32-bit and
    float scaled to 0–255), resized as torchvision's Resize(size) (shorter side to `size`, longer to
    int(size * long / short), Pillow's antialiased bilinear), cropped as its CenterCrop(size).
    Raises ImageError for an unconvertible or too elongated picture."""
    img = _convert(ImageOps.exif_transpose(img), channels)
    width, height = img.size
    new_long = int(size * max(width, height) / min(width, height))
    if new_long * size > MAX_PIXELS:
        raise ImageError(
            f"{width}×{height} pixels is too elongated (resized it would be over 64 megapixels)"
        )
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    img = img.resize(
        (new_w, new_h), Image.Resampling.BILINEAR
    )  # a copy when the size is already right
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    array = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return np.ascontiguousarray(array[None] if channels == 1 else array.transpose(2, 0, 1))


def read(path: Path, channels: int, size: int) -> np.ndarray:
    """One picture file as uint8 C×H×W (see `prepare`); libjpeg decodes a JPEG at 1/2–1/8 scale
    (never below `size`), a colour one read as grey to its luma: much faster, within a few grey
    levels. Raises ImageError (the reason)."""
    try:
        with open_image(path) as img:
            if img.format in ("JPEG", "MPO"):  # MPO: a camera's JPEG with extra frames
                img.draft("L" if channels == 1 else "RGB", (size, size))
            img.load()
            return prepare(img, channels, size)
    except (ImageError, MemoryError):
        raise
    # Cut or damaged files fail in many ways: OSError, SyntaxError, ValueError, struct.error…
    except Exception as exc:
        raise ImageError(f"truncated or damaged ({first_line(exc)})") from exc
