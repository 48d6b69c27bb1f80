"""The core on small tensors: split, statistics, models, metrics, atomic writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import fit_tiny

from pipeline.core import (
    atomic,
    checkpoints,
    loop,
    metrics,
    models,
    normalization,
    runtime,
    splits,
)
from pipeline.core.errors import PipelineError
from pipeline.core.params import TrainParams

OPTIONS = models.options_from(TrainParams())  # the defaults, from the one place they live


def test_split_is_stratified_disjoint_and_seeded() -> None:
    labels = torch.arange(10).repeat_interleave(
        torch.tensor([100, 200, 50, 150, 100, 100, 100, 100, 50, 50])
    )
    fit, val = splits.split_indices(labels, val_size=100, seed=3)
    assert len(val) == 100 and len(fit) == len(labels) - 100
    assert not set(fit.tolist()) & set(val.tolist())
    counts = torch.bincount(labels[torch.from_numpy(val)], minlength=10)
    assert counts.tolist() == [10, 20, 5, 15, 10, 10, 10, 10, 5, 5]
    again_fit, again_val = splits.split_indices(labels, val_size=100, seed=3)
    assert (fit == again_fit).all() and (val == again_val).all()
    _, other_val = splits.split_indices(labels, val_size=100, seed=4)
    assert not (val == other_val).all()
    limited, same_val = splits.split_indices(labels, val_size=100, seed=3, limit=123)
    assert (
        len(limited) == 123
        and (val == same_val).all()
        and set(limited.tolist()) <= set(fit.tolist())
    )
    # A small folder keeps about four fifths for fitting, whatever val_size asks (its pictures are
    # drawn by the hash of their names); a built-in set must leave some.
    names = [f"{i}.png" for i in range(len(labels))]
    capped_fit, capped_val = splits.split_indices(labels, val_size=1000, seed=0, keys=names)
    assert 150 < len(capped_val) < 250 and len(capped_fit) + len(capped_val) == 1000
    with pytest.raises(
        PipelineError, match=r"data.val_size must be smaller than the 1000 training images"
    ):
        splits.split_indices(labels, val_size=1000, seed=0)
    with pytest.raises(PipelineError, match="at least two"):
        splits.split_indices(labels[:1], val_size=5, seed=0)


def test_channel_stats_match_a_direct_float_computation() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8, generator=g)
    idx = torch.arange(0, 300, 2)
    result = normalization.channel_stats(images, idx, chunk_pixels=7 * 8 * 8)  # chunks of 7 images
    assert normalization.channel_stats(images, idx) == result  # one chunk: the same, exactly
    direct = images[idx].double() / 255
    assert result.mean == pytest.approx(direct.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert result.std == pytest.approx(
        direct.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12
    )
    assert result.count == 150


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_models_take_uint8_and_float_images(arch: str) -> None:
    torch.manual_seed(0)
    model = models.build(arch, 1, 28, 10, [0.13], [0.31], OPTIONS).eval()
    raw = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        from_uint8 = model(raw)
        from_float = model(raw.float() / 255)
    assert from_uint8.shape == (4, 10)
    torch.testing.assert_close(from_uint8, from_float)


def test_model_file_round_trip_is_byte_stable(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.build("cnn", 1, 28, 10, [0.5], [0.25], OPTIONS)
    meta = {
        "architecture": "cnn",
        "options": models.options_dict(OPTIONS),
        "dataset": "mnist",
        "in_channels": 1,
        "image_size": 28,
        "class_names": [str(i) for i in range(10)],
        "mean": [0.5],
        "std": [0.25],
    }
    models.save(tmp_path / "a.pt", model, meta)
    models.save(tmp_path / "b.pt", model, meta)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    loaded, loaded_meta = models.load(tmp_path / "a.pt")
    assert loaded_meta["class_names"] == meta["class_names"]
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(PipelineError, match=r"junk.pt: not a model written by the train stage"):
        models.load(tmp_path / "junk.pt")
    # A file whose options describe a far larger network than the weights it holds (hostile, or
    # edited): refused from the counts, before a weight is allocated.
    tampered = torch.load(tmp_path / "a.pt", weights_only=True)
    tampered["options"]["cnn_hidden"] = 10**9  # 1.6 TB of head weights
    torch.save(tampered, tmp_path / "tampered.pt")
    with pytest.raises(
        PipelineError, match=r"tampered.pt: describes a larger network than the [\d,]+ weights"
    ):
        models.load(tmp_path / "tampered.pt")
    # Loading imports no torch._dynamo (it costs evaluate and predict about 1.5 s).
    code = (
        f"import sys; from pipeline.core import models; models.load({str(tmp_path / 'a.pt')!r}); "
        "assert 'torch._dynamo' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_report_on_known_predictions() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0])
    logits = torch.nn.functional.one_hot(predicted, 3).float() * 5
    rep = metrics.report(logits, labels, ["a", "b", "c"])
    assert rep.accuracy == pytest.approx(4 / 6)
    assert rep.per_class_accuracy == {"a": 0.5, "b": 1.0, "c": 0.5}
    assert rep.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # F1: a = 0.5 (p .5, r .5), b = 0.8 (p 2/3, r 1), c = 2/3 (p 1, r .5)
    assert rep.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_fit_learns_and_early_stopping_restores_the_best_epoch() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (512,), generator=g)
    images = torch.zeros(512, 1, 8, 8, dtype=torch.uint8)
    images[labels == 1, :, :4] = 255  # class 1 = bright top half: trivially learnable
    # Validation accuracy reaches 1.0 in epoch 1 and can only plateau after it.
    cfg = TrainParams(
        model="mlp",
        epochs=10,
        batch_size=32,
        lr=0.01,
        patience=2,
        precision="fp32",
        device="cpu",
        scheduler="none",
    )
    model = models.build("mlp", 1, 8, 2, [0.25], [0.43], OPTIONS)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def keep(result: loop.EpochResult, state: loop.TrainState) -> None:
        snapshots[state.epoch] = {k: v.clone() for k, v in state.model.items()}

    state = fit_tiny(model, images, labels, torch.arange(400), torch.arange(400, 512), cfg, keep)
    assert state.best.val_accuracy == 1.0
    assert (
        state.best_epoch == 1 and state.epoch == 3 and len(state.history) == 3
    )  # 1 + patience, then stop
    assert not all(
        torch.equal(snapshots[1][k], snapshots[3][k]) for k in snapshots[1]
    )  # it kept training...
    for key, value in model.state_dict().items():  # ...but ends with epoch 1's weights
        assert torch.equal(value, snapshots[1][key]), key


def test_atomic_directory_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic.directory(target) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic.directory(target) as tmp:
        (tmp / "whole").write_text("x")
    assert [p.name for p in target.iterdir()] == ["whole"]


def test_checkpoint_round_trip_and_refusal(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.build("mlp", 1, 8, 2, [0.5], [0.25], OPTIONS)
    result = loop.EpochResult(1, 0.5, 0.8, 0.4, 0.9, 1e-3, 2.0)
    state = loop.TrainState(
        generator=torch.Generator().manual_seed(3).get_state(),
        torch_rng=torch.get_rng_state(),
        epoch=1,
        model=model.state_dict(),
        optimizer={"state": {}, "param_groups": []},
        scheduler=None,
        history=(result,),
        best_acc=0.9,
        best_epoch=1,
        best_state={k: v.clone() for k, v in model.state_dict().items()},
    )
    path = tmp_path / "ckpt" / "train.pt"
    checkpoints.save(state, "fp-a", "run-1", path)
    loaded, notice = checkpoints.load("fp-a", path)
    assert loaded is not None and loaded.run_id == "run-1" and notice is None
    assert (
        loaded.state.history == (result,)
        and loaded.state.best == result
        and loaded.state.epoch == 1
    )
    assert torch.equal(loaded.state.generator, state.generator)
    assert all(torch.equal(loaded.state.model[k], v) for k, v in state.model.items())
    assert checkpoints.load("fp-b", path) == (
        None,
        f"ignoring {path}: it belongs to a run with other parameters or statistics",
    )
    path.write_bytes(b"truncated")
    none, notice = checkpoints.load("fp-a", path)
    assert none is None and notice.startswith(
        f"ignoring {path}: not a checkpoint of this pipeline ("
    )
    checkpoints.remove(path)
    assert checkpoints.load("fp-a", path) == (None, None)
    assert not path.exists()


def test_changed_params_compare_validated_values() -> None:
    from pipeline.core.params import flatten, parse_params
    from pipeline.core.tracking.provenance import changed_params

    committed = "train:\n  lr: 1\n  cnn_channels: [24, 32]\n"
    current = flatten(parse_params({}))  # validated: MNIST's auto batch size and epochs are numbers
    assert changed_params(committed, {**current, "train.lr": 1.0}) == {}  # 1 and 1.0 are one value
    assert changed_params(committed, {**current, "train.lr": 0.005, "seed": 7}) == {
        "train.lr": "0.005",
        "seed": "7",
    }
    assert changed_params("not: [valid", {"seed": 1}) == {
        "seed": "1"
    }  # nothing to compare with: all changed


def test_early_stopping_is_decided_by_the_state() -> None:
    cfg = TrainParams(epochs=10, patience=2, scheduler="none")
    state = loop.TrainState.start(0)
    assert not state.finished(cfg)
    assert loop.TrainState(generator=state.generator, epoch=3, best_epoch=1).finished(
        cfg
    )  # 2 epochs without better
    assert not loop.TrainState(generator=state.generator, epoch=2, best_epoch=1).finished(cfg)
    assert loop.TrainState(generator=state.generator, epoch=10, best_epoch=10).finished(
        cfg
    )  # out of epochs
    assert not loop.TrainState(generator=state.generator, epoch=9, best_epoch=1).finished(
        TrainParams(epochs=10, patience=None)
    )


@pytest.mark.parametrize(
    ("epochs", "epoch", "best_epoch", "stops"),
    [
        (20, 4, 2, False),  # a new user's folder run stopped here, the rate still rising
        (20, 6, 1, False),  # the peak: epoch 6 of 20
        (20, 7, 1, False),
        (20, 8, 1, True),  # patience 2 after the peak
        (20, 9, 8, False),
        (20, 10, 8, True),
        (2, 2, 1, False),  # MNIST's defaults: never stop early
        (10, 5, 1, True),  # peak at 3
    ],
)
def test_with_one_cycle_patience_counts_from_the_peak(
    epochs: int, epoch: int, best_epoch: int, stops: bool
) -> None:
    from pipeline.core.optim import peak_epoch

    cfg = TrainParams(epochs=epochs, patience=2, scheduler="onecycle")
    assert peak_epoch(cfg) == -(-3 * epochs // 10)
    state = loop.TrainState.start(0)
    late = loop.TrainState(generator=state.generator, epoch=epoch, best_epoch=best_epoch)
    assert late.patience_exhausted(cfg) is stops


def test_seeding_turns_on_deterministic_algorithms() -> None:
    torch.use_deterministic_algorithms(False)
    runtime.seed_everything(
        0
    )  # sets the flag without torch's public setter (see loop.seed_everything)
    assert torch.are_deterministic_algorithms_enabled()


DEGENERATE = {
    # The smallest input that crashed the hand-written curves: every score tied.
    "constant": (torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])),
    "one class always": (torch.tensor([[0.0, 9.0, 0.0]] * 6), torch.tensor([0, 1, 2, 0, 1, 2])),
    "diverged but finite": (
        torch.tensor([[3e38, -3e38, 0.0], [1e30, 1e30, -1e30]] * 3),
        torch.tensor([0, 1, 2] * 2),
    ),
    "a class never seen": (
        torch.randn(5, 3, generator=torch.Generator().manual_seed(0)),
        torch.tensor([0, 1, 0, 1, 0]),
    ),
}


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_models_are_evaluated_with_finite_numbers(case: str) -> None:
    import math

    logits, labels = DEGENERATE[case]
    rep = metrics.report(logits, labels, ["a", "b", "c"], top_k=2)
    assert all(math.isfinite(v) for v in rep.scalars().values()), rep.scalars()
    roc, pr = metrics.curves(logits, labels, ["a", "b", "c"])
    assert roc and pr
    assert all(0 <= x <= 1 and 0 <= y <= 1 for _, x, y in [*roc, *pr])
    if case == "constant":
        assert rep.roc_auc == 0.5  # scikit-learn's definition for tied scores


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_nll_is_cross_entropy_with_the_same_label_smoothing(smoothing: float) -> None:
    from pipeline.core.optim import LOSSES

    torch.manual_seed(0)
    logits, labels = torch.randn(64, 10), torch.randint(0, 10, (64,))
    cfg = TrainParams(label_smoothing=smoothing)
    nll, cross_entropy = (
        LOSSES["nll"](cfg)(logits, labels),
        LOSSES["cross_entropy"](cfg)(logits, labels),
    )
    assert nll.item() == pytest.approx(cross_entropy.item(), abs=1e-6)
    plain = LOSSES["cross_entropy"](TrainParams(label_smoothing=0.0))(logits, labels)
    assert (cross_entropy.item() != plain.item()) == (smoothing > 0)  # the parameter is not ignored


# The flags of the three CPU families the pipeline runs on, as /proc/cpuinfo spells them.
FAMILIES = {  # family: (flags, computes bf16 natively)
    "AVX2 only (AMD EPYC)": ({"avx2", "fma"}, False),
    "AVX-512 without bf16 (Intel Ice Lake)": (
        {"avx2", "avx512f", "avx512bw", "avx512_vnni"},
        False,
    ),
    "AVX-512 with bf16 (Cooper Lake)": ({"avx2", "avx512f", "avx512_bf16"}, True),
    "AMX (Sapphire Rapids and later)": (
        {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"},
        True,
    ),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(family: str) -> None:
    from pipeline.core import cpu

    flags, expected = FAMILIES[family]
    native = cpu.native_bf16(flags)
    assert native == expected
    assert runtime.uses_bf16(TrainParams(precision="auto"), native) == native
    assert runtime.uses_bf16(TrainParams(precision="fp32"), native) is False
    assert runtime.uses_bf16(TrainParams(precision="bf16"), native) is True
    assert (
        runtime.uses_bf16(TrainParams(precision="auto", portable=True, threads=1), native) is False
    )
    # a network with depthwise convolutions stays fp32 under auto on a CPU, not when asked for bf16
    auto, bf16 = TrainParams(precision="auto"), TrainParams(precision="bf16")
    assert runtime.uses_bf16(auto, native, depthwise_on_cpu=True) is False
    assert runtime.uses_bf16(bf16, native, depthwise_on_cpu=True) is True


@pytest.mark.parametrize(
    ("model", "expected"),
    [("cnn", False), ("resnet18", False), ("mobilenet_v3_small", True), ("efficientnet_b0", True)],
)
def test_auto_precision_on_a_cpu_keeps_depthwise_networks_fp32(model: str, expected: bool) -> None:
    from pipeline.core import cpu, models

    assert models.depthwise(model) is expected
    rt = runtime.make_runtime(TrainParams(model=model, device="cpu"))
    bf16 = cpu.native_bf16() and not expected
    assert rt.autocast_dtype == (torch.bfloat16 if bf16 else None)


@pytest.mark.parametrize(
    ("architecture", "channels", "size"),
    [("cnn", 1, 28), ("mlp", 1, 28), ("resnet18", 3, 32), ("mobilenet_v3_small", 3, 40)],
)
def test_training_bytes_counts_what_a_real_forward_pass_makes(
    architecture: str, channels: int, size: int
) -> None:
    options = models.options_from(TrainParams())
    torch.manual_seed(0)
    net = models.build(
        architecture, channels, size, 10, [0.5] * channels, [0.5] * channels, options
    )
    net = net.net  # the network inside the input normalisation, as training_bytes counts it
    outputs: list[int] = []
    for module in net.modules():
        if not list(module.children()):
            module.register_forward_hook(lambda m, args, out: outputs.append(out.numel()))
    net(torch.zeros(2, channels, size, size))
    weights = sum(p.numel() for p in net.parameters())
    expected = 4 * (4 * weights + 2 * 8 * (sum(outputs) // 2))
    assert models.training_bytes(architecture, channels, size, 10, options, 8) == expected
