"""Every parameter of the pipeline, validated once into typed, frozen objects; params.yaml read as
DVC reads it.

`params.yaml` is read here and nowhere else, with ruamel.yaml's safe loader exactly as DVC parses it
(`dvc.utils.serialize.parse_yaml`, YAML 1.2): what `dvc exp run -S seed=4:2` records is what the
stages see (`'4:2'`, refused as a seed), not PyYAML's YAML 1.1 reading (sexagesimal 242, `off` as
false). Each field carries its default (the only place it is written down), its allowed values and a
one-line help text; the parameter reference in docs/ is generated from the same fields
(`python -m pipeline params-reference`). What no single field states (values that must agree,
keys since replaced) is checked by core.param_checks.

The names train.model, train.optimizer, train.scheduler and train.loss accept are written here, as
their fields' choices; the functions they name are in core.models and core.optim, as dicts from name
to function (tests/test_params.py checks that the two agree). This module imports neither: every
stage checks the whole params.yaml, and DVC reruns a stage when a module it imports changes, so
editing a network or an optimizer reruns train and evaluate, never the decoding of your pictures.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.core import datasets, param_checks, zoo_table
from pipeline.core.auto import builtin_auto
from pipeline.core.errors import PipelineError
from pipeline.core.validation import build, spec
from pipeline.core.yamlio import read_yaml, write_yaml

PRECISIONS = ("auto", "fp32", "bf16")
# Ours first, then every classification architecture torchvision ships (core.zoo); "resnet18" is
# ours: torchvision's with a stem for 28/32 px pictures.
MODELS = (
    "cnn",
    "mlp",
    "resnet",
    "resnet18",
    *(n for n in zoo_table.ARCHITECTURES if n != "resnet18"),
)
DEVICES = ("auto", "cpu", "cuda")
AUGMENT_POLICIES = ("none", "trivialaugment", "randaugment", "autoaugment")
SAMPLERS = ("shuffle", "balanced")
CLASS_WEIGHTS = ("none", "balanced")  # or a mapping from class name to weight
MAX_FILE_BYTES = 1 << 20  # params.yaml is a few kB; anything near this is a mistake or an attack
# MLflow's own rules for aliases (alphanumerics, _ and -; "latest" and v<number> are reserved) and
# registered-model names (no / or :), checked here so a bad value stops before training, not after.
ALIAS_PATTERN = r"(?![vV]\d+$)(?![lL][aA][tT][eE][sS][tT]$)[\w-]{1,255}"
MODEL_NAME_PATTERN = r"[^/:]{1,255}"


@dataclass(frozen=True)
class DataParams:
    dataset: str = spec(
        "mnist",
        "Dataset to train and evaluate on; folder = your own pictures (data.folder).",
        choices=tuple(datasets.DATASETS),
    )
    folder: str = spec(
        "examples/images",
        "folder: your pictures, one subfolder per class (or train/ and test/, optionally val/, "
        "each so), relative to "
        "the project root; a DVC dependency of the download stage.",
    )
    image_size: int | None = spec(
        None,
        "folder: side of the square the pictures are resized and cropped to, in pixels; null = 64 "
        "(the "
        "built-in datasets keep their own).",
        ge=8,
        le=1024,
    )
    channels: int | None = spec(
        None,
        "folder: 1 (grey) or 3 (colour); null = 3 (the built-in datasets keep their own).",
        ge=1,
        le=3,
    )
    test_size: float = spec(
        0.2,
        "folder without test/: about this fraction of each class (at least one picture) held out "
        "once, at decoding, as the test split, chosen by a hash of each picture's path inside its "
        "class folder: adding pictures moves no other.",
        gt=0,
        lt=1,
    )
    val_size: int = spec(
        5000,
        "Images carved out of the training split for validation (seeded, stratified), fewer than "
        "it holds; for a folder about as many (at most a fifth), chosen by a seeded hash of each "
        "picture's path inside its class folder, and its val/ replaces it.",
        ge=1,
    )
    limit: int | None = spec(
        None, "Cap on the training images used for fitting, for quick runs; null = all.", ge=1
    )
    mirror: str | None = spec(
        None,
        "Local folder with the dataset's original files, used before any download "
        "(relative to the project root); null = none.",
    )
    augment: bool = spec(
        False,
        "Augment training batches: random shifts of up to 2 px for the grey 28 px datasets; "
        "random crop (4 px padding) and flip for CIFAR-10; random resized crop and flip "
        "(torchvision's) for a folder's photographs.",
    )
    # Photographs' augmentation: each drawn from the run's seeded generator, off by default.
    augment_policy: str = spec(
        "none",
        "An automatic augmentation policy on every training batch (torchvision's, on uint8): "
        "trivialaugment (TrivialAugmentWide), randaugment (RandAugment), autoaugment (ImageNet's "
        "AutoAugment); none = off.",
        choices=AUGMENT_POLICIES,
    )
    color_jitter: float = spec(
        0.0,
        "Random brightness, contrast and saturation changes of up to this fraction (colour "
        "pictures; brightness and contrast alone on grey ones); 0 = off.",
        ge=0,
        le=1,
    )
    random_erasing: float = spec(
        0.0,
        "Probability that a random rectangle of a training picture is erased (RandomErasing); "
        "0 = off.",
        ge=0,
        le=1,
    )
    sampler: str = spec(
        "shuffle",
        "How each epoch draws the fitting images: shuffle = each once, in a seeded random order; "
        "balanced = as many draws, with replacement, each class equally likely (torch's "
        "WeightedRandomSampler, from the run's seeded generator).",
        choices=SAMPLERS,
    )


@dataclass(frozen=True)
class TrainParams:
    model: str = spec(
        "cnn",
        "Architecture: cnn (conv blocks), mlp, resnet (small residual net for 28/32 px), "
        "resnet18 (torchvision's, adapted to small inputs), or any other torchvision "
        "classification model by its name, its head sized for the classes (docs/transfer.md).",
        choices=MODELS,
    )
    mlp_hidden: tuple[int, ...] = spec(
        (512, 256), "mlp: sizes of the hidden layers.", ge=1, le=1 << 20
    )
    cnn_channels: tuple[int, ...] = spec(
        (24, 32),
        "cnn: output channels of each conv block (each halves the size, or so).",
        ge=1,
        le=1 << 16,
    )
    cnn_stem: str = spec(
        "stride2",
        "cnn: the first block; pool = a 3×3 convolution and a 2×2 max-pool, like every block; "
        "stride2 = a "
        "5×5 convolution with stride 2 (a quarter of the work), the later blocks unpadded (LeNet's "
        "shape).",
        choices=("pool", "stride2"),
    )
    cnn_hidden: int = spec(
        256, "cnn: units of the fully connected layer before the output.", ge=1, le=1 << 16
    )
    dropout: float = spec(
        0.0,
        "Dropout probability: mlp after each hidden layer, cnn before its last layer.",
        ge=0,
        lt=1,
    )
    batch_norm: bool = spec(
        False,
        "cnn: batch normalisation after each convolution (off by default: slower on CPU for a "
        "small gain on MNIST; the accurate preset turns it on).",
    )
    weights: str = spec(
        "none",
        "Starting weights (the weights stage puts them in models/start.pt): none; imagenet (the "
        "architecture's DEFAULT torchvision weights, from torch's hub cache); a torchvision "
        "weights entry (ResNet18_Weights.IMAGENET1K_V1); a state_dict file under weights/ (.pt, "
        ".pth); or an MLflow model of an earlier run (runs:/RUN_ID, runs:/RUN_ID/NAME, models:/ID "
        "as models/mlflow_run.json's model_uri, models:/NAME@ALIAS), its head "
        "new when the classes differ. torchvision's weights bring their picture size (folder, "
        "data.image_size null) and normalisation (docs/transfer.md).",
    )
    # Fine-tuning and regularisation (core.finetune): every one off by default.
    freeze_backbone: bool = spec(
        False,
        "Train only the head (the last linear layer) in every epoch, the backbone's weights and "
        "batch-norm statistics frozen: train.freeze_epochs for the whole run.",
    )
    freeze_epochs: int = spec(
        0,
        "Fine-tuning: the first this many epochs train only the head (the last linear layer), the "
        "backbone's weights and batch-norm statistics frozen; then every layer trains.",
        ge=0,
    )
    backbone_lr_scale: float = spec(
        1.0,
        "The backbone's learning rate is train.lr times this (its own optimizer parameter group); "
        "the head's is train.lr.",
        ge=0,
    )
    mixup_alpha: float = spec(
        0.0,
        "MixUp: blend pairs of training pictures and their labels (soft targets), the share drawn "
        "from Beta(alpha, alpha); 0 = off. With train.cutmix_alpha each batch uses one of them.",
        ge=0,
    )
    cutmix_alpha: float = spec(
        0.0,
        "CutMix: paste a rectangle of another training picture, the labels mixed by its area, "
        "drawn from Beta(alpha, alpha); 0 = off.",
        ge=0,
    )
    ema_decay: float | None = spec(
        None,
        "Keep an exponential moving average of the weights (this decay per step), validated and "
        "saved in place of the last weights; null = off.",
        gt=0,
        lt=1,
    )
    optimizer: str = spec(
        "adam", "Optimizer.", choices=("adam", "adamw", "sgd", "adadelta", "rmsprop")
    )
    lr: float = spec(0.01, "Learning rate (the peak rate with the onecycle scheduler).", gt=0)
    momentum: float = spec(0.9, "sgd and rmsprop: momentum.", ge=0, lt=1)
    betas: tuple[float, ...] = spec(
        (0.7, 0.9), "adam and adamw: the two decay rates of the moment estimates.", ge=0, lt=1
    )
    cycle_momentum: bool = spec(
        False,
        "onecycle: cycle the momentum (Adam's first beta) against the rate, 0.95 down to 0.85 and "
        "back.",
    )
    nesterov: bool = spec(False, "sgd: Nesterov momentum.")
    weight_decay: float = spec(0.0, "Weight decay (decoupled for adamw, L2 otherwise).", ge=0)
    loss: str = spec(
        "cross_entropy",
        "Loss: cross_entropy on logits, or nll on log-softmax outputs.",
        choices=("cross_entropy", "nll"),
    )
    label_smoothing: float = spec(0.1, "Label smoothing (either loss).", ge=0, lt=1)
    class_weights: str | dict[str, float] = spec(  # noqa: RUF009 (a field(); default a str)
        "none",
        "Per-class weights of the loss: none; balanced = n_samples / (n_classes × the class's "
        "count in the fitting images), as scikit-learn's compute_class_weight; or a mapping "
        "from class name to weight (classes left out weigh 1).",
        choices=CLASS_WEIGHTS,
        ge=0,
    )
    batch_size: int | Literal["auto"] = spec(
        "auto",
        "Training batch size; auto = 256 for the built-in datasets, for a folder the largest power "
        "of two up to an eighth of its fitting pictures (at most 256; docs/datasets.md).",
        ge=1,
    )
    epochs: int | Literal["auto"] = spec(
        "auto",
        "Maximum number of epochs; auto = 2 for the built-in datasets, for a folder enough for "
        "300 optimizer steps (docs/datasets.md).",
        ge=1,
    )
    patience: int | None = spec(
        2,
        "Stop after this many epochs without a better validation accuracy (with onecycle, counted "
        "from the learning rate's peak on); null = never.",
        ge=1,
    )
    min_delta: float = spec(
        0.0, "Smallest rise in validation accuracy that counts as better.", ge=0
    )
    grad_clip: float | None = spec(
        None, "Clip the gradient norm to this value; null = no clipping.", gt=0
    )
    scheduler: str = spec(
        "onecycle",
        "Learning-rate schedule: step and cosine step per epoch, onecycle per batch.",
        choices=("none", "step", "cosine", "onecycle"),
    )
    step_size: int = spec(1, "step: epochs between learning-rate decays.", ge=1)
    gamma: float = spec(0.7, "step: factor applied at each decay.", gt=0, lt=1)
    precision: str = spec(
        "auto",
        "Autocast dtype; auto = bf16 where the CPU or GPU supports it (on a CPU, not for networks "
        "with depthwise convolutions: MobileNet, EfficientNet, ...), else fp32.",
        choices=PRECISIONS,
    )
    channels_last: bool = spec(True, "Use the channels_last memory format (faster convolutions).")
    threads: int = spec(
        0,
        "CPU threads for torch (per process); 0 = one per core, shared out between "
        "train.processes.",
        ge=0,
    )
    processes: int = spec(
        1,
        "Training processes on this machine (torchrun, gloo on CPU, NCCL on CUDA: one per GPU); "
        "each takes part "
        "of every batch, so the batch size and the schedule stay the same. 1 = one plain process, "
        "no process group.",
        ge=1,
    )
    portable: bool = spec(
        False,
        "Byte-identical results on every x86 CPU with AVX2: pins ATen, oneDNN and MKL to AVX2 and "
        "runs fp32 "
        "(needs train.threads >= 1; slower on AVX-512 CPUs, which lose bf16).",
    )
    device: str = spec("auto", "auto = cuda when available, else cpu.", choices=DEVICES)


@dataclass(frozen=True)
class EvaluateParams:
    top_k: int = spec(
        3,
        "k of the top-k test accuracy (metric topK_accuracy); capped at the number of classes "
        "(two classes: top2_accuracy).",
        ge=1,
    )
    tta: bool = spec(
        False,
        "Test-time augmentation: score each test picture by the mean softmax of it and its "
        "horizontal mirror image.",
    )


@dataclass(frozen=True)
class MlflowParams:
    experiment_name: str = spec(
        "image-classification", "MLflow experiment that every run lands in."
    )
    register_model: str | None = spec(
        None,
        "Register the trained model under this name in the MLflow model registry; null = don't.",
        pattern=(MODEL_NAME_PATTERN, "a name without / or :"),
    )
    model_alias: str = spec(
        "candidate",
        "Alias set on the registered model version.",
        pattern=(
            ALIAS_PATTERN,
            "letters, digits, _ and - (not 'latest' or v<number>, which MLflow reserves)",
        ),
    )


@dataclass(frozen=True)
class Params:
    seed: int = spec(
        42, "Seed for the validation split, initialisation and shuffling.", ge=0, lt=1 << 32
    )
    data: DataParams = field(default_factory=DataParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)


def dump_yaml(params: Params) -> str:
    """The parameters as the text of a params.yaml file (every key; read back by read_yaml to equal
    values)."""
    return write_yaml(
        {k: list(v) if isinstance(v, tuple) else v for k, v in flatten(params).items()}
    )


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate a params file; raise PipelineError naming the file or the bad key."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise PipelineError(
            f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB; not a parameters file"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    raw = read_yaml(text, str(path))
    if raw is None:
        raise PipelineError(
            f"{path}: empty; it must hold the parameters (git checkout {path} restores them)"
        )
    return parse_params(raw, source=str(path))


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate a plain mapping (as loaded from YAML) into Params, each value and then the
    combinations."""
    params = builtin_auto(
        build(Params, param_checks.without_pretrained(raw, source), prefix="", source=source)
    )
    param_checks.check_combinations(params, source)
    return params


def flatten(params: Any, prefix: str = "") -> dict[str, Any]:
    """Parameters (a dataclass of them, or the nested mapping of a YAML file) as
    `{dotted.key: value}`, the names `dvc exp run -S` and MLflow use."""
    items = (
        {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}.items()
        if dataclasses.is_dataclass(params)
        else params.items()
    )
    out: dict[str, Any] = {}
    for name, value in items:
        if dataclasses.is_dataclass(value) or isinstance(value, dict):
            out.update(flatten(value, prefix=f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"train.lr": 0.1} -> {"train": {"lr": 0.1}}: the shape of params.yaml."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, name = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = value
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with the nested keys of `override` replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def with_values(base: Params, values: dict[str, Any], source: str) -> Params:
    """`base` with dotted-key values applied, validated (raises PipelineError naming the key)."""
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in flatten(base).items()}
    return parse_params(merge(nest(plain), nest(values)), source=source)


def cli_value(value: Any) -> str:
    """A value as `dvc exp run -S key=VALUE` parses it back to the same YAML value (lists, true,
    null)."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, tuple)):
        return json.dumps(list(value) if isinstance(value, tuple) else value, separators=(",", ":"))
    return repr(value) if isinstance(value, float) else str(value)
