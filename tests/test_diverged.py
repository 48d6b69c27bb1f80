"""A diverged training run stops in one line offering only remedies the run does not use yet."""

from __future__ import annotations

import pytest
import torch
from helpers import fit_tiny

from pipeline.core import models
from pipeline.core.errors import PipelineError
from pipeline.core.params import TrainParams


@pytest.mark.parametrize(
    ("changes", "offered", "not_offered"),
    [
        ({}, ["lower train.lr", "set train.grad_clip"], ["onecycle"]),  # the default schedule
        ({"scheduler": "step"}, ["use train.scheduler onecycle"], []),
        ({"grad_clip": 1e30}, ["lower train.lr"], ["set train.grad_clip"]),
    ],
)
def test_divergence_offers_only_remedies_not_in_use(
    changes: dict, offered: list[str], not_offered: list[str]
) -> None:
    # A learning rate of 1e30 takes the weights to infinity on the first step.
    cfg = TrainParams(
        model="mlp", mlp_hidden=(8,), lr=1e30, epochs=1, batch_size=8, precision="fp32", **changes
    )
    torch.manual_seed(0)
    images = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(32) % 2
    model = models.build("mlp", 1, 8, 2, [0.5], [0.25], models.options_from(cfg))
    with pytest.raises(PipelineError, match="training diverged") as exc:
        fit_tiny(model, images, labels, torch.arange(24), torch.arange(24, 32), cfg)
    message = str(exc.value)
    assert "\n" not in message
    assert all(hint in message for hint in offered), message
    assert not any(hint in message for hint in not_offered), message
