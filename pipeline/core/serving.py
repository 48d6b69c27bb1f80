"""The model MLflow serves and loads (`mlflow models serve -m models:/ID`,
`mlflow.pyfunc.load_model`).

A models-from-code file logged with this package as its code: it rebuilds the network from the run's
models/model.pt exactly as evaluate and predict do. (Not a torch.export program: loading one imports
torch._dynamo, about 4 s of a 10 s server start.)

Input: images N×C×H×W (N×H×W for one channel), pixels either integers 0-255 or floats in [0, 1], of
any height and width (resized and centre-cropped as the training pictures were); or one column
`image` of picture files (PNG, JPEG, any format, size and colour mode Pillow reads), each
base64-encoded, decoded exactly as the training pictures were (core.images.read).
JSON keeps that difference only if MLflow does not cast the request to a dtype first, so the
signature is an untyped tensor and this class checks shape, dtype and range itself: anything else
is refused with HTTP 400 and one line naming what was expected, never answered with wrong logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

if TYPE_CHECKING:
    import torch

# torch is imported where the model is loaded or run, not at the top: MLflow also runs this file
# when it stores the model (tracking.log_model), in a process that has no other use for torch's
# import of seconds.


class InputError(MlflowException):
    """A refused request: HTTP 400 whose JSON message is our one line.

    MLflow's scoring server prefixes a model's error message with the whole input (`Failed to
    predict data '<numpy repr>'`), many lines of digits; the JSON it answers with (MlflowException's
    public `serialize_as_json`) carries the line this error was raised with instead.
    tests/test_serving.py checks the answer of a real `mlflow models serve`.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)  # HTTP 400
        self.line = message

    def serialize_as_json(self) -> str:
        return json.dumps({**json.loads(super().serialize_as_json()), "message": self.line})


def as_images(values: Any, channels: int, size: int) -> torch.Tensor:
    """The request as a uint8 or float32 N×C×size×size tensor, or InputError naming what is wrong.
    Pictures of another height and width are resized and centre-cropped as the training pictures
    were (core.images)."""
    import torch

    if hasattr(values, "columns"):  # a DataFrame, when called in-process rather than served
        if list(values.columns) != ["image"]:
            raise InputError(f"pictures must be one column `image`; got {list(values.columns)}")
        values = values["image"].to_numpy()
    x = np.asarray(values)
    if x.ndim == 1 and x.size and all(isinstance(v, (str, bytes)) for v in x.tolist()):
        return torch.from_numpy(decoded(x.tolist(), channels, size))
    if x.dtype == object:  # a JSON request, parsed without a dtype: nested Python ints or floats
        try:
            x = np.array(x.tolist())
        except ValueError:
            raise InputError(
                "images must be a rectangular array (every image the same size)"
            ) from None
    received = tuple(x.shape)  # as the client sent it (JSON carries no length for an empty row)
    if x.ndim == 3 and channels == 1:
        x = x[:, None]
    expected = f"(N, {channels}, H, W)" + (" or (N, H, W)" if channels == 1 else "")
    if x.ndim != 4 or x.shape[1] != channels or 0 in x.shape[2:]:
        raise InputError(
            f"images must have shape {expected} (resized to {size}×{size}); got {received}"
        )
    if x.dtype.kind in "iu":
        if x.size and (x.min() < 0 or x.max() > 255):
            raise InputError(f"integer pixels must be 0-255; got {x.min()} to {x.max()}")
        x = x.astype(np.uint8)
    elif x.dtype.kind == "f":
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise InputError(
                "float pixels must be in [0, 1] (send 0-255 values as integers); got "
                f"{np.nanmin(x):g} to {np.nanmax(x):g}"
            )
        x = x.astype(np.float32)
    else:
        raise InputError(f"pixels must be integers 0-255 or floats in [0, 1]; got dtype {x.dtype}")
    if x.shape[2:] != (size, size):
        x = _resized(x, channels, size)
    return torch.from_numpy(x)


def decoded(pictures: list[str | bytes], channels: int, size: int) -> np.ndarray:
    """Base64-encoded picture files as uint8 N×C×size×size, through core.images.read (EXIF
    orientation, colour mode, resize and centre crop, the limits on size), as the download stage
    decodes training pictures: each is written to a temporary file, as read takes a path.
    Raises InputError naming the first picture (0-based) that is not base64 or not readable."""
    import base64
    import binascii
    import tempfile

    from pipeline.core.images import ImageError, read

    out = []
    with tempfile.TemporaryDirectory(prefix="serving-") as tmp:
        path = Path(tmp) / "picture"
        for i, text in enumerate(pictures):
            try:
                path.write_bytes(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise InputError(
                    f"image {i}: not base64 (send each picture file base64-encoded)"
                ) from None
            try:
                out.append(read(path, channels, size))
            except ImageError as exc:
                raise InputError(f"image {i}: not a readable picture ({exc})") from None
    return np.stack(out)


def _resized(x: np.ndarray, channels: int, size: int) -> np.ndarray:
    """Pictures N×C×H×W (uint8, or floats in [0, 1], taken to 0-255) through core.images.prepare, as
    uint8."""
    from PIL import Image

    from pipeline.core.images import prepare

    if x.dtype != np.uint8:
        x = np.rint(x * 255).astype(np.uint8)
    pictures = (Image.fromarray(p[0] if channels == 1 else p.transpose(1, 2, 0)) for p in x)
    return np.stack([prepare(picture, channels, size) for picture in pictures])


class ImageModel(PythonModel):
    """pyfunc: images in, one row of class logits per image out (columns in `class_names` order)."""

    def load_context(self, context: Any) -> None:
        from pipeline.core import models

        self.model, meta = models.load(Path(context.artifacts["model"]))
        self.channels, self.size = meta["in_channels"], meta["image_size"]

    # np.ndarray is a hint MLflow passes through unchanged (no schema of its own): as_images is the
    # validation.
    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        from pipeline.core import models

        return models.logits(self.model, as_images(model_input, self.channels, self.size)).numpy()


# A models-from-code file: MLflow stores this source with the model and runs it at load, no pickle.
set_model(ImageModel())
