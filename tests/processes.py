"""Running cxr-edge as a user does: the CLI in a child process, optionally with packages made unimportable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable

HEAVY = ("torch", "torchvision", "timm", "nncf")
"""What the edge install lacks."""


def blocker(blocked: Iterable[str] = HEAVY) -> str:
    """Python source that makes importing `blocked` packages fail, as on an install without them."""
    names = sorted(set(blocked))
    return textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {names!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked: this installation must not need it")
        sys.meta_path.insert(0, Block())
    """)


def run_python(code: str, *, blocked: Iterable[str] = (), env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter, with `blocked` packages unimportable."""
    source = (blocker(blocked) if blocked else "") + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=timeout,
                          env=os.environ | (env or {}))


def run_cli(*args: object, blocked: Iterable[str] = (), env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``cxr-edge ARGS...`` in a fresh interpreter (`blocked` packages unimportable)."""
    code = f"import sys; sys.argv = ['cxr-edge', *{[str(a) for a in args]!r}]\nfrom cxr_edge.cli import main\nmain()"
    return run_python(code, blocked=blocked, env=env, timeout=timeout)
