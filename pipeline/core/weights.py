"""Starting weights (train.weights) as a tracked file: the weights stage fetches them into
models/start.pt, which train depends on, and train loads them into the network it builds.

The file (torch.save of a plain dict, read with weights_only) holds: `source` (train.weights),
`architecture` (train.model), `state_dict` (the network's tensors by their torchvision/own names,
empty for none), `mean`/`std` (the normalisation the weights were trained with, or None),
`class_names` (an earlier run's, or None), `source_run_id` (the MLflow run they come from, or None)
and `statistics` (what `mean`/`std` are: a torchvision weights entry, or "run <id>"). With none, the
file is a line of JSON naming `source` and `architecture` only.
The head is new unless the classes are an earlier run's very own; every other tensor must fit.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from pipeline.core import atomic, datasets, models, transfer, zoo
from pipeline.core.errors import PipelineError, first_line

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipeline.core.params import Params, TrainParams

# Layers our own networks replace in torchvision's (resnet18's stem at 28/32 px or for grey
# pictures): left as initialised when the starting weights have another shape there.
ADAPTED = {"resnet18": ("conv1.",)}


@dataclass(frozen=True)
class Start:
    """What models/start.pt holds (see the module's docstring)."""

    source: str
    architecture: str
    state_dict: dict[str, Any] = field(default_factory=dict)
    mean: list[float] | None = None
    std: list[float] | None = None
    class_names: list[str] | None = None
    source_run_id: str | None = None
    statistics: str | None = None
    sha256: str = ""  # of the file, filled in by `read`


@dataclass(frozen=True)
class Target:
    """The network starting weights must fit: train.model's, built for the run's pictures."""

    architecture: str  # train.model
    channels: int  # of the pictures, 1 or 3 (transfer.picture_channels)
    side: int  # of the pictures, px (transfer.picture_size)
    options: models.ModelOptions  # train.cnn_channels, train.mlp_hidden…: the layers' sizes
    dataset: str  # data.dataset: a folder's channels are data.channels, a built-in one's its own

    @classmethod
    def of(cls, params: Params) -> Target:
        """The network train builds for `params`."""
        return cls(
            params.train.model,
            transfer.picture_channels(params),
            transfer.picture_size(params),
            models.options_from(params.train),
            params.data.dataset,
        )

    def network(self, channels: int | None = None) -> nn.Module:
        """The network on the meta device (shapes only), for `channels` instead when given; the
        head has two classes (it is new, so its size is never compared)."""
        return models.meta_network(
            self.architecture, channels or self.channels, self.side, 2, self.options
        )


def fetch(params: Params, root: Path) -> Start:
    """The starting weights train.weights names, checked against the network train will build
    (Target: train.model for the pictures' channels and size), so that nothing is written for
    weights train would refuse. Raises PipelineError naming train.weights (and data.channels when
    only the pictures' channels differ) when they cannot be had or do not fit."""
    cfg = params.train
    how = transfer.kind(cfg.weights)
    if how == "none":
        return Start("none", cfg.model)
    if how == "torchvision":
        start = from_torchvision(cfg.model, cfg.weights)
    elif how == "file":
        path = root / cfg.weights
        start = Start(cfg.weights, cfg.model, bare(load_file(path, cfg.weights)))
    else:
        start = from_mlflow(cfg.model, cfg.weights)
    target = Target.of(params)
    fitting(start, target.network(), target, keep_head=False)
    return start


def from_torchvision(model: str, weights: str) -> Start:
    """A torchvision weights entry, read from torch's hub cache (downloaded there when online)."""
    import torch
    from torchvision import models as tvm

    name = transfer.torchvision_entry(model, weights)
    entry = tvm.get_weight(name)
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(entry.url).path).name
    if not file.is_file():
        try:
            torch.hub.download_url_to_file(entry.url, str(file), progress=False)
        except Exception:  # offline, refused, interrupted: urllib fails many ways
            raise PipelineError(
                f"train.weights: {name} is not in torch's hub cache and cannot be downloaded "
                f"here; put {file.name} (from {entry.url}) at {file}"
            ) from None
    transforms = entry.transforms()
    return Start(
        weights,
        model,
        bare(load_file(file, weights)),
        mean=list(transforms.mean),
        std=list(transforms.std),
        statistics=name,
    )


def from_mlflow(model: str, uri: str) -> Start:
    """The network of an MLflow model this pipeline logged (its model.pt), with its run's id."""
    from pipeline.core.tracking.model import download_logged

    with download_logged(uri, "train.weights") as (run_id, model_file):
        ckpt = load_file(model_file, uri)
    if ckpt.get("architecture") != model:
        raise PipelineError(
            f"train.weights: {uri} is a {ckpt.get('architecture')}, but train.model is {model}"
        )
    return Start(
        uri,
        model,
        bare(ckpt),
        mean=list(ckpt["mean"]),
        std=list(ckpt["std"]),
        class_names=list(ckpt["class_names"]),
        source_run_id=run_id,
        statistics=f"run {run_id}",
    )


def load_file(path: Path, weights: str) -> dict[str, Any]:
    """torch.load(weights_only) of a weights file; PipelineError naming train.weights otherwise."""
    import torch

    if not path.is_file():
        raise PipelineError(f"train.weights: {path}: not found")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or hostile: the unpickler fails many ways
        raise PipelineError(
            f"train.weights: {weights}: not a weights file ({first_line(exc)})"
        ) from None
    if not isinstance(loaded, dict):
        raise PipelineError(f"train.weights: {weights}: holds no state_dict")
    return loaded


def bare(loaded: dict[str, Any]) -> dict[str, Any]:
    """The network's tensors of a state_dict, or of a model.pt (`state_dict` of a NormalizedModel:
    `net.` prefix and its `mean`/`std` buffers dropped)."""
    import torch

    tensors = loaded.get("state_dict", loaded)
    if not isinstance(tensors, dict) or not all(
        isinstance(v, torch.Tensor) for v in tensors.values()
    ):
        raise PipelineError("train.weights: holds something other than a state_dict of tensors")
    if any(k.startswith("net.") for k in tensors):
        return {k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")}
    return dict(tensors)


def matched(
    start: Start, net: nn.Module, architecture: str, keep_head: bool
) -> tuple[dict[str, torch.Tensor], str | None]:
    """(the tensors of `start` that `net` takes, what is wrong with `start` or None). It takes every
    one of its own but the head (kept only with `keep_head`) and ADAPTED layers of another shape;
    tensors of modules `net` lacks altogether (torchvision's auxiliary classifiers) are dropped.
    Wrong: the first tensor `net` lacks or has in another shape, or the first one `start` lacks."""
    target = net.state_dict()
    head = zoo.head(net)[0] + "."
    adapted = ADAPTED.get(architecture, ())
    children = {name for name, _ in net.named_children()}
    out = {}
    for key, tensor in start.state_dict.items():
        free = key.startswith(head) or key.startswith(adapted)
        if key not in target:
            if key.split(".")[0] in children:
                return out, f"holds {key}, which {architecture} has not"
        elif tuple(target[key].shape) != tuple(tensor.shape):
            if not free:
                return out, (
                    f"holds {key} of shape {list(tensor.shape)}, {architecture} needs "
                    f"{list(target[key].shape)}: weights of another architecture"
                )
        elif keep_head or not key.startswith(head):
            out[key] = tensor
    lacking = [k for k in target if k not in start.state_dict and not k.startswith(head)]
    if lacking:
        return out, (
            f"lacks {lacking[0]} (and {len(lacking) - 1} more tensors) of {architecture}: weights "
            "of another architecture"
        )
    return out, None


def fitting(
    start: Start, net: nn.Module, target: Target, keep_head: bool
) -> dict[str, torch.Tensor]:
    """The tensors of `start` that `net` (built for `target`) takes (see `matched`). Raises
    PipelineError naming train.weights when they do not fit: in the pictures' terms when the
    first layer is one for pictures of the other channel count (1 or 3), else naming the first
    tensor that does not fit."""
    tensors, wrong = matched(start, net, target.architecture, keep_head)
    if wrong is None:
        return tensors
    theirs = input_channels(start, target)
    if theirs is None:
        raise PipelineError(f"train.weights: {start.source} {wrong}")
    arch, ours = target.architecture, target.channels
    wanted = f"use weights for {ours} channel{'s' if ours > 1 else ''}"
    if datasets.get(target.dataset).from_folder:
        fix = f"(data.channels): set data.channels: {theirs} or {wanted}"
    else:
        fix = f"(data.dataset {target.dataset}): {wanted}"
    rest = matched(start, target.network(theirs), arch, keep_head=False)[1]
    also = f" (with {theirs}-channel pictures it still {rest})" if rest else ""
    raise PipelineError(
        f"train.weights: {start.source} is a {arch} for {theirs}-channel pictures; these are "
        f"{ours}-channel {fix}{also}"
    )


def input_channels(start: Start, target: Target) -> int | None:
    """The other channel count (1 or 3) whose network's first tensor `start` has, or None. Only
    this pipeline's own networks depend on it: torchvision's take 3 channels whatever the
    pictures (grey ones are repeated inside the model)."""
    if target.architecture not in models.ARCHITECTURES:
        return None
    theirs = 4 - target.channels
    first, tensor = next(iter(target.network(theirs).state_dict().items()))
    held = start.state_dict.get(first)
    return theirs if held is not None and tuple(held.shape) == tuple(tensor.shape) else None


def write(path: Path, start: Start) -> None:
    """Write models/start.pt atomically; serialised in memory (torch.save names its archive after
    the file), so equal starts give equal bytes. With none, a line of JSON that says so: the stage
    then need not load torch (seconds of every default `dvc repro`), and train does not read it."""
    if start.source == "none":
        record = {"source": start.source, "architecture": start.architecture}
        atomic.write_bytes(path, (json.dumps(record) + "\n").encode())
        return
    import torch

    record = {k: v for k, v in start.__dict__.items() if k != "sha256"}
    buf = io.BytesIO()
    torch.save(record, buf)
    atomic.write_bytes(path, buf.getvalue())


def read(path: Path, cfg: TrainParams) -> Start | None:
    """models/start.pt for train.weights, or None with none (the file is then not read). Raises
    PipelineError when it is missing or was fetched for other parameters."""
    import torch

    if cfg.weights == "none":
        return None
    rerun = "run the weights stage (dvc repro)"
    if not path.is_file():
        raise PipelineError(f"{path}: not found; {rerun}")
    data = path.read_bytes()
    try:
        record = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        start = Start(**record, sha256=hashlib.sha256(data).hexdigest())
    except Exception as exc:  # truncated or foreign
        raise PipelineError(
            f"{path}: not written by the weights stage ({first_line(exc)})"
        ) from None
    if (start.source, start.architecture) != (cfg.weights, cfg.model):
        raise PipelineError(
            f"{path}: holds {start.source} for {start.architecture}, not train.weights "
            f"{cfg.weights} for train.model {cfg.model}; {rerun}"
        )
    return start


def load_into(net: nn.Module, start: Start, target: Target, class_names: list[str]) -> int:
    """Load the starting weights into a freshly built network (its head too when the classes are
    the source run's own); returns how many tensors were loaded. The weights stage checked them
    already (`fetch`); this is the last guard (PipelineError, see `fitting`)."""
    tensors = fitting(start, net, target, keep_head=start.class_names == class_names)
    net.load_state_dict(tensors, strict=False)
    return len(tensors)


def statistics_fit(start: Start | None, channels: int) -> bool:
    """Whether the run normalises with the starting weights' statistics rather than the dataset's:
    they exist and have one value per channel the network sees."""
    return start is not None and start.mean is not None and len(start.mean) == channels


def tags(start: Start | None, statistics: str) -> dict[str, str]:
    """What the train run records about its start: source, file hash, lineage, statistics."""
    out = {"normalization": statistics}
    if start is not None:
        out |= {"weights.source": start.source, "weights.sha256": start.sha256}
        if start.source_run_id:
            out["weights.source_run_id"] = start.source_run_id
    return out
