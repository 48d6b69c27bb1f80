"""Every parameter of the pipeline, validated once into typed, frozen objects.

`params.yaml` is read here and nowhere else. Each field carries its default (the only place it is
written down), its allowed values and a one-line help text; the README's parameter reference is
generated from the same fields (`python -m pipeline params-reference`), so the two cannot drift apart.
"""
from __future__ import annotations

import dataclasses
import math
import operator
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import PipelineError

# Names only: the registries that implement them (core.datasets, core.models, core.optim) import
# torch, which the edge should not pay for. tests/test_params.py checks the two agree.
DATASETS = ("mnist", "fashion_mnist", "kmnist", "cifar10")
MODELS = ("cnn", "mlp", "resnet", "resnet18")
OPTIMIZERS = ("adam", "adamw", "sgd", "adadelta", "rmsprop")
LOSSES = ("cross_entropy", "nll")
SCHEDULERS = ("none", "step", "cosine", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")

MAX_FILE_BYTES = 1 << 20  # params.yaml is a few kB; anything near this is a mistake or an attack
# MLflow's own rules for aliases (alphanumerics, _ and -; "latest" and v<number> are reserved) and
# registered-model names (no / or :), checked here so a bad value stops before training, not after.
ALIAS_PATTERN = r"(?![vV]\d+$)(?![lL][aA][tT][eE][sS][tT]$)[\w-]{1,255}"
MODEL_NAME_PATTERN = r"[^/:]{1,255}"


def spec(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    pattern: tuple[str, str] | None = None,
) -> Any:
    """A dataclass field with a default, constraints and the help text used in the README.

    `pattern` is (regular expression a string must match in full, how to say it in a message).
    """
    meta = {"help": help, "choices": choices, "gt": gt, "ge": ge, "lt": lt, "le": le, "pattern": pattern}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataParams:
    dataset: str = spec("mnist", "Dataset to train and evaluate on.", choices=DATASETS)
    val_size: int = spec(
        5000, "Images carved out of the training split for validation (seeded, stratified).", ge=1
    )
    limit: int | None = spec(
        None, "Cap on the training images used for fitting, for quick runs; null = all.", ge=1
    )
    mirror: str | None = spec(
        None,
        "Local folder with the dataset's original files, used before any download "
        "(relative to the project root); null = none.",
    )
    augment: bool = spec(False, "Random crop (4 px padding) and horizontal flip of training batches, for CIFAR-10.")


@dataclass(frozen=True)
class TrainParams:
    model: str = spec(
        "cnn",
        "Architecture: cnn (conv blocks), mlp, resnet (small residual net for 28/32 px), "
        "resnet18 (torchvision's, adapted to small inputs).",
        choices=MODELS,
    )
    mlp_hidden: tuple[int, ...] = spec((512, 256), "mlp: sizes of the hidden layers.", ge=1, le=1 << 20)
    cnn_channels: tuple[int, ...] = spec(
        (16, 32), "cnn: output channels of each conv block (each halves the size).", ge=1, le=1 << 16
    )
    dropout: float = spec(0.1, "Dropout probability: mlp after each hidden layer, cnn before its last layer.", ge=0, lt=1)
    batch_norm: bool = spec(
        False, "cnn: batch normalisation after each convolution (off by default: ~20 % slower on CPU for ~0.1 pt on MNIST)."
    )
    pretrained: bool = spec(False, "resnet18: start from torchvision's ImageNet weights (needs the network).")
    freeze_backbone: bool = spec(False, "resnet18: train only the final classifier layer.")
    optimizer: str = spec("adam", "Optimizer.", choices=OPTIMIZERS)
    lr: float = spec(0.008, "Learning rate (the peak rate with the onecycle scheduler).", gt=0)
    momentum: float = spec(0.9, "sgd and rmsprop: momentum.", ge=0, lt=1)
    nesterov: bool = spec(False, "sgd: Nesterov momentum.")
    weight_decay: float = spec(0.0, "Weight decay (decoupled for adamw, L2 otherwise).", ge=0)
    loss: str = spec("cross_entropy", "Loss: cross_entropy on logits, or nll on log-softmax outputs.", choices=LOSSES)
    label_smoothing: float = spec(0.1, "Label smoothing (either loss).", ge=0, lt=1)
    batch_size: int = spec(256, "Training batch size.", ge=1)
    epochs: int = spec(3, "Maximum number of epochs.", ge=1)
    patience: int | None = spec(
        2, "Stop after this many epochs without a better validation accuracy; null = never.", ge=1
    )
    min_delta: float = spec(0.0, "Smallest rise in validation accuracy that counts as better.", ge=0)
    grad_clip: float | None = spec(None, "Clip the gradient norm to this value; null = no clipping.", gt=0)
    scheduler: str = spec(
        "onecycle", "Learning-rate schedule: step and cosine step per epoch, onecycle per batch.", choices=SCHEDULERS
    )
    step_size: int = spec(1, "step: epochs between learning-rate decays.", ge=1)
    gamma: float = spec(0.7, "step: factor applied at each decay.", gt=0, lt=1)
    precision: str = spec(
        "auto", "Autocast dtype; auto = bf16 where the CPU or GPU supports it, else fp32.", choices=PRECISIONS
    )
    channels_last: bool = spec(True, "Use the channels_last memory format (faster convolutions).")
    threads: int = spec(0, "CPU threads for torch (per process); 0 = one per core, shared out between train.processes.", ge=0)
    processes: int = spec(
        1,
        "Training processes on this machine (torchrun, gloo on CPU, NCCL on CUDA: one per GPU); each takes part "
        "of every batch, so the batch size and the schedule stay the same. 1 = one plain process, no process group.",
        ge=1,
    )
    portable: bool = spec(
        False,
        "Byte-identical results on every x86 CPU with AVX2: pins ATen, oneDNN and MKL to AVX2 and runs fp32 "
        "(needs train.threads >= 1; slower on AVX-512 CPUs, which lose bf16).",
    )
    device: str = spec("auto", "auto = cuda when available, else cpu.", choices=DEVICES)


@dataclass(frozen=True)
class EvaluateParams:
    top_k: int = spec(3, "k of the top-k test accuracy (metric topK_accuracy).", ge=1)


@dataclass(frozen=True)
class MlflowParams:
    experiment_name: str = spec("image-classification", "MLflow experiment that every run lands in.")
    register_model: str | None = spec(
        None, "Register the trained model under this name in the MLflow model registry; null = don't.",
        pattern=(MODEL_NAME_PATTERN, "a name without / or :"),
    )
    model_alias: str = spec(
        "candidate", "Alias set on the registered model version.",
        pattern=(ALIAS_PATTERN, "letters, digits, _ and - (not 'latest' or v<number>, which MLflow reserves)"),
    )


@dataclass(frozen=True)
class Params:
    seed: int = spec(42, "Seed for the validation split, initialisation and shuffling.", ge=0, lt=1 << 32)
    data: DataParams = field(default_factory=DataParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading exponent floats without a dot (1e-05) as numbers, as YAML 1.2 does.

    `dvc exp run -S train.lr=0.00001` (and so every sweep trial with a small value) writes `lr: 1e-05`
    through ruamel (YAML 1.2); PyYAML's YAML 1.1 rules would read that back as the string '1e-05'.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_yaml(text: str) -> Any:
    """YAML text as plain values, numbers read as DVC writes them (see _Loader): for params.yaml and files like it."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)


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
        raise PipelineError(f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB; not a parameters file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        # Aliases are refused before anything is built: nested aliases ("billion laughs") expand
        # exponentially, and a parameters file never needs them.
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise PipelineError(f"{path}: YAML alias *{event.anchor} at line {line}; aliases are not allowed here")
        raw = read_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise PipelineError(f"{path}: not valid YAML{where}: {problem}") from None
    if raw is None:
        raise PipelineError(f"{path}: empty; it must hold the parameters (git checkout {path} restores them)")
    return parse_params(raw, source=str(path))


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate a plain mapping (as loaded from YAML) into Params, each value and then the combinations."""
    params = _build(Params, raw, prefix="", source=source)
    train = params.train
    if train.portable and train.threads == 0:
        raise PipelineError(f"{source}: train.threads must be >= 1 with train.portable (thread count changes sums)")
    if train.portable and (train.precision == "bf16" or train.device == "cuda"):
        key = "train.precision" if train.precision == "bf16" else "train.device"
        raise PipelineError(f"{source}: {key} must not be {getattr(train, key.split('.')[1])} with train.portable (CPU fp32 only)")
    if train.batch_size < train.processes:
        raise PipelineError(
            f"{source}: train.batch_size must be >= train.processes (each process takes part of every batch), "
            f"got {train.batch_size} < {train.processes}"
        )
    if params.data.val_size < train.processes:
        raise PipelineError(
            f"{source}: data.val_size must be >= train.processes (each process scores part of the validation "
            f"images), got {params.data.val_size} < {train.processes}"
        )
    return params


def flatten(params: Any, prefix: str = "") -> dict[str, Any]:
    """The parameters as `{dotted.key: value}`, the names `dvc exp run -S` and MLflow use."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, prefix=f"{key}."))
        else:
            out[key] = value
    return out


def reference() -> list[tuple[str, str, str, str]]:
    """(dotted key, default, allowed values, help) for every parameter, for the README."""
    rows: list[tuple[str, str, str, str]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{key}.")
                continue
            rows.append((key, _yaml_scalar(f.default), _describe(hints[f.name], f.metadata), f.metadata["help"]))

    walk(Params, "")
    return rows


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise PipelineError(f"{source}: {where} must be a mapping of keys to values, got {_show(raw)}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            known = ", ".join(f"{prefix}{n}" for n in names)
            raise PipelineError(f"{source}: unknown parameter '{prefix}{key}' (known here: {known})")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = _build(hints[f.name], raw[f.name], f"{key}.", source)
        else:
            values[f.name] = _check(key, hints[f.name], f.metadata, raw[f.name], source)
    return cls(**values)


def _check(key: str, hint: Any, meta: Any, value: Any, source: str) -> Any:
    base, optional = _unwrap(hint)

    def bad() -> PipelineError:
        return PipelineError(f"{source}: {key} must be {_describe(hint, meta)}, got {_show(value)}")

    if typing.get_origin(base) is tuple:
        if not isinstance(value, list) or not value:
            raise bad()
        try:
            return tuple(_check(key, typing.get_args(base)[0], meta, item, source) for item in value)
        except PipelineError:
            raise bad() from None
    if value is None:
        if optional:
            return None
        raise bad()
    if base is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad()
        value = float(value)
    elif base is str:
        if not isinstance(value, str) or not value.strip():
            raise bad()
        if meta["choices"] and value not in meta["choices"]:
            raise bad()
        if meta["pattern"] and not re.fullmatch(meta["pattern"][0], value):
            raise bad()
    for bound, holds in (("gt", operator.gt), ("ge", operator.ge), ("lt", operator.lt), ("le", operator.le)):
        if meta[bound] is not None and not holds(value, meta[bound]):
            raise bad()
    return value


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type, whether null is allowed) of `X` or `X | None`."""
    args = typing.get_args(hint)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _describe(hint: Any, meta: Any) -> str:
    base, optional = _unwrap(hint)
    if typing.get_origin(base) is tuple:
        return "a non-empty list of " + _describe(typing.get_args(base)[0], meta).replace("an integer", "integers")
    if meta["choices"]:
        text = "one of " + ", ".join(meta["choices"])
    elif meta["pattern"]:
        text = meta["pattern"][1]
    else:
        text = {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string"}[base]
        signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        bounds = [f"{sign} {_number(meta[b])}" for b, sign in signs.items() if meta[b] is not None]
        if bounds:
            text += " " + " and ".join(bounds)
    return text + (" or null" if optional else "")


def _number(x: float) -> str:
    """A bound as a person writes it: 4294967296, not 4.29497e+09; 0.5 as 0.5."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, dict) else "a mapping"
    return text if len(text) <= 60 else text[:57] + "..."
