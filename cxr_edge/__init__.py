"""cxr-edge: chest X-ray classification (normal, COVID-19, bacterial and viral pneumonia) at the edge."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cxr-edge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
