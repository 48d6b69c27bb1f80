"""models/model.pt as models/model.onnx (fp32, its preprocessing in its metadata) and the proof
that both give the same answers on every test picture: the evaluate stage does both, on the test
split it has loaded and the torch logits it has computed (a stage of its own would pay seconds of
imports and a second pass over the test split).

The ONNX model takes what the pictures are on disk, uint8 N×C×H×W (0–255, any N), and returns
float32 logits N×classes: the normalisation (÷255, then the training mean and std) is inside the
graph, as it is inside the torch model (core.layers.NormalizedModel), and written beside it in
`metadata_props` (class_names, image_size, channels, mean, std as JSON) so a reader needs neither
torch nor this package to prepare a picture: core.images.read, then the graph.

The reading half (`Session`, `read_metadata`) imports onnxruntime and NumPy only: `predict` runs the
ONNX model without loading torch. The writing half imports torch where it is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core import atomic, paths
from pipeline.core.errors import PipelineError, first_line

if TYPE_CHECKING:
    from pipeline.core.layers import NormalizedModel
    from pipeline.core.tracking import Tracker

# Probabilities of the ONNX model and the torch model, both fp32 on the CPU, may differ by this
# much. They compute the same float32 weights with other kernels (onnxruntime's MLAS against
# oneDNN), so sums are rounded in another order: logits differ by about 1e-6, probabilities by less
# (softmax's slope is at most 1/4). Training in bf16 autocast does not matter here: the weights
# model.pt holds are float32 (autocast keeps them so) and both sides compute in float32. The
# reference is the torch model in fp32, not under autocast, whose bf16 rounding (8-bit mantissa,
# about 4e-3 relative) would alone exceed this. 1e-4 is a hundred times the float32 noise and far
# below what a wrong normalisation, a missing layer or a bf16 path would give.
TOLERANCE = 1e-4
OPSET = 17  # onnxruntime 1.31 runs 7-23; 17 is what the legacy exporter and most runtimes know well
INPUT, OUTPUT = "images", "logits"
BATCH = 1024  # pictures per onnxruntime call: bounded memory for large pictures


@dataclass(frozen=True)
class Parity:
    """How the ONNX model's answers compare with the torch model's on the test split."""

    test_images: int
    top1_agreement: float  # fraction of pictures with the same top class
    max_abs_prob_diff: float  # largest |p_onnx - p_torch| over every picture and class
    tolerance: float = TOLERANCE

    def problem(self) -> str | None:
        """The one line saying why the export is refused, or None when it passes."""
        if self.top1_agreement < 1.0:
            changed = round((1 - self.top1_agreement) * self.test_images)
            return (
                f"the ONNX model's top class differs from the torch model's for {changed} of "
                f"{self.test_images} test pictures"
            )
        if not self.max_abs_prob_diff <= self.tolerance:  # NaN fails too
            return (
                "the ONNX model's probabilities differ from the torch model's by up to "
                f"{self.max_abs_prob_diff:.2e} (tolerance {self.tolerance:.0e}) on "
                f"{self.test_images} test pictures"
            )
        return None


def metadata(meta: Mapping[str, Any], source_sha256: str) -> dict[str, str]:
    """The `metadata_props` of the ONNX model: what to feed it and what it answers, from model.pt's
    metadata (strings; lists and numbers as JSON), and the sha256 of the model.pt it was exported
    from (`predict` uses the ONNX model only while it matches)."""
    c, s = meta["in_channels"], meta["image_size"]
    return {
        "source_sha256": source_sha256,
        "class_names": json.dumps(list(meta["class_names"])),
        "image_size": str(s),
        "channels": str(c),
        "mean": json.dumps([float(v) for v in meta["mean"]]),
        "std": json.dumps([float(v) for v in meta["std"]]),
        "input": f"{INPUT}: uint8 (N, {c}, {s}, {s}), pixels 0-255, normalised inside the graph "
        "as (x / 255 - mean) / std",
        "output": f"{OUTPUT}: float32 (N, {len(meta['class_names'])}), columns in class_names "
        "order",
        "architecture": str(meta["architecture"]),
        "dataset": str(meta["dataset"]),
    }


def to_onnx(model: NormalizedModel, meta: Mapping[str, Any], source_sha256: str = "") -> bytes:
    """The model (in eval mode, fp32) as ONNX bytes with `metadata`; the batch size is free.

    torch's TorchScript-based exporter (dynamo=False): the torch.export-based one needs onnxscript
    and imports torch._dynamo, seconds of every run for a graph of plain layers that tracing
    captures exactly. Its deprecation notice is silenced here, and only that."""
    import onnx
    import torch

    model = model.float().eval().to(memory_format=torch.contiguous_format)
    c, s = meta["in_channels"], meta["image_size"]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        torch.onnx.export(
            model,
            (torch.zeros(2, c, s, s, dtype=torch.uint8),),
            buf,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "N"}, OUTPUT: {0: "N"}},
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    onnx.helper.set_model_props(proto, metadata(meta, source_sha256))
    return proto.SerializeToString()


def read_metadata(path: Path) -> dict[str, Any]:
    """An exported model's metadata (see Session.meta)."""
    return Session(path).meta()


class Session:
    """An onnxruntime session of an exported model on the CPU; `logits` runs it."""

    def __init__(self, model: Path | bytes, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's choice, one per core
        options.log_severity_level = 3  # errors only: its warnings would reach the user's stderr
        self.source = "ONNX bytes" if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(
                model if isinstance(model, bytes) else str(model),
                options,
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own classes for a damaged file
            raise PipelineError(
                f"{self.source}: not an ONNX model onnxruntime can run ({first_line(exc)})"
            ) from None
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def meta(self) -> dict[str, Any]:
        """The metadata under model.pt's names (class_names, in_channels, image_size, mean, std,
        architecture, dataset) and source_sha256; PipelineError naming the file when it lacks
        them."""
        props = self.metadata
        try:
            return {
                "class_names": json.loads(props["class_names"]),
                "in_channels": int(props["channels"]),
                "image_size": int(props["image_size"]),
                "mean": json.loads(props["mean"]),
                "std": json.loads(props["std"]),
                "architecture": props.get("architecture", "?"),
                "dataset": props.get("dataset", "?"),
                "source_sha256": props.get("source_sha256", ""),
            }
        except (KeyError, ValueError) as exc:
            raise PipelineError(
                f"{self.source}: not a model written by the evaluate stage (metadata "
                f"{first_line(exc)})"
            ) from None

    def logits(self, images: Any) -> np.ndarray:
        """float32 logits N×classes for uint8 `images` N×C×H×W (an array, a tensor, or anything
        sliced into them), in batches of BATCH."""
        out = [
            self.session.run(
                [OUTPUT], {INPUT: np.ascontiguousarray(np.asarray(images[i : i + BATCH]))}
            )[0]
            for i in range(0, len(images), BATCH)
        ]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise probabilities (float64) of logits N×classes."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def parity(torch_logits: np.ndarray, onnx_logits: np.ndarray) -> Parity:
    """Top-1 agreement and the largest probability difference of two N×classes logit arrays."""
    p, q = softmax(torch_logits), softmax(onnx_logits)
    return Parity(
        test_images=len(p),
        top1_agreement=float((p.argmax(1) == q.argmax(1)).mean()) if len(p) else 1.0,
        max_abs_prob_diff=float(np.abs(p - q).max()) if p.size else 0.0,
    )


def check(
    model: NormalizedModel,
    meta: Mapping[str, Any],
    images: Any,
    reference: np.ndarray,
    threads: int = 0,
) -> tuple[Parity, bytes]:
    """models/model.pt's `model` as ONNX bytes, checked on every test picture: `images` (uint8
    N×C×H×W) against `reference`, the torch model's float32 logits N×classes for them in fp32 (no
    autocast, no test-time augmentation). Returns (parity, ONNX bytes); nothing is written.

    Raises PipelineError naming models/model.onnx when the ONNX model disagrees: a top class
    differs, or a probability by more than TOLERANCE.
    """
    onnx_bytes = to_onnx(model, meta, sha256(paths.MODEL))
    result = parity(reference, Session(onnx_bytes, threads).logits(images))
    problem = result.problem()
    if problem:
        raise PipelineError(f"{paths.ONNX_MODEL}: {problem}; not exported")
    return result, onnx_bytes


def record(result: Parity, onnx_bytes: bytes, tracker: Tracker) -> None:
    """models/model.onnx and metrics/export.json written, the parity figures (export.*) and the
    ONNX model logged into the open run of `tracker`."""
    atomic.write_bytes(paths.ONNX_MODEL, onnx_bytes)
    atomic.write_json(paths.EXPORT_METRICS, asdict(result))
    tracker.log_metrics({f"export.{k}": v for k, v in asdict(result).items()})
    tracker.log_file(paths.ONNX_MODEL)
