"""What a user installs: the wheel's layout, its dependencies and the shipped model inside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _committed_tree(target: Path) -> Path:
    """The files git knows (committed or staged), copied: a wheel built from them cannot pick up stale build/ output
    or files that were never added."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached"], cwd=REPO, check=True, capture_output=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


@pytest.mark.slow
def test_wheel_maps_the_folders_into_cxr_edge_and_ships_the_model(tmp_path):
    source = _committed_tree(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("cxr_edge-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    installed_as = {"cxr_edge": "cxr_edge", "runtime": "cxr_edge/runtime", "export": "cxr_edge/export"}
    sources = {f"{installed_as[root]}/{path.relative_to(source / root).as_posix()}"
               for root in installed_as for path in (source / root).rglob("*.py")}  # every module, every room
    assert len(sources) > 60
    for expected in (*sorted(sources), "cxr_edge/runtime/models/cxr-edge-int8.onnx",
                     "cxr_edge/runtime/models/cxr-edge-fp32.onnx", "cxr_edge/runtime/models/cxr-edge-int8-openvino.xml",
                     "cxr_edge/runtime/models/cxr-edge-int8-openvino.bin", "cxr_edge/runtime/models/MODEL_CARD.md"):
        assert expected in names, expected
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"cxr_edge"}, top_level  # nothing generic like `runtime` lands in site-packages
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    for package in ("numpy", "opencv-python-headless", "onnxruntime", "openvino", "pydicom", "click", "rich",
                    "pynetdicom", "watchdog", "pylibjpeg-rle"):
        assert any(r.startswith(package) for r in base), package
    assert not any(r.startswith(("torch", "timm", "nncf")) for r in base)
    assert any(r.startswith("torch==2.14.1") and 'extra == "export"' in r for r in requires)
