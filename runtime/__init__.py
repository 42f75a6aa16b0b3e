"""cxr-edge runtime: the light edge side (numpy, OpenCV, ONNX Runtime, OpenVINO, pydicom); never imports torch."""

from .contract import Contract
from .errors import ContractError, CxrEdgeError, ImageError, ModelError
from .images import LoadedImage, load_image, read_image

__all__ = ["Contract", "ContractError", "CxrEdgeError", "ImageError", "ModelError", "LoadedImage", "load_image",
           "read_image"]
