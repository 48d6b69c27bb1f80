"""What a train run trains on: `load_inputs(params)` reads the dataset, its statistics, the starting
weights and the fitting/validation split into `Inputs`, checking first that the model fits.

Called by core.trainer before any weight exists or any process waits for another, so that a bad
input stops every process alone with one line naming the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.core import (
    datasets,
    folders,
    imbalance,
    models,
    normalization,
    paths,
    splits,
    transfer,
    weights,
)
from pipeline.core.auto import AUTO_BATCH_SIZE
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params


@dataclass(frozen=True)
class Inputs:
    """What a run trains on, loaded and checked before any weight exists."""

    spec: datasets.DatasetSpec
    options: models.ModelOptions
    shape: tuple[str, int, int, int]  # architecture, channels, image size, classes
    norm: normalization.ChannelStats
    # uint8 N×C×H×W, the whole training split: a tensor, or datasets.PagedImages (a folder's).
    images: Any
    labels: torch.Tensor  # int64 N
    fit_idx: torch.Tensor
    val_images: torch.Tensor  # uint8, carved from the training split or a folder's val/
    val_labels: torch.Tensor
    start: weights.Start | None = None  # models/start.pt, unless train.weights is none
    statistics: str = "dataset"  # whose mean and std normalise: the dataset's or the weights'
    class_weights: torch.Tensor | None = None  # float32 classes: the loss's (train.class_weights)


def load_inputs(params: Params) -> Inputs:
    """The dataset, statistics and split of a run; refuses a model this machine cannot hold before
    any data is loaded (PipelineError naming the parameter)."""
    cfg = params.train
    spec = datasets.describe(params.data.dataset, paths.RAW)
    options, shape = checked_shape(params, spec)
    norm = normalization.load(paths.STATS, spec.name, spec.channels)
    start, statistics = weights.read(paths.START, cfg), "dataset"
    seen = 3 if models.repeats_grey(cfg.model, spec.channels) else spec.channels
    if weights.statistics_fit(start, seen):  # the backbone learned with its own normalisation
        assert start is not None and start.mean is not None and start.std is not None
        norm = normalization.ChannelStats(tuple(start.mean), tuple(start.std), norm.count)
        statistics = start.statistics or "weights"
    images, labels = datasets.load_split(spec, paths.RAW, train=True)
    fit_idx, val_images, val_labels = fit_and_validation(params, spec, images, labels)
    class_weights = imbalance.class_weights(
        params.train.class_weights, spec.class_names, labels[fit_idx].numpy()
    )
    return Inputs(
        spec,
        options,
        shape,
        norm,
        images,
        labels,
        fit_idx,
        val_images,
        val_labels,
        start,
        statistics,
        class_weights,
    )


def checked_shape(
    params: Params, spec: datasets.DatasetSpec
) -> tuple[models.ModelOptions, tuple[str, int, int, int]]:
    """(the model's options, its shape: architecture, channels, image size, classes), once the
    decoded pictures match the parameters and the model fits this machine (PipelineError naming
    the parameter otherwise)."""
    cfg = params.train
    if spec.from_folder:
        want = (transfer.picture_size(params), transfer.picture_channels(params))
        if want != (spec.image_size, spec.channels):
            raise PipelineError(
                f"{paths.RAW}: its pictures are {spec.image_size} px with {spec.channels} "
                "channel(s), "
                f"not data.image_size {want[0]} with {want[1]}; rerun the download stage (dvc "
                "repro)"
            )
    options = models.options_from(cfg)
    shape = (cfg.model, spec.channels, spec.image_size, spec.num_classes)
    blame = {"mlp": "train.mlp_hidden", "cnn": "train.cnn_channels"}.get(
        cfg.model, "train.batch_size"
    )
    # An auto batch is at most the built-in datasets' size.
    batch = cfg.batch_size if isinstance(cfg.batch_size, int) else AUTO_BATCH_SIZE
    models.check_fits(*shape, options, batch, blame)
    imbalance.check_names(cfg.class_weights, spec.class_names)
    return options, shape


def fit_and_validation(
    params: Params, spec: datasets.DatasetSpec, images: Any, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the fitting indices into `images`, int64 F; the validation images, uint8 V×C×H×W; their
    labels, int64 V): a folder's own val/, or carved from the training split (seeded,
    stratified)."""
    own_val = datasets.read_validation(spec, paths.RAW)
    if own_val is not None:  # the folder's val/: every training picture is for fitting
        fit_idx = torch.from_numpy(
            splits.limited(np.arange(len(labels)), params.seed, params.data.limit)
        )
        val_images, val_labels = (
            torch.from_numpy(np.array(own_val[0])),
            torch.from_numpy(own_val[1]),
        )
    else:
        fit_idx, val_idx = map(
            torch.from_numpy,
            splits.split_indices(
                labels,
                params.data.val_size,
                params.seed,
                params.data.limit,
                folders.class_paths(paths.RAW / spec.folder, "train") if spec.from_folder else None,
            ),
        )
        val_images, val_labels = images[val_idx], labels[val_idx]
    return fit_idx, val_images, val_labels
