"""Architectures, the normalising wrapper every model is trained and shipped in, and model.pt I/O."""
from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import atomic
from pipeline.errors import PipelineError


class ImageClassifier(nn.Module):
    """A network behind its own input normalisation.

    Takes raw images, N×C×H×W, either uint8 (0–255) or float (0–1), so whoever uses the model
    (the evaluate stage, MLflow's pyfunc, `predict`) needs neither this package nor the statistics.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        return self.net((x - self.mean) / self.std)


def cnn(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Two conv–BN–ReLU–pool blocks and a small classifier head: ≥99 % on MNIST in three epochs."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)]

    side = image_size // 4
    return nn.Sequential(
        *block(in_channels, 32),
        *block(32, 64),
        nn.Flatten(),
        nn.Dropout(0.25),
        nn.Linear(64 * side * side, 128),
        nn.ReLU(inplace=True),
        nn.Dropout(0.25),
        nn.Linear(128, num_classes),
    )


def mlp(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Two hidden layers with dropout, the tutorials' fully connected baseline."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(0.2),
        nn.Linear(512, 256),
        nn.ReLU(inplace=True),
        nn.Dropout(0.2),
        nn.Linear(256, num_classes),
    )


ARCHITECTURES = {"cnn": cnn, "mlp": mlp}


def build(
    architecture: str, in_channels: int, image_size: int, num_classes: int, mean: Sequence[float], std: Sequence[float]
) -> ImageClassifier:
    """An ImageClassifier of the named architecture, freshly initialised from torch's global RNG."""
    if architecture not in ARCHITECTURES:
        raise PipelineError(f"train.model must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    return ImageClassifier(ARCHITECTURES[architecture](in_channels, image_size, num_classes), mean, std)


def save(path: Path, model: ImageClassifier, meta: dict[str, Any]) -> None:
    """Write weights plus everything needed to rebuild the model (architecture, shapes, classes).

    Serialised in memory first: torch.save names its archive after the file, and a fixed name keeps
    the bytes identical between identical runs.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"state_dict": state, **meta}, buf)
    atomic.write_bytes(path, buf.getvalue())


def load(path: Path) -> tuple[ImageClassifier, dict[str, Any]]:
    """Rebuild the model saved by `save`, in eval mode on the CPU, and return it with its metadata."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run the train stage first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = build(
            ckpt["architecture"], ckpt["in_channels"], ckpt["image_size"], len(ckpt["class_names"]),
            ckpt["mean"], ckpt["std"],
        )
        model.load_state_dict(ckpt.pop("state_dict"))
    except (RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as exc:
        raise PipelineError(f"{path}: not a model written by the train stage ({str(exc).splitlines()[0]})") from None
    return model.eval(), ckpt
