"""torchvision's architectures as train.model (core.zoo), starting weights (train.weights,
core.weights, the weights stage) and the preprocessing that follows them.

In-process and cheap: each architecture family is built once, on the meta device; real weights only
for mobilenet_v3_small and resnet18. The run started from an earlier run is in test_zoo_e2e.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from helpers import REPO, assert_one_line_error, weights_stage

from pipeline.core import models, paths, transfer, weights, zoo, zoo_table
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params, load_params, with_values

OPTIONS = models.options_from(Params().train)


def family(name: str) -> str:
    """resnet50 → resnet, swin_v2_t → swin_v2, vgg11_bn → vgg: architectures built alike."""
    found = re.match(r"[a-z]+(_v\d)?", name)
    assert found is not None
    return found.group(0)


FAMILIES = sorted({family(n): n for n in zoo_table.ARCHITECTURES}.values())


def test_the_table_is_torchvisions() -> None:
    """core.zoo_table lists what the installed torchvision ships (regenerate it with
    `python -m pipeline.core.zoo` when this fails after a torchvision upgrade)."""
    from torchvision import models as tvm

    assert list(zoo_table.ARCHITECTURES) == tvm.list_models(module=tvm)
    live = {}
    for name in tvm.list_models(module=tvm):
        enum = tvm.get_model_weights(name)
        assert zoo_table.ARCHITECTURES[name][:2] == (enum.__name__, enum.DEFAULT.name)
        for e in enum:
            live[f"{enum.__name__}.{e.name}"] = (e.transforms().crop_size[0], e.meta["min_size"][0])
    assert live == zoo_table.WEIGHTS


def test_params_load_imports_no_torchvision() -> None:
    """Every stage checks params.yaml: the zoo's names come from the table, not torchvision."""
    code = "import sys, pipeline.core.params; print('torchvision' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_gets_a_head_for_the_classes(name: str) -> None:
    """The last Linear (or SqueezeNet's last Conv2d) is the 1000-way ImageNet classifier; replaced,
    the network answers N×classes at a size it takes."""
    reference = zoo.on_meta(zoo.imagenet_network, name)
    layer = zoo.head(reference)[1]
    assert getattr(layer, "out_features", getattr(layer, "out_channels", None)) == 1000
    _, _, smallest, fixed = zoo_table.ARCHITECTURES[name]
    side = fixed or max(smallest, 32)
    net = models.meta_network(name, 1, side, 7, OPTIONS).eval()
    with torch.device("meta"):
        assert net(torch.empty(2, 3, side, side)).shape == (2, 7)
    assert models.weight_count(name, 1, side, 7, OPTIONS) < sum(
        p.numel() for p in reference.parameters()
    )


def test_grey_pictures_are_repeated_inside_the_model(tmp_path: Path) -> None:
    """A grey picture into a 3-channel backbone: repeated ×3 before normalising, in model.pt's
    model too (so evaluate, predict and serving do the same)."""
    torch.manual_seed(0)
    model = models.build("mobilenet_v3_small", 1, 32, 5, [0.5], [0.25], OPTIONS).eval()
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        out = model(images)
        by_hand = model.net((images.float() / 255 - 0.5).expand(-1, 3, -1, -1) / 0.25)
    assert out.shape == (4, 5)
    torch.testing.assert_close(out, by_hand)
    models.save(
        tmp_path / "model.pt",
        model,
        {
            "architecture": "mobilenet_v3_small",
            "options": models.options_dict(OPTIONS),
            "dataset": "folder",
            "in_channels": 1,
            "image_size": 32,
            "class_names": list("abcde"),
            "mean": [0.5],
            "std": [0.25],
        },
    )
    loaded, _ = models.load(tmp_path / "model.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), out)


def test_own_networks_keep_their_channels() -> None:
    """cnn, mlp, resnet and our resnet18 take the pictures' channels themselves: no repeat."""
    for name in models.ARCHITECTURES:
        assert not models.build(name, 1, 28, 10, [0.5], [0.25], OPTIONS).repeat_grey


def test_freeze_backbone_trains_only_the_head() -> None:
    opts = dataclasses.replace(OPTIONS, freeze_backbone=True)
    net = models.meta_network("efficientnet_b0", 3, 32, 4, opts)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.1.weight", "classifier.1.bias"]


BAD = [
    ({"train.model": "resnet5000"}, "train.model: did you mean resnet50", "(got .resnet5000.)"),
    ({"train.model": "vit_b_16"}, "train.model vit_b_16 takes 224 px pictures only", "gives 28"),
    ({"train.model": "convnext_tiny"}, "train.model convnext_tiny needs pictures of at least 32"),
    (
        {"train.model": "swin_t", "data.dataset": "folder", "data.image_size": 64},
        "train.model swin_t needs pictures of at least 224 px, data.image_size gives 64",
    ),
    ({"train.weights": "imagenet"}, "train.weights imagenet needs a torchvision architecture"),
    (
        {"train.model": "resnet50", "train.weights": "ResNet18_Weights.IMAGENET1K_V1"},
        "train.weights must be none, imagenet or one of resnet50's weights",
    ),
    (
        {"train.model": "vit_h_14", "train.weights": "imagenet", "data.dataset": "folder"},
        "train.weights ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1 is for 518 px pictures",
    ),
    ({"train.weights": "elsewhere/r.pt"}, "train.weights must be none, imagenet, a torchvision"),
    ({"train.weights": "weights/../r.pt"}, "train.weights must be none"),
    ({"train.weights": "weights/r.txt"}, "train.weights must be none"),
    ({"train.pretrained": True}, "train.pretrained was replaced by train.weights"),
]


@pytest.mark.parametrize(("values", *("needle",)), [(v, n[0]) for v, *n in BAD])
def test_bad_combinations_are_refused_in_one_line(values: dict, needle: str) -> None:
    with pytest.raises(PipelineError) as err:
        with_values(Params(), values, "params.yaml")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_good_values_are_taken() -> None:
    for values in (
        {"train.model": "resnet18", "train.weights": "imagenet"},
        {"train.model": "vit_b_16", "data.dataset": "folder", "data.image_size": 224},
        {"train.model": "vit_h_14", "train.weights": "ViT_H_14_Weights.IMAGENET1K_SWAG_LINEAR_V1"}
        | {"data.dataset": "folder"},
        {"train.model": "efficientnet_b0", "train.weights": "weights/mine.pth"},
        {"train.model": "cnn", "train.weights": "runs:/0123abc/model"},
        {"train.model": "mobilenet_v3_small", "train.weights": "models:/mnist@candidate"},
        {"train.pretrained": False},  # what every earlier params.yaml holds
    ):
        with_values(Params(), values, "params.yaml")


@pytest.mark.parametrize(
    ("values", "side"),
    [
        ({"train.model": "efficientnet_b1", "train.weights": "imagenet"}, 240),
        (
            {"train.model": "efficientnet_b1", "train.weights": "imagenet", "data.image_size": 96},
            96,
        ),
        ({"train.model": "efficientnet_b1"}, 64),
        ({"train.model": "resnet18", "train.weights": "imagenet"}, 224),
    ],
)
def test_a_folders_picture_size_follows_the_weights(values: dict, side: int) -> None:
    params = with_values(Params(), {"data.dataset": "folder", **values}, "params.yaml")
    assert transfer.picture_size(params) == side


def trained(**train: object) -> Params:
    """The default parameters with these train.* values."""
    return dataclasses.replace(Params(), train=dataclasses.replace(Params().train, **train))


def cached_imagenet(torch_home: Path, name: str) -> Path:
    """A state_dict of a freshly built torchvision `name` where torch's hub cache keeps the file of
    its DEFAULT weights (ImageNet weights cannot be downloaded here)."""
    from torchvision import models as tvm

    entry = tvm.get_model_weights(name).DEFAULT
    file = torch_home / "hub" / "checkpoints" / Path(urlparse(entry.url).path).name
    file.parent.mkdir(parents=True)
    torch.save(zoo.imagenet_network(name).state_dict(), file)
    return file


def test_imagenet_weights_come_from_torchs_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """imagenet: the cached file, ImageNet's statistics, and every tensor but the head loaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    file = cached_imagenet(tmp_path / "torch", "mobilenet_v3_small")
    params = with_values(
        Params(),
        {"train.model": "mobilenet_v3_small", "train.weights": "imagenet", "data.image_size": 32}
        | {"data.dataset": "folder", "data.channels": 1},
        "p",
    )
    cfg = params.train
    start = weights.fetch(params, tmp_path)
    assert start.statistics == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert (start.mean, start.std) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    weights.write(tmp_path / "start.pt", start)
    read = weights.read(tmp_path / "start.pt", cfg)
    assert read is not None
    assert read.sha256 == hashlib.sha256((tmp_path / "start.pt").read_bytes()).hexdigest()
    model = models.build("mobilenet_v3_small", 1, 32, 3, [0.5], [0.25], OPTIONS)
    count = weights.load_into(model.net, read, weights.Target.of(params), ["a", "b", "c"])
    source = torch.load(file, weights_only=True)
    assert count == len(source) - 2  # all but the head's weight and bias
    for key, tensor in model.net.state_dict().items():
        if not key.startswith("classifier.3."):
            torch.testing.assert_close(tensor, source[key])
    assert weights.statistics_fit(read, 3)
    assert weights.tags(read, "x")["weights.source"] == "imagenet"


def test_missing_imagenet_weights_name_the_file_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # nothing listens: offline at once
    with pytest.raises(PipelineError) as err:
        weights.fetch(trained(model="resnet18", weights="imagenet"), tmp_path)
    text = str(err.value)
    assert text.startswith("train.weights: ResNet18_Weights.IMAGENET1K_V1 is not in torch's hub")
    assert str(tmp_path / "torch/hub/checkpoints/resnet18-f37072fd.pth") in text
    assert not (tmp_path / "torch/hub/checkpoints/resnet18-f37072fd.pth").exists()


def test_our_resnet18_starts_from_imagenet_except_its_small_stem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    file = cached_imagenet(tmp_path / "torch", "resnet18")
    params = trained(model="resnet18", weights="imagenet")
    start = weights.fetch(params, tmp_path)
    model = models.build("resnet18", 1, 28, 10, [0.5], [0.25], OPTIONS)
    loaded = weights.load_into(
        model.net, start, weights.Target.of(params), [str(i) for i in range(10)]
    )
    assert loaded == len(torch.load(file, weights_only=True)) - 3  # stem conv, fc weight, fc bias


def test_a_file_of_another_architecture_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    torch.save(zoo.imagenet_network("resnet18").state_dict(), tmp_path / "weights/r.pt")
    with pytest.raises(PipelineError, match=r"train.weights: weights/r.pt lacks layer1.2"):
        weights.fetch(trained(model="resnet34", weights="weights/r.pt"), tmp_path)
    with pytest.raises(
        PipelineError, match=r"train.weights: weights/r.pt lacks features.0.0.weight"
    ):
        weights.fetch(trained(model="mobilenet_v3_small", weights="weights/r.pt"), tmp_path)


def stage(root: Path, **values: object) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline.stages.weights` in a folder holding a params.yaml with `values`."""
    return weights_stage(root, {k.replace("__", "."): v for k, v in values.items()})


@pytest.mark.parametrize(
    ("values", "needles"),
    [
        ({"train__model": "resnet5000"}, ["train.model: did you mean resnet50"]),
        ({"train__weights": "models:/nope@x"}, ["train.weights: models:/nope@x"]),
        ({"train__weights": "weights/absent.pt", "train__model": "resnet18"}, ["not found"]),
    ],
)
def test_the_stage_refuses_in_one_line_and_keeps_its_output(
    tmp_path: Path, values: dict, needles: list[str]
) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models/start.pt").write_bytes(b"earlier")
    proc = stage(tmp_path, **values)
    assert_one_line_error(proc, *needles)
    assert (tmp_path / "models/start.pt").read_bytes() == b"earlier"
    assert not (tmp_path / "mlflow.db").exists()


def test_the_stage_writes_a_small_file_for_none(tmp_path: Path) -> None:
    proc = stage(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no starting weights" in proc.stdout
    start = json.loads((tmp_path / paths.START).read_text())
    assert start == {"source": "none", "architecture": "cnn"}
    assert load_params(REPO / "params.yaml").train.weights == "none"


@pytest.mark.parametrize(
    ("channels", "side", "same"), [(3, 64, True), (3, 32, False), (1, 28, False)]
)
def test_our_resnet18_is_torchvisions_only_above_32_px_in_colour(
    channels: int, side: int, same: bool
) -> None:
    """Why `resnet18` stays ours: the zoo's would give other bytes on 28/32 px or grey pictures
    (ours has a 3×3 stride-1 stem without max-pool there, taking the pictures' channels)."""
    torch.manual_seed(0)
    ours = models.ARCHITECTURES["resnet18"](channels, side, 10, OPTIONS).state_dict()
    torch.manual_seed(0)
    theirs = zoo.network("resnet18", channels, side, 10, OPTIONS).state_dict()
    equal = ours.keys() == theirs.keys() and all(
        ours[k].shape == theirs[k].shape and torch.equal(ours[k], theirs[k]) for k in ours
    )
    assert equal == same
