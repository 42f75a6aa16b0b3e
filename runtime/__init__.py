"""cxr-edge runtime: the light edge side (numpy, OpenCV, ONNX Runtime, OpenVINO, pydicom); never imports torch.

The public names below are imported on first use, so that importing a small module of this package (the CLI
imports `model_file` and `errors` to build its options) does not pay for numpy and OpenCV.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Classifier", "Prediction", "Contract", "ContractError", "CxrEdgeError", "ImageError", "ModelError",
           "LoadedImage", "load_image", "read_image"]

_HOMES = {"Classifier": "classifier", "Prediction": "classifier", "Contract": "contract", "ContractError": "errors",
          "CxrEdgeError": "errors", "ImageError": "errors", "ModelError": "errors", "LoadedImage": "images",
          "load_image": "images", "read_image": "images"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
