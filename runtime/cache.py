"""Where the runtime keeps what it can rebuild: optimised ONNX Runtime graphs, OpenVINO compiled models and the
measured choice of backend. Deleting the folder is always safe; it only makes the next start slower.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

from .cpu import cpu_flags

__all__ = ["cache_dir", "model_key", "read_json"]

CACHE_ENV = "CXR_EDGE_CACHE"


def cache_dir(kind: str) -> Path | None:
    """The cache folder for one kind of artefact, created on demand; None when nothing can be written.

    Order: ``$CXR_EDGE_CACHE``, ``$XDG_CACHE_HOME/cxr-edge``, ``~/.cache/cxr-edge``. An empty ``$CXR_EDGE_CACHE``
    turns caching off.
    """
    configured = os.environ.get(CACHE_ENV)
    if configured == "":
        return None
    if configured:
        root = Path(configured)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cxr-edge"
    folder = root / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def model_key(path: Path, *parts: object) -> str:
    """A key that changes when the model file, the library versions or the options change.

    The file enters by path, size and modification time (stat, not a hash: starts stay fast); the CPU enters
    too, because optimised graphs and compiled kernels are specific to its instruction set.
    """
    stat = path.stat()
    text = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, platform.machine(), _cpu_flags_digest(),
                       *map(str, parts)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _cpu_flags_digest() -> str:
    flags = cpu_flags()
    return hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:12] if flags else platform.processor()


def read_json(path: Path) -> dict:
    """A JSON object from a cache file, or {} when it is missing or unreadable (caches may be damaged)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
