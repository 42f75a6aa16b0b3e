"""The edge side must run where torch is not installed: prove it in a process where importing torch fails."""

import cv2

from tests.factories import gradient
from tests.processes import run_python


def test_runtime_imports_and_works_without_torch(tmp_path):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), gradient())
    result = run_python(f"""
        import pkgutil, importlib, sys
        import cxr_edge.runtime as runtime
        for module in pkgutil.walk_packages(runtime.__path__, "cxr_edge.runtime."):
            if not module.name.endswith(".backends.openvino"):  # that one is OpenVINO itself, imported on use
                importlib.import_module(module.name)
        from cxr_edge.runtime.model.contract import Contract
        from cxr_edge.runtime.model.preprocess import load_for_contract, preprocess
        contract = Contract(input_size=(32, 32), class_names=("a", "b"))
        x = preprocess(load_for_contract({str(image)!r}, contract).pixels, contract)
        assert x.shape == (3, 32, 32), x.shape
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "nncf", "openvino"))
        assert not heavy, heavy
        importlib.import_module("cxr_edge.runtime.model.backends.openvino")
        assert not any(m.split(".")[0] in ("torch", "timm", "nncf") for m in sys.modules)
        print("ok")
    """, blocked=("torch", "torchvision", "timm", "nncf"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cli_help_needs_no_torch():
    result = run_python("""
        import sys
        from cxr_edge.cli import cli
        try:
            cli.main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        assert "torch" not in sys.modules
    """, blocked=("torch", "torchvision", "timm", "nncf"))
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout


def test_the_blocker_really_blocks():
    result = run_python("import torch", blocked=("torch",))
    assert result.returncode != 0 and "blocked" in result.stderr
