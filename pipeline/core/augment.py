"""Augmentation of training batches (data.augment), drawn from the run's shuffling generator so runs
repeat.

Three kinds, by what the pictures are: `shift` for the grey 28 px datasets (digits and characters: a
random translation of up to 2 px, no flip, which would turn a 2 into something else), `crop` for
CIFAR-10 (a random crop with 4 px of padding and a horizontal flip, as its recipes do) and `photos`
for a folder's photographs (torchvision's RandomResizedCrop and RandomHorizontalFlip, per picture).
All take and give uint8 N×C×H×W.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("shift", "crop", "photos")


def kind_for(channels: int, from_folder: bool) -> str:
    """The augmentation that suits a dataset: photos for a folder, shift for grey built-ins, crop
    for CIFAR-10."""
    return "photos" if from_folder else "shift" if channels == 1 else "crop"


def batch(x: torch.Tensor, generator: torch.Generator, kind: str) -> torch.Tensor:
    """`x` (uint8 N×C×H×W) augmented by `kind` (one of KINDS), every draw taken from `generator`."""
    if kind == "photos":
        return photos(x, generator)
    return crop(x, generator, pad=2, flip=False) if kind == "shift" else crop(x, generator)


def crop(
    x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random crop with `pad` px zero padding and (with `flip`) random horizontal flip, per image,
    on a uint8 batch."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # n×h
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)  # n×w
    if flip:
        flipped = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # n×h×w×c
    return out.permute(0, 3, 1, 2).contiguous()


def photos(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop (scale 0.08–1, aspect 3/4–4/3, back to H×W, antialiased) and
    RandomHorizontalFlip, drawn per picture. torchvision draws from torch's global generator, so it
    is seeded, for this batch only, from `generator`: the same on every process and after a
    resume."""
    from torchvision.transforms import v2

    _, _, h, w = x.shape
    transform = v2.Compose(
        [v2.RandomResizedCrop((h, w), antialias=True), v2.RandomHorizontalFlip()]
    )
    seed = int(torch.randint(0, 1 << 62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(picture) for picture in x])
