"""Matplotlib figures logged to MLflow."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def confusion_matrix(confusion: torch.Tensor, class_names: Sequence[str]) -> Figure:
    """A confusion-matrix heat map with counts in every cell."""
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 1.0 + 0.6 * k), dpi=100)
    counts = confusion.numpy()
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    threshold = counts.max() / 2
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if counts[i, j] > threshold else "black")
    fig.tight_layout()
    return fig


def image_grid(
    images: torch.Tensor, captions: Sequence[str], marked: Sequence[bool], columns: int = 8, scale: int = 2
) -> bytes:
    """uint8 images (N×C×H×W) as a PNG grid, a caption above each; marked captions in red (mistakes).

    Drawn with PIL in one pass: a matplotlib subplot per image cost seconds per grid.
    """
    import io

    from PIL import Image, ImageDraw

    n, c, h, w = images.shape
    cell_w, cell_h, caption = w * scale + 8, h * scale + 18, 14
    rows = max(1, -(-n // columns))
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        x, y = (i % columns) * cell_w + 4, (i // columns) * cell_h
        pixels = images[i].permute(1, 2, 0).numpy()
        tile = Image.fromarray(pixels[..., 0] if c == 1 else pixels).convert("RGB")
        canvas.paste(tile.resize((w * scale, h * scale), Image.Resampling.NEAREST), (x, y + caption))
        draw.text((x, y + 2), captions[i][:12], fill=(200, 0, 0) if marked[i] else (0, 0, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def training_samples(
    images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, class_names: Sequence[str], per_class: int = 8
) -> bytes:
    """A PNG grid of the first `per_class` images of each class among `indices`, captioned with the class."""
    picked = [indices[labels[indices] == c][:per_class] for c in range(len(class_names))]
    captions = [class_names[c] for c, idx in enumerate(picked) for _ in idx]
    return image_grid(images[torch.cat(picked)], captions, [False] * len(captions))
