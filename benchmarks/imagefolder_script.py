"""The script people write for a folder of pictures, the baseline of the pipeline's folder path:
torchvision's ImageFolder decoding every PNG in every epoch through a DataLoader with two worker
processes, the pipeline's default network (cnn, the train section of params.yaml), Adam at `lr`,
`train.epochs` epochs, then the test accuracy.

    python benchmarks/imagefolder_script.py FOLDER LR     # FOLDER holds train/ and test/, grey

Run from a project root (it reads params.yaml for the network); prints the test accuracy.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from pipeline.core import models
from pipeline.core.params import load_params


def main(folder: str, lr: float) -> None:
    params = load_params("params.yaml")
    torch.manual_seed(params.seed)
    tf = transforms.Compose(
        [transforms.Grayscale(), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]
    )
    train = datasets.ImageFolder(f"{folder}/train", transform=tf)
    test = datasets.ImageFolder(f"{folder}/test", transform=tf)
    batch = params.train.batch_size
    fit = DataLoader(train, batch_size=batch, shuffle=True, num_workers=2)
    model = models.build(
        "cnn", 1, 28, len(train.classes), [0.0], [1.0], models.options_from(params.train)
    )
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(params.train.epochs):
        model.train()
        for x, y in fit:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(test, batch_size=1000, num_workers=2):
            correct += int((model(x).argmax(1) == y).sum())
    print(f"test accuracy {correct / len(test):.4f}")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
