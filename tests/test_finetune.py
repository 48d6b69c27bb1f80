"""Fine-tuning (freeze schedule, backbone learning rate), photographs' augmentation (policies,
MixUp/CutMix, weight averaging, flip test-time augmentation) and auto batch size and epochs: each
repeats byte for byte, is off by default, and does what it says."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from pipeline.core import augment, checkpoints, finetune, loop, models, runtime
from pipeline.core.auto import AUTO_BATCH_SIZE, AUTO_EPOCHS, AUTO_MIN_STEPS, folder_auto
from pipeline.core.errors import PipelineError
from pipeline.core.optim import Optimization
from pipeline.core.params import DataParams, TrainParams, flatten, parse_params

BASE = TrainParams(
    epochs=2,
    batch_size=12,
    precision="fp32",
    device="cpu",
    patience=None,
    batch_norm=True,
    threads=1,
)


def pictures(n: int = 60, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 n×C×16×16 pictures of 3 learnable classes (a bright band whose row is the class)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3
    images = torch.randint(0, 96, (n, channels, 16, 16), dtype=torch.uint8, generator=g)
    for c in range(3):
        images[labels == c, :, 5 * c : 5 * c + 4] = 250
    return images, labels


def fit(
    cfg: TrainParams, data: DataParams | None = None, on_epoch=None, state=None, model=None
) -> tuple[torch.nn.Module, loop.TrainState]:
    """The loop as core.trainer drives it, on `pictures()`: (the model it ends with, its state)."""
    images, labels = pictures()
    data = data or DataParams()
    torch.manual_seed(0)
    model = model or models.build("cnn", 3, 16, 3, [0.3] * 3, [0.3] * 3, models.options_from(cfg))
    rt = runtime.make_runtime(cfg)
    train = loop.TrainData.on(
        rt,
        images,
        labels,
        torch.arange(48),
        (images[48:], labels[48:]),
        policy=augment.policy(data.augment_policy, data.color_jitter, data.random_erasing, 3),
        mixer=finetune.mixer(cfg, 3),
    )
    model = rt.place(model)
    opt = Optimization.build(model, cfg, train.batches_per_epoch(cfg.batch_size))
    state = loop.fit(
        model,
        train,
        opt,
        cfg,
        rt,
        state or loop.TrainState.start(0),
        on_epoch or (lambda r, s: None),
    )
    return model, state


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@functools.cache
def plain_weights() -> dict[str, torch.Tensor]:
    """The weights of a fit with every option off."""
    return weights(fit(BASE)[0])


OPTIONS = {
    "trivialaugment": ({}, {"augment_policy": "trivialaugment"}),
    "randaugment+jitter+erasing": (
        {},
        {"augment_policy": "randaugment", "color_jitter": 0.4, "random_erasing": 0.5},
    ),
    "mixup": ({"mixup_alpha": 0.4}, {}),
    "cutmix": ({"cutmix_alpha": 1.0}, {}),
    "mixup+cutmix": ({"mixup_alpha": 0.2, "cutmix_alpha": 1.0}, {}),
    "ema": ({"ema_decay": 0.9}, {}),
    "freeze+scale": ({"freeze_epochs": 1, "backbone_lr_scale": 0.1}, {}),
}


@pytest.mark.parametrize("name", OPTIONS)
def test_each_option_repeats_byte_for_byte_and_changes_the_weights(name: str) -> None:
    train, data = OPTIONS[name]
    cfg = dataclasses.replace(BASE, **train)
    first, _ = fit(cfg, DataParams(**data))
    second, _ = fit(cfg, DataParams(**data))
    assert same(weights(first), weights(second))
    assert not same(weights(first), plain_weights())


def test_every_new_option_is_off_by_default() -> None:
    train, data = TrainParams(), DataParams()
    assert not finetune.freezes(train) and train.backbone_lr_scale == 1
    assert (
        finetune.mixer(train, 10) is None
        and finetune.averaged(torch.nn.Linear(2, 2), train) is None
    )
    assert augment.policy(data.augment_policy, data.color_jitter, data.random_erasing, 3) is None
    assert parse_params({}).evaluate.tta is False
    # One parameter list, as before parameter groups existed: the optimizer's state is unchanged.
    net = models.build("cnn", 1, 28, 10, [0.1], [0.3], models.options_from(train))
    groups = finetune.parameter_groups(net, train)
    assert [id(p) for p in groups] == [id(p) for p in net.parameters()]


@pytest.mark.parametrize("arch", ["cnn", "mlp", "resnet", "resnet18"])
def test_the_head_is_the_classifier_and_the_backbone_the_rest(arch: str) -> None:
    net = models.build(arch, 3, 32, 7, [0.5] * 3, [0.25] * 3, models.options_from(TrainParams()))
    head = finetune.head(net)
    assert head.out_features == 7
    ids = {id(p) for p in finetune.head_parameters(net)} | {
        id(p) for p in finetune.backbone_parameters(net)
    }
    assert ids == {id(p) for p in net.parameters()}
    assert len(finetune.backbone_parameters(net)) == len(list(net.parameters())) - 2


def test_frozen_epochs_train_the_head_alone_and_keep_batch_norm_statistics() -> None:
    cfg = dataclasses.replace(BASE, freeze_epochs=1)
    after: dict[int, dict[str, torch.Tensor]] = {}

    def keep(r: loop.EpochResult, s: loop.TrainState) -> None:
        after[s.epoch] = {k: v.clone() for k, v in s.model.items()}

    torch.manual_seed(0)
    model = models.build("cnn", 3, 16, 3, [0.3] * 3, [0.3] * 3, models.options_from(cfg))
    start = weights(model)
    fit(cfg, on_epoch=keep, model=model)
    head = {f"net.{len(model.net) - 1}.weight", f"net.{len(model.net) - 1}.bias"}
    for key in start:
        changed_in_1 = not torch.equal(start[key], after[1][key])
        if key in head:
            assert changed_in_1, key
        elif key not in ("mean", "std"):  # batch-norm statistics included
            assert not changed_in_1, key
    assert not torch.equal(start["net.0.weight"], after[2]["net.0.weight"])  # then all train
    assert not torch.equal(start["net.1.running_mean"], after[2]["net.1.running_mean"])


def test_freeze_backbone_freezes_every_epoch() -> None:
    cfg = dataclasses.replace(BASE, freeze_backbone=True)
    torch.manual_seed(0)
    model = models.build("cnn", 3, 16, 3, [0.3] * 3, [0.3] * 3, models.options_from(cfg))
    start = weights(model)
    model, _ = fit(cfg, model=model)
    assert torch.equal(start["net.0.weight"], model.state_dict()["net.0.weight"])
    assert torch.equal(start["net.1.running_var"], model.state_dict()["net.1.running_var"])


def test_the_backbone_learns_at_its_scaled_rate() -> None:
    cfg = dataclasses.replace(BASE, backbone_lr_scale=0.25, scheduler="none")
    net = models.build("cnn", 3, 16, 3, [0.3] * 3, [0.3] * 3, models.options_from(cfg))
    opt = Optimization.build(net, cfg, 4)
    assert [g["lr"] for g in opt.optimizer.param_groups] == [cfg.lr, cfg.lr * 0.25]
    onecycle = Optimization.build(net, dataclasses.replace(cfg, scheduler="onecycle"), 4)
    peaks = [g["max_lr"] for g in onecycle.optimizer.param_groups]
    assert peaks == [cfg.lr, cfg.lr * 0.25]
    torch.manual_seed(0)
    model = models.build("cnn", 3, 16, 3, [0.3] * 3, [0.3] * 3, models.options_from(cfg))
    start = weights(model)
    model, _ = fit(dataclasses.replace(cfg, backbone_lr_scale=0.0), model=model)
    last = f"net.{len(model.net) - 1}.weight"  # the head
    assert torch.equal(start["net.0.weight"], model.state_dict()["net.0.weight"])
    assert not torch.equal(start[last], model.state_dict()[last])


@pytest.mark.parametrize(
    "train", [{"freeze_epochs": 1}, {"ema_decay": 0.8, "freeze_epochs": 1, "mixup_alpha": 0.3}]
)
def test_a_resumed_run_ends_as_an_uninterrupted_one(tmp_path, train: dict) -> None:
    cfg = dataclasses.replace(BASE, epochs=3, **train)
    data = DataParams(augment_policy="trivialaugment")
    saved = {}

    def keep(r: loop.EpochResult, s: loop.TrainState) -> None:
        if s.epoch == 1:  # what the train stage writes after each epoch, read back as it would be
            checkpoints.save(s, "fp", "run", tmp_path / "train.pt")
            saved["state"] = checkpoints.load("fp", tmp_path / "train.pt")[0].state

    whole, _ = fit(cfg, data, on_epoch=keep)
    resumed, _ = fit(cfg, data, state=saved["state"])
    assert same(weights(whole), weights(resumed))


def test_the_averaged_weights_are_the_ones_kept() -> None:
    cfg = dataclasses.replace(BASE, ema_decay=0.5)
    model, state = fit(cfg)
    assert state.ema is not None
    averaged = {k.removeprefix("module."): v for k, v in state.ema.items() if k != "n_averaged"}
    if state.best_epoch == state.epoch:
        assert same(weights(model), averaged)
    assert not same(state.model, averaged)  # the last trained weights are not what is kept


def test_mixing_labels_needs_a_loss_that_takes_soft_targets() -> None:
    with pytest.raises(PipelineError, match=r"train.mixup_alpha .* train.loss nll"):
        parse_params({"train": {"loss": "nll", "mixup_alpha": 0.2}})
    parse_params({"train": {"loss": "cross_entropy", "mixup_alpha": 0.2, "label_smoothing": 0.1}})


def test_flip_tta_averages_the_softmax_of_the_picture_and_its_mirror_image() -> None:
    torch.manual_seed(0)
    net = models.build("cnn", 3, 16, 3, [0.3] * 3, [0.3] * 3, models.options_from(BASE))
    images, _ = pictures(8)
    plain = models.logits(net, images)
    mirrored = models.logits(net, images.flip(-1))
    tta = augment.with_mirror(net, images, plain)
    expected = (plain.softmax(1) + mirrored.softmax(1)) / 2
    assert torch.allclose(tta.softmax(1), expected, atol=1e-6)
    symmetric = torch.cat([images[..., :8], images[..., :8].flip(-1)], -1)
    same_both = augment.with_mirror(net, symmetric, models.logits(net, symmetric))
    assert torch.allclose(same_both.softmax(1), models.logits(net, symmetric).softmax(1), atol=1e-6)


def test_builtin_datasets_keep_their_measured_batch_size_and_epochs() -> None:
    auto = parse_params({"train": {"batch_size": "auto", "epochs": "auto"}})
    explicit = parse_params({"train": {"batch_size": 256, "epochs": 2}})
    assert flatten(auto) == flatten(explicit) == flatten(parse_params({}))
    assert (AUTO_BATCH_SIZE, AUTO_EPOCHS) == (256, 2)
    folder = parse_params({"data": {"dataset": "folder"}})
    assert (folder.train.batch_size, folder.train.epochs) == ("auto", "auto")
    with pytest.raises(PipelineError, match=r"train\.epochs must be an integer >= 1 or auto"):
        parse_params({"train": {"epochs": "many"}})


@pytest.mark.parametrize("fit_count", [2, 10, 177, 216, 1000, 5000, 60000, 10**6])
def test_a_folder_gets_enough_optimizer_steps(fit_count: int) -> None:
    train = folder_auto(TrainParams(), fit_count)
    batch, epochs = train.batch_size, train.epochs
    assert 2 <= batch <= AUTO_BATCH_SIZE and batch & (batch - 1) == 0
    assert batch <= max(2, fit_count // 8)
    steps = max(1, fit_count // batch)
    assert epochs >= AUTO_EPOCHS and steps * epochs >= AUTO_MIN_STEPS
    assert steps * (epochs - 1) < AUTO_MIN_STEPS or epochs == AUTO_EPOCHS  # no more than needed
    kept = folder_auto(TrainParams(batch_size=32, epochs=5), fit_count)
    assert (kept.batch_size, kept.epochs) == (32, 5)


@pytest.mark.parametrize(
    ("asked", "line"),
    [
        ({}, "auto: batches of 16, at most 28 epochs (docs/datasets.md)"),
        ({"epochs": 3}, "auto: batches of 16 (docs/datasets.md)"),  # a new user saw "3 epochs"
        ({"batch_size": 8}, "auto: at most 14 epochs (docs/datasets.md)"),
        ({"batch_size": 8, "epochs": 3}, None),
    ],
)
def test_the_auto_line_names_only_what_auto_chose(asked: dict, line: str | None) -> None:
    from pipeline.core.auto import chosen_line

    mine = TrainParams(**asked)
    assert chosen_line(mine, folder_auto(mine, 177)) == line


@pytest.mark.parametrize(
    ("schedule", "line"),
    [
        ({}, None),
        ({"freeze_epochs": 1}, "fine-tuning: the head alone for 1 epoch, then every layer"),
        (
            {"freeze_epochs": 10, "backbone_lr_scale": 0.1},
            "fine-tuning: the head alone for 10 epochs, then every layer; the backbone at "
            "train.lr × 0.1",
        ),
        ({"backbone_lr_scale": 0.5}, "fine-tuning: the backbone at train.lr × 0.5"),
        (
            {"freeze_backbone": True, "backbone_lr_scale": 0.5},
            "fine-tuning: the head alone in every epoch (train.freeze_backbone)",
        ),
    ],
)
def test_the_train_stage_says_what_the_fine_tuning_schedule_does(
    schedule: dict, line: str | None
) -> None:
    """A new user set train.freeze_epochs and the stage said nothing of it."""
    from pipeline.core.finetune import schedule_line

    assert schedule_line(TrainParams(**schedule)) == line


def test_freezing_batch_norm_stops_every_kind_and_nothing_else() -> None:
    from torch import nn

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.BatchNorm1d(8))
    net.append(nn.Linear(8, 2)).train()
    finetune.freeze_batch_norm(net)
    assert [m.training for m in net] == [True, False, True, False, True]
