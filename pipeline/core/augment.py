"""Augmentation of training batches (data.augment), drawn from the run's shuffling generator so runs
repeat.

Three kinds, by what the pictures are: `shift` for the grey 28 px datasets (digits and characters: a
random translation of up to 2 px, no flip, which would turn a 2 into something else), `crop` for
CIFAR-10 (a random crop with 4 px of padding and a horizontal flip, as its recipes do) and `photos`
for a folder's photographs (torchvision's RandomResizedCrop and RandomHorizontalFlip, per picture).
All take and give uint8 N×C×H×W.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

KINDS = ("shift", "crop", "photos")
# One picture (uint8 C×H×W) -> the same, transformed: a torchvision v2 transform.
Transform = Callable[[torch.Tensor], torch.Tensor]


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


@contextmanager
def drawn_seed(generator: torch.Generator) -> Iterator[None]:
    """Inside, torch's global generator is seeded from one draw of `generator` (the run's), and
    restored after: torchvision's random transforms, which draw from the global one, repeat with
    the run, on every process and after a resume."""
    seed = int(torch.randint(0, 1 << 62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def policy(
    name: str, color_jitter: float, random_erasing: float, channels: int
) -> Transform | None:
    """The per-picture transform data.augment_policy, data.color_jitter and data.random_erasing
    ask for, in that order (torchvision v2, uint8 C×H×W in and out; saturation only for colour
    pictures); None when all are off (torchvision, a fifth of a second, is then not imported)."""
    if name == "none" and color_jitter <= 0 and random_erasing <= 0:
        return None
    from torchvision.transforms import v2

    policies = {
        "trivialaugment": v2.TrivialAugmentWide,
        "randaugment": v2.RandAugment,
        "autoaugment": v2.AutoAugment,
    }
    steps: list[Transform] = [policies[name]()] if name in policies else []
    if color_jitter > 0:
        saturation = color_jitter if channels == 3 else None
        steps.append(v2.ColorJitter(color_jitter, color_jitter, saturation))
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing))
    return v2.Compose(steps) if steps else None


def with_policy(x: torch.Tensor, generator: torch.Generator, transform: Transform) -> torch.Tensor:
    """`transform` (from `policy`) drawn per picture of `x` (uint8 N×C×H×W), seeded from
    `generator`."""
    with drawn_seed(generator):
        return torch.stack([transform(picture) for picture in x])


class Mirrored:
    """Pictures (uint8 N×C×H×W: a tensor, or anything sliced into tensors or arrays) mirrored left
    to right, a slice at a time: a folder's test pictures stay on disk."""

    def __init__(self, images: Any) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, part: slice) -> torch.Tensor:
        return torch.as_tensor(self.images[part]).flip(-1)


def with_mirror(model: torch.nn.Module, images: Any, logits: torch.Tensor) -> torch.Tensor:
    """Flip test-time augmentation (evaluate.tta): the log of the mean softmax of `logits` (float32
    N×classes, `model`'s for `images`) and `model`'s for the mirrored pictures; float32 N×classes,
    whose softmax is that mean."""
    from pipeline.core import models

    mirrored = models.logits(model, Mirrored(images))
    mean = (logits.softmax(1) + mirrored.softmax(1)) / 2
    return mean.log()
