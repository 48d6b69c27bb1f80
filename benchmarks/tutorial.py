"""The tutorials' loop, the baseline every speed figure is compared with.

torchvision MNIST with per-sample ToTensor + Normalize through a DataLoader, batch 64, Adam 1e-3,
fp32, conv32-conv64-fc128 (ReLU before pooling, dropout 0.25), tested after every epoch: what the
seed tutorials in ../shared/seeds/ write.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

TARGET = 0.99  # test accuracy


def loader(
    root: Path, mean: float, std: float, train: bool, indices: Any = None, batch_size: int = 64
) -> Any:
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms
    from torchvision.datasets import MNIST

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    dataset = MNIST(str(root), train=train, transform=tf)
    if indices is not None:
        dataset = Subset(dataset, [int(i) for i in indices])
    return DataLoader(dataset, batch_size=batch_size, shuffle=train)


def net() -> nn.Module:
    """conv32-conv64-fc128 with ReLU before pooling and dropout, as the tutorials write it."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(128, 10),
    )


def epoch(
    model: nn.Module, opt: torch.optim.Optimizer, batches: Any, max_batches: int | None = None
) -> tuple[int, float]:
    """One pass (or `max_batches`); returns (images seen, seconds)."""
    model.train()
    seen, start = 0, time.perf_counter()
    for i, (x, y) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    return seen, time.perf_counter() - start


@torch.no_grad()
def accuracy(model: nn.Module, batches: Any) -> float:
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def to_target(raw: Path, mean: float, std: float, max_epochs: int) -> dict[str, Any]:
    """Wall seconds of the tutorials' loop, from building its datasets, until test accuracy ≥
    TARGET."""
    start = time.perf_counter()
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train, test = (
        loader(raw, mean, std, train=True),
        loader(raw, mean, std, train=False, batch_size=1000),
    )
    curve = []
    for _ in range(max_epochs):
        epoch(model, opt, train)
        curve.append(round(accuracy(model, test), 4))
        if curve[-1] >= TARGET:
            return {"seconds": round(time.perf_counter() - start, 1), "test_curve": curve}
    return {
        "seconds": None,
        "not_reached_after_seconds": round(time.perf_counter() - start, 1),
        "test_curve": curve,
    }
