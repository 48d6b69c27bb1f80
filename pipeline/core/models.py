"""The architectures train.model names (one function each, in ARCHITECTURES), the model every run
trains and ships, and model.pt I/O. torch is imported inside the functions that use it.
"""

from __future__ import annotations

import functools
import io
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import atomic
from pipeline.core.errors import PipelineError, first_sentence

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipeline.core.layers import NormalizedModel
    from pipeline.core.params import TrainParams


@dataclass(frozen=True)
class ModelOptions:
    """Architecture knobs from train.*; stored in model.pt so evaluate and predict rebuild the same
    net.

    No defaults here: they live in core.params (`options_from(TrainParams())` gives them).
    """

    mlp_hidden: tuple[int, ...]
    cnn_channels: tuple[int, ...]
    cnn_stem: str
    cnn_hidden: int
    dropout: float
    batch_norm: bool
    pretrained: bool
    freeze_backbone: bool


# What a model.pt saved before `cnn_stem` and `cnn_hidden` existed was built with.
OPTIONS_BEFORE = {"cnn_stem": "pool", "cnn_hidden": 128}


def cnn(in_channels: int, image_size: int, num_classes: int, opt: ModelOptions) -> nn.Module:
    """Convolution blocks and a fully connected head of `cnn_hidden` units with dropout.

    `cnn_stem` pool: every block a padded 3×3 convolution, (batch norm,) 2×2 max-pool and ReLU.
    stride2: the first block a 5×5 convolution with stride 2, unpadded and unpooled (a quarter of
    the first block's work, where the activations are largest), the next ones unpadded 3×3
    convolutions with max-pool and ReLU: LeNet's shape, as tuomaso/train_mnist_fast trains MNIST to
    99.2 % in two epochs, with a strided first convolution in place of its first pool.
    """
    from torch import nn

    layers: list[nn.Module] = []
    side, cin = image_size, in_channels
    for i, cout in enumerate(opt.cnn_channels):
        strided = opt.cnn_stem == "stride2" and i == 0
        kernel, stride, pad = (5, 2, 0) if strided else (3, 1, 1 if opt.cnn_stem == "pool" else 0)
        layers += [nn.Conv2d(cin, cout, kernel, stride, pad, bias=not opt.batch_norm)]
        layers += [nn.BatchNorm2d(cout)] if opt.batch_norm else []
        side = (side + 2 * pad - kernel) // stride + 1
        if not strided:
            # Pool, then ReLU: the same numbers as ReLU then pool (both keep order), with ReLU and
            # its backward on a quarter of the values.
            layers += [nn.MaxPool2d(2)]
            side //= 2
        layers += [nn.ReLU(inplace=True)]
        cin = cout
    if side < 1:
        raise PipelineError(
            f"train.cnn_channels: {len(opt.cnn_channels)} blocks shrink {image_size}px images to "
            "nothing"
        )
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        # No dropout on the flattened feature map: drawing its mask costs a fifth of a CPU training
        # step.
        nn.Linear(cin * side * side, opt.cnn_hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(opt.dropout),
        nn.Linear(opt.cnn_hidden, num_classes),
    )


def mlp(in_channels: int, image_size: int, num_classes: int, opt: ModelOptions) -> nn.Module:
    """Fully connected layers with dropout, the tutorials' baseline."""
    from torch import nn

    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * image_size * image_size
    for hidden in opt.mlp_hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(opt.dropout)]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


def resnet(in_channels: int, image_size: int, num_classes: int, opt: ModelOptions) -> nn.Module:
    """A small residual network for 28/32 px inputs: stem, three stages (32, 64, 128), global
    pooling."""
    from torch import nn

    from pipeline.core.layers import BasicBlock

    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        BasicBlock(32, 32, 1),
        BasicBlock(32, 64, 2),
        BasicBlock(64, 128, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    )


SMALL_INPUT = 32  # pixels: at most this, resnet18 keeps full resolution through its stem


def resnet18(in_channels: int, image_size: int, num_classes: int, opt: ModelOptions) -> nn.Module:
    """torchvision's ResNet-18. Up to SMALL_INPUT px (28/32 px datasets) its stem is a 3×3 stride-1
    convolution with no max-pool, so small pictures keep their detail; larger pictures (photographs)
    keep torchvision's 7×7 stride-2 stem and max-pool, a sixteenth of the work. Starting weights
    (train.weights, core.weights) are loaded afterwards, all but the replaced stem and the head."""
    from torch import nn
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None)
    if image_size <= SMALL_INPUT:
        net.conv1, net.maxpool = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    if opt.freeze_backbone:
        for p in net.parameters():
            p.requires_grad_(False)
    net.fc = nn.Linear(net.fc.in_features, num_classes)  # new, so always trainable
    return net


# train.model's own names → (in_channels, image_size, num_classes, options) → the network; every
# other name core.params accepts is torchvision's (core.zoo, listed in core.zoo_table).
ARCHITECTURES: dict[str, Callable[[int, int, int, ModelOptions], nn.Module]] = {
    "cnn": cnn,
    "mlp": mlp,
    "resnet": resnet,
    "resnet18": resnet18,
}


def builder(architecture: str) -> Callable[[int, int, int, ModelOptions], nn.Module]:
    """The function that builds train.model `architecture`: one of ARCHITECTURES, or torchvision's.
    Raises PipelineError for a name that is neither."""
    from pipeline.core import zoo, zoo_table

    if architecture in ARCHITECTURES:
        return ARCHITECTURES[architecture]
    if architecture in zoo_table.ARCHITECTURES:
        return functools.partial(zoo.network, architecture)
    raise PipelineError(
        f"train.model must be one of {', '.join(ARCHITECTURES)} or a torchvision classification "
        f"model (docs/parameters.md), got {architecture!r}"
    )


def depthwise(architecture: str) -> bool:
    """Whether train.model `architecture` has depthwise convolutions: some of torchvision's
    (MobileNet, EfficientNet, ...); none of this pipeline's own."""
    from pipeline.core import zoo, zoo_table

    return architecture in zoo_table.ARCHITECTURES and zoo.depthwise(architecture)


def repeats_grey(architecture: str, in_channels: int) -> bool:
    """Whether the model repeats grey pictures ×3: torchvision's backbones take 3 channels."""
    return in_channels == 1 and architecture not in ARCHITECTURES


def build(
    architecture: str,
    in_channels: int,
    image_size: int,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    options: ModelOptions,
) -> NormalizedModel:
    """A NormalizedModel of the named architecture, freshly initialised from torch's global RNG."""
    make = builder(architecture)
    from pipeline.core.layers import NormalizedModel

    net = make(in_channels, image_size, num_classes, options)
    return NormalizedModel(net, mean, std, repeats_grey(architecture, in_channels))


def options_from(cfg: TrainParams) -> ModelOptions:
    """ModelOptions from the train parameters; `pretrained` says whether train.weights names any
    starting weights (a record only: core.weights loads them)."""
    return ModelOptions(
        **{
            name: cfg.weights != "none" if name == "pretrained" else getattr(cfg, name)
            for name in ModelOptions.__dataclass_fields__
        }
    )


def options_dict(options: ModelOptions) -> dict[str, Any]:
    """ModelOptions as plain values that torch.load(weights_only=True) accepts."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}


def save(path: Path, model: NormalizedModel, meta: dict[str, Any]) -> None:
    """Write weights plus everything needed to rebuild the model (architecture, shapes, classes).

    Serialised in memory first: torch.save names its archive after the file, and a fixed name keeps
    the bytes identical between identical runs.
    """
    import torch

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"state_dict": state, **meta}, buf)
    atomic.write_bytes(path, buf.getvalue())


def load(path: Path) -> tuple[NormalizedModel, dict[str, Any]]:
    """Rebuild the model saved by `save`, in eval mode on the CPU, and return it with its
    metadata."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run the train stage first")
    if path.stat().st_size == 0:
        raise PipelineError(f"{path}: empty file; rerun the train stage (dvc repro -f train)")
    if not zipfile.is_zipfile(path):  # what torch.save writes; also refuses truncated files
        raise PipelineError(
            f"{path}: not a model written by the train stage (not the zip archive torch.save "
            "writes: another kind of file, or a truncated one)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        stored = {
            k: tuple(v) if isinstance(v, list) else v for k, v in ckpt.get("options", {}).items()
        }
        stored = {
            **OPTIONS_BEFORE,
            **stored,
        }  # a model saved before these options existed had their old values
        options = ModelOptions(**{**stored, "pretrained": False})  # weights come from the file
        shape = (
            ckpt["architecture"],
            ckpt["in_channels"],
            ckpt["image_size"],
            len(ckpt["class_names"]),
        )
        # A foreign file must not allocate terabytes: the network it describes may hold no more
        # weights than the file brought (counted on the meta device, without a forward pass, which
        # imports torch._dynamo).
        held = sum(t.numel() for t in ckpt["state_dict"].values() if isinstance(t, torch.Tensor))
        if weight_count(*shape, options) > held:
            raise PipelineError(
                f"{path}: describes a larger network than the {held:,} weights it holds"
            )
        model = build(*shape, ckpt["mean"], ckpt["std"], options)
        model.load_state_dict(ckpt.pop("state_dict"))
    except PipelineError:
        raise
    except (
        Exception
    ) as exc:  # truncated, foreign or hostile: torch's unpickler and load_state_dict fail many ways
        raise PipelineError(
            f"{path}: not a model written by the train stage ({_refusal(exc)})"
        ) from None
    return model.eval(), ckpt


def _refusal(exc: Exception) -> str:
    """Why torch.load or the rebuild refused a file, in a clause: torch's weights-only refusal
    is a paragraph that even suggests weights_only=False (running the file's code); of it only
    the unpickler's own reason is kept."""
    import pickle

    if isinstance(exc, pickle.UnpicklingError):
        detail = str(exc).partition("WeightsUnpickler error:")[2].strip()
        reason = first_sentence(Exception(detail.partition(" was not an allowed")[0]), 80)
        return f"it holds objects besides weights, not loaded: {reason or 'refused'}"
    return first_sentence(exc)


# On 2 CPU cores channels_last batches of 256 run 2-4x faster than NCHW batches of 1000 (oneDNN's
# native layout; activations that stay in the cache), with the same predictions (logits within
# 4e-6).
INFERENCE_BATCH_SIZE = 256


def logits(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = True,
) -> torch.Tensor:
    """Float32 logits (N×classes, on the CPU) of `model` for `images` (N×C×H×W, uint8 or floats in
    [0, 1]; a tensor, or anything sliced into tensors or arrays),
    in order, in batches of INFERENCE_BATCH_SIZE, leaving the model in eval mode: what evaluate
    reports, the served MLflow model answers, predict ranks and validation scores (there on the
    training device, under its autocast dtype and memory format)."""
    import torch

    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    device = device or torch.device("cpu")
    cast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    out = []
    with torch.no_grad(), cast:
        # Sliced, not split(): `images` may be pictures on disk (datasets.PagedImages), read a batch
        # at a time.
        for start in range(0, max(len(images), 1), INFERENCE_BATCH_SIZE):
            batch = torch.as_tensor(images[start : start + INFERENCE_BATCH_SIZE])
            out.append(
                model(batch.to(device, non_blocking=True).contiguous(memory_format=layout))
                .float()
                .cpu()
            )
    return torch.cat(out)


def meta_network(
    architecture: str, in_channels: int, image_size: int, num_classes: int, options: ModelOptions
) -> nn.Module:
    """The network on the meta device: every shape, no memory. Raises PipelineError for an unknown
    name."""
    from pipeline.core import zoo

    make = builder(architecture)
    return zoo.on_meta(
        make, in_channels, image_size, num_classes, replace(options, pretrained=False)
    )


def weight_count(
    architecture: str, in_channels: int, image_size: int, num_classes: int, options: ModelOptions
) -> int:
    """Trainable and frozen parameters of the network, counted on the meta device."""
    return sum(
        p.numel()
        for p in meta_network(
            architecture, in_channels, image_size, num_classes, options
        ).parameters()
    )


def training_bytes(
    architecture: str,
    in_channels: int,
    image_size: int,
    num_classes: int,
    options: ModelOptions,
    batch_size: int,
) -> int:
    """Rough bytes to train the model: weights, gradients and two optimizer moments, plus one
    batch's activations and their gradients. Nothing is allocated: weights and activations are
    counted on the meta device."""
    import torch

    net = meta_network(architecture, in_channels, image_size, num_classes, options)
    weights = sum(p.numel() for p in net.parameters())
    # Every layer's output for one image, by a forward pass on the meta device (shapes only, nothing
    # computed).
    outputs: list[int] = []
    for module in net.modules():
        if not list(module.children()):
            module.register_forward_hook(lambda m, args, out: outputs.append(out.numel()))
    # Two images, not one: in training mode batch norm refuses a single value per channel (a 1×1
    # feature map, as torchvision's networks reach on small pictures).
    with torch.device("meta"):
        net(torch.empty(2, in_channels, image_size, image_size))
    per_sample = sum(outputs) // 2
    return 4 * (4 * weights + 2 * batch_size * per_sample)


def check_fits(
    architecture: str,
    in_channels: int,
    image_size: int,
    num_classes: int,
    options: ModelOptions,
    batch_size: int,
    blame: str,
) -> None:
    """Refuse a model that would not fit in this machine's memory before a weight is allocated;
    `blame` names what to change (a parameter, or the file the model came from)."""
    need = training_bytes(architecture, in_channels, image_size, num_classes, options, batch_size)
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have // 2:
        raise PipelineError(
            f"{blame}: a {architecture} of this size needs about {need / 2**30:.1f} GiB to train "
            "with batch "
            f"{batch_size}, more than half of this machine's {have / 2**30:.1f} GiB; choose a "
            "smaller one"
        )
