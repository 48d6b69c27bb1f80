"""Augmentation of training batches (data.augment), drawn from the run's shuffling generator so runs repeat."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
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
