"""train.batch_size and train.epochs at `auto` (their default): numbers chosen for the dataset.

The built-in datasets get AUTO_BATCH_SIZE and AUTO_EPOCHS as soon as the parameters are read
(`builtin_auto`, called by core.params); a folder's are chosen by the train stage once its fitting
pictures are counted (`folder_auto`). Why these rules: docs/datasets.md.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from pipeline.core import datasets

if TYPE_CHECKING:
    from pipeline.core.params import Params, TrainParams

# train.batch_size and train.epochs at auto. The built-in datasets get MNIST's measured defaults
# (99.2 % in two epochs); a folder's are chosen by optimizer steps once its fitting pictures are
# counted (`folder_auto`): a few hundred pictures at 256 a batch would take one step an epoch.
AUTO_BATCH_SIZE, AUTO_EPOCHS = 256, 2
AUTO_MIN_STEPS = 300  # a folder's auto epochs: at least this many optimizer steps in all
AUTO_BATCH_SHARE = 8  # a folder's auto batch: at most this fraction of its fitting pictures


def builtin_auto(params: Params) -> Params:
    """`params` with train.batch_size and train.epochs at auto replaced by AUTO_BATCH_SIZE and
    AUTO_EPOCHS for a built-in dataset; a folder's stay auto (resolved by `folder_auto`)."""
    if datasets.get(params.data.dataset).from_folder:
        return params
    train = params.train
    return dataclasses.replace(
        params,
        train=dataclasses.replace(
            train,
            batch_size=AUTO_BATCH_SIZE if train.batch_size == "auto" else train.batch_size,
            epochs=AUTO_EPOCHS if train.epochs == "auto" else train.epochs,
        ),
    )


def folder_auto(train: TrainParams, fit_count: int) -> TrainParams:
    """`train` with an auto batch size and number of epochs chosen for `fit_count` fitting
    pictures: the batch the largest power of two up to fit_count / AUTO_BATCH_SHARE (at least 2,
    for batch norm, and train.processes; at most AUTO_BATCH_SIZE), the epochs enough for
    AUTO_MIN_STEPS optimizer steps (at least AUTO_EPOCHS). Values that are not auto stay."""
    batch = train.batch_size
    if batch == "auto":
        batch = 2 ** max(1, (max(1, fit_count // AUTO_BATCH_SHARE)).bit_length() - 1)
        batch = max(min(batch, AUTO_BATCH_SIZE), train.processes)
    epochs = train.epochs
    if epochs == "auto":
        steps = max(1, fit_count // batch)  # full batches: the loop drops the tail
        epochs = max(AUTO_EPOCHS, -(-AUTO_MIN_STEPS // steps))
    return dataclasses.replace(train, batch_size=batch, epochs=epochs)


def chosen_line(asked: TrainParams, resolved: TrainParams) -> str | None:
    """The line saying what `folder_auto` chose for the values `asked` left at auto (a value the
    user set is not news), or None when it chose nothing."""
    chosen = [
        text
        for value, text in (
            (asked.batch_size, f"batches of {resolved.batch_size}"),
            (asked.epochs, f"at most {resolved.epochs} epochs"),
        )
        if value == "auto"
    ]
    return f"auto: {', '.join(chosen)} (docs/datasets.md)" if chosen else None
