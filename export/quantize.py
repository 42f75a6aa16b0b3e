"""INT8 quantisation of an exported model, for ONNX Runtime or OpenVINO, with one call and one report.

    report = quantize("model.onnx", "model-int8.onnx", calibration=files, backend="ort", labelled=val_samples)

The only thing a caller provides is the data: calibration images (any folder or a manifest) and, optionally,
labelled images for the report. Both go through the runtime's own loader and the model's own contract, so
calibration sees exactly what inference will see.

ONNX Runtime recipe, and why (measured; see benchmarks/ and the notes in the code):
- ``quant_pre_process`` first. Without it the exporter's shared-bias ``Identity`` nodes and dynamic ``Pad``
  subgraphs stop ORT from fusing DequantizeLinear -> Conv -> QuantizeLinear into ``QLinearConv`` (which needs an
  int32 bias): most convolutions then run in FP32 between extra Q/DQ pairs, and "INT8" is slower than FP32.
- QDQ format, uint8 activations and int8 weights (U8S8): the combination ORT's x86 kernels fuse best; S8S8 fused
  fewer convolutions and U8U8 was very slow on depthwise-heavy networks.
- Per-channel weights: depthwise filters differ in range by orders of magnitude, and one scale per tensor
  crushes the small ones.
- Full-range 8-bit weights, not ``reduce_range`` (7-bit): over five validation splits (benchmarks/int8) 7-bit
  weights cost 1.9 points of accuracy and agreed with FP32 on 96.8 % of 315 held-out images, full-range ones
  0.3 points and 98.4 %. Full range has one hazard: on x86 CPUs without VNNI, ORT's U8S8 kernel adds pairs of
  uint8 x int8 products in 16 bits (VPMADDUBSW) and can saturate. The runtime therefore turns on ORT's exact
  U8U8 path (``session.x64quantprecision``) on such CPUs and keeps INT8 ONNX models off OpenVINO there
  (``cxr_edge.runtime.model.backends``); VNNI CPUs accumulate in 32 bits and run the fast path exactly.
- Convolutions *and* their ReLU6 (``Clip``) are quantised together. With convolutions alone, the quantiser puts
  Q/DQ on the raw convolution output, whose range is set by a few outlier channels (about +-97 after the first
  depthwise convolution of EfficientNet-Lite0, where most channels stay below 9): one 8-bit step is then 0.76,
  and the error compounds to 79 % FP32 agreement. With the Clip included, ORT folds it into the convolution and
  quantises the clipped [0, 6] range instead: 98 % agreement, and no Q/DQ pairs left between layers.
- The stem (a 1-input-channel convolution: tiny compute) and everything after the last convolution stay FP32:
  those layers carry the most quantisation error per unit of speed gained.

OpenVINO recipe: NNCF post-training quantisation (performance preset, first-layer overflow fix) over all given
calibration images, on a model converted with ``ov.convert_model`` and fixed to a batch of one:
- ``convert_model`` rather than ``Core.read_model``: the latter leaves each depthwise kernel behind a Reshape, NNCF
  then cannot see those weights, and all 16 depthwise convolutions of EfficientNet-Lite0 stay FP32 with a
  Reorder around each (1.27x instead of 1.7x over FP32 here).
- full bias correction instead of the fast variant: it halves the largest probability error on the validation
  images (0.20 -> 0.09) for a few more seconds of quantisation.
- the stem convolution stays FP32, as in the ONNX Runtime recipe: FP32/INT8 agreement on the held-out images
  rose from 96.8 % to 98.4 % (largest probability error 0.20 -> 0.13); the stem has one input channel, so
  keeping it FP32 costs little time;
- everything that does not feed the last convolution stays FP32 (pooling, activation maps, classifier, and the
  gate with its branch off the middle of the network): NNCF's defaults quantise the gate's means, products and
  sums with ranges calibrated on chest films, which clipped what photographs produce until every input scored
  alike; these operations cost nothing next to the convolutions.
With labelled data and ``accuracy_aware``, ``nncf.quantize_with_accuracy_control`` keeps the most harmful layers in
FP32 until the accuracy drop is within ``max_drop``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.errors import CxrEdgeError, first_line
from ..runtime.evaluation.dataset import Sample
from ..runtime.evaluation.metrics import classification_report
from ..runtime.extras import require
from ..runtime.model.classifier import Classifier
from ..runtime.model.contract import Contract
from ..runtime.model.model_file import (
    FORMATS,
    INPUT_NAME,
    PROBABILITIES,
    QUANTIZATION_KEY,
    engine,
    file_sha256,
    model_files,
    model_size_mb,
    quantizing_engines,
    reader_engine,
)
from ..runtime.model.preprocess import load_many, to_input
from ..runtime.timing import time_interleaved
from .provenance import set_onnx_metadata

__all__ = ["quantize", "ContractReader", "compare_models", "RECIPES", "QuantReport", "render_comparison", "ort_config",
           "nncf_parameters"]


def _inputs(files: Sequence[Path], contract: Contract,
            on_progress: Callable[[], None] | None = None) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """Preprocessed inputs (N x C x H x W) for the readable files, and the unreadable ones with reasons."""
    images, kept, errors = load_many(files, contract, on_progress=on_progress)
    if not kept:
        raise CxrEdgeError("no readable calibration images")
    return to_input(images, contract), [files[i] for i in kept], [(e.path, e.reason) for e in errors]


class ContractReader:
    """ONNX Runtime's calibration reader protocol over preprocessed inputs, one image per call."""

    def __init__(self, inputs: np.ndarray) -> None:
        self.inputs = inputs
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.inputs):
            return None
        self.index += 1
        return {INPUT_NAME: self.inputs[self.index - 1:self.index]}

    def rewind(self) -> None:
        self.index = 0

    def __iter__(self):  # ORT's debugging tools iterate readers
        self.rewind()
        return iter(self.get_next, None)


def _metadata_onnx(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def ort_config(inputs: np.ndarray, keep_fp32: Sequence[str]) -> Any:
    """The ONNX Runtime recipe as onnxruntime's own `StaticQuantConfig`: QDQ, uint8 activations, int8 per-channel
    full-range weights (see the module docstring), MinMax calibration on `inputs`, every Conv and Clip but
    `keep_fp32` (the stem) quantised."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, StaticQuantConfig

    return StaticQuantConfig(ContractReader(inputs), calibrate_method=CalibrationMethod.MinMax,
                             quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                             weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "Clip"],
                             nodes_to_exclude=list(keep_fp32), per_channel=True, reduce_range=False,
                             extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def _described(config: Any) -> dict:
    """What a `StaticQuantConfig` decides, as the model's quantisation metadata records it."""
    return {"tool": "onnxruntime.quantization.quantize (StaticQuantConfig)", "format": config.quant_format.name,
            "ops": list(config.op_types_to_quantize), "activations": config.activation_type.name,
            "weights": config.weight_type.name + (" per-channel" if config.per_channel else ""),
            "reduce_range": config.reduce_range, "calibration": config.calibrate_method.name,
            "extra_options": dict(config.extra_options), "pre_process": "quant_pre_process",
            "fp32_nodes": list(config.nodes_to_exclude)}


def _quantize_ort(source: Path, out: Path, inputs: np.ndarray, metadata: dict[str, str], **_: object) -> dict:
    import onnx
    from onnxruntime.quantization import quantize as quantize_onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        convs = [n for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
        # Quantise the convolutions of the backbone only: the stem (first conv) and the class-activation head
        # (Einsum/MatMul after the last conv) stay FP32, see the module docstring.
        config = ort_config(inputs, [convs[0].name] if convs else [])
        quantize_onnx(str(prepared), str(out), config)
    recipe = _described(config)
    model = onnx.load(str(out))
    set_onnx_metadata(model, metadata | {QUANTIZATION_KEY: json.dumps(recipe, sort_keys=True)})
    onnx.save(model, str(out))
    return recipe


def nncf_parameters(subset_size: int, ignored: Any) -> dict[str, Any]:
    """The NNCF recipe as NNCF's own parameter objects: the PERFORMANCE preset (symmetric weights, the default
    overflow fix of the first layer), full bias correction, and an ignored scope for what lies outside the
    backbone (`_outside_the_backbone`)."""
    import nncf

    return {"preset": nncf.QuantizationPreset.PERFORMANCE, "subset_size": subset_size,
            "fast_bias_correction": False, "ignored_scope": ignored}


def _quantize_openvino(source: Path, out: Path, inputs: np.ndarray, metadata: dict[str, str], *,
                       labelled: tuple[np.ndarray, np.ndarray] | None, accuracy_aware: bool,
                       max_drop: float) -> dict:
    import nncf
    import openvino as ov

    model = ov.convert_model(str(source))
    model.reshape({INPUT_NAME: [1, *inputs.shape[1:]]})
    calibration = nncf.Dataset(list(inputs[:, None]))  # one image per item
    stem, outside = _outside_the_backbone(model)
    parameters = nncf_parameters(len(inputs), nncf.IgnoredScope(names=[stem, *outside], validate=False))
    recipe: dict = {"tool": "nncf", "preset": parameters["preset"].value, "subset_size": parameters["subset_size"],
                    "fast_bias_correction": parameters["fast_bias_correction"], "accuracy_aware": False,
                    "converted_with": "ov.convert_model", "fp32_nodes": [stem], "fp32_after_backbone": len(outside)}
    if accuracy_aware:
        if labelled is None:
            raise CxrEdgeError("accuracy-aware quantisation needs a labelled validation folder (--val DIR)")
        val_inputs, val_labels = labelled
        validation = nncf.Dataset(list(zip(val_inputs[:, None], val_labels, strict=True)), lambda item: item[0])

        def accuracy(compiled: ov.CompiledModel, items: Sequence) -> float:
            output = compiled.output(PROBABILITIES)
            hits = [int(np.argmax(compiled(x)[output])) == int(y) for x, y in items]
            return float(np.mean(hits))

        quantized = nncf.quantize_with_accuracy_control(model, calibration, validation, accuracy, max_drop=max_drop,
                                                        **parameters)
        recipe |= {"accuracy_aware": True, "max_drop": max_drop}
    else:
        quantized = nncf.quantize(model, calibration, **parameters)
    for key, value in (metadata | {QUANTIZATION_KEY: json.dumps(recipe, sort_keys=True)}).items():
        quantized.set_rt_info(value, ["cxr_edge", key])
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return recipe


def _outside_the_backbone(model: Any) -> tuple[str, list[str]]:
    """The stem convolution, and every operation that does not feed the last convolution: pooling, activation
    maps, the classifier and the whole gate, including its branch off the middle of the network.

    NNCF's defaults quantise many of those (means, products, sums): calibrated on chest films only, their
    ranges clip what a photograph or noise produces, and a quantised gate then scored every input alike. They cost
    nothing next to the convolutions, so they stay FP32.
    """
    ops = model.get_ordered_ops()
    convolutions = [op for op in ops if op.get_type_name() == "Convolution"]
    feeding, todo = set(), [convolutions[-1]]
    while todo:
        op = todo.pop()
        if op.get_friendly_name() in feeding:
            continue
        feeding.add(op.get_friendly_name())
        todo += [source.get_source_output().get_node() for source in op.inputs()]
    passive = {"Parameter", "Constant", "Result"}
    outside = [op.get_friendly_name() for op in ops
               if op.get_friendly_name() not in feeding and op.get_type_name() not in passive]
    return convolutions[0].get_friendly_name(), outside


RECIPES: dict[str, tuple[Callable[..., dict], tuple[str, ...]]] = {
    "ort": (_quantize_ort, ("onnx",)),
    "openvino": (_quantize_openvino, ("nncf", "openvino")),
}
"""Engine name -> (recipe, the packages it needs); one per engine in ``ENGINES`` that writes INT8 models."""


def compare_models(fp32: Path, int8: Path, backend: str, inputs: np.ndarray, labels: np.ndarray | None, *,
                   threads: int | None = None, runs: int = 50) -> dict:
    """FP32 vs INT8 on the same inputs and engine: agreement, accuracy, macro-F1, sizes and latency.

    Latency is the median of `runs` batch-1 inferences after warm-up, the two models interleaved so that any
    drift of the machine hits both alike.
    """
    models = {"fp32": Classifier.open(fp32, backend=backend, threads=threads),
              "int8": Classifier.open(int8, backend=backend, threads=threads)}
    if models["fp32"].contract != models["int8"].contract:
        raise CxrEdgeError(f"{fp32} and {int8} carry different contracts; they are not the same model")
    class_names = models["fp32"].contract.class_names
    predictions = {}
    for name, classifier in models.items():
        probabilities = np.concatenate([classifier.run(inputs[i:i + 16])[PROBABILITIES]
                                        for i in range(0, len(inputs), 16)])
        predictions[name] = probabilities.argmax(axis=1)
    one = inputs[:1]
    for classifier in models.values():
        for _ in range(5):
            classifier.run(one)
    samples = time_interleaved([c.run for c in models.values()], one, runs)
    latency = {name: statistics.median(t) for name, t in zip(models, samples, strict=True)}
    report = {
        "backend": backend, "images": len(inputs),
        "agreement": float(np.mean(predictions["fp32"] == predictions["int8"])),
        "size_mb": {"fp32": model_size_mb(fp32), "int8": model_size_mb(int8)},
        "latency_ms": latency, "speedup": latency["fp32"] / latency["int8"],
        "threads": models["int8"].backend.settings["threads"],
    }
    if labels is not None:
        for name in models:
            scores = classification_report(labels, predictions[name], class_names)
            report[name] = {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}
    return report


@dataclass
class QuantReport:
    """What a quantisation produced and how the INT8 model compares with FP32."""

    out: Path
    backend: str
    recipe: dict
    calibration_images: int
    skipped: list[tuple[Path, str]]
    comparison: dict

    def as_dict(self) -> dict:
        return {"out": str(self.out), "backend": self.backend, "recipe": self.recipe,
                "calibration_images": self.calibration_images,
                "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped],
                "comparison": self.comparison, "sha256": file_sha256(self.out)}


def quantize(model: str | Path, out: str | Path, *, calibration: Sequence[Path], backend: str = "ort",
             labelled: Sequence[Sample] | None = None, accuracy_aware: bool = False, max_drop: float = 0.01,
             threads: int | None = None, on_progress: Callable[[], None] | None = None) -> QuantReport:
    """Quantise an FP32 ONNX model to INT8 and compare the two.

    Args:
        model: FP32 ``.onnx`` exported by cxr-edge (it carries the contract).
        out: ``.onnx`` for ``ort``; ``.xml`` (plus ``.bin``) for ``openvino``. Never overwritten.
        calibration: images that represent what the model will see (ideally from the site's own X-ray machine).
        backend: an engine that writes INT8 models (``RECIPES``): ``ort`` (ONNX Runtime static quantisation) or
            ``openvino`` (NNCF).
        labelled: images with labels for accuracy figures (and for accuracy-aware quantisation).
        accuracy_aware: OpenVINO only: keep layers in FP32 until the accuracy drop is within `max_drop`.
        threads: threads for the latency comparison.
        on_progress: called once per decoded image.
    """
    model, out = Path(model), Path(out)
    if backend not in RECIPES or engine(backend) not in quantizing_engines():
        raise CxrEdgeError(f"cxr-edge quantizes for {', '.join(RECIPES)}, not {backend!r}")
    recipe_function, needs = RECIPES[backend]
    require(*needs, purpose=f"INT8 quantisation for {engine(backend).label}")  # before any image is decoded
    expected_suffix = FORMATS[engine(backend).writes].suffix
    if out.suffix != expected_suffix:
        raise CxrEdgeError(f"{out}: the {backend} backend writes a {expected_suffix} file")
    if any(f.exists() for f in model_files(out)):
        raise CxrEdgeError(f"{out} already exists; choose another output file")
    fp32 = Classifier.open(model, backend=reader_engine("onnx").name)
    contract, metadata = fp32.contract, _metadata_onnx(model)
    if QUANTIZATION_KEY in metadata:
        raise CxrEdgeError(f"{model} is already quantised; quantise the FP32 model")
    inputs, _, skipped = _inputs(calibration, contract, on_progress)
    labelled_arrays = None
    labelled = [s for s in labelled or () if not s.coarse]  # accuracy needs one class per image
    if labelled:
        val_inputs, kept, failed = _inputs([s.path for s in labelled], contract, on_progress)
        by_path = {s.path: contract.class_names.index(s.label) for s in labelled}
        labelled_arrays = (val_inputs, np.asarray([by_path[p] for p in kept]))
        skipped += failed
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        recipe = recipe_function(model, out, inputs, metadata, labelled=labelled_arrays,
                                 accuracy_aware=accuracy_aware, max_drop=max_drop)
    except CxrEdgeError:
        raise
    except Exception as exc:
        for written in model_files(out):
            written.unlink(missing_ok=True)
        raise CxrEdgeError(f"{model}: {backend} quantisation failed: {first_line(exc)}") from exc
    recipe["calibration_images"] = len(inputs)
    compare_inputs, compare_labels = labelled_arrays if labelled_arrays else (inputs, None)
    comparison = compare_models(model, out, backend, compare_inputs, compare_labels, threads=threads)
    return QuantReport(out, backend, recipe, len(inputs), skipped, comparison)


def render_comparison(comparison: dict, console: Any) -> None:
    """`compare_models`' figures as a table: accuracy, macro-F1, size and latency of both, then agreement."""
    from rich.table import Table

    table = Table(title=f"FP32 vs INT8 on {comparison['backend']} ({comparison['images']} images, "
                        f"{comparison['threads']} threads, batch 1)", title_justify="left")
    for column in ("", "FP32", "INT8"):
        table.add_column(column, justify="right" if column else "left")
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        if key in comparison.get("fp32", {}):
            table.add_row(label, f"{comparison['fp32'][key]:.3f}", f"{comparison['int8'][key]:.3f}")
    table.add_row("size (MB)", f"{comparison['size_mb']['fp32']:.1f}", f"{comparison['size_mb']['int8']:.1f}")
    latency = comparison["latency_ms"]
    table.add_row("latency p50 (ms)", f"{latency['fp32']:.2f}", f"{latency['int8']:.2f}")
    console.print(table)
    console.print(f"top-1 agreement {comparison['agreement']:.1%}; INT8 runs {comparison['speedup']:.2f}x as fast")
