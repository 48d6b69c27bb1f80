"""What train.model and train.weights allow together, and the picture size they give: checked when
params.yaml is read, without importing torch or torchvision (core.zoo_table holds what is needed).

train.weights is `none`; `imagenet` (the architecture's DEFAULT torchvision weights); a named
torchvision weights entry (`ResNet18_Weights.IMAGENET1K_V1`); a state_dict file under `weights/`
(`.pt` or `.pth`); or an MLflow model of an earlier run (`runs:/…`, `models:/…`). The weights stage
(core.weights) fetches it into models/start.pt.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from pipeline.core import datasets, zoo_table
from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.core.params import Params

OWN_NETWORKS = ("cnn", "mlp", "resnet")  # no torchvision weights exist for these
WEIGHTS_FOLDER = "weights"
FILE_SUFFIXES = (".pt", ".pth")
MLFLOW_URI = re.compile(r"(runs|models):/\S+")


def kind(weights: str) -> str:
    """none, torchvision, file or mlflow: which source train.weights names (not yet checked)."""
    if weights == "none":
        return "none"
    if MLFLOW_URI.fullmatch(weights):
        return "mlflow"
    if weights == "imagenet" or "_Weights." in weights:
        return "torchvision"
    return "file"


def torchvision_entry(model: str, weights: str) -> str:
    """The "Enum.ENTRY" name train.weights (imagenet or an entry) picks for train.model."""
    enum, default = zoo_table.ARCHITECTURES[model][:2]
    return f"{enum}.{default}" if weights == "imagenet" else weights


def picture_size(params: Params) -> int:
    """The side of the pictures the run trains on, in px: a built-in dataset's own; for a folder
    data.image_size, else the torchvision weights' crop size, else the folder default (64)."""
    data, train = params.data, params.train
    spec = datasets.get(data.dataset)
    if not spec.from_folder:
        return spec.image_size
    if data.image_size is not None:
        return data.image_size
    if kind(train.weights) == "torchvision" and train.model in zoo_table.ARCHITECTURES:
        return zoo_table.WEIGHTS[torchvision_entry(train.model, train.weights)][0]
    return spec.image_size


def picture_channels(params: Params) -> int:
    """The channels of the pictures the run trains on (1 grey, 3 colour): a built-in dataset's own;
    for a folder data.channels, else the folder default (3)."""
    return params.data.channels or datasets.get(params.data.dataset).channels


def check(params: Params, source: str) -> None:
    """Refuse (PipelineError naming the parameter) weights that train.model cannot start from, and
    an architecture that cannot take the picture size."""
    model, weights = params.train.model, params.train.weights
    how = kind(weights)
    if how == "torchvision":
        check_torchvision(model, weights, source)
    elif how == "file":
        path = PurePosixPath(weights)
        if (
            path.parts[:1] != (WEIGHTS_FOLDER,)
            or ".." in path.parts
            or path.suffix not in FILE_SUFFIXES
        ):
            raise PipelineError(
                f"{source}: train.weights must be none, imagenet, a torchvision weights entry "
                f"(ResNet18_Weights.IMAGENET1K_V1), a .pt or .pth file under {WEIGHTS_FOLDER}/ or "
                f"an MLflow model (runs:/…, models:/…), got {weights!r}"
            )
    if model not in zoo_table.ARCHITECTURES or model == "resnet18":
        return  # our own networks take any size they can shrink (core.models checks cnn's)
    side, (_, _, smallest, fixed) = picture_size(params), zoo_table.ARCHITECTURES[model]
    given = (
        f"data.dataset {params.data.dataset}"
        if not datasets.get(params.data.dataset).from_folder
        else "data.image_size"
    )
    if fixed and side != fixed:
        raise PipelineError(
            f"{source}: train.model {model} takes {fixed} px pictures only, {given} gives {side}"
        )
    if side < smallest:
        raise PipelineError(
            f"{source}: train.model {model} needs pictures of at least {smallest} px, {given} "
            f"gives {side}"
        )


def check_torchvision(model: str, weights: str, source: str) -> None:
    """imagenet or a named entry: train.model must be torchvision's, the entry one of its own."""
    if model not in zoo_table.ARCHITECTURES or model in OWN_NETWORKS:
        raise PipelineError(
            f"{source}: train.weights {weights} needs a torchvision architecture in train.model "
            f"(not cnn, mlp or resnet), got {model}"
        )
    enum, _, _, fixed = zoo_table.ARCHITECTURES[model]
    entry = torchvision_entry(model, weights)
    if not entry.startswith(f"{enum}.") or entry not in zoo_table.WEIGHTS:
        known = ", ".join(w for w in zoo_table.WEIGHTS if w.startswith(f"{enum}."))
        raise PipelineError(
            f"{source}: train.weights must be none, imagenet or one of {model}'s weights "
            f"({known}), got {weights!r}"
        )
    needs = zoo_table.WEIGHTS[entry][1]
    if fixed and needs != fixed:
        raise PipelineError(
            f"{source}: train.weights {entry} is for {needs} px pictures, but train.model {model} "
            f"is built for {fixed} px; choose its weights for {fixed} px"
        )
