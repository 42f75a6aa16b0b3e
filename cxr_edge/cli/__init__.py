"""The `cxr-edge` command: one click group, its commands in four rooms, each a thin shell over the library.

- `edge`: predict, info, bench (numpy, OpenCV, ONNX Runtime, OpenVINO);
- `live`: watch, dicom-listen (the long-running modes beside the X-ray machine);
- `build`: train, export, quantize, calibration-manifest (the export extra: torch, timm, nncf);
- `scale`: export-repository, score-archive (past one workstation: Triton, OpenVINO Model Server, Ray).

Importing this package imports click and nothing heavy: every command imports what it needs when it runs, so
that `--help` is instant and edge commands never load torch. Errors and exit codes are handled in one place,
`main.CxrEdgeGroup`.
"""

from .main import cli, main

__all__ = ["cli", "main"]
