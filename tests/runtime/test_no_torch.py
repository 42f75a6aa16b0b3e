"""The edge side must run where torch is not installed: prove it in a process where importing torch fails."""

import subprocess
import sys
import textwrap

import cv2

from tests.factories import gradient

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    HEAVY = {"torch", "torchvision", "timm", "nncf"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ImportError(f"{name} is blocked: the runtime must not need it")
    sys.meta_path.insert(0, Block())
""")


def _run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_runtime_imports_and_works_without_torch(tmp_path):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), gradient())
    result = _run_blocked(f"""
        import pkgutil, importlib, sys
        import cxr_edge.runtime as runtime
        for module in pkgutil.walk_packages(runtime.__path__, "cxr_edge.runtime."):
            if not module.name.endswith(".backends.openvino"):  # that one is OpenVINO itself, imported on use
                importlib.import_module(module.name)
        from cxr_edge.runtime.contract import Contract
        from cxr_edge.runtime.preprocess import load_for_contract, preprocess
        contract = Contract(input_size=(32, 32), class_names=("a", "b"))
        x = preprocess(load_for_contract({str(image)!r}, contract).pixels, contract)
        assert x.shape == (3, 32, 32), x.shape
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "nncf", "openvino"))
        assert not heavy, heavy
        importlib.import_module("cxr_edge.runtime.backends.openvino")
        assert not any(m.split(".")[0] in ("torch", "timm", "nncf") for m in sys.modules)
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cli_help_needs_no_torch():
    result = _run_blocked("""
        import sys
        from cxr_edge.cli import cli
        try:
            cli.main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        assert "torch" not in sys.modules
    """)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout


def test_the_blocker_really_blocks():
    result = _run_blocked("import torch")
    assert result.returncode != 0 and "blocked" in result.stderr
