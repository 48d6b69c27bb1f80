"""torchvision's classification architectures as train.model values: built through torchvision's
public registry (`list_models`, `get_model`, `get_model_weights`), their head sized for the classes.

The head is found generically: the last nn.Linear in module order (`fc`, `classifier[-1]`,
`heads.head`, `head`…), or the last nn.Conv2d for the architectures that classify with a 1×1
convolution (SqueezeNet); tests/test_zoo.py checks it is the 1000-way ImageNet layer in every
family. The backbone always takes 3 channels: grey pictures are repeated ×3 inside the model's
input normalisation (layers.NormalizedModel), so evaluate, predict and serving do the same.

What the parameter check needs (names, sizes, weights entries) is read from core.zoo_table, a
generated table, because importing torchvision.models costs seconds and every stage checks
params.yaml; `python -m pipeline.core.zoo` regenerates it, and tests/test_zoo.py fails when it no
longer matches the installed torchvision.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from pipeline.core.models import ModelOptions

# Built without their auxiliary classifiers: in training mode those return a tuple of logits, not
# a tensor; init_weights=False is torchvision's announced default (and silences its warning).
BUILDER_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
}
# The size a fixed-size architecture (ViT, MaxViT) is built for when torchvision builds it without
# weights, and a size it must refuse (its positional embeddings or partitions are sized at build).
BUILT_FOR, OTHER_SIZE = 224, 256
TABLE_FILE = Path(__file__).with_name("zoo_table.py")


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter and buffer created inside goes to the meta device, one at a time: for
    builders that compute with tensors (RegNet's widths) and so cannot run under
    `torch.device("meta")`. Each tensor exists on the CPU only while it is moved."""
    from torch import nn

    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(module: nn.Module, name: str, param: Any) -> None:
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def buffer(module: nn.Module, name: str, tensor: Any, persistent: bool = True) -> None:
        register_buffer(module, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


def on_meta(build: Any, *args: Any) -> nn.Module:
    """`build(*args)` with every weight on the meta device: shapes, no memory, no initialisation."""
    import torch

    try:
        with torch.device("meta"):
            return build(*args)
    except (
        NotImplementedError
    ):  # "Cannot copy out of meta tensor": a builder computing with tensors
        with parameters_on_meta():
            return build(*args)


def imagenet_network(name: str) -> nn.Module:
    """torchvision's `name` as it ships: 3 channels, 1000 classes, freshly initialised."""
    from torchvision import models as tvm

    return tvm.get_model(name, weights=None, **BUILDER_KWARGS.get(name, {}))


def depthwise(name: str) -> bool:
    """Whether torchvision's `name` has depthwise convolutions (groups equal to the input channels,
    more than one), from the network built on the meta device."""
    from torch import nn

    return any(
        isinstance(m, nn.Conv2d) and 1 < m.groups == m.in_channels
        for m in on_meta(imagenet_network, name).modules()
    )


def head(net: nn.Module) -> tuple[str, nn.Module]:
    """(dotted name, module) of the classifier layer: the last nn.Linear in module order, or the
    last nn.Conv2d in a network without one. Raises ValueError for a network with neither."""
    from torch import nn

    for kind in (nn.Linear, nn.Conv2d):
        found = [(n, m) for n, m in net.named_modules() if isinstance(m, kind)]
        if found:
            return found[-1]
    raise ValueError(f"{type(net).__name__} has no linear or convolution layer to classify with")


def replace_head(net: nn.Module, num_classes: int) -> str:
    """Replace the classifier layer by a new one with `num_classes` outputs (trainable, drawn from
    torch's global RNG); returns its dotted name."""
    from torch import nn

    name, old = head(net)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes)
    else:
        assert isinstance(old, nn.Conv2d)
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding)
    parent, _, attr = name.rpartition(".")
    setattr(net.get_submodule(parent), attr, new)
    return name


def network(
    name: str, in_channels: int, image_size: int, num_classes: int, opt: ModelOptions
) -> nn.Module:
    """torchvision's `name`, its head sized for `num_classes`; with freeze_backbone only the head
    trains. Takes 3-channel N×3×H×W input whatever `in_channels` (NormalizedModel repeats grey)."""
    net = imagenet_network(name)
    head_name = replace_head(net, num_classes)
    if opt.freeze_backbone:
        for param_name, param in net.named_parameters():
            param.requires_grad_(param_name.startswith(head_name + "."))
    return net


def table() -> tuple[dict[str, tuple[str, str, int, int]], dict[str, tuple[int, int]]]:
    """What core.zoo_table holds, from the installed torchvision: ({name: (weights enum, its
    DEFAULT entry, smallest picture side in px, the only side a fixed-size architecture takes or
    0)}, {"Enum.ENTRY": (crop side, smallest side) of every weights entry})."""
    import torch
    from torchvision import models as tvm

    architectures, entries = {}, {}
    for name in tvm.list_models(module=tvm):
        enum = tvm.get_model_weights(name)
        for e in enum:
            entries[f"{enum.__name__}.{e.name}"] = (
                e.transforms().crop_size[0],
                e.meta["min_size"][0],
            )
        net = on_meta(imagenet_network, name).eval()
        fixed = 0
        try:
            net(torch.empty(1, 3, OTHER_SIZE, OTHER_SIZE, device="meta"))
        except (RuntimeError, AssertionError, ValueError):
            net(torch.empty(1, 3, BUILT_FOR, BUILT_FOR, device="meta"))  # takes this one
            fixed = BUILT_FOR
        smallest = fixed or min(e.meta["min_size"][0] for e in enum)
        architectures[name] = (enum.__name__, enum.DEFAULT.name, smallest, fixed)
    return architectures, entries


def write_table(path: Path = TABLE_FILE) -> None:
    """Regenerate core.zoo_table from the installed torchvision (then `ruff format` it)."""
    import torchvision

    architectures, entries = table()
    rows = "\n".join(f"    {k!r}: {v!r}," for k, v in architectures.items())
    weights = "\n".join(f"    {k!r}: {v!r}," for k, v in entries.items())
    path.write_text(
        '"""Generated by `python -m pipeline.core.zoo` from torchvision '
        f"{torchvision.__version__.split('+')[0]}:\ndo not edit (tests/test_zoo.py compares).\n"
        '"""\n\n'
        "# name: (weights enum, its DEFAULT entry, smallest picture side in px, the only side a\n"
        "# fixed-size architecture takes or 0)\n"
        f"ARCHITECTURES: dict[str, tuple[str, str, int, int]] = {{\n{rows}\n}}\n"
        "# every weights entry: (its transforms' crop side in px, smallest picture side)\n"
        f"WEIGHTS: dict[str, tuple[int, int]] = {{\n{weights}\n}}\n"
    )


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else TABLE_FILE
    write_table(target)
    os.execvp("ruff", ["ruff", "format", "-q", str(target)])
