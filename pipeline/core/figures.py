"""Figures logged to MLflow: matplotlib charts for the evaluation, PIL image grids for both
stages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Array-likes (NumPy arrays or CPU tensors): the charts are drawn in the tracking process, which has
# no torch to spend seconds importing (core.tracking.background).


def _pyplot() -> Any:
    """matplotlib.pyplot on the headless backend, imported when a chart is drawn (an import the
    train stage, which only draws image grids, need not pay)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Figures stay readable and quick to draw at any number of classes: above these counts they show a
# selection, and the full data stays in the files and tables beside them.
CONFUSION_SHOWN = 20  # classes in the confusion figure: the most confused ones
CURVES_LEGEND = 12  # classes named in the curves' legend; more are drawn unnamed


def most_confused(confusion: Any, most: int = CONFUSION_SHOWN) -> np.ndarray:
    """Indices of at most `most` classes, in class order: every class when there are no more than
    `most`, else the classes of the largest off-diagonal cells (the most frequent mistakes, largest
    first, equal counts in class order) while both of a cell's classes fit, so that each chosen
    class shows a mistake. `confusion` is classes×classes counts [actual, predicted]."""
    counts = np.asarray(confusion)
    k = len(counts)
    if k <= most:
        return np.arange(k)
    off = counts - np.diag(np.diag(counts))
    cells = np.argsort(-off, axis=None, kind="stable")  # stable: identical reruns
    chosen: dict[int, None] = {}
    for cell in cells[: int((off > 0).sum())]:
        pair = [c for c in divmod(int(cell), k) if c not in chosen]
        if len(chosen) + len(pair) <= most:  # both classes, so that the mistake is in the figure
            chosen.update(dict.fromkeys(pair))
    return np.array(sorted(chosen) or range(most), dtype=int)


def confusion_matrix(confusion: Any, class_names: Sequence[str]) -> Figure:
    """A confusion-matrix heat map with counts in every cell; above CONFUSION_SHOWN classes, the
    rows and columns of the CONFUSION_SHOWN most-confused classes (the title says so), so its size
    and drawing time are bounded. `confusion` is classes×classes counts [actual, predicted]."""
    full = np.asarray(confusion)
    shown = most_confused(full)
    counts = full[np.ix_(shown, shown)]
    names = [class_names[i] for i in shown]
    k = len(shown)
    fig, ax = _pyplot().subplots(figsize=(1.0 + 0.6 * k, 1.0 + 0.6 * k), dpi=100)
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if k < len(full):
        ax.set_title(
            f"the {k} most-confused of {len(full)} classes (all: plots/confusion.csv)", fontsize=9
        )
    threshold = counts.max() / 2
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if counts[i, j] > threshold else "black",
            )
    fig.tight_layout()
    return fig


def curves(
    roc: Sequence[tuple[str, float, float]], pr: Sequence[tuple[str, float, float]]
) -> Figure:
    """ROC and precision-recall curves, one line per class, side by side (points from
    metrics.curves); a legend names the classes when there are at most CURVES_LEGEND."""
    fig, (left, right) = _pyplot().subplots(1, 2, figsize=(11, 5), dpi=100)
    for ax, points, (x_label, y_label) in (
        (left, roc, ("false positive rate", "true positive rate")),
        (right, pr, ("recall", "precision")),
    ):
        lines: dict[str, tuple[list[float], list[float]]] = {}
        for name, x, y in points:  # one pass: grouping per class scanned every point per class
            xs, ys = lines.setdefault(name, ([], []))
            xs.append(x)
            ys.append(y)
        for name, (xs, ys) in lines.items():
            ax.plot(xs, ys, label=name, linewidth=1 if len(lines) <= CURVES_LEGEND else 0.5)
        ax.set(xlabel=x_label, ylabel=y_label, xlim=(0, 1), ylim=(0, 1.01))
        ax.grid(alpha=0.3)
    classes = len({p[0] for p in roc})
    left.set_title("ROC, one class vs the rest (test set)")
    right.set_title("Precision-recall per class (test set)")
    if classes <= CURVES_LEGEND:
        right.legend(fontsize=7, loc="lower left")
    else:
        fig.suptitle(f"{classes} classes, one line each (plots/roc.csv names them)", fontsize=9)
    fig.tight_layout()
    return fig


def image_grid(
    images: Any,
    captions: Sequence[str],
    marked: Sequence[bool],
    columns: int = 8,
    scale: int = 2,
    legend: str = "",
    width: int = 12,
) -> bytes:
    """uint8 images (N×C×H×W) as a PNG grid, a caption above each (lines split at "\n", each cut
    to `width` characters; the first of several, a file's name, keeps its end); marked in red
    (mistakes); `legend`, if given, is a line above the grid saying what the captions mean.

    Drawn with PIL in one pass: a matplotlib subplot per image cost seconds per grid.
    """
    import io

    from PIL import Image, ImageDraw

    n, c, h, w = images.shape
    lines = max([1, *(caption.count("\n") + 1 for caption in captions)])
    caption = 14 + 12 * (lines - 1)
    cell_w, cell_h = w * scale + 8, h * scale + caption + 4
    top = 16 if legend else 0
    rows = max(1, -(-n // columns))
    canvas = Image.new("RGB", (columns * cell_w, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    if legend:
        draw.text((4, 2), legend, fill=(0, 0, 0))
    for i in range(n):
        x, y = (i % columns) * cell_w + 4, top + (i // columns) * cell_h
        pixels = np.asarray(images[i]).transpose(1, 2, 0)
        tile = Image.fromarray(pixels[..., 0] if c == 1 else pixels).convert("RGB")
        canvas.paste(
            tile.resize((w * scale, h * scale), Image.Resampling.NEAREST), (x, y + caption)
        )
        for j, line in enumerate(captions[i].split("\n")):
            if j == 0 and lines > 1 and len(line) > width:  # a file's name: its end tells it apart
                line = ".." + line[2 - width :]
            draw.text(
                (x, y + 2 + 12 * j), line[:width], fill=(200, 0, 0) if marked[i] else (0, 0, 0)
            )
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def training_samples(
    images: Any, labels: Any, indices: Any, class_names: Sequence[str], per_class: int = 8
) -> bytes:
    """A PNG grid of the first `per_class` images of each class among `indices`, captioned with the
    class. `images` is anything indexed by an index array (an array, a tensor,
    datasets.PagedImages): only the pictures shown are read."""
    labels, indices = np.asarray(labels), np.asarray(indices)
    picked = [indices[labels[indices] == c][:per_class] for c in range(len(class_names))]
    captions = [class_names[c] for c, idx in enumerate(picked) for _ in idx]
    shown = np.asarray(images[np.concatenate(picked)])
    return image_grid(shown, captions, [False] * len(captions), legend="caption: true class")
