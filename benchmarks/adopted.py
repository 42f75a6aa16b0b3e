"""A published architecture adopted: torchxrayvision's DenseNet-121 (18 findings, sigmoid outputs, [-1024, 1024]).

Usage: python benchmarks/adopted.py [--data DIR ...] [--out benchmarks/adopted]   (needs `pip install torchxrayvision`)

torchxrayvision's published weights cannot be downloaded here, so the network keeps its random weights except for
its batch-normalisation statistics, which are adapted (one pass in training mode, no gradient) on 64 real films
of the labelled data: without that, random weights and inputs of +-1024 drive every sigmoid to 0 or 1, and parity
and INT8 agreement would compare saturated outputs. The findings therefore mean nothing medically; what the record
shows is the mechanics: `cxr-edge adopt` with the contract in `xrv-densenet121.contract.json`, parity with
PyTorch, INT8 on both engines (calibrated on 100 other films), the benchmark of all four rows, and INT8 agreement
with FP32 on 200 further films: the share whose positive findings (at the default operating points) are the same,
and the largest change of any finding's probability.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from cxr_edge.export.adopt import adopt, read_spec
from cxr_edge.runtime.evaluation.bench import machine_info, versions
from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.preprocess import load_many, to_input

HERE = Path(__file__).resolve().parent / "adopted"
CONTRACT = HERE / "xrv-densenet121.contract.json"
SOURCE = "torchxrayvision.models:DenseNet"


def adapted_weights(films: list[Path], out: Path) -> Path:
    """The random DenseNet with batch-norm statistics from `films` (cumulative averages over one pass)."""
    import torchxrayvision as xrv

    contract = read_spec(CONTRACT).contract
    torch.manual_seed(0)
    network = xrv.models.DenseNet()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    images, kept, _ = load_many(films, contract)
    network.train()
    with torch.no_grad():
        for start in range(0, len(kept), 16):
            network(torch.from_numpy(to_input(images[start:start + 16], contract)))
    torch.save(network.state_dict(), out)
    return out


def cli(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "cxr_edge.cli", *map(str, args)], check=True)


def agreement(fp32: Path, int8: Path, backend: str, films: list[Path]) -> dict[str, float]:
    """Same positive findings, and the largest probability change, INT8 against FP32 on the same engine."""
    a = Classifier.open(fp32, backend=backend, gate="off").predict(films, batch_size=16)
    b = Classifier.open(int8, backend=backend, gate="off").predict(films, batch_size=16)
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x.probabilities and y.probabilities]
    change = [max(abs(x.probabilities[n] - y.probabilities[n]) for n in x.probabilities) for x, y in pairs]
    return {"films": len(pairs), "same_positive": float(np.mean([x.positive == y.positive for x, y in pairs])),
            "max_change": float(np.max(change)), "median_change": float(np.median(change)),
            "positive_per_film": float(np.mean([len(x.positive) for x, _ in pairs]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    films = [s.path for s in sorted(scan_dataset(resolve_data_dirs(args.data)).samples, key=lambda s: str(s.path))]
    chosen = [films[i] for i in np.random.default_rng(0).permutation(len(films))[:364]]
    adapt, calibrate, judge = chosen[:64], chosen[64:164], chosen[164:]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "calib").mkdir()
        for index, path in enumerate(calibrate):
            (folder / "calib" / f"{index:03d}{path.suffix}").symlink_to(path)
        report = adopt(SOURCE, folder / "xrv.onnx", read_spec(CONTRACT),
                       weights=adapted_weights(adapt, folder / "weights.pt"))
        cli("quantize", folder / "xrv.onnx", "-o", folder / "xrv-int8.onnx", "--backend", "ort",
            "--calib", folder / "calib")
        cli("quantize", folder / "xrv.onnx", "-o", folder / "xrv-int8.xml", "--backend", "openvino",
            "--calib", folder / "calib")
        cli("bench", "--model", folder / "xrv.onnx", "--model", folder / "xrv-int8.onnx", "--model",
            folder / "xrv-int8.xml", "--json", folder / "bench.json", "--markdown", folder / "bench.md")
        agree = {"ort": agreement(folder / "xrv.onnx", folder / "xrv-int8.onnx", "ort", judge),
                 "openvino": agreement(folder / "xrv.onnx", folder / "xrv-int8.xml", "openvino", judge)}
        bench = (folder / "bench.md").read_text()
        record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
                  "versions": versions(), "source": SOURCE, "parity": {"ort": report.max_diff_ort,
                                                                       "openvino": report.max_diff_openvino},
                  "int8_agreement": agree, "bench": json.loads((folder / "bench.json").read_text())}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adopted.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    lines = ["# torchxrayvision's DenseNet-121 adopted", "",
             f"Measured {record['created']} on {record['machine']['cpu']}; `python benchmarks/adopted.py`. "
             "Random weights with batch-norm statistics adapted on 64 real films (the published weights cannot be "
             "downloaded here): the findings mean nothing medically; the figures show the mechanics. With random "
             "weights most of the 18 probabilities sit near the default operating point 0.5, so the same positive "
             "set on every film is a harsh measure here; the probability changes are the informative one.", "",
             f"Parity of the adopted file with PyTorch: {report.max_diff_ort:.1e} (ONNX Runtime), "
             f"{report.max_diff_openvino:.1e} (OpenVINO).", "",
             "INT8 against FP32 on the same engine, on 200 real films not used for calibration:", "",
             "| engine | films | same positive findings | median change | largest change | positive per film |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {engine} | {a['films']} | {a['same_positive']:.1%} | {a['median_change']:.4f} | "
              f"{a['max_change']:.4f} | {a['positive_per_film']:.1f} |" for engine, a in agree.items()]
    lines += ["", "`cxr-edge bench` of the three files:", "", bench]
    (args.out / "adopted.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
