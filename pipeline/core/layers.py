"""The torch modules the architectures are made of: the self-normalising wrapper and the residual
block."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class NormalizedModel(nn.Module):
    """A network behind its own input normalisation.

    Takes raw images, N×C×H×W, either uint8 (0–255) or float (0–1), so whoever uses the model
    (the evaluate stage, MLflow's pyfunc, `predict`) needs neither this package nor the statistics.
    model.pt holds its state dict (`net.*`, `mean`, `std`), never this class's name, so a model
    saved while it was called ImageClassifier loads unchanged (tests/test_model_file.py). With
    `repeat_grey` (a 3-channel backbone for grey pictures, decided by the architecture and the
    channels model.pt records) N×1×H×W pictures are repeated to N×3×H×W before normalising, with
    the statistics' one value or three (a torchvision weights' mean and std).
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        repeat_grey: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self.repeat_grey = repeat_grey
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        if self.repeat_grey:  # a 3-channel backbone (torchvision's) for N×1×H×W pictures
            x = x.expand(-1, 3, -1, -1)
        return self.net((x - self.mean) / self.std)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a shortcut (a 1×1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))
