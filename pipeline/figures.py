"""Matplotlib figures logged to MLflow."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


def image_grid(images: torch.Tensor, titles: Sequence[str], marked: Sequence[bool], columns: int = 8) -> Figure:
    """uint8 images (N×C×H×W) in a grid with a title each; marked titles are red (mistakes)."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.5 * rows), dpi=100, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i].permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=255)
        ax.set_title(titles[i], fontsize=7, color="red" if marked[i] else "black")
    fig.tight_layout()
    return fig


def save_png(fig: Figure, path: Path) -> None:
    """Write a figure as PNG atomically, without a timestamp, and close it."""
    import io

    from pipeline import atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic.write_bytes(path, buf.getvalue())
