"""Augmentation of training batches (data.augment), drawn from the run's shuffling generator so runs repeat.

Two kinds, by what the pictures are: `crop` for the built-in 28/32 px datasets (a random crop with 4 px
of padding and a horizontal flip, as CIFAR-10 recipes do) and `photos` for a folder's photographs
(torchvision's RandomResizedCrop and RandomHorizontalFlip, per picture). Both take and give uint8 N×C×H×W.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("crop", "photos")


def batch(x: torch.Tensor, generator: torch.Generator, kind: str) -> torch.Tensor:
    """`x` (uint8 N×C×H×W) augmented by `kind` (one of KINDS), every draw taken from `generator`."""
    return crop(x, generator) if kind == "crop" else photos(x, generator)


def crop(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 4 px zero padding and random horizontal flip, per image, on a uint8 batch."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # n×h
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)  # n×w
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # n×h×w×c
    return out.permute(0, 3, 1, 2).contiguous()


def photos(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop (scale 0.08–1, aspect 3/4–4/3, back to H×W, antialiased) and
    RandomHorizontalFlip, drawn per picture. torchvision draws from torch's global generator, so it is
    seeded, for this batch only, from `generator`: the same on every process and after a resume."""
    from torchvision.transforms import v2

    _, _, h, w = x.shape
    transform = v2.Compose([v2.RandomResizedCrop((h, w), antialias=True), v2.RandomHorizontalFlip()])
    seed = int(torch.randint(0, 1 << 62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(picture) for picture in x])
